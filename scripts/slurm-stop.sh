#!/usr/bin/env bash
# Stop the local SLURM cluster started by scripts/slurm-start.sh (base dir $SLURM_BASE,
# default /tmp/jeo-slurm). Cancels jobs first (a running job's slurmstepd outlives the
# daemons), then signals slurmd, slurmctld and munged found through their pid files only:
# a pid is signalled only while it still is that daemon. Nothing is killed by name.
# Keeps the base dir (state, logs, jobcomp.txt); `rm -rf "$SLURM_BASE"` after this for a
# clean slate. Idempotent: stopping a stopped cluster is fine.
set -uo pipefail

B=${SLURM_BASE:-/tmp/jeo-slurm}
export SLURM_CONF="$B/etc/slurm.conf"
say() { echo "[slurm-stop] $*"; }

# is pid $2 a live (not zombie: PID 1 may be slow to reap orphans) process named $1?
is_daemon() {
  local st stat comm
  st=$(ps -o stat=,comm= -p "$2" 2>/dev/null) || return 1
  read -r stat comm <<<"$st"
  case "$stat" in Z*) return 1 ;; esac
  [ "$comm" = "$1" ]
}
daemon_pid() {  # name pidfile -> pid if that pid is still that daemon
  local f="$B/$2" p
  [ -f "$f" ] || return 1
  p=$(cat "$f" 2>/dev/null) || return 1
  [ -n "$p" ] && is_daemon "$1" "$p" && echo "$p"
}

if daemon_pid slurmctld run/slurmctld.pid >/dev/null && command -v scancel >/dev/null; then
  if [ -n "$(squeue -h -t PD,R,CG,S 2>/dev/null)" ]; then
    say "cancelling jobs"
    scancel --partition=debug 2>/dev/null || true
    for _ in $(seq 1 50); do
      [ -z "$(squeue -h -t PD,R,CG,S 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

pids=""
for d in slurmd:run/slurmd.pid slurmctld:run/slurmctld.pid munged:munge/munged.pid; do
  if p=$(daemon_pid "${d%%:*}" "${d#*:}"); then
    kill -TERM "$p" 2>/dev/null && pids="$pids ${d%%:*}:$p"
  fi
done
if [ -z "$pids" ]; then
  say "not running (base $B)"
  exit 0
fi
for dp in $pids; do
  name=${dp%%:*} p=${dp#*:}
  for _ in $(seq 1 75); do   # up to 15 s each
    is_daemon "$name" "$p" || break
    sleep 0.2
  done
  if is_daemon "$name" "$p"; then
    say "$name ($p) ignored SIGTERM: SIGKILL"
    kill -KILL "$p" 2>/dev/null || true
  fi
done
say "stopped (base $B)"
