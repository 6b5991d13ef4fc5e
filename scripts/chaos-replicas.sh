#!/usr/bin/env bash
# Faults that need two replicas of the customer-service example, each run
# with the transactional outbox off and on.
#
# For every fault and mode it starts a fresh setup: its own redis-server
# (ephemeral loopback port, a password that is being rotated: `old` and
# `new` both valid), a loopback TCP proxy in front of it (chaos-proxy,
# cache-testkit's TcpProxy), and two instances of the service (release
# build) on one SQLite file (WAL), one namespace, each with a near cache:
# the writer A reaches Redis through the proxy with the password `old`, the
# reader B directly with `new`. `loadgen check` then writes through A and
# reads through B while the fault is injected, and counts the reads on B
# that started after a write was acknowledged by A and returned an older
# name. One table line per fault and mode. A few minutes in all; not part
# of CI. Everything it starts is stopped on exit.
#
#   scripts/chaos-replicas.sh                       # every fault, outbox off and on
#   scripts/chaos-replicas.sh partition sigstop     # only these
#   CHAOS_OUTBOX_MODES=on scripts/chaos-replicas.sh # only with the outbox
#
# Faults (from 2 s into the check; CHAOS_SECS, default 10, per fault):
#   baseline           nothing
#   partition          A cut off from Redis (proxy: connections reset, new
#                      ones refused) until CHAOS_SECS - 2
#   partition-restart  A cut off at 2 s; writes stop at 4 s and A is
#                      restarted (SIGTERM, start again) while still cut
#                      off; the cut ends at CHAOS_SECS - 3
#   password           a half-done password rotation: `old` is revoked
#                      (ACL SETUSER default <old) and A's connections are
#                      reset, so A reconnects with a refused password, B
#                      keeps `new`; `old` is valid again at CHAOS_SECS - 2
#   kill9              Redis killed (kill -9) at 2 s, so both instances
#                      lose it; restarted empty (no persistence) at
#                      CHAOS_SECS - 4
#   snapshot           SAVE at 2 s; writes stop at 4 s, then kill -9 Redis
#                      and restart it from the dump.rdb of 2 s
#   sigstop            Redis SIGSTOPped for 5 s from 2 s; A's path is
#                      blackholed from 2 s until 2 s after SIGCONT, so B's
#                      connection comes back before the writer's (runs
#                      CHAOS_SECS + 2)
#   cluster-kill       on a Redis Cluster of its own (3 masters, each with a
#                      replica, node timeout 1 s; both instances reach it
#                      directly, no proxy, no password): the master of
#                      the most checked ids is killed (kill -9) at 2 s and
#                      its replica takes over
#
# Environment: CHAOS_SECS (10), CHAOS_CONNECTIONS (16), CHAOS_IDS (8),
# CHAOS_WRITE_PCT (5), CHAOS_OUTBOX_MODES ("off on"), CHAOS_OUT (logs and
# JSON lines, default a temporary directory, kept), plus any CACHE_*
# variable, passed on to both instances.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_FAULTS=(baseline partition partition-restart password kill9 snapshot sigstop cluster-kill)
FAULTS=("$@")
if [ ${#FAULTS[@]} -eq 0 ]; then FAULTS=("${ALL_FAULTS[@]}"); fi
for f in "${FAULTS[@]}"; do
  case " ${ALL_FAULTS[*]} " in *" $f "*) ;; *) echo "unknown fault: $f (known: ${ALL_FAULTS[*]})" >&2; exit 2 ;; esac
done
read -r -a MODES <<<"${CHAOS_OUTBOX_MODES:-off on}"
for m in "${MODES[@]}"; do
  case "$m" in on | off) ;; *) echo "CHAOS_OUTBOX_MODES: \`$m\` is neither on nor off" >&2; exit 2 ;; esac
done

SECS="${CHAOS_SECS:-10}"
CONNECTIONS="${CHAOS_CONNECTIONS:-16}"
IDS="${CHAOS_IDS:-8}"
WRITE_PCT="${CHAOS_WRITE_PCT:-5}"
if [ "$SECS" -lt 8 ]; then echo "CHAOS_SECS must be 8 or more" >&2; exit 2; fi

for tool in redis-server redis-cli curl timeout; do
  command -v "$tool" >/dev/null || { echo "chaos-replicas.sh needs $tool on PATH" >&2; exit 1; }
done

