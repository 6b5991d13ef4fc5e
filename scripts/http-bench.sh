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
# `put` measures `PUT /api/customers/{id}` (ids spread over 1..1000, a new
# name each time) on Redis with the transactional outbox off and on: two
# instances run side by side on their own SQLite files, measured in turn
# (off, on, on, off, ...), with 1 connection (the latency of one write)
# and with BENCH_PUT_CONNECTIONS (writes queueing for SQLite's one writer).
#
#   scripts/http-bench.sh          # get and put
#   scripts/http-bench.sh get      # reads only (memory, redis, near)
#   scripts/http-bench.sh put      # writes only (outbox off / on)
#
# Environment: BENCH_RUNS (3), BENCH_SECS (5 measured seconds per run),
# BENCH_WARMUP (1), BENCH_CONNECTIONS (50), BENCH_PUT_CONNECTIONS (8),
# BENCH_OUT (directory for the JSON lines and logs; default a temporary one,
# kept).
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT="${1:-all}"
case "$WHAT" in all | get | put) ;; *) echo "usage: scripts/http-bench.sh [all|get|put]" >&2; exit 2 ;; esac
PUT_CONNECTIONS="${BENCH_PUT_CONNECTIONS:-8}"

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
PUT_PIDS=()
cleanup() {
  set +e
  if [ -n "$SERVICE_PID" ]; then kill "$SERVICE_PID" 2>/dev/null; wait "$SERVICE_PID" 2>/dev/null; fi
  for p in "${PUT_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
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

field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
median() { sort -g | awk '{a[NR]=$1} END{if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# ---- writes: the outbox off and on, two instances side by side.
run_put() {
  local mode port ports=() c run order
  for mode in off on; do
    port="$("$LOADGEN" free-port)"
    rm -rf "$WORK/db-put-$mode"; mkdir -p "$WORK/db-put-$mode"
    env PORT="$port" DATABASE_URL="sqlite://$WORK/db-put-$mode/customers.db?mode=rwc" RUST_LOG=warn \
      REDIS_URL="redis://127.0.0.1:$REDIS_PORT" CACHE_NAMESPACE="bench-put-$mode" CACHE_OUTBOX="$mode" \
      "$BIN/customer-service" >"$OUT/service-put-$mode.log" 2>&1 &
    PUT_PIDS+=($!)
    ports+=("$port")
    for _ in $(seq 200); do
      if curl -s -m 1 "http://127.0.0.1:$port/health" | grep -q '"status":"ok"'; then break; fi
      sleep 0.05
    done
  done
  for run in $(seq "$RUNS"); do
    # Alternate which mode goes first, so drift favours neither.
    if [ $((run % 2)) = 1 ]; then order="0 1"; else order="1 0"; fi
    for c in 1 "$PUT_CONNECTIONS"; do
      for i in $order; do
        mode=$([ "$i" = 0 ] && echo off || echo on)
        "$LOADGEN" load --addr "127.0.0.1:${ports[$i]}" --method PUT --keys spread \
          --connections "$c" --warmup "$WARMUP" --duration "$SECS" --label "put-$mode-c$c" |
          tee -a "$RESULTS" >&2
      done
    done
    echo "put: run $run of $RUNS done" >&2
  done
  for mode in off on; do
    echo "outbox $mode: rows left $(curl -s -m 2 "http://127.0.0.1:${ports[$([ $mode = off ] && echo 0 || echo 1)]}/admin/cache/stats" | sed -n 's/.*"outbox":\({[^}]*}\).*/\1/p')" >&2
  done
  for p in "${PUT_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
  PUT_PIDS=()
}

if [ "$WHAT" != put ]; then
  run_backend memory
  run_backend redis
  run_backend near
fi
if [ "$WHAT" != get ]; then
  run_put
  echo
  echo "PUT /api/customers/{id}: medians of $RUNS runs, ${SECS} s each, $(nproc) cores"
  printf '%-8s %-11s %10s %8s %8s %8s\n' outbox connections req/s p50-ms p99-ms non-2xx
  for c in 1 "$PUT_CONNECTIONS"; do
    for mode in off on; do
      sel() { grep "\"label\":\"put-$mode-c$c\"" "$RESULTS" | field "$1"; }
      printf '%-8s %-11s %10s %8s %8s %8s\n' "$mode" "$c" "$(sel req_per_s | median)" \
        "$(sel p50_ms | median)" "$(sel p99_ms | median)" "$(sel non_2xx | awk '{s+=$1} END{print s+0}')"
    done
  done
  if [ "$WHAT" = put ]; then exit 0; fi
fi

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
