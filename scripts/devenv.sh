#!/usr/bin/env bash
# The dev/test environment on 127.0.0.1: a Kafka-protocol broker (nisshi) and the CQL dev server.
#
#   scripts/devenv.sh install   # Debian packages and the broker binary (idempotent; fast when present)
#   scripts/devenv.sh install-browser   # Debian's chromium, for the status page test
#   scripts/devenv.sh up        # start both (no-op for one already listening), wait until they answer
#   scripts/devenv.sh down      # stop what `up` started
#   scripts/devenv.sh status
#
# Ports and state: SQUALL_KAFKA_PORT (9092), SQUALL_CQL_PORT (9042), SQUALL_DEVENV_DIR (.devenv),
# SQUALL_PROFILE (release|debug: which build of squall-cql-dev to run).
# These are stand-ins for development and tests only; production points squall at real Kafka and
# ScyllaDB/Cassandra (see README).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${SQUALL_DEVENV_DIR:-$ROOT/.devenv}
KAFKA_PORT=${SQUALL_KAFKA_PORT:-9092}
CQL_PORT=${SQUALL_CQL_PORT:-9042}
PROFILE=${SQUALL_PROFILE:-release}
NISSHI_VERSION=0.8.1
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
    wait_port "$KAFKA_PORT" broker 60 "$STATE/broker.pid"
    wait_port "$CQL_PORT" cql 60 "$STATE/cql.pid"
    log "broker on 127.0.0.1:$KAFKA_PORT, CQL on 127.0.0.1:$CQL_PORT (logs in $STATE)"
}

down() {
    local name pid
    for name in broker cql; do
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
}

case "${1:-}" in
    install) install ;;
    install-browser) install_browser ;;
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 install|install-browser|up|down|status" >&2; exit 2 ;;
esac