echo "building (release): customer-service, loadgen, chaos-proxy" >&2
# Two builds: the service and loadgen with the same features as the other
# scripts' (chaos-proxy pulls cache-testkit, which would change them).
cargo build --release --quiet -p customer-service -p loadgen
cargo build --release --quiet -p chaos-proxy
BIN=target/release
LOADGEN="$BIN/loadgen"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chaos-replicas.XXXXXX")"
OUT="${CHAOS_OUT:-$WORK}"
mkdir -p "$OUT"
REDIS_PID="" PROXY_PID="" A_PID="" B_PID="" CHECK_PID=""
CLUSTER_PIDS=() CLUSTER_PORTS=()

stop_pid() { # pid [signal]: stop one process this script started, and reap it
  local pid="$1" sig="${2:-TERM}"
  [ -n "$pid" ] || return 0
  kill -CONT "$pid" 2>/dev/null || true
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

teardown() {
  set +e
  stop_pid "$CHECK_PID"; CHECK_PID=""
  stop_pid "$A_PID"; A_PID=""
  stop_pid "$B_PID"; B_PID=""
  stop_pid "$PROXY_PID"; PROXY_PID=""
  stop_pid "$REDIS_PID" 9; REDIS_PID=""
  for p in "${CLUSTER_PIDS[@]}"; do stop_pid "$p" 9; done
  CLUSTER_PIDS=() CLUSTER_PORTS=() CLUSTER_URL=""
  set -e
}

cleanup() {
  teardown
  if [ "$OUT" != "$WORK" ]; then rm -rf "$WORK"; else rm -rf "$WORK/run"; fi
  echo "logs and JSON lines: $OUT" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RUN="$WORK/run"
REDIS_PORT="" PROXY_ADDR="" A_PORT="" B_PORT="" TAG=""
rcli() { timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -a new --no-auth-warning "$@"; }

# A redis-server whose default user takes both passwords of the rotation
# (set in its config, so a restart keeps them), without automatic saves:
# only an explicit SAVE writes dump.rdb, which a restart then loads.
start_redis() {
  mkdir -p "$RUN/redis"
  cat >"$RUN/redis.conf" <<EOF
port $REDIS_PORT
bind 127.0.0.1
daemonize no
dir $RUN/redis
dbfilename dump.rdb
save ""
appendonly no
logfile $OUT/redis-$TAG.log
user default on >old >new ~* &* +@all
EOF
  redis-server "$RUN/redis.conf" </dev/null >/dev/null 2>&1 &
  REDIS_PID=$!
  # Still reaped by this shell, but `kill -9` is not reported as a crash.
  disown "$REDIS_PID"
  for _ in $(seq 100); do
    if rcli PING 2>/dev/null | grep -q PONG; then return 0; fi
    sleep 0.05
  done
  echo "redis-server did not answer on port $REDIS_PORT" >&2
  return 1
}

start_proxy() {
  "$BIN/chaos-proxy" "127.0.0.1:$REDIS_PORT" >"$RUN/proxy.addr" 2>>"$OUT/proxy-$TAG.log" &
  PROXY_PID=$!
  for _ in $(seq 100); do
    PROXY_ADDR="$(head -1 "$RUN/proxy.addr" 2>/dev/null || true)"
    if [ -n "$PROXY_ADDR" ]; then return 0; fi
    sleep 0.05
  done
  echo "chaos-proxy did not start" >&2
  return 1
}

health() { curl -s -m 2 "http://127.0.0.1:$1/health" 2>/dev/null || true; }

# Waits until the instance on port $1 answers /health; with $2 = ok, until
# its status is "ok".
wait_up() {
  local want='"status"'
  [ "${2:-}" = ok ] && want='"status":"ok"'
  for _ in $(seq 400); do
    if health "$1" | grep -q "$want"; then return 0; fi
    sleep 0.05
  done
  echo "the instance on port $1 did not come up ($want); see $OUT/service-*-$TAG.log" >&2
  return 1
}

# start_instance a|b: A through the proxy with the password `old`, B
# directly with `new`; the same SQLite file and namespace, a near cache.
start_instance() {
  local which="$1" port url
  if [ "$which" = a ]; then
    port="$A_PORT"; url="redis://:old@$PROXY_ADDR"
  else
    port="$B_PORT"; url="redis://:new@127.0.0.1:$REDIS_PORT"
  fi
  if [ -n "$CLUSTER_URL" ]; then url="$CLUSTER_URL"; fi
  PORT="$port" REDIS_URL="$url" DATABASE_URL="sqlite://$RUN/db/customers.db?mode=rwc" \
    CACHE_NAMESPACE=chaos CACHE_NEAR_CAPACITY="${CACHE_NEAR_CAPACITY:-10000}" \
    CACHE_OUTBOX="$MODE" RUST_LOG="${RUST_LOG:-warn}" \
    "$BIN/customer-service" >>"$OUT/service-$which-$TAG.log" 2>&1 &
  if [ "$which" = a ]; then A_PID=$!; else B_PID=$!; fi
}

# A free port whose cluster bus port (+10000) is free too, below the
# kernel's ephemeral range.
free_cluster_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
      ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  return 1
}

# Three masters and three replicas, joined by redis-cli --cluster create.
CLUSTER_URL=""
start_cluster() {
  local port i
  for i in 1 2 3 4 5 6; do
    port="$(free_cluster_port)"
    mkdir -p "$RUN/cluster-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
      --cluster-replica-validity-factor 0 --repl-diskless-sync-delay 0 \
      --dir "$RUN/cluster-$port" --logfile "$OUT/cluster-$port-$TAG.log" </dev/null >/dev/null 2>&1 &
    CLUSTER_PIDS+=($!); disown $!
    CLUSTER_PORTS+=("$port")
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 100); do timeout 5 redis-cli -p "$port" PING 2>/dev/null | grep -q PONG && break; sleep 0.05; done
  done
  local addrs=()
  for port in "${CLUSTER_PORTS[@]}"; do addrs+=("127.0.0.1:$port"); done
  timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >"$OUT/cluster-create-$TAG.log" 2>&1
  for _ in $(seq 200); do
    local ok=1
    for port in "${CLUSTER_PORTS[@]}"; do
      timeout 5 redis-cli -p "$port" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  # Every replica in sync with its master, so it can take over.
  for _ in $(seq 200); do
    if [ "$(for port in "${CLUSTER_PORTS[@]}"; do timeout 5 redis-cli -p "$port" INFO replication; done |
      grep -c 'master_link_status:up')" -ge 3 ]; then break; fi
    sleep 0.1
  done
  CLUSTER_URL=""
  for port in "${CLUSTER_PORTS[@]}"; do CLUSTER_URL="${CLUSTER_URL:+$CLUSTER_URL,}redis://127.0.0.1:$port"; done
}

