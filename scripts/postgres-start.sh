#!/usr/bin/env bash
# Start a throwaway PostgreSQL 15 + PostGIS on loopback, everything in one directory, and print its URL.
#
#   scripts/postgres-start.sh [DIR]     DIR default: a new /tmp/jeo-pg.XXXXXX
#
# The last line of stdout is the URL (also in DIR/url), e.g. postgresql://postgres@127.0.0.1:54329/jeo:
# database `jeo` with the postgis and btree_gist extensions, superuser `postgres`, `trust` authentication
# on 127.0.0.1 only, Unix socket in DIR. Durability is off (fsync, synchronous_commit, full_page_writes):
# this is for tests and trials, never for data you keep. Stop it and delete DIR with
# scripts/postgres-stop.sh DIR. Runs as the `postgres` user when started as root.
# Environment: JEO_PG_PORT (default: a free port), JEO_PG_BIN (default /usr/lib/postgresql/15/bin).
# Needs the Debian packages postgresql-15 and postgresql-15-postgis-3 (scripts/setup.sh installs them).
set -euo pipefail

BIN=${JEO_PG_BIN:-/usr/lib/postgresql/15/bin}
DIR=${1:-$(mktemp -d /tmp/jeo-pg.XXXXXX)}
say() { echo "[postgres-start] $*" >&2; }
[ -x "$BIN/initdb" ] || { say "ERROR: $BIN/initdb missing (apt-get install postgresql-15 postgresql-15-postgis-3)"; exit 1; }

PORT=${JEO_PG_PORT:-$("${JEO_PYTHON:-python3.11}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$DIR"
  as_db() { runuser -u postgres -- "$@"; }
else
  as_db() { "$@"; }
fi

as_db "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
  || { cat "$DIR/initdb.log" >&2; exit 1; }
as_db "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 start -o "\
  -c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off \
  -c full_page_writes=off -c max_connections=200" >/dev/null \
  || { tail -n 30 "$DIR/postgres.log" >&2; exit 1; }
"$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
  -c "CREATE DATABASE jeo" >/dev/null
"$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d jeo -qAt -v ON_ERROR_STOP=1 \
  -c "CREATE EXTENSION postgis" -c "CREATE EXTENSION btree_gist" >/dev/null

URL="postgresql://postgres@127.0.0.1:$PORT/jeo"
echo "$URL" >"$DIR/url"
say "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') in $DIR (stop: scripts/postgres-stop.sh $DIR)"
echo "$URL"
