#!/usr/bin/env bash
# Runs every benchmark of the crate (the NATS ones against a private
# nats-server the bench starts itself) and writes BENCHMARKS.md.
#
#   scripts/bench.sh                 # full run, a few minutes on 2 cores
#   NATS_BENCH_SCALE=0.2 scripts/bench.sh   # quicker, noisier
set -euo pipefail
cd "$(dirname "$0")/.."
out=BENCHMARKS.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

command -v nats-server >/dev/null || { echo "nats-server is needed: scripts/test.sh installs it" >&2; exit 1; }

echo "codec and memory bus (criterion)..." >&2
cargo bench -p events --bench codec 2>/dev/null >"$tmp/codec.txt"
echo "consumer runtime on the memory bus..." >&2
cargo bench -p events --bench runtime 2>/dev/null >"$tmp/runtime.txt"
echo "NATS and JetStream against hand-written async-nats..." >&2
cargo bench -p events --features jetstream,testing --bench nats 2>/dev/null >"$tmp/nats.txt"

echo "ordered scale-out on a stream partitioned by key (nats-server 2.15.1 from the matrix)..." >&2
newest=$(scripts/nats-servers.sh 2.15.1)
NATS_SERVER_BIN="$newest" cargo bench -p events --features jetstream,runtime,testing --bench partitions 2>/dev/null >"$tmp/partitions.txt"

echo "outbox on PostgreSQL (EVENTS_TEST_DATABASE_URL, default the local server)..." >&2
cargo bench -p events --features jetstream,postgres,testing --bench outbox 2>/dev/null >"$tmp/outbox.txt"

# "name  time: [low mid high]" -> "| name | mid |"
criterion_rows() {
  awk '
    /^[A-Za-z_0-9]+\/[A-Za-z_0-9_]+/ { name = $1 }
    /time:/ && name != "" {
      sub(/.*time: *\[/, ""); split($0, t, " ");
      printf "| %s | %s %s |\n", name, t[3], t[4]; name = ""
    }' "$1"
}

{
  echo "# Benchmarks"
  echo
  echo "Written by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(nats-server --version), $(rustc --version))."
  echo "Ratios compare runs made in the same process, alternating, against the same private server."
  echo "The machine is a shared VM: absolute numbers move by 30% or more between runs, ratios much less."
  echo
  echo "## NATS and JetStream: the crate vs hand-written async-nats + serde_json"
  echo
  echo "The baseline builds the same CloudEvents JSON body (a serde struct with a fresh UUIDv7 id and the current time) and the same headers by hand; both sides make a new payload value per event (a clone of one template); the crate builds an \`Event<T>\` with \`bus.event(..)\` and publishes it through the bus. Median of 9 rounds (5 left single rows 5-8% apart between runs). Command: \`cargo bench -p events --features jetstream,testing --bench nats\`."
  echo
  grep '^|' "$tmp/nats.txt"
  echo
  echo "Reading the table: nats-server shares the two cores with the bench, so every CPU cycle the client spends is taken from the server, and run-to-run noise is about 10% per row even with both sides measured in one process (a row means something only if it repeats). \`perf\` profiles of the JetStream rows put the crate's own functions under 2% of the samples; the rest is serde_json (both sides), malloc, the kernel and the server. What the crate pays that the hand-written code does not: core publish checks the size and the connection state and registers a blocked send with the connection watchdog (so it can fail \`Unavailable\` instead of blocking forever); JetStream publish copies the message headers once to add the dedup id before converting them, and \`publish_all\` encodes a whole batch before sending it (the hand-written loop overlaps encoding with the server's work); a JetStream subscription hands each message from its puller task to the reader and books it for the buffer keep-alive; the consumer runtime (JetStream rows: first to last event handled, default prefetch 256) creates a tracing span, a handler context and the handler's boxed future per event, and polls it in place; a handling future is built and boxed only for an event that has to wait. Typed decoding (both crate rows) reads a structured event's data as the payload type in the same pass as its attributes, as the hand-written \`serde_json\` struct does."
  echo
  echo "## Ordered scale-out: a stream partitioned by key"
  echo
  echo "Command: \`NATS_SERVER_BIN=.nats-servers/2.15.1/bin/nats-server cargo bench -p events --features jetstream,runtime,testing --bench partitions\`. One consumer of 3 event types, instances in one process with a connection each; 16 partitions; the handler awaits 2 ms (I/O, not CPU); the instances start and learn of each other before the events are published; median of 3 alternating rounds."
  echo
  grep '^|' "$tmp/partitions.txt"
  echo
  echo "Reading it: instances add parallelism, but each partition is held by one instance, so the busiest instance sets the pace (16 partitions over 3 instances split unevenly by rendezvous hashing, as do 64 keys over 16 partitions); more partitions than instances evens it out."
  echo
  echo "## Outbox on PostgreSQL"
  echo
  echo "Command: \`cargo bench -p events --features jetstream,postgres,testing --bench outbox\` (PostgreSQL 15 on the same machine, default settings: each business commit waits for its WAL flush). Staging: one client, a transaction inserting an order row and staging a 256-byte event vs the same transaction inserting the same bytes (subject, headers, body, event id, key) into a plain table of the same columns; alternating rounds, median. Relay: events staged and committed first (untimed), then a relay started; time until the table is empty (every row confirmed by a PubAck), vs \`Bus::publish_all\` of as many events; keys spread over 1,000 subjects. Latency: one event at a time, from the return of \`commit\` to the relay's PubAck, after a pseudo-random pause."
  echo
  grep '^|' "$tmp/outbox.txt"
  echo
  echo "## Consumer runtime (memory bus, no-op handler)"
  echo
  echo "Command: \`cargo bench -p events --bench runtime\`. One thread, producer included, median of 5 rounds of 50,000 events of 256 B. The runtime's own cost per event (span, context, the handler's boxed future, stats) shows fully here, where publish, decode and ack are all the rest."
  echo
  echo '```'
  cat "$tmp/runtime.txt"
  echo '```'
  echo
  echo "## Codec and in-memory bus (criterion)"
  echo
  echo "Command: \`cargo bench -p events --bench codec\`. 256-byte payload. \`memory_bus_*\` rows are per batch of 1,000 events (publish, typed receive, ack)."
  echo
  echo "| benchmark | median time |"
  echo "|---|---|"
  criterion_rows "$tmp/codec.txt"
  echo
  echo "Heap allocations, counted by a wrapping global allocator:"
  echo
  echo '```'
  sed -n '/^allocations per operation/,/^  memory publish/p' "$tmp/codec.txt"
  echo '```'
} >"$out"
echo "wrote $out" >&2
