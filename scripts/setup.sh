#!/usr/bin/env bash
# Install everything jeo-tiler needs to run and test, into this checkout. Idempotent and
# fast when nothing changed; safe on a fresh Debian 12 clone with nothing installed.
#
#   1. Debian packages (apt-get, only those missing; `apt-get update` once, only if needed):
#      chromium + chromium-driver + fonts-liberation (browser tests), slurmctld slurmd
#      slurm-client munge (local SLURM cluster), nginx-light (reverse proxy in front of several servers),
#      postgresql-15 postgresql-15-postgis-3 (PostgreSQL catalog), procps, python3.11 + venv if missing,
#      nodejs + npm if `npm` is missing. Always --no-install-recommends.
#      JEO_SKIP_APT=1 skips this step (machines without root): missing ones are only reported.
#   2. .venv (python3.11 -m venv; JEO_PYTHON=/path/to/python3.11 to choose another interpreter)
#      and `pip install -e '.[test]'`, skipped while pyproject.toml and the package layout are
#      unchanged (stamp file .venv/.jeo-setup-stamp).
#   3. node_modules/ from package-lock.json (`npm ci`), skipped while the lock is unchanged
#      (stamp file node_modules/.jeo-setup-stamp).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
T0=$SECONDS
say() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

PY=${JEO_PYTHON:-python3.11}

# ---------------------------------------------------------------- 1. Debian packages
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

want=(chromium chromium-driver fonts-liberation slurmctld slurmd slurm-client munge procps
      nginx-light postgresql-15 postgresql-15-postgis-3)
if ! command -v "$PY" >/dev/null 2>&1; then
  want+=(python3.11 python3.11-venv)
elif ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  want+=(python3.11-venv)
fi
command -v npm >/dev/null 2>&1 || want+=(nodejs npm)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done
else
  say "no dpkg: not a Debian system, skipping system packages"
fi

if [ ${#missing[@]} -eq 0 ]; then
  say "system packages: all present"
elif [ "${JEO_SKIP_APT:-0}" = 1 ]; then
  say "WARNING: JEO_SKIP_APT=1, not installing: ${missing[*]}"
else
  if [ "$(id -u)" = 0 ]; then SUDO=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n)
  else die "missing Debian packages (${missing[*]}) and not root: install them, or rerun with JEO_SKIP_APT=1"
  fi
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # munge's/slurm's/nginx's/postgresql's postinst may try to start services: harmless (no systemd
  # here); the tests start their own (scripts/slurm-start.sh, scale-out-start.sh, postgres-start.sh).
fi

# ---------------------------------------------------------------- 2. Python venv
if [ ! -x .venv/bin/python ]; then
  command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set JEO_PYTHON, or install python3.11)"
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
.venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || die ".venv/bin/python is broken or older than 3.11 (move .venv away and rerun)"

# The stamp covers pyproject.toml and the list of packages: an editable install maps the
# top-level packages that existed when it ran, so a new package needs a reinstall.
stamp_py=$( {
  sha256sum pyproject.toml
  find tiler algorithms mosaics -name __init__.py -not -path '*/node_modules/*' 2>/dev/null | LC_ALL=C sort
  .venv/bin/python -c 'import sys; print(sys.version)'
} | sha256sum | cut -d' ' -f1)
if [ -f .venv/.jeo-setup-stamp ] && [ "$(cat .venv/.jeo-setup-stamp)" = "$stamp_py" ]; then
  say "python packages: up to date"
else
  say "pip install -e '.[test]' (a few minutes on a new venv)"
  rm -f .venv/.jeo-setup-stamp
  if ! .venv/bin/python -m pip install --disable-pip-version-check --no-input -e '.[test]' \
       > .venv/.jeo-pip.log 2>&1; then
    tail -n 40 .venv/.jeo-pip.log >&2
    die "pip install failed (full log: .venv/.jeo-pip.log)"
  fi
  echo "$stamp_py" > .venv/.jeo-setup-stamp
fi

# ---------------------------------------------------------------- 3. front-end packages
if ! command -v npm >/dev/null 2>&1; then
  say "WARNING: npm not found, node_modules/ not installed (web viewer assets will be missing)"
else
  stamp_js=$(cat package.json package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)
  if [ -f node_modules/.jeo-setup-stamp ] && [ "$(cat node_modules/.jeo-setup-stamp)" = "$stamp_js" ]; then
    say "node packages: up to date"
  else
    if [ -f package-lock.json ]; then
      say "npm ci"
      npm ci --no-audit --no-fund --loglevel=error
    else
      say "npm install (no package-lock.json)"
      npm install --no-audit --no-fund --loglevel=error
      stamp_js=$(cat package.json package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)
    fi
    echo "$stamp_js" > node_modules/.jeo-setup-stamp
  fi
fi

say "done in $((SECONDS - T0)) s"
