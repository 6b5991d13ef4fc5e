#!/usr/bin/env bash
# Compile cost of the generated code: release LLVM IR lines of generated
# crates with 100 cached functions and 25 invalidating functions, cache-core
# against the `cached` crate's (4.1) Redis-backed macro, the same functions
# uncached, and `cached`'s in-memory macro for context.
#
# Run with: scripts/compile-cost.sh [--debug-time] [--clean]
#   --debug-time  also time a debug build of each crate on its own (its
#                 dependencies built first, then `touch src/lib.rs` and
#                 `CARGO_INCREMENTAL=0 cargo build`, the median of 3 runs)
#   --clean       start from an empty work directory (default: reuse it, so
#                 the dependencies are built once)
# Environment:
#   COMPILE_COST_DIR  work directory, outside the repository
#                     (default: ${TMPDIR:-/tmp}/cache-rs-compile-cost)
#   COMPILE_COST_NICE niceness of the cargo processes (default 15)
#   COMPILE_COST_REPO a checkout whose cache-core to measure (default: this one;
#                     its Cargo.lock is the one copied)
#   COMPILE_COST_MAX  the budget of cache-core / cached Redis (default 2.0);
#                     reported, never a failure (the IR is a size, not a gate)
#
# Every crate gets the workspace's Cargo.lock, so the versions of shared
# dependencies match the workspace's; they share one target directory.
# On 2 cores: ~5-6 minutes with no work directory yet (the dependencies of
# cache-core and `cached`), then ~1 minute (+1 with --debug-time).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(realpath "${COMPILE_COST_REPO:-.}")
[[ -f "$repo/cache-core/Cargo.toml" ]] || { echo "compile-cost: no cache-core in $repo" >&2; exit 2; }

debug_time=0
clean=0
for arg in "$@"; do
    case "$arg" in
        --debug-time) debug_time=1 ;;
        --clean) clean=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set/d;p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compile-cost: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

