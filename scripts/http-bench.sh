#!/usr/bin/env bash
# HTTP load on the customer-service example: req/s and p50/p99 latency of
# `GET /api/customers/{id}` for one hot id and for ids spread over 1..1000,
# with the in-memory cache, with Redis, and with Redis plus a near cache
# (CACHE_NEAR_CAPACITY; three service runs, release build,
# its own redis-server on an ephemeral loopback port), then the Redis/memory
# ratios (near/memory: target >= 0.9). Each case is measured BENCH_RUNS times (interleaved hot, spread, hot,
# ...) and the median is printed. Not part of CI; load generator, service and
# redis-server share the machine's cores.
#
#   scripts/http-bench.sh
#
# Environment: BENCH_RUNS (3), BENCH_SECS (5 measured seconds per run),
# BENCH_WARMUP (1), BENCH_CONNECTIONS (50), BENCH_OUT (directory for the JSON
# lines and logs; default a temporary one, kept).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${BENCH_RUNS:-3}"
SECS="${BENCH_SECS:-5}"
WARMUP="${BENCH_WARMUP:-1}"
CONNECTIONS="${BENCH_CONNECTIONS:-50}"

for tool in redis-server redis-cli curl; do
  command -v "$tool" >/dev/null || { echo "http-bench.sh needs $tool on PATH" >&2; exit 1; }
done

echo "building (release): customer-service, loadgen" >&2
cargo build --release --quiet -p customer-service -p loadgen
BIN=target/release
LOADGEN="$BIN/loadgen"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/http-bench.XXXXXX")"
OUT="${BENCH_OUT:-$WORK}"
mkdir -p "$OUT"
REDIS_PID=""
SERVICE_PID=""
cleanup() {
  set +e
  if [ -n "$SERVICE_PID" ]; then kill "$SERVICE_PID" 2>/dev/null; wait "$SERVICE_PID" 2>/dev/null; fi
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null; fi
  rm -rf "$WORK/db"
  if [ "$OUT" != "$WORK" ]; then rm -rf "$WORK"; fi
  echo "JSON lines and logs: $OUT" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

REDIS_PORT="$("$LOADGEN" free-port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize no --logfile "$OUT/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" PING 2>/dev/null | grep -q PONG; then break; fi
  sleep 0.05
done

RESULTS="$OUT/http-bench.jsonl"
: >"$RESULTS"

run_backend() {
  local backend=$1 port
  port="$("$LOADGEN" free-port)"
  rm -rf "$WORK/db"; mkdir -p "$WORK/db"
  local env=(PORT="$port" DATABASE_URL="sqlite://$WORK/db/customers.db?mode=rwc" RUST_LOG=warn)
  if [ "$backend" != memory ]; then env+=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT"); fi
  if [ "$backend" = near ]; then env+=(CACHE_NEAR_CAPACITY=10000); fi
  env "${env[@]}" "$BIN/customer-service" >"$OUT/service-$backend.log" 2>&1 &
  SERVICE_PID=$!
  for _ in $(seq 200); do
    if curl -s -m 1 "http://127.0.0.1:$port/health" | grep -q '"status":"ok"'; then break; fi
    sleep 0.05
  done
  curl -s -m 1 "http://127.0.0.1:$port/health" | grep -q '"status":"ok"' ||
    { echo "customer-service ($backend) not healthy; see $OUT/service-$backend.log" >&2; exit 1; }
  # Every id read once, so both cases measure hits.
  "$LOADGEN" load --addr "127.0.0.1:$port" --keys spread --warmup 0 --duration 2 \
    --connections 8 --label "$backend-fill" >/dev/null
  for run in $(seq "$RUNS"); do
    for keys in hot spread; do
      "$LOADGEN" load --addr "127.0.0.1:$port" --keys "$keys" --connections "$CONNECTIONS" \
        --warmup "$WARMUP" --duration "$SECS" --label "$backend" | tee -a "$RESULTS" >&2
    done
    echo "$backend: run $run of $RUNS done" >&2
  done
  kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
  SERVICE_PID=""
}

run_backend memory
run_backend redis
run_backend near

field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
median() { sort -g | awk '{a[NR]=$1} END{if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { grep "\"label\":\"$1\"" "$RESULTS" | grep "\"keys\":\"$2\"" | field "$3" | median; }

echo
echo "medians of $RUNS runs, ${SECS} s each, $CONNECTIONS connections, $(nproc) cores"
printf '%-8s %-7s %10s %15s %8s %8s %8s\n' backend keys req/s req/s-min-max p50-ms p99-ms non-2xx
for keys in hot spread; do
  for backend in memory redis near; do
    range=$(grep "\"label\":\"$backend\"" "$RESULTS" | grep "\"keys\":\"$keys\"" | field req_per_s |
      sort -g | awk 'NR==1{lo=$1} {hi=$1} END{printf "%d-%d", lo, hi}')
    printf '%-8s %-7s %10s %15s %8s %8s %8s\n' "$backend" "$keys" "$(med "$backend" "$keys" req_per_s)" "$range" \
      "$(med "$backend" "$keys" p50_ms)" "$(med "$backend" "$keys" p99_ms)" \
      "$(grep "\"label\":\"$backend\"" "$RESULTS" | grep "\"keys\":\"$keys\"" | field non_2xx | awk '{s+=$1} END{print s+0}')"
  done
done
for keys in hot spread; do
  awk -v k="$keys" -v r="$(med near "$keys" req_per_s)" -v m="$(med memory "$keys" req_per_s)" \
    'BEGIN{printf "ratio near/memory, %s: req/s %.2f (target >= 0.9)\n", k, r/m}'
  awk -v k="$keys" -v r="$(med redis "$keys" req_per_s)" -v m="$(med memory "$keys" req_per_s)" \
    -v rp="$(med redis "$keys" p50_ms)" -v mp="$(med memory "$keys" p50_ms)" \
    'BEGIN{printf "ratio redis/memory, %s: req/s %.2f, p50 %.2f\n", k, r/m, rp/mp}'
done
