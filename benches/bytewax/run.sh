#!/usr/bin/env bash
# Runs benches/bytewax/personalization.py on topics the `pipeline` harness filled, in the venv
# .devenv/bytewax-venv (created with `pip install "bytewax[kafka]==0.21.1"` when missing).
#   BROKERS=.. SONG_TOPIC=.. AD_TOPIC=.. CATALOGUE=file.json EVENTS=n benches/bytewax/run.sh [workers=2]
# Prints `bytewax workers=.. events=.. seconds=.. events_per_sec=..` (seconds include start-up).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${BYTEWAX_VENV:-$ROOT/.devenv/bytewax-venv}
if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "bytewax[kafka]==0.21.1"
fi
W=${1:-2}
START=$(date +%s.%N)
"$VENV/bin/python" -m bytewax.run "$ROOT/benches/bytewax/personalization.py:flow" -w "$W"
END=$(date +%s.%N)
awk -v n="${EVENTS:-0}" -v w="$W" -v s="$START" -v e="$END" \
    'BEGIN {printf "bytewax workers=%d events=%d seconds=%.2f events_per_sec=%.0f\n", w, n, e - s, n / (e - s)}'
