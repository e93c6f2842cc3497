#!/usr/bin/env bash
# End-to-end throughput from the broker: pre-produce N events into fresh topics, start
# `squall run` on them from the earliest offsets, and time until every event is applied
# (polling /metrics every 50 ms). Needs the dev environment up (scripts/devenv.sh up) and a
# release build (cargo build --release --workspace --bins).
#   benches/pipeline.sh [events=1000000] [workers=2] [users=1000000]
# Prints `pipeline events=.. workers=.. seconds=.. events_per_sec=..`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-1000000}; WORKERS=${2:-2}; USERS=${3:-1000000}
B=${CARGO_TARGET_DIR:-$ROOT/target}/release
KAFKA="127.0.0.1:${SQUALL_KAFKA_PORT:-9092}"; CQL="127.0.0.1:${SQUALL_CQL_PORT:-9042}"
RUN=p$(date +%s%N)
"$B/squall-gen" topics --brokers "$KAFKA" --song-topic "$RUN-songs" --ad-topic "$RUN-ads" --partitions 6 >/dev/null
"$B/squall-gen" catalogue --cql "$CQL" >/dev/null
"$B/squall-gen" events --brokers "$KAFKA" --song-topic "$RUN-songs" --ad-topic "$RUN-ads" \
    --rate 0 --count "$N" --users "$USERS" --malformed 0 >/dev/null
TOPO=$(mktemp --suffix .toml)
printf 'name = "%s"\nversion = 1\nattributes = "personalization_v1"\n[kafka]\nbrokers = "%s"\nsong_completions = "%s-songs"\nad_impressions = "%s-ads"\n[cql]\nnodes = "%s"\n[http]\nlisten = "127.0.0.1:0"\n' \
    "$RUN" "$KAFKA" "$RUN" "$RUN" "$CQL" >"$TOPO"
OUT=$(mktemp)
"$B/squall" run --topology "$TOPO" --workers "$WORKERS" >"$OUT" 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$TOPO" "$OUT"' EXIT
until grep -q "serving on" "$OUT"; do sleep 0.01; done
URL=$(sed -n 's/.*serving on //p' "$OUT")
total() { curl -s "$URL/metrics" | awk '/^squall_events_(applied|duplicate)_total/ {s += $2} END {print s + 0}'; }
START=$(date +%s.%N)
while (( $(total) < N )); do sleep 0.05; done
END=$(date +%s.%N)
awk -v n="$N" -v w="$WORKERS" -v s="$START" -v e="$END" \
    'BEGIN {printf "pipeline events=%d workers=%d seconds=%.2f events_per_sec=%.0f\n", n, w, e - s, n / (e - s)}'
