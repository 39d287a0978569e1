#!/usr/bin/env bash
# Runs every test of pg_campfire on this machine, installing what is missing first.
# This is the README's test command, and what CI runs (.ci/run).
#
#   1. unit tests and #[pg_test]s of the extension   (cargo pgrx test)
#   2. the extension installed into the system PostgreSQL (cargo pgrx install)
#   3. pg_regress golden tests of the SQL surface    (scripts/regress.sh)
#   4. end-to-end tests over real connections        (cargo test -p campfire-tests)
#   5. the relay's tests                             (cargo test -p campfire-relay)
#   6. JavaScript tests with the real realtime-js     (node --test, when present)
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

step "extension unit tests and #[pg_test]s"
(cd pg_campfire && cargo pgrx test pg15 --runas postgres --pgdata "$work/pgrx-data")

step "installing the extension into the system PostgreSQL"
(cd pg_campfire && cargo pgrx install --pg-config /usr/bin/pg_config)

step "pg_regress golden tests"
scripts/cluster.sh start "$work/pg" "$port"
scripts/regress.sh "$port"

step "end-to-end tests (real connections)"
CAMPFIRE_TEST_PORT=$port cargo test -p campfire-tests

step "relay tests"
cargo test -p campfire-relay

if [ -f tests/node/package.json ]; then
    step "JavaScript tests (realtime-js)"
    (cd tests/node && npm ci --no-audit --no-fund && npm test)
fi

step "all tests passed"
