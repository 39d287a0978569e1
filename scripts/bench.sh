#!/usr/bin/env bash
# Runs the benchmarks (not part of the tests): builds the extension and the relay in release
# mode, then campfire-bench starts its own PostgreSQL and relay and drives them over loopback.
#   scripts/bench.sh [campfire-bench options]    e.g. --smoke, --runs 5, --connections 10000,20000
# Figures are printed and written to bench-results.json. The open-file limit is raised to the
# hard limit inside the benchmark (children inherit it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "==> building the extension and the relay (release)"
install_extension --release
cargo build --release -p campfire-relay -p campfire-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/campfire-bench "$@"
