#!/usr/bin/env bash
# Starts pg_campfire on a throwaway local PostgreSQL with a demo organization, and keeps it
# running until Ctrl-C, which stops everything and removes the throwaway data.
# This is the README's run command.   Port: CAMPFIRE_PG_PORT (default 54329).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/setup.sh

port=${CAMPFIRE_PG_PORT:-54329}
data=/tmp/campfire-demo-$port
stop() {
    echo
    echo "==> stopping PostgreSQL and removing $data"
    scripts/cluster.sh stop "$data" || true
    rm -rf "$data"
}
trap stop EXIT
trap 'exit 130' INT TERM

echo "==> building and installing the extension (release)"
(cd pg_campfire && cargo pgrx install --release --pg-config /usr/bin/pg_config)

scripts/cluster.sh stop "$data" 2>/dev/null || true
rm -rf "$data"
scripts/cluster.sh start "$data" "$port"
scripts/cluster.sh psql "$data" "$port" -q -c "CREATE DATABASE campfire"
scripts/cluster.sh psql "$data" "$port" -q -d campfire -c "CREATE EXTENSION pg_campfire"
scripts/cluster.sh psql "$data" "$port" -q -d campfire -f scripts/demo.sql >/dev/null

cat <<MSG

pg_campfire is running on a throwaway PostgreSQL (data in $data).

  Connect:        psql -h 127.0.0.1 -p $port -U postgres campfire
  Organization:   d3000000-0000-4000-8000-000000000001 (Campfire Demo)
  Demo agent:     a9000000-0000-4000-8000-000000000001 (Dana, admin)

Try, in psql (one session LISTENs, another writes):
  LISTEN campfire_events;
  BEGIN;
  SELECT set_config('request.jwt.claims', '{"role":"authenticated","sub":"a9000000-0000-4000-8000-000000000001"}', true);
  SELECT id, customer_name, status, last_message_preview FROM campfire.realtime_conversations;
  SELECT seq, content FROM campfire.send_message('<conversation id>', 'Hello from Dana');
  COMMIT;

Press Ctrl-C to stop.
MSG
while true; do sleep 3600; done
