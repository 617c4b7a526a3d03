#!/usr/bin/env bash
# Start N `jeo serve` processes and Debian's nginx in front of them (docker/nginx.conf), all on loopback.
# This is the topology of docker/compose.yaml without containers, and the one the tests run.
#
#   scripts/scale-out-start.sh [-n SERVERS] [-p PROXY_PORT] [--prefix /jeo] [DIR]
#
# DIR (default: a new /tmp/jeo-scale-out.XXXXXX) receives: url (the proxy's public URL, also the last
# line of stdout), servers (one `URL PID` line per tile server), nginx.conf (rendered), nginx.pid,
# access.log (with upstream= and cache= fields), error.log, server-I.log, each server's tile cache
# (server-I/tile-cache: shared-nothing hosts have their own) and nginx-state (nginx's cache and temp files).
# On failure everything started is stopped again. The servers share the catalog named by the
# environment (JEO_HOME / JEO_DATABASE / JEO_CATALOG_URL), run with JEO_ROOT_PATH=PREFIX and trust the
# proxy's X-Forwarded-* (JEO_FORWARDED_ALLOW_IPS=127.0.0.1). Stop: scripts/scale-out-stop.sh DIR.
# Environment: JEO_WORKERS (workers per server, default 1), JEO_PROXY_CACHE_SIZE (default 1g),
# JEO_PYTHON_ENV (virtualenv with jeo-tiler, default .venv of this checkout).
# Needs the Debian package nginx-light (scripts/setup.sh installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${JEO_PYTHON_ENV:-$ROOT/.venv}/bin/python
SERVERS=2
PROXY_PORT=
PREFIX=
DIR=
while [ $# -gt 0 ]; do
  case "$1" in
    -n) SERVERS=$2; shift 2 ;;
    -p) PROXY_PORT=$2; shift 2 ;;
    --prefix) PREFIX=${2%/}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "usage: $0 [-n SERVERS] [-p PROXY_PORT] [--prefix /PATH] [DIR]" >&2; exit 2 ;;
    *) DIR=$1; shift ;;
  esac
done
case "$PREFIX" in ""|/*) ;; *) echo "--prefix must start with /" >&2; exit 2 ;; esac
DIR=${DIR:-$(mktemp -d /tmp/jeo-scale-out.XXXXXX)}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
say() { echo "[scale-out] $*" >&2; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
command -v nginx >/dev/null || { say "ERROR: nginx missing (apt-get install nginx-light)"; exit 1; }
started=0
trap '[ "$started" = 1 ] || bash "$ROOT/scripts/scale-out-stop.sh" "$DIR" >/dev/null 2>&1' EXIT  # no half-started set

# ---- tile servers
: >"$DIR/servers"
upstreams=
for i in $(seq 1 "$SERVERS"); do
  port=$(free_port)
  mkdir -p "$DIR/server-$i"
  JEO_CACHE_DIR="$DIR/server-$i/tile-cache" JEO_ROOT_PATH="$PREFIX" JEO_FORWARDED_ALLOW_IPS=127.0.0.1 \
    "$PY" -m tiler.cli serve --host 127.0.0.1 --port "$port" --workers "${JEO_WORKERS:-1}" \
    </dev/null >"$DIR/server-$i.log" 2>&1 &
  echo "http://127.0.0.1:$port $!" >>"$DIR/servers"
  upstreams+="server 127.0.0.1:$port max_fails=1 fail_timeout=10s; "
done
while read -r url pid; do
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$url/healthz" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { say "ERROR: server $url exited:"; tail -n 30 "$DIR"/server-*.log >&2; exit 1; }
    sleep 0.5
  done
  curl -fsS -o /dev/null "$url/healthz" || { say "ERROR: server $url did not answer in 300 s"; exit 1; }
  say "tile server $url (pid $pid)"
done <"$DIR/servers"

# ---- nginx: docker/nginx.conf with the placeholders filled in, inside a main config of its own
PROXY_PORT=${PROXY_PORT:-$(free_port)}
# nginx's cache and temp files: in DIR, or as root (workers run as www-data, DIR may be in a private
# directory) in a directory of their own under /tmp that scale-out-stop.sh deletes
STATE=$DIR/nginx-state
user=
if [ "$(id -u)" = 0 ]; then
  user="user www-data;"
  STATE=$(mktemp -d /tmp/jeo-nginx.XXXXXX)
  chmod 755 "$STATE"
  ln -sfn "$STATE" "$DIR/nginx-state"
fi
mkdir -p "$STATE/proxy-cache" "$STATE/tmp"
[ "$(id -u)" = 0 ] && chown -R www-data: "$STATE"
JEO_PROXY_LISTEN="127.0.0.1:$PROXY_PORT" JEO_PROXY_PREFIX="$PREFIX" JEO_PROXY_UPSTREAMS="$upstreams" \
JEO_PROXY_CACHE_DIR="$STATE/proxy-cache" JEO_PROXY_CACHE_SIZE="${JEO_PROXY_CACHE_SIZE:-1g}" \
JEO_PROXY_ACCESS_LOG="$DIR/access.log" \
  "$PY" -c 'import os, re, sys; print(re.sub(r"\$\{(JEO_PROXY_\w+)\}", lambda m: os.environ[m[1]], sys.stdin.read()))' \
  <"$ROOT/docker/nginx.conf" >"$DIR/jeo.conf"
cat >"$DIR/nginx.conf" <<EOF
$user
worker_processes 2;
pid $DIR/nginx.pid;
error_log $DIR/error.log warn;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path $STATE/tmp/body;
    proxy_temp_path $STATE/tmp/proxy;
    fastcgi_temp_path $STATE/tmp/fastcgi;
    uwsgi_temp_path $STATE/tmp/uwsgi;
    scgi_temp_path $STATE/tmp/scgi;
    include $DIR/jeo.conf;
}
EOF
nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/error.log" </dev/null >>"$DIR/error.log" 2>&1 \
  || { say "ERROR: nginx did not start:"; tail -n 20 "$DIR/error.log" >&2; exit 1; }
URL="http://127.0.0.1:$PROXY_PORT$PREFIX"
for _ in $(seq 1 100); do curl -fsS -o /dev/null "$URL/healthz" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "$URL/healthz" || { say "ERROR: no answer through the proxy"; exit 1; }
echo "$URL" >"$DIR/url"
started=1
say "nginx $URL (pid $(cat "$DIR/nginx.pid")); stop: scripts/scale-out-stop.sh $DIR"
echo "$URL"
