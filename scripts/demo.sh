#!/usr/bin/env bash
# The demo, from a fresh clone: installs what is missing, builds, starts the dev broker and CQL
# server on 127.0.0.1, creates topics and tables, loads a generated catalogue, starts
# `squall server`, deploys and promotes version 1 of topologies/personalization.toml, produces a
# skewed event stream, checks the served attributes against a from-scratch recomputation, and keeps
# serving until Ctrl-C (try the deploy v3 -> diff -> gated promote -> rollback walk in README.md, or
# scripts/walkthrough.sh: archive, backfill v3 from it, diff).
#
# Knobs: DEMO_RATE (events/s, default 20000), DEMO_EVENTS (default 300000), DEMO_USERS (100000),
# DEMO_WORKERS (2), and the ports of scripts/devenv.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RATE=${DEMO_RATE:-20000}
EVENTS=${DEMO_EVENTS:-300000}
USERS=${DEMO_USERS:-100000}
WORKERS=${DEMO_WORKERS:-2}
HTTP=${DEMO_HTTP:-127.0.0.1:7070}
KAFKA="127.0.0.1:${SQUALL_KAFKA_PORT:-9092}"
CQL="127.0.0.1:${SQUALL_CQL_PORT:-9042}"
STATE=${SQUALL_DEVENV_DIR:-$ROOT/.devenv}
export SQUALL_PROFILE=release

say() { printf '\n\033[1mdemo: %s\033[0m\n' "$*"; }

say "installing what is missing (Debian packages, the nisshi broker: ~15 min the first time only)"
scripts/devenv.sh install
say "building (release)"
cargo build --release --workspace --bins --locked
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

cleanup() {
    [[ -n ${SQUALL_PID:-} ]] && kill "$SQUALL_PID" 2>/dev/null && wait "$SQUALL_PID" 2>/dev/null
    scripts/devenv.sh down
}
trap cleanup EXIT
say "starting the dev broker ($KAFKA) and CQL server ($CQL)"
scripts/devenv.sh up
# The broker keeps no data across demo runs (memory storage), so neither may the server's registry
# and checkpoints (.squall/, where `squall server` and the CLI look by default).
rm -rf .squall
"$BIN/squall-gen" topics --brokers "$KAFKA" --partitions 6
"$BIN/squall-gen" catalogue --cql "$CQL" --tracks 100000 --ads 2000

say "starting squall server on http://$HTTP; deploying and promoting personalization v1 ($WORKERS workers)"
# The demo stops everything on exit: its versions must not outlive the server (they would by default).
"$BIN/squall" server --listen "$HTTP" --brokers "$KAFKA" --cql "$CQL" --stop-versions-on-exit >"$STATE/squall.out" 2>"$STATE/squall.log" &
SQUALL_PID=$!
for _ in $(seq 300); do grep -q "serving on" "$STATE/squall.out" 2>/dev/null && break; sleep 0.1; done
grep -q "serving on" "$STATE/squall.out" || { cat "$STATE/squall.log"; exit 1; }
URL="http://$HTTP"
export SQUALL_SERVER=$URL
"$BIN/squall" deploy topologies/personalization.toml --version 1 --workers "$WORKERS"
"$BIN/squall" status personalization-v1 --watch >/dev/null
"$BIN/squall" promote personalization-v1

say "producing $EVENTS events at $RATE/s ($USERS users, Zipf skew, 1% resends, 0.5% unknown ids, 0.1% malformed)"
"$BIN/squall-gen" events --brokers "$KAFKA" --rate "$RATE" --count "$EVENTS" --users "$USERS" \
    --expect-file "$STATE/expected.json" --expect-users 5
say "checking the served attributes of the 5 most active users against a recomputation"
"$BIN/squall-gen" check --url "$URL" --expect-file "$STATE/expected.json" --timeout-secs 60
"$BIN/squall" logs personalization-v1 --tail 200 | grep throughput | tail -n 3 || true
"$BIN/squall" list

cat <<MSG

  squall server is at $URL; personalization-v1 is deployed and promoted.
    curl $URL/v1/users/u1/attributes
    target/release/squall list
    target/release/squall deploy topologies/personalization.toml --version 3   # a declared version, no build
    target/release/squall diff personalization-v1 personalization-v3           # then the gated promote and rollback (README)
    scripts/walkthrough.sh     # or instead: archive, deploy v3 with --backfill, diff (README "Backfill, then stream")
  server log: $STATE/squall.log   expected attributes: $STATE/expected.json
  Ctrl-C stops squall (and every version it runs), the broker and the CQL server.
MSG
wait "$SQUALL_PID"
