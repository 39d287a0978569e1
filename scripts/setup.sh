#!/usr/bin/env bash
# Installs what building and testing pg_campfire needs on a fresh Debian 12 machine, and skips
# what is already there. Sourced by scripts/test.sh and scripts/run.sh; safe to run alone.
#
#   - Debian packages: PostgreSQL 15 server headers, clang/libclang (bindgen), sudo (cargo pgrx
#     test --runas, and installing as a user other than root), Chromium (browser tests; a test
#     tool's own browser download fails here), python3 (the scripts' small helpers), nats-server
#     (the relays' tests over NATS start their own on free ports)
#   - cargo-pgrx of the pinned version, initialised against the system PostgreSQL 15 (or the one
#     $PG_CONFIG names)
# Root is needed only for apt-get and for writing into PostgreSQL's directories: other users get
# sudo there.
set -euo pipefail

PGRX_VERSION=0.18.1
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing_packages=()
need_package() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || missing_packages+=("$1")
}
for pkg in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo curl chromium python3 nats-server; do
    need_package "$pkg"
done
if [ ${#missing_packages[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing_packages[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing_packages[@]}"
else
    say "Debian packages present"
fi

if [ "$(cargo pgrx --version 2>/dev/null || true)" != "cargo-pgrx $PGRX_VERSION" ]; then
    say "installing cargo-pgrx $PGRX_VERSION (about 10 minutes on 2 cores)"
    cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
else
    say "cargo-pgrx $PGRX_VERSION present"
fi

say "installing the web pages' JavaScript (realtime-js bundled locally, no CDN)"
(cd "$(dirname "${BASH_SOURCE[0]}")/../web" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)

# Builds the extension and installs it into $PG_CONFIG's PostgreSQL (sudo for other users than
# root); arguments go to cargo pgrx install (--release).
install_extension() {
    (cd "$(dirname "${BASH_SOURCE[0]}")/../pg_campfire" &&
        cargo pgrx install --pg-config "$PG_CONFIG" $([ "$(id -u)" = 0 ] || echo --sudo) "$@")
}

if ! grep -q "pg15" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
    say "pointing cargo-pgrx at the system PostgreSQL 15"
    cargo pgrx init --pg15 "$PG_CONFIG"
else
    say "cargo-pgrx initialised for pg15"
fi
