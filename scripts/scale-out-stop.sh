#!/usr/bin/env bash
# Stop the nginx and tile servers started by scripts/scale-out-start.sh DIR (by their pids) and delete
# nginx's cache; DIR and its logs stay.
#
#   scripts/scale-out-stop.sh DIR
set -euo pipefail

DIR=${1:?usage: $0 DIR}
[ -f "$DIR/servers" ] || { echo "[scale-out-stop] $DIR was not made by scale-out-start.sh" >&2; exit 1; }
if [ -f "$DIR/nginx.pid" ]; then
  nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/error.log" -s quit 2>>"$DIR/error.log" || true
fi
pids=()
while read -r _ pid; do
  kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
done <"$DIR/servers"
for pid in "${pids[@]}"; do
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
done
for _ in $(seq 1 50); do [ -f "$DIR/nginx.pid" ] || break; sleep 0.1; done
if [ -L "$DIR/nginx-state" ]; then
  rm -rf "$(readlink "$DIR/nginx-state")" "$DIR/nginx-state"
fi
