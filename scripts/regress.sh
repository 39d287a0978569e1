#!/usr/bin/env bash
# pg_regress golden tests of the SQL surface, against a running cluster with the extension
# installed:  scripts/regress.sh <port> [--update]
# --update copies the results over expected/ (review the diff before committing it).
set -euo pipefail
port=${1:?port required}
here=$(cd "$(dirname "$0")/.." && pwd)
suite=$here/tests/pg_regress
pg_regress="$(dirname "$(pg_config --pgxs)")/../test/regress/pg_regress"
tests=$(cd "$suite/sql" && ls *.sql | sed 's/\.sql$//' | sort)
out=$(mktemp -d /tmp/campfire-regress.XXXXXX)
chmod 777 "$out"
# A fresh database each run; the test roles are cluster-wide, so they go too.
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c 'DROP DATABASE IF EXISTS campfire_regress' \
    -c 'DROP ROLE IF EXISTS campfire_test_client, campfire_test_login, campfire_test_relay, campfire_test_attacker, campfire_test_attacker_relay, campfire_test_attacker_service' \
    -c 'CREATE DATABASE campfire_regress'
set +e
"$pg_regress" --use-existing --host=127.0.0.1 --port="$port" --user=postgres \
    --dbname=campfire_regress --inputdir="$suite" --outputdir="$out" $tests | tee "$out/summary.txt"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -cE '^(ok|test) .* ok ' "$out/summary.txt" || true)
failed=$(grep -cE 'FAILED|failed \(ignored\)' "$out/summary.txt" || true)
if [ "${2:-}" = "--update" ]; then
    cp "$out"/results/*.out "$suite/expected/"
    echo "expected output updated from $out/results"
fi
[ -f "$out/regression.diffs" ] && cat "$out/regression.diffs"
echo "pg_regress: $passed passed, $failed failed"
exit $status
