#!/usr/bin/env bash
# Runs every test of pg_campfire on this machine, installing what is missing first.
# This is the README's test command, and what CI runs (.ci/run).
#
#   0. formatting and lints of the whole workspace  (cargo fmt --check, cargo clippy -D warnings)
#   1. unit tests and #[pg_test]s of the extension   (cargo pgrx test)
#   2. the extension installed into the system PostgreSQL (cargo pgrx install)
#   3. pg_regress golden tests of the SQL surface    (scripts/regress.sh), then a DBA's
#      backup and restore, upgrade, DROP and CREATE EXTENSION   (scripts/dba_test.sh)
#   4. the relay's own tests, unit and integration, three relays over NATS and two clusters
#      as shards among them
#                                                     (cargo test -p campfire-relay)
#   5. end-to-end tests: SQL over real connections, the relay with real WebSocket clients
#                                                     (cargo test -p campfire-tests)
#   6. the real @supabase/realtime-js against the relay binary, and the pages in Chromium
#                                                     (node --test)
#   7. a smoke run of the benchmark, so that it cannot rot (figures not meaningful), on the
#      emulated slower disk (--wal-flush-delay-us), so that its preload cannot rot either
# Each runner prints its own summary line; the script stops at the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

source scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; }
work=$(mktemp -d /tmp/campfire-test.XXXXXX)
chmod 755 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
    scripts/cluster.sh stop "$work/pg" || true
    rm -rf "$work"
}
trap cleanup EXIT

step "formatting and lints (cargo fmt --check, cargo clippy -D warnings)"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "extension unit tests and #[pg_test]s"
# The test cluster runs as postgres, which must be able to create its data directory there.
as_root install -d -o postgres "$work/pgrx-data"
(cd pg_campfire && cargo pgrx test pg15 --runas postgres --pgdata "$work/pgrx-data")

step "installing the extension into the system PostgreSQL"
install_extension

step "pg_regress golden tests"
scripts/cluster.sh start "$work/pg" "$port"
scripts/regress.sh "$port"

step "DBA operations: backup and restore, upgrade, DROP and CREATE EXTENSION"
scripts/dba_test.sh "$port"

step "shared core and relay tests (unit, and integration against a cluster they start)"
cargo test -p campfire-core -p campfire-relay

step "end-to-end tests (real connections, real WebSocket clients)"
CAMPFIRE_TEST_PORT=$port cargo test -p campfire-tests

step "JavaScript tests (@supabase/realtime-js from npm)"
cargo build -p campfire-relay --bin campfire-relay
(cd tests/node && npm ci --no-audit --no-fund &&
    CAMPFIRE_TEST_PORT=$port RELAY_BIN="$root/target/debug/campfire-relay" npm test)

step "benchmark smoke run"
cargo build -p campfire-bench
target/debug/campfire-bench --smoke --wal-flush-delay-us 500 --relay-bin target/debug/campfire-relay \
    --output "$work/bench-smoke.json"

step "all tests passed"
