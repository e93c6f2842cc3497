#!/usr/bin/env bash
# squall side by side with Flink, Bytewax and a bare consumer, and squall's latency pinned and
# unpinned: the figures of the "side by side" sections of benches/RESULTS.md, in one command.
#   benches/compare.sh [options of target/release/compare, e.g. --rounds 2 or --events 20000 --check]
# Builds squall (release) and the Flink job, then for each phase (throughput, latency-unpinned,
# latency-pinned) restarts the dev broker and CQL server, so that no phase runs on a broker grown
# by the one before (nisshi keeps every record in memory and slows as it grows), and runs
# target/release/compare on them. Ports and state: SQUALL_KAFKA_PORT (29092), SQUALL_CQL_PORT
# (29042), SQUALL_DEVENV_DIR (.devenv/bench). Output: stdout, and a copy in
# $SQUALL_DEVENV_DIR/compare-<UTC time>.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export SQUALL_KAFKA_PORT=${SQUALL_KAFKA_PORT:-29092}
export SQUALL_CQL_PORT=${SQUALL_CQL_PORT:-29042}
export SQUALL_DEVENV_DIR=${SQUALL_DEVENV_DIR:-$ROOT/.devenv/bench}
mkdir -p "$SQUALL_DEVENV_DIR"
OUT=$SQUALL_DEVENV_DIR/compare-$(date -u +%Y%m%dT%H%M%SZ).txt

cargo build --release --workspace --bins
benches/peers/flink/build.sh >/dev/null
{
    echo "compare_machine cpus=$(nproc) model=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\" commit=$(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
    for phase in throughput latency-unpinned latency-pinned; do
        scripts/devenv.sh down >/dev/null 2>&1
        scripts/devenv.sh up >/dev/null 2>&1
        target/release/compare --brokers "127.0.0.1:$SQUALL_KAFKA_PORT" --cql "127.0.0.1:$SQUALL_CQL_PORT" \
            --phases "$phase" --restart-devenv "$@"
    done
    scripts/devenv.sh down >/dev/null 2>&1
} 2>&1 | tee "$OUT"
echo "written to $OUT"
