#!/usr/bin/env bash
# Fault injection against the customer-service example on Redis.
#
# Starts its own redis-server (ephemeral loopback port, no persistence) and the
# example service (release build, file SQLite database in a temporary
# directory), then, for each fault, runs `loadgen check` (reads mixed with
# writes over a few ids, every read checked against the last acknowledged
# write) while the fault is injected, and prints one table line per fault.
# A few minutes in total; not part of CI. Everything it starts is stopped on
# exit.
#
#   scripts/chaos.sh                  # every fault
#   scripts/chaos.sh baseline sigstop # only these
#
# Environment: CHAOS_SECS (checker seconds per fault, default 8),
# CHAOS_CONNECTIONS (16), CHAOS_IDS (8), CHAOS_WRITE_PCT (5),
# CHAOS_RECOVERY_SECS (longest wait for /health "ok" after a fault, 45),
# CHAOS_OUT (directory for logs and JSON lines, default a temporary one,
# kept), plus any CACHE_* variable, passed on to the service.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_FAULTS=(baseline kill9 sigstop client-kill flushall oom acl foreign-keys)
FAULTS=("$@")
if [ ${#FAULTS[@]} -eq 0 ]; then FAULTS=("${ALL_FAULTS[@]}"); fi
for f in "${FAULTS[@]}"; do
  case " ${ALL_FAULTS[*]} " in *" $f "*) ;; *) echo "unknown fault: $f (known: ${ALL_FAULTS[*]})" >&2; exit 2 ;; esac
done

SECS="${CHAOS_SECS:-8}"
CONNECTIONS="${CHAOS_CONNECTIONS:-16}"
IDS="${CHAOS_IDS:-8}"
WRITE_PCT="${CHAOS_WRITE_PCT:-5}"
RECOVERY_SECS="${CHAOS_RECOVERY_SECS:-45}"

for tool in redis-server redis-cli curl timeout; do
  command -v "$tool" >/dev/null || { echo "chaos.sh needs $tool on PATH" >&2; exit 1; }
done

echo "building (release): customer-service, loadgen" >&2
cargo build --release --quiet -p customer-service -p loadgen
BIN=target/release
LOADGEN="$BIN/loadgen"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chaos.XXXXXX")"
OUT="${CHAOS_OUT:-$WORK}"
mkdir -p "$OUT"
REDIS_PID=""
SERVICE_PID=""
BG_PIDS=()