work=${COMPILE_COST_DIR:-${TMPDIR:-/tmp}/cache-rs-compile-cost}
nice_level=${COMPILE_COST_NICE:-15}
max_ratio=${COMPILE_COST_MAX:-2.0}
case "$(realpath -m "$work")/" in
    "$repo"/* | "$(pwd)"/*) echo "compile-cost: COMPILE_COST_DIR must be outside the repository" >&2; exit 2 ;;
esac
if ((clean)); then rm -rf "$work"; fi
mkdir -p "$work"
export CARGO_TARGET_DIR="$work/target"
export CARGO_TERM_COLOR=never

N=100 # cached functions per crate
U=25  # invalidating (update) functions per crate, each covering N/U cached ones
per=$((N / U))

crates=(cc_plain cc_cache_core cc_cached_redis cc_cached_memory)
declare -A title=(
    [cc_plain]="plain (no caching)"
    [cc_cache_core]="cache-core #[cached] + #[invalidates]"
    [cc_cached_redis]="cached 4.1, Redis (#[concurrent_cached(redis = true)])"
    [cc_cached_memory]="cached 4.1, memory (#[cached(ttl_secs = 60)])"
)

# --- generation -----------------------------------------------------------

manifest() { # crate: Cargo.toml
    local deps
    case "$1" in
        cc_plain) deps='serde = { version = "1", features = ["derive"] }' ;;
        cc_cache_core) deps="cache-core = { path = \"$repo/cache-core\" }
serde = { version = \"1\", features = [\"derive\"] }" ;;
        cc_cached_redis) deps='cached = { version = "=4.1.0", default-features = false, features = ["redis_tokio", "proc_macro"] }
serde = { version = "1", features = ["derive"] }' ;;
        cc_cached_memory) deps='cached = { version = "=4.1.0", default-features = false, features = ["redis_tokio", "proc_macro", "time_stores"] }
serde = { version = "1", features = ["derive"] }' ;;
    esac
    cat <<EOF
[package]
name = "$1"
version = "0.0.0"
edition = "2024"
publish = false

[lib]
path = "src/lib.rs"

[dependencies]
$deps

[workspace]
EOF
}

body='{ Ok(Customer { id, name: format!("c{id}") }) }'

# The attribute over cached function i.
cached_attr() { # crate i
    case "$1" in
        cc_plain) ;;
        cc_cache_core) echo "#[cached(prefix = \"c$2\", ttl = 60, key = \"{id}\")]" ;;
        cc_cached_redis) echo "#[concurrent_cached(redis = true, ttl_secs = 60, cache_prefix_block = { \"c$2\" }, map_error = |e| format!(\"{e:?}\"))]" ;;
        cc_cached_memory) echo "#[cached(ttl_secs = 60)]" ;;
    esac
}

# Update function k: it drops the entries of cached functions k*per .. k*per+per-1
# for one id, after its write.
update_fn() { # crate k
    local first=$(($2 * per)) i list=()
    case "$1" in
        cc_plain) ;;
        cc_cache_core)
            # Half the updates name keys by template, half by function reference.
            for ((i = first; i < first + per; i++)); do
                if (($2 % 2 == 0)); then list+=("\"c$i:{id}\""); else list+=("get_customer_$i(id)"); fi
            done
            local joined
            joined=$(printf ', %s' "${list[@]}")
            echo "#[invalidates(${joined:2})]"
            ;;
    esac
    echo "pub async fn update_customer_$2(id: u64) -> Result<(), String> {"
    echo "    write(id).await?;"
    case "$1" in
        cc_cached_redis)
            # The store exists once the cached function ran in this process;
            # the macro's `create` expression cannot be reused from here.
            for ((i = first; i < first + per; i++)); do
                echo "    if let Some(c) = GET_CUSTOMER_$i.get() {"
                echo "        c.async_cache_delete(&id).await.map_err(|e| format!(\"{e:?}\"))?;"
                echo "    }"
            done
            ;;
        cc_cached_memory)
            for ((i = first; i < first + per; i++)); do
                echo "    GET_CUSTOMER_$i.write().await.cache_remove(&id);"
            done
            ;;
    esac
    echo "    Ok(())"
    echo "}"
}

generate() { # crate
    local dir="$work/$1" i
    mkdir -p "$dir/src"
    manifest "$1" >"$dir/Cargo.toml.new"
    {
        echo "//! Generated by scripts/compile-cost.sh: $N cached and $U invalidating functions."
        echo "#![allow(missing_docs, clippy::all)]"
        echo "use std::future::Future;"
        echo "use std::pin::Pin;"
        case "$1" in
            cc_cache_core) echo "use cache_core::{cached, invalidates};" ;;
            cc_cached_redis) echo "use cached::ConcurrentCachedAsync;"
                             echo "use cached::proc_macro::concurrent_cached;" ;;
            cc_cached_memory) echo "use cached::Cached;"
                              echo "use cached::proc_macro::cached;" ;;
        esac
        cat <<'EOF'

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Customer {
    pub id: u64,
    pub name: String,
}

/// The write of an update function (not cached in any crate).
async fn write(id: u64) -> Result<(), String> {
    if id == u64::MAX { Err("no such customer".into()) } else { Ok(()) }
}
EOF
        for ((i = 0; i < N; i++)); do
            echo
            cached_attr "$1" "$i"
            echo "pub async fn get_customer_$i(id: u64) -> Result<Customer, String> $body"
        done
        for ((i = 0; i < U; i++)); do
            echo
            update_fn "$1" "$i"
        done
        echo
        echo "/// Awaits every function, so that their futures are compiled."
        echo "pub async fn touch_all() -> usize {"
        echo "    let mut n = 0;"
        for ((i = 0; i < N; i++)); do
            echo "    n += get_customer_$i($i).await.map_or(0, |c| c.id as usize);"
        done
        for ((i = 0; i < U; i++)); do
            echo "    n += update_customer_$i($i).await.is_ok() as usize;"
        done
        echo "    n"
        echo "}"
        echo
        echo "/// Without a use of \`Future::poll\` in the crate, rustc generates no code"
        echo "/// for the futures of a library's \`async fn\`s."
        echo "pub fn touch_all_boxed() -> Pin<Box<dyn Future<Output = usize> + Send>> {"
        echo "    Box::pin(touch_all())"
        echo "}"
    } >"$dir/src/lib.rs.new"
    # Rewrite only what changed, so cargo's fingerprints stay valid on reruns.
    for f in Cargo.toml src/lib.rs; do
        if cmp -s "$dir/$f.new" "$dir/$f"; then rm "$dir/$f.new"; else mv "$dir/$f.new" "$dir/$f"; fi
    done
    # The workspace's versions; cargo adds what the workspace does not use
    # (the `cached` proc macro) and drops the rest.
    if ! cmp -s "$repo/Cargo.lock" "$dir/Cargo.lock.workspace"; then
        cp "$repo/Cargo.lock" "$dir/Cargo.lock"
        cp "$repo/Cargo.lock" "$dir/Cargo.lock.workspace"
    fi
}

cargo_in() { # crate args...: cargo in the crate's directory; its output on failure
    local crate=$1
    shift
    if ! (cd "$work/$crate" && nice -n "$nice_level" cargo "$@") >"$work/cargo.log" 2>&1; then
        head -n 60 "$work/cargo.log" >&2
        echo "compile-cost: cargo $* failed in $work/$crate (full output: $work/cargo.log)" >&2
        exit 1
    fi
}

# --- measurement ----------------------------------------------------------

declare -A ir dtime
started=$(date +%s)
for c in "${crates[@]}"; do
    generate "$c"
    echo "compile-cost: $c: release LLVM IR (and the dependencies, if not built yet)" >&2
    rm -f "$CARGO_TARGET_DIR"/release/deps/"$c"-*.ll
    touch "$work/$c/src/lib.rs" # the .ll is written again even when nothing changed
    cargo_in "$c" rustc --release --quiet --lib -- --emit=llvm-ir
    lls=("$CARGO_TARGET_DIR"/release/deps/"$c"-*.ll)
    if [[ ! -f "${lls[0]}" || ${#lls[@]} -ne 1 ]]; then
        echo "compile-cost: expected one $c-*.ll, found: ${lls[*]}" >&2
        exit 1
    fi
    ir[$c]=$(wc -l <"${lls[0]}")
done

if ((debug_time)); then
    for c in "${crates[@]}"; do
        echo "compile-cost: $c: debug build of the dependencies" >&2
        # CARGO_INCREMENTAL=0 here too: cache-core is a path dependency, and
        # changing the setting would rebuild it in the first timed run.
        CARGO_INCREMENTAL=0 cargo_in "$c" build --quiet
    done
    declare -A druns
    for _ in 1 2 3; do # round-robin, so a busy moment does not hit one crate
        for c in "${crates[@]}"; do
            touch "$work/$c/src/lib.rs"
            s=$(date +%s.%N)
            CARGO_INCREMENTAL=0 cargo_in "$c" build --quiet
            e=$(date +%s.%N)
            druns[$c]+="$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }') "
        done
    done
    for c in "${crates[@]}"; do
        # shellcheck disable=SC2086
        dtime[$c]="$(printf '%s\n' ${druns[$c]} | sort -n | sed -n 2p) (runs: ${druns[$c]% })"
    done
fi

# --- report -------------------------------------------------------------

echo
echo "compile cost: $N cached + $U invalidating fns per crate, rustc $(rustc --version | cut -d' ' -f2), cache-core of $repo at $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- cache-core cache-macros || echo ' (uncommitted changes)')"
printf '  %-58s %14s' crate "release IR lines"
((debug_time)) && printf '  %s' "debug build (s), median of 3"
echo
for c in "${crates[@]}"; do
    printf '  %-58s %14d' "${title[$c]}" "${ir[$c]}"
    ((debug_time)) && printf '  %s' "${dtime[$c]}"
    echo
done
ratio=$(awk -v a="${ir[cc_cache_core]}" -v b="${ir[cc_cached_redis]}" 'BEGIN { printf "%.2f", a / b }')
above=$(awk -v a="${ir[cc_cache_core]}" -v b="${ir[cc_cached_redis]}" -v p="${ir[cc_plain]}" \
    'BEGIN { printf "%.2f", (a - p) / (b - p) }')
echo
echo "  cache-core / cached Redis, release IR lines: ${ratio}x (budget ${max_ratio}x: $(
    awk -v r="$ratio" -v m="$max_ratio" 'BEGIN { print (r <= m) ? "met" : "NOT met" }'))"
echo "  the same, above plain:                       ${above}x"
if ((debug_time)); then
    echo "  the same, debug build time:                  $(awk -v a="${dtime[cc_cache_core]%% *}" -v b="${dtime[cc_cached_redis]%% *}" 'BEGIN { printf "%.2f", a / b }')x"
fi
echo "  cache-core / cached memory:                  $(awk -v a="${ir[cc_cache_core]}" -v b="${ir[cc_cached_memory]}" 'BEGIN { printf "%.2f", a / b }')x (context)"
echo "compile-cost: done in $(( $(date +%s) - started )) s (work directory $work)" >&2
