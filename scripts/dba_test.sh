#!/usr/bin/env bash
# What a DBA does with pg_campfire, against a running cluster with the extension installed
# (scripts/test.sh runs it after pg_regress):   scripts/dba_test.sh <port>
#
#   - backup and restore, custom and plain formats, with exactly the README's commands: every
#     row, event id and payload, log_state and sequence position comes back, nothing fires on the
#     way, and a visitor secret issued before the backup is still accepted;
#   - a hot standby made by pg_basebackup: the relay's and a visitor's reads answer there;
#   - upgrade from 0.1.0 (its frozen install script): the data and the API still work, and the
#     catalog of the upgraded installation is the same as a fresh one's (tests/dba/fingerprint.sql);
#   - DROP EXTENSION leaves the database as CREATE EXTENSION found it, its notifier stops, and
#     CREATE EXTENSION works again.
# Prints `dba: N passed, N failed`; exits non-zero when a check failed.
set -uo pipefail
port=${1:?port required}
here=$(cd "$(dirname "$0")/.." && pwd)
dba=$here/tests/dba
work=$(mktemp -d /tmp/campfire-dba.XXXXXX)
# A standby left running by a failed check is stopped too.
trap '[ -f "$work/standby/data/postmaster.pid" ] && as_pg pg_ctl -D "$work/standby/data" -m immediate stop >/dev/null 2>&1
      rm -rf "$work"' EXIT
