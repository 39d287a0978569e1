#!/usr/bin/env bash
# Counts the CPU instructions PostgreSQL spends on one statement, repeatably to about a thousand
# instructions, where timings on this shared machine swing by a third (not part of the tests).
#
#   scripts/callgrind.sh [--library FILE]... [--setup SQL] [--top K] [--no-install] 'SQL'
#
# SQL is one statement, run as the application login (a member of campfire_service, with the
# service's claims) in its own transaction, 100 and then 600 times; `{n}` in it becomes the
# statement's number, `{conversation}` one of 100 conversations' ids in turn. Each count is
# (instructions of 600 − of 100) / 500: warm caches, fixed costs cancelled. It runs under
# valgrind's callgrind in a single-user backend (postgres --single), counting only inside query
# execution, planning, parsing and commit.
#   --library FILE  count with this build of pg_campfire.so instead of the installed one; give
#                   it twice or more to compare builds, run alternately on the same database
#   --setup SQL     run this once first, in the same session (a PREPARE, say: EXECUTE then
#                   counts what a prepared statement costs, without parsing and planning)
#   --top K         also print the K functions whose inclusive count per statement grew most
#   --no-install    keep the installed build (default: build and install the release build)
# A single-user backend parses and plans each statement, ~150-200k instructions that a prepared
# statement does not pay: compare counts with each other, not with a server's CPU time.
#
# Example: scripts/callgrind.sh "SELECT campfire.send_message('{conversation}', 'hello', 'agent', 'c{n}')"
set -euo pipefail
cd "$(dirname "$0")/.."

libraries=() setup="" top=0 install=1
while [ $# -gt 1 ]; do
    case "$1" in
    --library) libraries+=("$(realpath "$2")"); shift 2 ;;
    --setup) setup=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
sql=${1:?usage: callgrind.sh [--library FILE]... [--setup SQL] [--top K] [--no-install] 'SQL'}

source scripts/setup.sh
command -v valgrind >/dev/null || { say "installing valgrind"; as_root apt-get update -q; as_root apt-get install -y -q valgrind; }
if [ "$install" = 1 ]; then
    say "building and installing the extension (release)"
    install_extension --release
fi

dir=${CALLGRIND_DIR:-/tmp/campfire-callgrind}
port=${CALLGRIND_PORT:-54610}
pg_bin=$(pg_config --bindir)
installed="$(pg_config --pkglibdir)/pg_campfire.so"
mkdir -p "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
if [ ! -f "$dir/pg/PG_VERSION" ]; then
    say "creating the database in $dir: one organization, 100 conversations, the login app"
    scripts/cluster.sh start "$dir/pg" "$port"
    scripts/cluster.sh psql "$dir/pg" "$port" -q -c "CREATE DATABASE prof"
    scripts/cluster.sh psql "$dir/pg" "$port" -q -d prof <<'EOF'
CREATE EXTENSION pg_campfire;
CREATE ROLE app LOGIN IN ROLE campfire_service;
SELECT set_config('request.jwt.claims', '{"role":"service_role"}', false);
INSERT INTO campfire.organizations (id, name, slug) VALUES ('d3000000-0000-4000-8000-000000000001', 'Prof', 'prof');
CREATE TABLE prof_conversations (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO prof_conversations
SELECT n, (campfire.start_widget_session('d3000000-0000-4000-8000-000000000001', 'visitor-' || n)).conversation_id
FROM generate_series(0, 99) n;
GRANT SELECT ON prof_conversations TO app;
EOF
fi
scripts/cluster.sh stop "$dir/pg"
mapfile -t conversations < <(runuser -u postgres -- "$pg_bin/postgres" --single -D "$dir/pg" prof \
    <<<"SELECT id FROM prof_conversations ORDER BY n" 2>/dev/null | sed -n 's/^\s*1: id = "\(.*\)".*/\1/p')
[ ${#conversations[@]} = 100 ] || { echo "could not read the conversations from $dir" >&2; exit 1; }

# One run of `count` statements: callgrind's output file.
run() {
    local count=$1 out="$dir/callgrind.$2.$1" input="$dir/input.sql" run_id
    run_id=$(date +%s%N)
    {
        echo "SET ROLE app"
        echo "SELECT set_config('request.jwt.claims', '{\"role\":\"service_role\"}', false)"
        [ -z "$setup" ] || echo "$setup"
        for ((n = 0; n < count; n++)); do
            local statement=${sql//\{n\}/$run_id-$n}
            echo "${statement//\{conversation\}/${conversations[n % 100]}}"
        done
    } >"$input"
    runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$out" --collect-atstart=no \
        --toggle-collect=PortalRun --toggle-collect=CommitTransactionCommand \
        --toggle-collect=StartTransactionCommand --toggle-collect=pg_plan_queries \
        --toggle-collect=pg_parse_query --toggle-collect=pg_analyze_and_rewrite_fixedparams \
        "$pg_bin/postgres" --single -D "$dir/pg" -c client_min_messages=error -c log_min_messages=error prof \
        <"$input" >"$dir/output.txt" 2>"$dir/valgrind.txt" || true
    [ -s "$out" ] || { cat "$dir/valgrind.txt" >&2; exit 1; }
    if grep -q "ERROR:" "$dir/output.txt"; then
        grep -m 3 "ERROR:" "$dir/output.txt" >&2
        exit 1
    fi
    echo "$out"
}

# Per statement: the total, and with --top the functions that grew most (inclusive counts).
per_statement() {
    python3 - "$1" "$2" "$top" <<'EOF'
import re, subprocess, sys
def inclusive(path):
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    totals = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(?:\*\s+)?(\S.*?)(?:\s+\[.*\])?$", line)
        if m:
            totals.setdefault(m.group(2).split(":")[-1], int(m.group(1).replace(",", "")))
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    return total, totals
(small, fns_small), (large, fns_large) = inclusive(sys.argv[1]), inclusive(sys.argv[2])
print(f"{(large - small) / 500 / 1000:,.1f}k instructions per statement")
growth = sorted(((v - fns_small.get(k, 0)) / 500, k) for k, v in fns_large.items())
for delta, name in reversed(growth[-int(sys.argv[3]):] if int(sys.argv[3]) else []):
    print(f"  {delta / 1000:9,.1f}k  {name}")
EOF
}

if [ ${#libraries[@]} = 0 ]; then
    say "counting: $sql"
    per_statement "$(run 100 installed)" "$(run 600 installed)"
else
    cp "$installed" "$dir/installed.so"
    trap 'cp "$dir/installed.so" "$installed"' EXIT
    for library in "${libraries[@]}"; do
        say "counting with $library: $sql"
        cp "$library" "$installed"
        per_statement "$(run 100 lib)" "$(run 600 lib)"
    done
fi
