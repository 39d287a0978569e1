#!/usr/bin/env bash
# Starts pg_campfire on a throwaway local PostgreSQL with a demo organization, and the relay in
# front of it, until Ctrl-C, which stops everything and removes the throwaway data.
# This is the README's run command.
#   CAMPFIRE_PG_PORT (default 54329), CAMPFIRE_LISTEN (default 127.0.0.1:4000)
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/setup.sh

port=${CAMPFIRE_PG_PORT:-54329}
listen=${CAMPFIRE_LISTEN:-127.0.0.1:4000}
data=/tmp/campfire-demo-$port
relay_pid=
stop() {
    echo
    if [ -n "$relay_pid" ]; then
        echo "==> stopping the relay"
        kill -TERM "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
    fi
    echo "==> stopping PostgreSQL and removing $data"
    scripts/cluster.sh stop "$data" || true
    rm -rf "$data"
}
trap stop EXIT
trap 'exit 130' INT TERM

echo "==> building and installing the extension (release)"
install_extension --release
echo "==> building the relay (release)"
cargo build --release -p campfire-relay --bin campfire-relay

scripts/cluster.sh stop "$data" 2>/dev/null || true
rm -rf "$data"
scripts/cluster.sh start "$data" "$port"
scripts/cluster.sh psql "$data" "$port" -q -c "CREATE DATABASE campfire"
scripts/cluster.sh psql "$data" "$port" -q -d campfire -c "CREATE EXTENSION pg_campfire"
scripts/cluster.sh psql "$data" "$port" -q -d campfire -f scripts/demo.sql >/dev/null
scripts/cluster.sh psql "$data" "$port" -q -d campfire \
    -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'campfire_relay_demo') THEN
          CREATE ROLE campfire_relay_demo LOGIN IN ROLE campfire_relay; END IF; END \$\$"

# A fresh secret per run; the demo agent's token is minted with it.
secret=$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')
export DATABASE_URL="host=127.0.0.1 port=$port user=campfire_relay_demo dbname=campfire"
export CAMPFIRE_LISTEN=$listen CAMPFIRE_JWT_SECRET=$secret CAMPFIRE_WEB_DIR=$(pwd)/web/public
echo "==> starting the relay on $listen"
target/release/campfire-relay &
relay_pid=$!
for _ in $(seq 100); do
    curl -sf "http://$listen/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
agent_token=$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"role": "authenticated", "sub": "a9000000-0000-4000-8000-000000000001",
                         "exp": int(time.time()) + 12 * 3600}).encode())
signature = hmac.new(sys.argv[1].encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
print(f"{header}.{claims}.{b64(signature)}")
PY
)

cat <<MSG

pg_campfire is running.

  PostgreSQL:     psql -h 127.0.0.1 -p $port -U postgres campfire   (throwaway data in $data)
  Relay:          ws://$listen/realtime/v1/websocket   (health: http://$listen/healthz, metrics: /metrics)
  Organization:   d3000000-0000-4000-8000-000000000001 (Campfire Demo)
  Demo agent:     a9000000-0000-4000-8000-000000000001 (Dana, admin)
  Widget:         http://$listen/widget?org=d3000000-0000-4000-8000-000000000001
  Dashboard:      http://$listen/dashboard#org=d3000000-0000-4000-8000-000000000001&token=$agent_token
  Embed:          <script src="http://$listen/static/embed.js" data-organization-id="d3000000-0000-4000-8000-000000000001"></script>

Open the widget and the dashboard in two windows and chat. From psql, a message appears at once:
  SELECT set_config('request.jwt.claims', '{"role":"authenticated","sub":"a9000000-0000-4000-8000-000000000001"}', false);
  SELECT id, customer_name, status FROM campfire.realtime_conversations;
  SELECT seq FROM campfire.send_message('<conversation id>', 'Hello from Dana');

Press Ctrl-C to stop.
MSG
wait "$relay_pid"
