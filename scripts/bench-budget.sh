#!/usr/bin/env bash
# Instruction budget of the cache hit paths: fails when a pinned hit case
# executes more instructions per call than its budget allows.
#
# Run with: scripts/bench-budget.sh [BINARY]
#   BINARY  a built cache-bench to measure (default: build it with
#           `cargo build --release -p cache-bench` and use target/release/cache-bench)
# Environment:
#   BUDGET_COUNT  calls counted per valgrind run (default 5000)
#   BUDGET_RUNS   runs per case, the median is used (default 3)
#
# Each budget is a ratio against a baseline case measured in the same run, on
# the same build and machine, so it holds on any machine:
#   cached_fn_redis   <= 1.05 x raw_redis_get_nodelay
#   cached_fn_memory  <= 1.05 x moka_get_string_key_ttl
#   cached_fn_near    <= 1.05 x moka_get_string_key_ttl
# Also counted, without a budget: the same hits of functions with fail_safe
# and with one tag (cached_fn_{redis,near,memory}_{fail_safe,tags}), each
# printed beside its plain case (skipped for a binary without those cases).
# Instructions are counted by callgrind between the benchmark's count_start
# and count_end markers, on every thread of the process, one worker thread.
# Exit status: 0 all within budget, 1 a case over its budget (or a failed
# measurement). Installs valgrind and redis-server (Debian/Ubuntu, apt-get)
# when they are missing. Cold (empty target/) on 2 cores: about 2-5.5 minutes
# (idle or busy machine), nearly all of it the release build; the counting
# itself takes ~25 s.
set -euo pipefail
cd "$(dirname "$0")/.."

count=${BUDGET_COUNT:-5000}
runs=${BUDGET_RUNS:-3}
bin=${1:-}

missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ((${#missing[@]})); then
    echo "bench-budget: ${missing[*]} not found: installing with apt-get" >&2
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ -z "$bin" ]]; then
    cargo build --release -p cache-bench >&2
    bin=${CARGO_TARGET_DIR:-target}/release/cache-bench
fi
[[ -x "$bin" ]] || { echo "bench-budget: $bin is not an executable" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# count CASE: instructions per call over $count calls, from the callgrind
# dump taken at the count_end marker (zeroed at count_start).
count() {
    if ! TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
        --zero-before='*count_start*' --dump-before='*count_end*' \
        "$bin" --count "$count" --only "$1" >/dev/null 2>"$out/log"; then
        cat "$out/log" >&2
        echo "bench-budget: measuring $1 failed" >&2
        exit 1
    fi
    local total
    total=$(grep -s '^totals:' "$out/cg.1" | cut -d' ' -f2 || true)
    if [[ -z "$total" ]]; then
        cat "$out/log" >&2
        echo "bench-budget: no count_end dump for $1 (is it a --count case?)" >&2
        exit 1
    fi
    rm -f "$out"/cg*
    echo $((total / count))
}

median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }

declare -A result detail
loader=()
if "$bin" --help 2>/dev/null | grep -q cached_fn_memory_fail_safe; then
    loader=(fail_safe tags)
fi
local_cases=(moka_get_string_key_ttl cached_fn_memory cached_fn_near)
for opt in "${loader[@]}"; do
    local_cases+=("cached_fn_memory_$opt" "cached_fn_near_$opt")
done
# medians CASE...: counts each case BUDGET_RUNS times, the cases interleaved
# in each run, and keeps the median of each.
declare -A runs_of
medians() {
    local i case
    for i in $(seq "$runs"); do
        echo "bench-budget: counting $* ($count calls, run $i/$runs)" >&2
        for case in "$@"; do
            runs_of[$case]+="$(count "$case") "
        done
    done
    for case in "$@"; do
        # shellcheck disable=SC2086 # the runs, split on purpose
        result[$case]=$(median ${runs_of[$case]})
        detail[$case]="median of ${runs_of[$case]% }"
    done
}
# Memory and near counts usually repeat to within a fraction of a percent,
# but a run that meets moka's housekeeping counts up to ~20% more.
medians "${local_cases[@]}"
# Redis counts vary by a few percent with timing (how often a poll finds the
# reply already there).
redis_cases=(raw_redis_get_nodelay cached_fn_redis)
for opt in "${loader[@]}"; do
    redis_cases+=("cached_fn_redis_$opt")
done
medians "${redis_cases[@]}"

echo
echo "instructions per call ($count calls per run, TOKIO_WORKER_THREADS=1):"
for case in raw_redis_get_nodelay cached_fn_redis moka_get_string_key_ttl cached_fn_memory cached_fn_near; do
    printf '  %-26s %8d  (%s)\n' "$case" "${result[$case]}" "${detail[$case]}"
done
if ((${#loader[@]})); then
    echo
    echo "the same hits with fail_safe or one tag (no budget; ratio to the plain hit):"
    for plain in cached_fn_redis cached_fn_near cached_fn_memory; do
        for opt in "${loader[@]}"; do
            case=${plain}_$opt
            ratio=$(awk -v a="${result[$case]}" -v b="${result[$plain]}" 'BEGIN { printf "%.3f", a / b }')
            printf '  %-26s %8d  %6sx %-17s (%s)\n' "$case" "${result[$case]}" "$ratio" "$plain" "${detail[$case]}"
        done
    done
fi

# case baseline budget
budgets=(
    "cached_fn_redis raw_redis_get_nodelay 1.05"
    "cached_fn_memory moka_get_string_key_ttl 1.05"
    "cached_fn_near moka_get_string_key_ttl 1.05"
)
echo
echo "budgets (case / baseline, instructions per call):"
printf '  %-18s %-26s %8s %8s  %s\n' case baseline ratio budget verdict
over=()
for b in "${budgets[@]}"; do
    read -r case base budget <<<"$b"
    ratio=$(awk -v a="${result[$case]}" -v b="${result[$base]}" 'BEGIN { printf "%.3f", a / b }')
    if awk -v r="$ratio" -v m="$budget" 'BEGIN { exit !(r <= m) }'; then
        verdict=ok
    else
        verdict=OVER
        over+=("$case is ${ratio}x $base, budget ${budget}x")
    fi
    printf '  %-18s %-26s %7sx %7sx  %s\n' "$case" "$base" "$ratio" "$budget" "$verdict"
done
echo
if ((${#over[@]})); then
    echo "bench-budget: FAILED: hit-path instruction budget exceeded:" >&2
    printf '  %s\n' "${over[@]}" >&2
    exit 1
fi
echo "bench-budget: every pinned hit case is within its budget"
