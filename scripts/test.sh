#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, starts the dev broker and CQL
# server on their own loopback ports, checks formatting and lints, runs every test, stops the servers.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

export SQUALL_KAFKA_PORT=${SQUALL_TEST_KAFKA_PORT:-19092}
export SQUALL_CQL_PORT=${SQUALL_TEST_CQL_PORT:-19042}
export SQUALL_S3_PORT=${SQUALL_TEST_S3_PORT:-19014}
export SQUALL_DEVENV_DIR="$ROOT/.devenv/test"
export SQUALL_PROFILE=debug

step() { printf '\n== %s\n' "$*"; }

step "install (Debian packages, nisshi broker; skipped when present)"
scripts/devenv.sh install
scripts/devenv.sh install-browser

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --locked
# Benches are built, not run, here (see benches/README.md for running them).
cargo build -p squall-benches --benches --locked

step "dev environment on 127.0.0.1:$SQUALL_KAFKA_PORT (broker), 127.0.0.1:$SQUALL_CQL_PORT (CQL) and 127.0.0.1:$SQUALL_S3_PORT (S3)"
# A fresh state: the servers a previous run (or a developer) left running from this directory
# are stopped first, so that none serves from a directory removed under it.
scripts/devenv.sh down
rm -rf "$SQUALL_DEVENV_DIR"
trap 'scripts/devenv.sh down' EXIT
scripts/devenv.sh up

step "tests"
export SQUALL_TEST_BROKERS="127.0.0.1:$SQUALL_KAFKA_PORT"
export SQUALL_TEST_CQL="127.0.0.1:$SQUALL_CQL_PORT"
export SQUALL_TEST_S3="127.0.0.1:$SQUALL_S3_PORT"
# --show-output: tests that report figures (the crash test) print them in the CI log.
cargo test --workspace --locked -- --show-output

step "HTTP API fuzzing (schemathesis against docs/openapi.json; server on 127.0.0.1:${SQUALL_FUZZ_PORT:-17070})"
scripts/fuzz-api.sh
