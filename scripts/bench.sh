#!/usr/bin/env bash
# Runs every benchmark of the crate (the NATS ones against a private
# nats-server the bench starts itself) and puts their results into
# BENCHMARKS.md. Only the generated blocks change: each sits between
# `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; the prose around them
# (method, reading, attribution) is kept as written.
#
#   scripts/bench.sh                        # everything: about 20 minutes on 2 cores
#   scripts/bench.sh nats runtime           # some parts: machine codec runtime nats partitions outbox
#   NATS_BENCH_SCALE=0.2 scripts/bench.sh   # quicker, noisier wall clock
#
# The NATS and runtime benches count instructions per event with
# `valgrind --tool=callgrind` when valgrind is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
out=BENCHMARKS.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

command -v nats-server >/dev/null || { echo "nats-server is needed: scripts/test.sh installs it" >&2; exit 1; }
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(machine codec runtime nats partitions outbox)

# Replaces the lines between the markers of block $1 with the file $2.
put_block() {
  local name=$1 file=$2
  grep -q "^<!-- bench:$name -->\$" "$out" || { echo "$out has no block $name" >&2; exit 1; }
  awk -v name="$name" -v file="$file" '
    $0 == "<!-- bench:" name " -->" { print; while ((getline line < file) > 0) print line; skip = 1; next }
    $0 == "<!-- /bench:" name " -->" { skip = 0 }
    !skip { print }' "$out" >"$tmp/out.md"
  mv "$tmp/out.md" "$out"
}

# "name  time: [low mid high]" -> "| name | mid |"
criterion_rows() {
  awk '
    /^[A-Za-z_0-9]+\/[A-Za-z_0-9_]+/ { name = $1 }
    /time:/ && name != "" {
      sub(/.*time: *\[/, ""); split($0, t, " ");
      printf "| %s | %s %s |\n", name, t[3], t[4]; name = ""
    }' "$1"
}

for part in "${parts[@]}"; do
  case $part in
  machine)
    echo "Last full run on $(date -u +%Y-%m-%d): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(nats-server --version) unless a section names another, $(rustc --version)." >"$tmp/machine.txt"
    put_block machine "$tmp/machine.txt"
    ;;
  codec)
    echo "codec and memory bus (criterion)..." >&2
    cargo bench -p events --bench codec 2>/dev/null >"$tmp/codec.txt"
    { echo "| benchmark | median time |"; echo "|---|---|"; criterion_rows "$tmp/codec.txt"; } >"$tmp/codec.md"
    put_block codec "$tmp/codec.md"
    { echo '```'; sed -n '/^allocations per operation/,/^  memory publish/p' "$tmp/codec.txt"; echo '```'; } >"$tmp/alloc.md"
    put_block allocations "$tmp/alloc.md"
    ;;
  runtime)
    echo "consumer runtime on the memory bus..." >&2
    cargo bench -p events --bench runtime 2>/dev/null >"$tmp/runtime.txt"
    { echo '```'; cat "$tmp/runtime.txt"; echo '```'; } >"$tmp/runtime.md"
    put_block runtime "$tmp/runtime.md"
    ;;
  nats)
    echo "NATS and JetStream against hand-written async-nats (wall clock, then callgrind)..." >&2
    cargo bench -p events --features jetstream,runtime,testing --bench nats 2>/dev/null >"$tmp/nats.txt"
    grep '^|' "$tmp/nats.txt" >"$tmp/nats.md"
    put_block nats "$tmp/nats.md"
    ;;
  partitions)
    echo "ordered scale-out on a stream partitioned by key (nats-server 2.15.1 from the matrix)..." >&2
    newest=$(scripts/nats-servers.sh 2.15.1)
    NATS_SERVER_BIN="$newest" cargo bench -p events --features jetstream,runtime,testing --bench partitions 2>/dev/null >"$tmp/partitions.txt"
    grep '^|' "$tmp/partitions.txt" >"$tmp/partitions.md"
    put_block partitions "$tmp/partitions.md"
    ;;
  outbox)
    echo "outbox on PostgreSQL (EVENTS_TEST_DATABASE_URL, default the local server)..." >&2
    cargo bench -p events --features jetstream,postgres,testing --bench outbox 2>/dev/null >"$tmp/outbox.txt"
    grep '^|' "$tmp/outbox.txt" >"$tmp/outbox.md"
    put_block outbox "$tmp/outbox.md"
    ;;
  *) echo "unknown part $part (machine codec runtime nats partitions outbox)" >&2; exit 2 ;;
  esac
done
echo "updated $out" >&2
