#!/usr/bin/env bash
# The dev/test environment on 127.0.0.1: a Kafka-protocol broker (nisshi), the CQL dev server and an
# S3-compatible object store (s3s-fs, for the archive).
#
#   scripts/devenv.sh install   # Debian packages, the broker and S3 server binaries (idempotent; fast when present)
#   scripts/devenv.sh install-browser   # Debian's chromium, for the status page test
#   scripts/devenv.sh up        # start all three (no-op for one already listening), wait until they answer
#   scripts/devenv.sh down      # stop what `up` started
#   scripts/devenv.sh status
#   scripts/devenv.sh s3-env    # the AWS_* variables a client of the dev S3 server needs
#
# Ports and state: SQUALL_KAFKA_PORT (9092), SQUALL_CQL_PORT (9042), SQUALL_S3_PORT (8014),
# SQUALL_DEVENV_DIR (.devenv),
# SQUALL_PROFILE (release|debug: which build of squall-cql-dev to run).
# These are stand-ins for development and tests only; production points squall at real Kafka,
# ScyllaDB/Cassandra and S3/GCS/Azure (see README). The S3 server serves bucket `squall` from
# $SQUALL_DEVENV_DIR/s3 with access key `squall`, secret `squall-dev-secret` (see s3_env).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${SQUALL_DEVENV_DIR:-$ROOT/.devenv}
KAFKA_PORT=${SQUALL_KAFKA_PORT:-9092}
CQL_PORT=${SQUALL_CQL_PORT:-9042}
PROFILE=${SQUALL_PROFILE:-release}
NISSHI_VERSION=0.8.1
S3_PORT=${SQUALL_S3_PORT:-8014}
# 0.14.1 is the newest s3s-fs that declares rustc <= 1.95 (1.92).
S3S_FS_VERSION=0.14.1
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin

log() { printf 'devenv: %s\n' "$*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name timeout_s pidfile
    local deadline=$((SECONDS + $3))
    until listening "$1"; do
        if [[ -f $4 ]] && ! kill -0 "$(cat "$4")" 2>/dev/null; then
            log "$2 exited; its log:"; tail -n 30 "$STATE/$2.log" >&2 || true; return 1
        fi
        if (( SECONDS > deadline )); then log "$2 not listening on 127.0.0.1:$1 after $3 s"; return 1; fi
        sleep 0.1
    done
}

nisshi_bin() {
    if command -v nisshi >/dev/null 2>&1; then command -v nisshi; elif [[ -x $CARGO_BIN/nisshi ]]; then echo "$CARGO_BIN/nisshi"; fi
}

s3s_bin() {
    if command -v s3s-fs >/dev/null 2>&1; then command -v s3s-fs; elif [[ -x $CARGO_BIN/s3s-fs ]]; then echo "$CARGO_BIN/s3s-fs"; fi
}

# The environment a client of the dev S3 server needs (object_store reads these).
s3_env() {
    cat <<EOF_ENV
AWS_ACCESS_KEY_ID=squall
AWS_SECRET_ACCESS_KEY=squall-dev-secret
AWS_REGION=us-east-1
AWS_ENDPOINT=http://127.0.0.1:$S3_PORT
AWS_ALLOW_HTTP=true
EOF_ENV
}

