#!/usr/bin/env bash
# Bounded fuzzing of the `events` wire decoders (cargo-fuzz / libFuzzer).
#
#   scripts/fuzz.sh                    every target, FUZZ_SECONDS each (default 20)
#   scripts/fuzz.sh decode_binary      one target
#   FUZZ_SECONDS=300 scripts/fuzz.sh   longer runs
#   FUZZ_NATS=1 scripts/fuzz.sh        also nats_headers (slow build, see below)
#
# Targets live in shared/events/fuzz/fuzz_targets. Each run starts from the
# committed seed corpus (shared/events/fuzz/corpus/<target>, read only) plus
# a scratch copy in a temporary directory that receives what the run finds,
# so the work tree stays clean. A crash stops the script with a non-zero exit
# and the path of the input that caused it (under
# shared/events/fuzz/artifacts/<target>/); reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <artifact>   (in shared/events)
#
# cargo-fuzz needs nightly-only flags (-Z sanitizer, -C passes); on a stable
# toolchain RUSTC_BOOTSTRAP=1 lets rustc accept them, so no nightly is needed.
# Installs cargo-fuzz (pinned) if it is missing. The build goes to
# shared/events/fuzz/target (gitignored), not the workspace's target/.
set -euo pipefail
cd "$(dirname "$0")/../shared/events"

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
export RUSTC_BOOTSTRAP=1
# The fuzz crate is its own workspace: its sanitizer build goes to its own
# target directory (fuzz/target), whatever the caller's setting.
unset CARGO_TARGET_DIR

installed=$(cargo fuzz --version 2>/dev/null || true)
if [ "$installed" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# nats_headers (the NATS backend's received-header conversion) needs the
# fuzz crate's `nats` feature, which adds async-nats and its TLS stack to the
# sanitizer build: 5 to 8 minutes cold on 2 cores instead of about 2. So it runs
# only when asked for: FUZZ_NATS=1, or by name.
features=()
if [ "$#" -gt 0 ]; then
  targets=("$@")
  if [[ " $* " == *" nats_headers "* ]]; then
    features=(--features nats)
  fi
else
  mapfile -t targets < <(cargo fuzz list)
  if [ "${FUZZ_NATS:-0}" = 1 ]; then
    features=(--features nats)
  else
    mapfile -t targets < <(printf '%s\n' "${targets[@]}" | grep -vx nats_headers)
  fi
fi

started=$(date +%s)
# One build for every target (the runs below find it up to date). Debug
# assertions stay on, as in cargo-fuzz's default.
cargo fuzz build "${features[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target" "fuzz/corpus/$target" "fuzz/artifacts/$target"
  log="$scratch/$target.log"
  echo "fuzzing $target for ${FUZZ_SECONDS}s"
  # New inputs go to the first corpus directory (the scratch one).
  if cargo fuzz run "${features[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -dict=fuzz/cloudevents.dict -max_total_time="$FUZZ_SECONDS" \
    -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "  $target: ${runs:-?} inputs, no crash"
  else
    # The panic or sanitizer report, then libFuzzer's closing lines.
    grep -a -m 1 -A 8 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" >&2 || true
    echo "..." >&2
    tail -n 15 "$log" >&2
    artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
    echo "fuzz target $target FAILED; input: ${artifact:-none written (see the log above)}" >&2
    echo "reproduce: (cd shared/events && RUSTC_BOOTSTRAP=1 cargo fuzz run ${features[*]:+${features[*]} }$target ${artifact:-<artifact>})" >&2
    echo "show it:   (cd shared/events && RUSTC_BOOTSTRAP=1 cargo fuzz fmt ${features[*]:+${features[*]} }$target ${artifact:-<artifact>})" >&2
    exit 1
  fi
done
echo "fuzzing done in $(($(date +%s) - started))s (build included)"
