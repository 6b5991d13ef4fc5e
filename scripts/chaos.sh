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
# The `failover` faults run on a Redis Sentinel setup of their own (a
# primary, a replica, three redis-sentinels) with a second service instance
# that finds Redis through the sentinels (`failover-wait`: with
# CACHE_WAIT_REPLICAS=1); `SENTINEL FAILOVER` moves the primary while the
# checker runs. They need redis-sentinel and are skipped without it.
#
# Environment: CHAOS_SECS (checker seconds per fault, default 8),
# CHAOS_CONNECTIONS (16), CHAOS_IDS (8), CHAOS_WRITE_PCT (5),
# CHAOS_RECOVERY_SECS (longest wait for /health "ok" after a fault, 45),
# CHAOS_OUT (directory for logs and JSON lines, default a temporary one,
# kept), plus any CACHE_* variable, passed on to the service.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_FAULTS=(baseline kill9 sigstop client-kill flushall oom acl foreign-keys db-down failover failover-wait)
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
# The Sentinel setup of the failover faults (see start_sentinel_setup).
SENTINEL_PIDS=()
FAILOVER_SERVICE_PID=""

cleanup() {
  set +e
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  stop_sentinel_setup
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

# The service the current fault's checker talks to.
CHECK_PORT=""
health() { curl -s -m 2 "http://127.0.0.1:${CHECK_PORT:-$SERVICE_PORT}/health" 2>/dev/null || true; }

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
  CHAOS_DB_DOWN_FILE="$WORK/db-down" \
  RUST_LOG="${RUST_LOG:-warn}" "$BIN/customer-service" >"$OUT/service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 200); do
  if health | grep -q status; then break; fi
  sleep 0.05
done
health | grep -q status || { echo "customer-service did not start; see $OUT/service.log" >&2; exit 1; }
echo "redis on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID), service on 127.0.0.1:$SERVICE_PORT (pid $SERVICE_PID)" >&2

# ---- the Redis Sentinel setup of the failover faults: a primary and its
# replica (redis-server), three redis-sentinels watching them as `chaos`
# (quorum 2, tuned like the test kit's: down after 1 s, INFO every 100 ms,
# hello messages every 500 ms), and a second service instance, on its own
# SQLite file, that finds the primary through the sentinels. $1: the
# service's CACHE_WAIT_REPLICAS.
stop_sentinel_setup() {
  if [ -n "$FAILOVER_SERVICE_PID" ]; then
    kill "$FAILOVER_SERVICE_PID" 2>/dev/null; wait "$FAILOVER_SERVICE_PID" 2>/dev/null
  fi
  FAILOVER_SERVICE_PID=""
  for p in "${SENTINEL_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  SENTINEL_PIDS=()
}

start_sentinel_setup() {
  local wait_replicas="$1" dir="$WORK/sentinel" p1 p2 s port svc urls=""
  rm -rf "$dir"; mkdir -p "$dir"
  p1="$("$LOADGEN" free-port)"; p2="$("$LOADGEN" free-port)"
  for port in "$p1" "$p2"; do
    local extra=()
    if [ "$port" = "$p2" ]; then extra=(--replicaof 127.0.0.1 "$p1"); fi
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --repl-diskless-sync-delay 0 --daemonize no --dir "$dir" \
      --logfile "$OUT/sentinel-redis-$port.log" "${extra[@]}" </dev/null >/dev/null 2>&1 &
    SENTINEL_PIDS+=($!); disown $!
  done
  for _ in $(seq 200); do
    timeout 5 redis-cli -p "$p2" INFO replication 2>/dev/null | grep -q 'master_link_status:up' && break
    sleep 0.05
  done
  SENTINEL_PORTS=()
  for _ in 1 2 3; do
    s="$("$LOADGEN" free-port)"
    printf 'port %s\nbind 127.0.0.1\nprotected-mode no\ndir %s\nlogfile %s\nsentinel monitor chaos 127.0.0.1 %s 2\nsentinel down-after-milliseconds chaos 1000\nsentinel failover-timeout chaos 5000\n' \
      "$s" "$dir" "$OUT/sentinel-$s.log" "$p1" >"$dir/sentinel-$s.conf"
    redis-sentinel "$dir/sentinel-$s.conf" </dev/null >/dev/null 2>&1 &
    SENTINEL_PIDS+=($!); disown $!
    SENTINEL_PORTS+=("$s")
    urls="${urls:+$urls,}redis://127.0.0.1:$s"
  done
  for s in "${SENTINEL_PORTS[@]}"; do
    for _ in $(seq 100); do timeout 5 redis-cli -p "$s" PING 2>/dev/null | grep -q PONG && break; sleep 0.05; done
    timeout 5 redis-cli -p "$s" SENTINEL DEBUG info-period 100 publish-period 500 tilt-trigger 10000 >/dev/null 2>&1 || true
  done
  # Every sentinel knows the replica and the two others.
  for s in "${SENTINEL_PORTS[@]}"; do
    for _ in $(seq 400); do
      if [ "$(timeout 5 redis-cli -p "$s" SENTINEL SENTINELS chaos 2>/dev/null | grep -c '^name$')" -ge 2 ] &&
        timeout 5 redis-cli -p "$s" SENTINEL REPLICAS chaos 2>/dev/null | grep -q "^$p2\$"; then
        break
      fi
      sleep 0.05
    done
  done
  svc="$("$LOADGEN" free-port)"
  mkdir -p "$dir/db"
  PORT="$svc" REDIS_SENTINELS="$urls" REDIS_SENTINEL_MASTER=chaos CACHE_WAIT_REPLICAS="$wait_replicas" \
    DATABASE_URL="sqlite://$dir/db/customers.db?mode=rwc" ADMIN_TOKEN=chaos \
    RUST_LOG="${RUST_LOG:-warn}" "$BIN/customer-service" >"$OUT/service-failover.log" 2>&1 &
  FAILOVER_SERVICE_PID=$!
  CHECK_PORT="$svc"
  for _ in $(seq 200); do
    if health | grep -q '"status":"ok"'; then break; fi
    sleep 0.05
  done
  health | grep -q status || { echo "the failover service did not start; see $OUT/service-failover.log" >&2; return 1; }
}

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

inject_db-down() {
  # The service's database fails (its CHAOS_DB_DOWN_FILE switch): reads
  # are answered from the cache (fail-safe past the TTL), writes fail (503)
  # and still invalidate, so a read after one must never return the old name.
  sleep 2
  touch "$WORK/db-down"
  sleep "$FAULT_SECS"
  rm -f "$WORK/db-down"
}

inject_failover() {
  sleep 2
  timeout 5 redis-cli -p "${SENTINEL_PORTS[0]}" SENTINEL FAILOVER chaos >"$OUT/failover-asked.txt" 2>&1
}

inject_failover-wait() { inject_failover; }

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
  CHECK_PORT="$SERVICE_PORT"
  case "$fault" in
    failover | failover-wait)
      if ! command -v redis-sentinel >/dev/null; then
        printf '%-13s %s\n' "$fault" "skipped: redis-sentinel is not installed" | tee -a "$SUMMARY"
        continue
      fi
      wait_replicas=0; [ "$fault" = failover-wait ] && wait_replicas=1
      start_sentinel_setup "$wait_replicas" || { printf '%-13s %s\n' "$fault" "setup failed" | tee -a "$SUMMARY"; stop_sentinel_setup; continue; }
      ;;
  esac
  "$LOADGEN" check --addr "127.0.0.1:$CHECK_PORT" --duration "$SECS" --phase-secs 1 \
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
  case "$fault" in
    failover | failover-wait)
      echo "$fault: primary now $(timeout 5 redis-cli -p "${SENTINEL_PORTS[0]}" SENTINEL GET-MASTER-ADDR-BY-NAME chaos | tr '\n' ' ')" >&2
      stop_sentinel_setup
      ;;
  esac
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