# The pid of the master serving the most of the checked ids' customer keys.
busiest_master_pid() {
  local port=${CLUSTER_PORTS[0]} id slot master best="" count
  declare -A per
  for id in $(seq 1 "$IDS"); do
    slot=$(timeout 5 redis-cli -p "$port" CLUSTER KEYSLOT "chaos:customer:$id")
    master=$(timeout 5 redis-cli -p "$port" CLUSTER NODES |
      awk -v s="$slot" '$3 ~ /master/ { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1]; if (s >= r[1] && s <= r[2]) { split($2, a, "[:@]"); print a[2] } } }')
    per[$master]=$(( ${per[$master]:-0} + 1 ))
  done
  count=0
  for master in "${!per[@]}"; do
    if [ "${per[$master]}" -gt "$count" ]; then count=${per[$master]}; best=$master; fi
  done
  for i in "${!CLUSTER_PORTS[@]}"; do
    if [ "${CLUSTER_PORTS[$i]}" = "$best" ]; then
      echo "cluster-kill ($MODE): killing the master on $best, serving $count of $IDS ids" >&2
      echo "${CLUSTER_PIDS[$i]}"; return 0
    fi
  done
}

setup() {
  rm -rf "$RUN"; mkdir -p "$RUN/db"
  REDIS_PORT="$("$LOADGEN" free-port)"
  A_PORT="$("$LOADGEN" free-port)"
  B_PORT="$("$LOADGEN" free-port)"
  if [ "${1:-}" = cluster ]; then
    start_cluster
  else
    start_redis
    start_proxy
  fi
  # A first: it creates and seeds the database.
  start_instance a
  wait_up "$A_PORT" ok
  start_instance b
  wait_up "$B_PORT" ok
}

# ---- faults: each runs while the checker runs, from its start.
at() { # at SECONDS: sleeps until SECONDS after the checker started
  local now
  now=$(date +%s.%N)
  sleep "$(awk -v t0="$T0" -v now="$now" -v at="$1" 'BEGIN{d=t0+at-now; if (d<0) d=0; printf "%.3f", d}')"
}
proxy_cut() { kill -USR1 "$PROXY_PID"; }
proxy_blackhole() { kill -HUP "$PROXY_PID"; }
proxy_restore() { kill -USR2 "$PROXY_PID"; }