# The commands below are the README's, typed as a DBA would: connection from the environment.
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
PATH="$(pg_config --bindir):$PATH"
cd "$work"

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
not_ok() { failed=$((failed + 1)); echo "FAIL $*"; }
# check <what> <command...>: one check, its output shown only when it fails.
check() {
    local what=$1
    shift
    if "$@" >"$work/out" 2>&1; then ok "$what"; else not_ok "$what"; sed 's/^/     /' "$work/out"; fi
}
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
# readme <command>: runs a command the README tells a DBA to type, failing if the README does not.
readme() {
    grep -qxF "    $1" "$here/README.md" || { echo "the README does not say: $1"; return 1; }
    eval "$1"
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# Waits (up to <seconds>) until <database> has a running notifier (t) or none (f).
notifier_is() {
    for _ in $(seq $(($3 * 10))); do
        [ "$(sql -d "$1" -c "SELECT count(*) > 0 FROM pg_stat_activity
                              WHERE backend_type = 'pg_campfire notifier' AND datname = current_database()")" = "$2" ] && return 0
        sleep 0.1
    done
    echo "notifier running in $1 after $3 s: expected $2"
    return 1
}
fresh_db() { sql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }
same() { diff -u "$1" "$2" && [ -s "$1" ]; }
# kept <before> <after>: every line of before is still in after (which may have more).
kept() { [ -s "$1" ] && ! comm -23 <(sort "$1") <(sort "$2") | grep .; }

for db in campfire campfire_restored campfire_upgraded campfire_fresh campfire_dropped; do fresh_db "$db"; done

echo "== backup and restore"
sql -d campfire -c "CREATE EXTENSION pg_campfire"
secret=$(sql -d campfire -f "$dba/data.sql")
sql -d campfire -f "$dba/contents.sql" >before.txt
for format in custom plain; do
    sql -d postgres -c "DROP DATABASE IF EXISTS campfire_restored"
    check "$format: createdb" readme "createdb campfire_restored"
    if [ $format = custom ]; then
        check "$format: pg_dump" readme "pg_dump -Fc -f campfire.dump campfire"
        check "$format: pg_restore" readme "PGOPTIONS='-c session_replication_role=replica' pg_restore --exit-on-error --single-transaction -d campfire_restored campfire.dump"
    else
        check "$format: pg_dump" readme "pg_dump -f campfire.sql campfire"
        check "$format: psql" readme "PGOPTIONS='-c session_replication_role=replica' psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d campfire_restored -f campfire.sql"
    fi
    sql -d campfire_restored -f "$dba/contents.sql" >after.txt
    check "$format: every row, event, log_state and sequence as before, nothing fired" same before.txt after.txt
    check "$format: secret accepted, writes go on" sql -d campfire_restored -v secret="$secret" -f "$dba/still_works.sql"
done

echo "== a hot standby"
# A base backup of this cluster, started as a standby on a socket of its own (no TCP port).
standby=$work/standby
chmod 711 "$work" # postgres runs the standby from here
as_root install -d -o postgres -m 700 "$standby" "$work/standby-socket"
check "standby: pg_basebackup" as_pg pg_basebackup -D "$standby/data" -R -X stream
check "standby: starts" as_pg pg_ctl -D "$standby/data" -l "$standby/log" -w \
    -o "-c listen_addresses='' -k $work/standby-socket -p $((port + 1)) -c hot_standby=on" start
standby_sql() { PGHOST=$work/standby-socket PGPORT=$((port + 1)) sql "$@"; }
check "standby: in recovery" [ "$(standby_sql -d campfire -c "SELECT pg_is_in_recovery()")" = t ]
check "standby: the relay's and a visitor's reads answer" \
    same "$dba/standby_reads.expected" <(standby_sql -d campfire -v secret="$secret" -f "$dba/standby_reads.sql" 2>&1)
as_pg pg_ctl -D "$standby/data" -w -m fast stop >/dev/null

echo "== upgrade from 0.1.0"
# The frozen 0.1.0 install script and its control file, beside the extension's own files.
as_root install -m 644 "$here/pg_campfire/sql/pg_campfire--0.1.0.sql" "$here/pg_campfire/sql/pg_campfire--0.1.0.control" \
    "$(pg_config --sharedir)/extension/"
sql -d campfire_upgraded -c "CREATE EXTENSION pg_campfire VERSION '0.1.0'"
# Written by this (0.2.0) library on 0.1.0's SQL, as between a restart and the update: it sends
# notifications unsealed, as 0.1.0 did, until the update brings campfire.notify_key().
secret=$(sql -d campfire_upgraded -f "$dba/data.sql")
# 0.2.0 has no event queue (0.1.0's, empty here, goes in the update).
sql -d campfire_upgraded -f "$dba/contents.sql" | grep -v '^event_queue' >before.txt
check "ALTER EXTENSION pg_campfire UPDATE" sql -d campfire_upgraded -c "ALTER EXTENSION pg_campfire UPDATE"
sql -d campfire_upgraded -f "$dba/contents.sql" >after.txt
check "upgrade: the data as before" kept before.txt after.txt
check "upgrade: secret accepted, writes go on" sql -d campfire_upgraded -v secret="$secret" -f "$dba/still_works.sql"
sql -d campfire_fresh -c "CREATE EXTENSION pg_campfire"
sql -d campfire_upgraded -f "$dba/fingerprint.sql" >upgraded.txt
sql -d campfire_fresh -f "$dba/fingerprint.sql" >fresh.txt
check "upgrade: catalog as a fresh install's ($(wc -l <fresh.txt) lines)" same fresh.txt upgraded.txt

echo "== DROP EXTENSION, CREATE EXTENSION"
sql -d campfire_dropped -f "$dba/inventory.sql" >empty.txt
sql -d campfire_dropped -c "CREATE EXTENSION pg_campfire"
sql -d campfire_dropped -f "$dba/data.sql" >/dev/null
check "a notifier serves the database" notifier_is campfire_dropped t 5
check "DROP EXTENSION pg_campfire" sql -d campfire_dropped -c "DROP EXTENSION pg_campfire"
# Within its next poll (1 s), before it would leave for being idle (3 s after the last write).
check "the notifier leaves with it" notifier_is campfire_dropped f 2
sql -d campfire_dropped -f "$dba/inventory.sql" >dropped.txt
check "nothing left but what was there before (schema campfire included)" diff -u empty.txt dropped.txt
check "CREATE EXTENSION again" sql -d campfire_dropped -c "CREATE EXTENSION pg_campfire"
secret=$(sql -d campfire_dropped -f "$dba/data.sql")
check "and it works" sql -d campfire_dropped -v secret="$secret" -f "$dba/still_works.sql"

sql -d postgres -c "DROP DATABASE campfire WITH (FORCE)" -c "DROP DATABASE campfire_restored WITH (FORCE)" \
    -c "DROP DATABASE campfire_upgraded WITH (FORCE)" -c "DROP DATABASE campfire_fresh WITH (FORCE)" \
    -c "DROP DATABASE campfire_dropped WITH (FORCE)"
echo "dba: $passed passed, $failed failed"
[ "$failed" = 0 ]
