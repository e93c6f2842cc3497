#!/usr/bin/env bash
# The archive walk-through, after the demo: with scripts/demo.sh serving (run this in a second
# terminal at the repository root), it starts the archive through the server (`squall archive
# start`), produces more events, waits until the archive holds them, deploys version 3 with
# `--backfill` from the archive, prints its phases (backfilling, catching-up, running) as they come,
# and prints `squall diff` against version 1.
#
# Knobs: WALK_EVENTS (events produced, default 200000), WALK_RATE (events/s, default 20000),
# WALK_ARCHIVE (default <devenv dir>/archive), SQUALL_SERVER, SQUALL_PROFILE (the build the demo
# made: release), and the ports of scripts/devenv.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/${SQUALL_PROFILE:-release}
KAFKA="127.0.0.1:${SQUALL_KAFKA_PORT:-9092}"
STATE=${SQUALL_DEVENV_DIR:-$ROOT/.devenv}
ARCHIVE=${WALK_ARCHIVE:-$STATE/archive}
EVENTS=${WALK_EVENTS:-200000}
RATE=${WALK_RATE:-20000}
export SQUALL_SERVER=${SQUALL_SERVER:-http://127.0.0.1:7070}

say() { printf '\n\033[1mwalk-through: %s\033[0m\n' "$*"; }
squall() { "$BIN/squall" "$@"; }
# A field of a JSON document read from the server, e.g. `field /v1/archives/squall-archive lag`.
field() {
    curl -fsS "$SQUALL_SERVER$1" | python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v[k]
print(v)' "${@:2}"
}

squall list >/dev/null || { echo "no squall server at $SQUALL_SERVER: start scripts/demo.sh first" >&2; exit 1; }
if squall status personalization-v3 >/dev/null 2>&1; then
    echo "personalization-v3 is deployed already: restart scripts/demo.sh for a fresh walk-through" >&2
    exit 1
fi

say "starting the archive through the server: squall archive start --url $ARCHIVE"
# The demo's broker keeps nothing across runs, so neither may the archive.
squall archive stop squall-archive >/dev/null 2>&1 || true
rm -rf "$ARCHIVE"
mkdir -p "$ARCHIVE"
squall archive start --url "$ARCHIVE" --max-file-age 5s

say "producing $EVENTS more events at $RATE/s"
"$BIN/squall-gen" events --brokers "$KAFKA" --rate "$RATE" --count "$EVENTS" --seed 2

say "waiting until the archive holds every event"
for _ in $(seq 600); do
    [[ $(field /v1/archives/squall-archive lag) == 0 ]] && break
    sleep 0.5
done
squall status squall-archive

say "deploying personalization v3 with --backfill $ARCHIVE"
squall deploy topologies/personalization.toml --version 3 --backfill "$ARCHIVE"
# More events while it backfills: Kafka is ahead of the archive's end when the backfill is done,
# so version 3 catches up on the stream before it runs.
"$BIN/squall-gen" events --brokers "$KAFKA" --rate "$RATE" --count "$((EVENTS / 2))" --seed 3 >"$STATE/walk-events.log" 2>&1 &
producer=$!
start=$(date +%s)
last=""
for _ in $(seq 1200); do
    state=$(field /v1/deployments/personalization-v3 state)
    if [[ $state == backfilling ]]; then
        done_=$(field /v1/deployments/personalization-v3 status backfill records_done 2>/dev/null || echo 0)
        total=$(field /v1/deployments/personalization-v3 status backfill records_total 2>/dev/null || echo 0)
        progress=" ($done_ of $total archived events)"
    else
        progress=""
    fi
    if [[ $state != "$last" || -n $progress ]]; then
        printf '%4ss  %s%s\n' $(($(date +%s) - start)) "$state" "$progress"
        last=$state
    fi
    [[ $state == running ]] && break
    sleep 1
done
wait "$producer"
squall status personalization-v3

say "squall diff personalization-v1 personalization-v3, once both changelogs have every user"
for _ in $(seq 120); do
    pending=$(curl -fsS "$SQUALL_SERVER/v1/diff?a=personalization-v1&b=personalization-v3&wait_ms=2000" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(0 if r["caught_up"] and not any(r["not_comparable"].values()) else 1)')
    [[ $pending == 0 ]] && break
    sleep 1
done
squall diff personalization-v1 personalization-v3
cat <<MSG

  The archiver keeps running under the server: \`squall list\` and the status page show it,
  \`squall archive stop squall-archive\` stops it (the archive in $ARCHIVE stays).
MSG