cleanup() {
  set +e
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$REDIS_PID" ]; then kill -CONT "$REDIS_PID" 2>/dev/null; fi
  if [ -n "$SERVICE_PID" ]; then kill "$SERVICE_PID" 2>/dev/null; wait "$SERVICE_PID" 2>/dev/null; fi
  if [ -n "$REDIS_PID" ]; then kill -9 "$REDIS_PID" 2>/dev/null; fi
  if [ "$OUT" != "$WORK" ]; then rm -rf "$WORK"; else rm -rf "$WORK/db"; fi
  echo "logs and JSON lines: $OUT" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

REDIS_PORT="$("$LOADGEN" free-port)"
SERVICE_PORT="$("$LOADGEN" free-port)"
while [ "$SERVICE_PORT" = "$REDIS_PORT" ]; do SERVICE_PORT="$("$LOADGEN" free-port)"; done
# Every redis-cli call is bounded (a stopped server would hold it forever).
RCLI=(timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
RCLI_PIPE=(timeout 120 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --pipe)

start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile "$OUT/redis.log" </dev/null >/dev/null 2>&1 &
  REDIS_PID=$!
  # Still reaped by this shell, but `kill -9` is not reported as a crash.
  disown "$REDIS_PID"
  for _ in $(seq 100); do
    if "${RCLI[@]}" PING 2>/dev/null | grep -q PONG; then return 0; fi
    sleep 0.05
  done
  echo "redis-server did not answer on port $REDIS_PORT" >&2
  exit 1
}

health() { curl -s -m 2 "http://127.0.0.1:$SERVICE_PORT/health" 2>/dev/null || true; }

# Waits until /health says "ok" (cache healthy); prints the seconds waited.
wait_healthy() {
  local t0 now
  t0=$(date +%s.%N)
  while :; do
    if health | grep -q '"status":"ok"'; then break; fi
    now=$(date +%s.%N)
    if awk -v a="$t0" -v b="$now" -v l="$RECOVERY_SECS" 'BEGIN{exit !(b-a>l)}'; then
      health >"$OUT/health-never.json"; echo "never"; return 0
    fi
    sleep 0.2
  done
  now=$(date +%s.%N)
  awk -v a="$t0" -v b="$now" 'BEGIN{printf "%.1f\n", b-a}'
}

start_redis
mkdir -p "$WORK/db"
PORT="$SERVICE_PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  DATABASE_URL="sqlite://$WORK/db/customers.db?mode=rwc" ADMIN_TOKEN=chaos \
  RUST_LOG="${RUST_LOG:-warn}" "$BIN/customer-service" >"$OUT/service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 200); do
  if health | grep -q status; then break; fi
  sleep 0.05
done
health | grep -q status || { echo "customer-service did not start; see $OUT/service.log" >&2; exit 1; }
echo "redis on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID), service on 127.0.0.1:$SERVICE_PORT (pid $SERVICE_PID)" >&2

# ---- faults: each `inject_X` runs while the checker runs in the background;
# it starts after 2 s and ends (restoring Redis) by about SECS - 2 s.
FAULT_SECS=$(awk -v s="$SECS" 'BEGIN{d=s-4; if (d<1) d=1; print d}')

inject_baseline() { :; }

inject_kill9() {
  sleep 2
  kill -9 "$REDIS_PID"
  for _ in $(seq 40); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.05; done
  sleep "$FAULT_SECS"
  start_redis
}

inject_sigstop() {
  sleep 2
  kill -STOP "$REDIS_PID"
  sleep "$FAULT_SECS"
  kill -CONT "$REDIS_PID"
}

inject_client-kill() {
  sleep 2
  local until_=$(( $(date +%s) + ${FAULT_SECS%.*} ))
  while [ "$(date +%s)" -lt "$until_" ]; do
    "${RCLI[@]}" CLIENT KILL TYPE normal >/dev/null 2>&1 || true
    sleep 0.2
  done
}

inject_flushall() {
  sleep 2
  local n=$(( ${FAULT_SECS%.*} * 2 ))
  for _ in $(seq "$n"); do
    "${RCLI[@]}" FLUSHALL >/dev/null
    sleep 0.5
  done
}

inject_oom() {
  sleep 2
  local policy
  policy=$("${RCLI[@]}" CONFIG GET maxmemory-policy | tail -1)
  "${RCLI[@]}" CONFIG SET maxmemory-policy noeviction >/dev/null
  "${RCLI[@]}" CONFIG SET maxmemory 1 >/dev/null
  sleep "$FAULT_SECS"
  "${RCLI[@]}" CONFIG SET maxmemory 0 >/dev/null
  "${RCLI[@]}" CONFIG SET maxmemory-policy "$policy" >/dev/null
}

inject_acl() {
  # The default user (the service's) loses every write command; reads stay.
  sleep 2
  "${RCLI[@]}" ACL SETUSER default -@write >/dev/null
  sleep "$FAULT_SECS"
  "${RCLI[@]}" ACL SETUSER default +@all >/dev/null
}

inject_foreign-keys() {
  # 300k keys that are not the service's, in its database, written while the
  # checker runs; then an admin pattern invalidation (SCAN) timed over them.
  sleep 1
  awk 'BEGIN{for(i=1;i<=300000;i++) printf "SET foreign:%d 0123456789abcdef\r\n", i}' |
    "${RCLI_PIPE[@]}" >"$OUT/foreign-fill.log" 2>&1
  curl -s -m 30 -o /dev/null -w '%{time_total}\n' -X POST \
    -H 'authorization: Bearer chaos' -H 'content-type: application/json' \
    -d '{"pattern": "query:*"}' \
    "http://127.0.0.1:$SERVICE_PORT/admin/cache/invalidate" >"$OUT/foreign-admin-secs.txt" || true
}

cleanup_foreign-keys() {
  awk 'BEGIN{for(i=1;i<=300000;i++) printf "UNLINK foreign:%d\r\n", i}' |
    "${RCLI_PIPE[@]}" >/dev/null 2>&1 || true
}

# requests: checker requests in SECS seconds; min/s: fewest requests started
# in any 1-s phase (0 = the service stalled for a whole second); stale: reads
# older than a write acknowledged before they started; uncertain: reads of a
# write whose outcome is unknown; healthy-s: seconds after the checker ended
# until /health said "ok".
printf '%-13s %9s %7s %8s %10s %6s %10s %8s %9s\n' \
  fault requests min/s non-2xx no-answer stale uncertain max-ms healthy-s
SUMMARY="$OUT/chaos-table.txt"
: >"$SUMMARY"
for fault in "${FAULTS[@]}"; do
  "$LOADGEN" check --addr "127.0.0.1:$SERVICE_PORT" --duration "$SECS" --phase-secs 1 \
    --connections "$CONNECTIONS" --ids "$IDS" --write-pct "$WRITE_PCT" \
    --timeout-ms 5000 --label "$fault" >"$OUT/check-$fault.jsonl" 2>"$OUT/check-$fault.err" &
  CHECK_PID=$!
  BG_PIDS=("$CHECK_PID")
  "inject_$fault" || echo "fault $fault: the injection failed" >&2
  wait "$CHECK_PID" || true
  BG_PIDS=()
  if ! "${RCLI[@]}" PING 2>/dev/null | grep -q PONG; then
    echo "redis is not answering after fault $fault: restarting it" >&2
    kill -CONT "$REDIS_PID" 2>/dev/null || true
    kill -9 "$REDIS_PID" 2>/dev/null || true
    sleep 0.2
    start_redis
  fi
  if [ "$fault" = foreign-keys ]; then
    echo "foreign keys: admin pattern invalidation took $(cat "$OUT/foreign-admin-secs.txt" 2>/dev/null || echo '?') s; dbsize $("${RCLI[@]}" DBSIZE)" >&2
    cleanup_foreign-keys
  fi
  healthy=$(wait_healthy)
  total=$(grep '"phase":"total"' "$OUT/check-$fault.jsonl" || true)
  if [ -z "$total" ]; then
    line=$(printf '%-13s %s' "$fault" "checker failed: $(tr '\n' ' ' <"$OUT/check-$fault.err")")
  else
    get() { printf '%s' "$total" | sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
    min_s=$(grep -v '"phase":"total"' "$OUT/check-$fault.jsonl" |
      sed -n 's/.*"requests":\([0-9]*\).*/\1/p' | sort -n | head -1)
    line=$(printf '%-13s %9s %7s %8s %10s %6s %10s %8s %9s' "$fault" "$(get requests)" "$min_s" \
      "$(get non_2xx)" "$(get no_answer)" "$(get stale_reads)" "$(get stale_uncertain)" \
      "$(get max_ms)" "$healthy")
  fi
  echo "$line"
  echo "$line" >>"$SUMMARY"
done