install() {
    local missing=()
    for pkg in cmake g++ make pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if (( ${#missing[@]} )); then
        log "installing Debian packages: ${missing[*]}"
        local sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [[ -z $(nisshi_bin) ]]; then
        # nisshi 0.8.1 declares rustc 1.96 through a dependency; it builds with 1.95 (measured).
        log "installing the nisshi broker $NISSHI_VERSION (about 15 minutes on 2 cores, once)"
        cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version
    fi
    if [[ -z $(s3s_bin) ]]; then
        log "installing the s3s-fs S3 server $S3S_FS_VERSION (a few minutes on 2 cores, once)"
        cargo install s3s-fs --version "$S3S_FS_VERSION" --locked --features binary
    fi
}

# Debian's Chromium, for the status page's headless browser test (scripts/test.sh only).
install_browser() {
    if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
        log "installing Debian's chromium (headless browser for the status page test)"
        local sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    fi
}

cql_bin() { echo "${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/squall-cql-dev"; }

up() {
    mkdir -p "$STATE"
    if listening "$KAFKA_PORT"; then
        log "something already listens on 127.0.0.1:$KAFKA_PORT; using it as the broker"
    else
        local nisshi; nisshi=$(nisshi_bin)
        [[ -n $nisshi ]] || { log "nisshi is not installed: run scripts/devenv.sh install"; exit 1; }
        mkdir -p "$STATE/kafka"
        # Memory storage by default; SQUALL_KAFKA_STORAGE=sqlite://n.db keeps data across broker restarts
        # (relative to $STATE/kafka, where the broker runs).
        (cd "$STATE/kafka" && exec "$nisshi" broker \
            --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --storage-engine "${SQUALL_KAFKA_STORAGE:-memory://nisshi/}" \
            >"$STATE/broker.log" 2>&1) &
        echo $! >"$STATE/broker.pid"
    fi
    if listening "$CQL_PORT"; then
        log "something already listens on 127.0.0.1:$CQL_PORT; using it as the CQL server"
    else
        local cql; cql=$(cql_bin)
        if [[ ! -x $cql ]]; then
            log "building squall-cql-dev ($PROFILE)"
            local flag=(); [[ $PROFILE == release ]] && flag=(--release)
            cargo build "${flag[@]}" -p squall-cql-dev --manifest-path "$ROOT/Cargo.toml"
        fi
        "$cql" --listen "127.0.0.1:$CQL_PORT" >"$STATE/cql.log" 2>&1 &
        echo $! >"$STATE/cql.pid"
    fi
    if listening "$S3_PORT"; then
        log "something already listens on 127.0.0.1:$S3_PORT; using it as the S3 server"
    else
        local s3; s3=$(s3s_bin)
        [[ -n $s3 ]] || { log "s3s-fs is not installed: run scripts/devenv.sh install"; exit 1; }
        # A bucket is a folder of the served directory.
        mkdir -p "$STATE/s3/squall"
        "$s3" --host 127.0.0.1 --port "$S3_PORT" --access-key squall --secret-key squall-dev-secret \
            "$STATE/s3" >"$STATE/s3.log" 2>&1 &
        echo $! >"$STATE/s3.pid"
    fi
    wait_port "$KAFKA_PORT" broker 60 "$STATE/broker.pid"
    wait_port "$CQL_PORT" cql 60 "$STATE/cql.pid"
    wait_port "$S3_PORT" s3 60 "$STATE/s3.pid"
    log "broker on 127.0.0.1:$KAFKA_PORT, CQL on 127.0.0.1:$CQL_PORT, S3 on 127.0.0.1:$S3_PORT (logs in $STATE)"
}

down() {
    local name pid
    for name in broker cql s3; do
        if [[ -f $STATE/$name.pid ]]; then
            pid=$(cat "$STATE/$name.pid")
            if kill "$pid" 2>/dev/null; then
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -f "$STATE/$name.pid"
        fi
    done
    log "stopped"
}

status() {
    listening "$KAFKA_PORT" && echo "broker: up on 127.0.0.1:$KAFKA_PORT" || echo "broker: down"
    listening "$CQL_PORT" && echo "cql: up on 127.0.0.1:$CQL_PORT" || echo "cql: down"
    listening "$S3_PORT" && echo "s3: up on 127.0.0.1:$S3_PORT (bucket squall)" || echo "s3: down"
}

case "${1:-}" in
    install) install ;;
    install-browser) install_browser ;;
    up) up ;;
    down) down ;;
    status) status ;;
    s3-env) s3_env ;;
    *) echo "usage: $0 install|install-browser|up|down|status|s3-env" >&2; exit 2 ;;
esac
