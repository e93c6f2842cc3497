#!/usr/bin/env bash
# Fuzzes the control plane's HTTP API against its OpenAPI document (docs/openapi.json) with
# schemathesis: starts `squall server` on 127.0.0.1 with version 1 of topologies/personalization.toml
# deployed and promoted and a few hundred users' events consumed, runs every operation of the
# document (the mutating ones too, with the server's token) with a fixed seed and a bounded number
# of examples, and fails on any finding of the checks not_a_server_error, status_code_conformance,
# content_type_conformance and response_schema_conformance. The version's own HTTP API has no
# document of its own; its answers reach the fuzzer through GET /v1/users/{user_id}/attributes.
#
# Needs the dev broker and CQL server up (scripts/devenv.sh up) and a build of squall and squall-gen
# (SQUALL_PROFILE: debug|release, default release). scripts/test.sh runs it.
#
# Knobs: SQUALL_FUZZ_PORT (the server's port, default 17070), SQUALL_FUZZ_SEED (20261207),
# SQUALL_FUZZ_EXAMPLES (test cases per operation and phase, default 100: about 1,900 requests in
# 20-25 s), and the ports and state directory of scripts/devenv.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SCHEMATHESIS_VERSION=4.32.5
VENV="$ROOT/.devenv/schemathesis-$SCHEMATHESIS_VERSION"
KAFKA="127.0.0.1:${SQUALL_KAFKA_PORT:-9092}"
CQL="127.0.0.1:${SQUALL_CQL_PORT:-9042}"
HTTP="127.0.0.1:${SQUALL_FUZZ_PORT:-17070}"
SEED=${SQUALL_FUZZ_SEED:-20261207}
EXAMPLES=${SQUALL_FUZZ_EXAMPLES:-100}
STATE="${SQUALL_DEVENV_DIR:-$ROOT/.devenv}/fuzz-api"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/${SQUALL_PROFILE:-release}
URL="http://$HTTP"
TOKEN=fuzz-api-token-0123456789abcdef

log() { printf 'fuzz-api: %s\n' "$*" >&2; }

# schemathesis, pinned, in its own virtualenv (installed once, then reused).
if [[ ! -x $VENV/bin/st ]]; then
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        log "installing Debian's python3-venv"
        sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    fi
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

for exe in squall squall-gen; do
    [[ -x $BIN/$exe ]] || { log "$BIN/$exe is not built: cargo build --workspace --bins"; exit 1; }
done

rm -rf "$STATE"
mkdir -p "$STATE"
cleanup() {
    if [[ -n ${SQUALL_PID:-} ]] && kill "$SQUALL_PID" 2>/dev/null; then
        # The server stops its versions first (--stop-versions-on-exit).
        for _ in $(seq 300); do kill -0 "$SQUALL_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SQUALL_PID" 2>/dev/null || true
        wait "$SQUALL_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

"$BIN/squall-gen" topics --brokers "$KAFKA" --partitions 2
"$BIN/squall-gen" catalogue --cql "$CQL" --tracks 1000 --ads 100

log "starting squall server on $URL"
RUST_LOG=${RUST_LOG:-warn} "$BIN/squall" server --listen "$HTTP" --brokers "$KAFKA" --cql "$CQL" \
    --state-dir "$STATE/server" --token "$TOKEN" --catch-up-lag 0 --stop-versions-on-exit \
    >"$STATE/squall.out" 2>"$STATE/squall.log" &
SQUALL_PID=$!
for _ in $(seq 300); do grep -q "serving on" "$STATE/squall.out" 2>/dev/null && break; sleep 0.1; done
grep -q "serving on" "$STATE/squall.out" || { log "the server did not start:"; cat "$STATE/squall.log" >&2; exit 1; }

cli() { "$BIN/squall" "$@" --server "$URL" --token "$TOKEN"; }
cli deploy topologies/personalization.toml --version 1 --workers 1 >/dev/null
timeout 120 "$BIN/squall" status personalization-v1 --watch --server "$URL" --token "$TOKEN" >/dev/null
cli promote personalization-v1 >/dev/null
"$BIN/squall-gen" events --brokers "$KAFKA" --rate 0 --count 3000 --users 300 --tracks 1000 --ads 100 >/dev/null
for _ in $(seq 300); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/users/u1/attributes") == 200 ]] && break
    sleep 0.1
done
[[ $(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/users/u1/attributes") == 200 ]] \
    || { log "user u1 has no attributes:"; tail -n 30 "$STATE/server/deployments/personalization-v1/"*.log >&2; exit 1; }
log "personalization-v1 promoted, user u1 known; fuzzing with seed $SEED, $EXAMPLES examples per operation"

started=$SECONDS
status=0
# From the run's own directory, so that schemathesis's cache (.schemathesis/) starts empty each run.
(cd "$STATE" && "$VENV/bin/st" --config-file "$ROOT/scripts/schemathesis.toml" run "$ROOT/docs/openapi.json" --url "$URL" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --header "Authorization: Bearer $TOKEN" \
    --seed "$SEED" --max-examples "$EXAMPLES" --generation-database none --workers 1 --no-color \
    --report har --report-har-path "$STATE/requests.har") || status=$?
requests=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["log"]["entries"]))' "$STATE/requests.har" 2>/dev/null || echo "?")
log "schemathesis $SCHEMATHESIS_VERSION sent $requests requests in $((SECONDS - started)) s (exit status $status)"
[[ $(curl -s -o /dev/null -w '%{http_code}' "$URL/healthz") == 200 ]] || { log "the server is not healthy afterwards"; exit 1; }
exit "$status"
