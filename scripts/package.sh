#!/usr/bin/env bash
# Builds an installable package of the extension (release mode) for the PostgreSQL that
# $PG_CONFIG names (default /usr/bin/pg_config), and says how a DBA installs it on a database
# server that has no Rust:
#   scripts/package.sh   ->  target/release/pg_campfire-<version>-pg<major>.tar.gz
# Needs cargo-pgrx and that PostgreSQL's server headers (scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
cargo pgrx --version >/dev/null 2>&1 || { echo "cargo-pgrx is missing: run scripts/setup.sh" >&2; exit 1; }
major=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
version=$(sed -nE 's/^version = "(.*)"/\1/p' Cargo.toml | head -1)
out=target/release/pg_campfire-pg$major
tarball=target/release/pg_campfire-$version-pg$major.tar.gz

echo "==> building pg_campfire $version for PostgreSQL $major ($PG_CONFIG)"
rm -rf "$out"
(cd pg_campfire && cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "../$out")
# Files under the absolute paths pg_config gave: unpacked at / on a server of the same layout.
tar -C "$out" -czf "$tarball" --owner=0 --group=0 .
echo "==> $tarball:"
tar -tzf "$tarball" | grep -v '/$' | sed 's/^/      /'
cat <<MSG

On the database server (PostgreSQL $major, same file layout; no Rust needed):

    sudo tar -xzf $(basename "$tarball") -C /

(elsewhere, copy the .so to \`pg_config --pkglibdir\` and the rest to \`pg_config --sharedir\`/extension).
Then add pg_campfire to shared_preload_libraries, restart, and in each database, as a superuser:

    CREATE EXTENSION pg_campfire;          -- a new installation
    ALTER EXTENSION pg_campfire UPDATE;    -- an older one

README.md, "For DBAs", has the rest: prerequisites, backup and restore, upgrade, uninstall.
MSG
