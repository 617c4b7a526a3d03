#!/usr/bin/env bash
# THE main command: install what is missing, then run `jeo demo` (ingests the data and
# serves the tile server + viewer). Arguments go to `jeo demo`, e.g.
#   bash scripts/demo.sh --host 127.0.0.1 --port 8000 [--data PATH]
# --data defaults to ../shared/data when it exists, else the packaged sample
# (tiler/sample/catalog.json).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/jeo demo "$@"
