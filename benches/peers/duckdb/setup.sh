#!/usr/bin/env bash
# Installs the DuckDB peer's Python packages (requirements.txt, from PyPI) into a virtualenv at
# benches/peers/duckdb/.venv (git-ignored). Idempotent: does nothing when the pinned versions are
# already installed there.
#   benches/peers/duckdb/setup.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=$HERE/.venv
if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
fi
missing() { grep -v '^#' "$HERE/requirements.txt" | grep -vxF -f <("$VENV/bin/pip" freeze) || true; }
if [[ -n $(missing) ]]; then
    "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
fi
if [[ -n $(missing) ]]; then
    echo "duckdb peer: not installed: $(missing)" >&2
    exit 1
fi
echo "duckdb peer: $VENV/bin/python"