inject_baseline() { :; }

inject_partition() {
  at 2; proxy_cut
  at $((SECS - 2)); proxy_restore
}

inject_partition-restart() {
  at 2; proxy_cut
  at 4.3
  stop_pid "$A_PID"; A_PID=""
  start_instance a
  wait_up "$A_PORT" || true
  echo "partition-restart ($MODE): A restarted at $(awk -v t0="$T0" -v now="$(date +%s.%N)" 'BEGIN{printf "%.1f", now-t0}') s" >&2
  at $((SECS - 3)); proxy_restore
}

inject_password() {
  at 2
  rcli ACL SETUSER default '<old' >/dev/null
  # A's connections are reset; it reconnects with the revoked password.
  proxy_cut; sleep 0.1; proxy_restore
  at $((SECS - 2))
  rcli ACL SETUSER default '>old' >/dev/null
}

inject_kill9() {
  at 2; kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
  at $((SECS - 4)); start_redis
}

inject_snapshot() {
  at 2; rcli SAVE >/dev/null
  at 4.3
  kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
  start_redis
  echo "snapshot ($MODE): redis restarted from the dump with $(rcli DBSIZE) keys" >&2
}

inject_sigstop() {
  at 2; proxy_blackhole; kill -STOP "$REDIS_PID"
  at 7; kill -CONT "$REDIS_PID"
  at 9; proxy_restore
}

inject_cluster-kill() {
  local pid
  pid=$(busiest_master_pid)
  at 2; kill -9 "$pid"
}

fault_secs() { if [ "$1" = sigstop ]; then echo $((SECS + 2)); else echo "$SECS"; fi; }
fault_args() {
  case "$1" in
    partition-restart | snapshot) echo "--write-until 4" ;;
    *) echo "" ;;
  esac
}

# stale: reads on B that started after A acknowledged a newer write;
# longest-ms: the longest of those stalenesses (since the first newer
# acknowledged write); at-end: ids whose last read on B was still stale;
# non-2xx / no-answer: of all requests (writes on A, reads on B).
printf '%-18s %-6s %9s %8s %7s %8s %10s %7s %11s %6s %8s\n' \
  fault outbox requests B-reads writes non-2xx no-answer stale longest-ms at-end max-ms
SUMMARY="$OUT/chaos-replicas-table.txt"
: >"$SUMMARY"
for fault in "${FAULTS[@]}"; do
  for MODE in "${MODES[@]}"; do
    TAG="$fault-$MODE"
    kind=single; [ "$fault" = cluster-kill ] && kind=cluster
    if ! setup "$kind"; then
      printf '%-18s %-6s %s\n' "$fault" "$MODE" "setup failed" | tee -a "$SUMMARY"
      teardown; continue
    fi
    dur=$(fault_secs "$fault")
    # shellcheck disable=SC2046
    "$LOADGEN" check --addr "127.0.0.1:$A_PORT" --read-addr "127.0.0.1:$B_PORT" \
      --duration "$dur" --phase-secs 1 --connections "$CONNECTIONS" --ids "$IDS" \
      --write-pct "$WRITE_PCT" --timeout-ms 5000 --label "$TAG" $(fault_args "$fault") \
      >"$OUT/check-$TAG.jsonl" 2>"$OUT/check-$TAG.err" &
    CHECK_PID=$!
    # The checker's own set-up (one write per id) takes a moment; the
    # fault's clock starts with the checker's.
    T0=$(date +%s.%N)
    "inject_$fault" || echo "fault $fault ($MODE): the injection failed" >&2
    wait "$CHECK_PID" || true
    CHECK_PID=""
    total=$(grep '"phase":"total"' "$OUT/check-$TAG.jsonl" || true)
    if [ -z "$total" ]; then
      line=$(printf '%-18s %-6s %s' "$fault" "$MODE" "checker failed: $(tr '\n' ' ' <"$OUT/check-$TAG.err")")
    else
      get() { printf '%s' "$total" | sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
      line=$(printf '%-18s %-6s %9s %8s %7s %8s %10s %7s %11s %6s %8s' "$fault" "$MODE" \
        "$(get requests)" "$(get reads)" "$(get writes_acked)" "$(get non_2xx)" "$(get no_answer)" \
        "$(get stale_reads)" "$(get max_stale_ms)" "$(get stale_at_end)" "$(get max_ms)")
    fi
    echo "$line"
    echo "$line" >>"$SUMMARY"
    teardown
  done
done
