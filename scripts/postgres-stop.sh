#!/usr/bin/env bash
# Stop a PostgreSQL started by scripts/postgres-start.sh and delete its directory.
#
#   scripts/postgres-stop.sh DIR
set -euo pipefail

BIN=${JEO_PG_BIN:-/usr/lib/postgresql/15/bin}
DIR=${1:?usage: $0 DIR}
[ -f "$DIR/url" ] || { echo "[postgres-stop] $DIR was not made by postgres-start.sh" >&2; exit 1; }
if [ -f "$DIR/data/postmaster.pid" ]; then
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
  else
    "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
  fi
fi
rm -rf "$DIR"
