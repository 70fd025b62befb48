#!/usr/bin/env bash
# The full test suite: unit, integration (in-memory, and against private
# nats-server processes the tests start themselves), property tests, doctests,
# then a bounded fuzzing run of the wire decoders (scripts/fuzz.sh).
#
# Installs nats-server from the OS package manager if it is missing. The tests
# never use a shared server: each starts its own on a free 127.0.0.1 port.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nats-server >/dev/null 2>&1; then
  echo "nats-server not found: installing it" >&2
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nats-server
  elif command -v brew >/dev/null 2>&1; then
    brew install nats-server
  else
    echo "install nats-server (https://docs.nats.io) and put it on PATH" >&2
    exit 1
  fi
fi
nats-server --version

# Two cores: one build, then the tests.
cargo test --workspace --all-features --no-fail-fast "$@"

# Bounded fuzzing of the wire decoders (FUZZ_SECONDS per target, default 20;
# installs cargo-fuzz if missing). EVENTS_SKIP_FUZZ=1 skips it.
if [ "${EVENTS_SKIP_FUZZ:-0}" = 1 ]; then
  echo "fuzzing skipped (EVENTS_SKIP_FUZZ=1)"
else
  scripts/fuzz.sh
fi
