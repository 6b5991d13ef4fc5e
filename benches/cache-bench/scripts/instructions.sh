#!/usr/bin/env bash
# Instructions per call of the benchmark's hit cases, counted by callgrind
# (steady on a shared machine where ops/s are not), and the target ratios
# computed from them.
#
# Run with: benches/cache-bench/scripts/instructions.sh [REPEATS] [BINARY]
#   REPEATS  runs per Redis case (default 3; the median is reported: Redis
#            counts vary by a few percent with timing, memory counts by <0.2%)
#   BINARY   a built cache-bench (default: target/release/cache-bench, built
#            with --features cached-crate when that binary has the case)
# Needs valgrind and redis-server on the PATH. Takes ~4 minutes with 3 repeats.
set -euo pipefail

repeats=${1:-3}
bin=${2:-}
if [[ -z "$bin" ]]; then
    cargo build --release -p cache-bench --features cached-crate >&2
    bin=target/release/cache-bench
fi
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# count CASE CALLS: instructions per call, from the callgrind dump taken
# between the binary's count_start and count_end markers.
count() {
    TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
        --zero-before='*count_start*' --dump-before='*count_end*' \
        "$bin" --count "$2" --only "$1" >/dev/null 2>"$out/log" ||
        { cat "$out/log" >&2; exit 1; }
    local total
    total=$(grep '^totals:' "$out/cg.1" | cut -d' ' -f2)
    rm -f "$out"/cg*
    echo $((total / $2))
}

declare -A result
memory_cases="moka_get moka_get_string_key_ttl cache_get_memory cached_fn_memory"
redis_cases="raw_redis_get raw_redis_get_nodelay cache_get_redis cached_fn_redis cached_fn_redis_nagle"
if "$bin" --help | grep -q cached_crate_redis_get; then
    redis_cases="$redis_cases cached_crate_redis_get"
fi
for case in $memory_cases; do
    result[$case]=$(count "$case" 200000)
    printf '%-28s %8d instructions/call\n' "$case" "${result[$case]}"
done
for case in $redis_cases; do
    runs=()
    for _ in $(seq "$repeats"); do runs+=("$(count "$case" 10000)"); done
    sorted=($(printf '%s\n' "${runs[@]}" | sort -n))
    result[$case]=${sorted[$(( ${#sorted[@]} / 2 ))]}
    printf '%-28s %8d instructions/call (median of %s: %s)\n' \
        "$case" "${result[$case]}" "$repeats" "${runs[*]}"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
echo
echo "ratios by instructions (higher = cheaper; the ops/s targets in parentheses):"
echo "  raw_redis_get / cached_fn_redis           = $(ratio "${result[raw_redis_get]}" "${result[cached_fn_redis]}") (>= 0.95)"
echo "  raw_redis_get_nodelay / cached_fn_redis   = $(ratio "${result[raw_redis_get_nodelay]}" "${result[cached_fn_redis]}") (same TCP setting)"
if [[ -n "${result[cached_crate_redis_get]:-}" ]]; then
    echo "  cached_crate_redis_get / cached_fn_redis  = $(ratio "${result[cached_crate_redis_get]}" "${result[cached_fn_redis]}") (>= 0.95)"
fi
echo "  moka_get / cached_fn_memory               = $(ratio "${result[moka_get]}" "${result[cached_fn_memory]}") (>= 0.8)"
echo "  moka_get / moka_get_string_key_ttl        = $(ratio "${result[moka_get]}" "${result[moka_get_string_key_ttl]}") (moka keyed as the design requires)"
echo "  moka_get_string_key_ttl / cached_fn_memory = $(ratio "${result[moka_get_string_key_ttl]}" "${result[cached_fn_memory]}") (cache-core's layer)"
