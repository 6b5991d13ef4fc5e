#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, and every test (unit, trybuild,
# real redis-server and Redis Cluster integration, the example's end-to-end).
# Installs what the test fixtures run (Debian/Ubuntu, via apt-get) when it is
# missing: redis-server, redis-sentinel and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  missing+=(redis-server)
fi
if ! command -v redis-sentinel >/dev/null 2>&1; then missing+=(redis-sentinel); fi
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then missing+=(postgresql); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "${missing[*]} not found: installing with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian packages may start a system-wide redis on 6379 (and sentinel on
# 26379, PostgreSQL on 5432); the tests start their own servers on free ports
# and do not need them.

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo test --workspace
