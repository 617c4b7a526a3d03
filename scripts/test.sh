#!/usr/bin/env bash
# THE test command: bash scripts/test.sh [pytest args...]
# Installs what is missing (scripts/setup.sh), starts the local SLURM cluster
# (scripts/slurm-start.sh; SLURM_CONF and JEO_SLURM_BASE are exported for the tests), runs
# `.venv/bin/python -m pytest "$@"` (no path given: testpaths = tests) and stops the cluster again on exit if this script
# started it. Exit code: pytest's, except that 5 (no tests collected) becomes 1.
# Environment: SLURM_BASE (default /tmp/jeo-slurm), JEO_SKIP_APT=1 (see setup.sh),
# JEO_SKIP_SLURM=1 (run without starting SLURM; tests marked `slurm` then fail or skip).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/setup.sh

export SLURM_BASE=${SLURM_BASE:-/tmp/jeo-slurm}
export JEO_SLURM_BASE=$SLURM_BASE
export SLURM_CONF=$SLURM_BASE/etc/slurm.conf

started_slurm=0
stop_slurm() {
  if [ "$started_slurm" = 1 ]; then
    bash scripts/slurm-stop.sh || true
  fi
}
trap stop_slurm EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "${JEO_SKIP_SLURM:-0}" = 1 ]; then
  echo "[test] JEO_SKIP_SLURM=1: not starting SLURM"
elif bash scripts/slurm-start.sh --check; then
  echo "[test] SLURM already running under $SLURM_BASE: using it (left running afterwards)"
else
  started_slurm=1
  bash scripts/slurm-start.sh --probe   # a job really ran: the scheduler is up
fi

# Compile the numba kernels once into their on-disk cache, so that every server the tests start
# (several, some with two workers) loads them instead of compiling them again.
echo "[test] warming the numba kernel cache"
.venv/bin/python -c "import algorithms; algorithms.warmup()"

echo "[test] .venv/bin/python -m pytest $*"
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" = 5 ]; then
  echo "[test] pytest collected no tests (exit 5): failing" >&2
  rc=1
fi
exit "$rc"
