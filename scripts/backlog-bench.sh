#!/usr/bin/env bash
# A fleet's backlog drained (issue 21): signs a city of RIDERS riders
# (2.87 million by default, about 10 million scans) with `loadgen
# prepare`, then pushes all of it at a fresh server as fast as its acks
# allow (`loadgen run` without a rate: many batches in flight on each
# gateway's connection, held back only by QUIC flow control and the
# server's in-flight limits), durability and pricing on, and waits until
# every acked ride is priced. Prints the generator's summary: acked
# scans/s, ack latency, the server's CPU and its peak RSS (from its
# metrics), how far pricing lagged and when it caught up. Server and
# generator share the machine's cores; the figure this is for is memory.
#
#   scripts/backlog-bench.sh
#   RIDERS=300000 scripts/backlog-bench.sh
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
riders=${RIDERS:-2870000}
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start_loopback_server "" metrics
echo "== signing $riders riders' day"
"$bin" "${args[@]}" loadgen prepare --out "$work/backlog.bin" --riders "$riders" --seed 1 | tail -1
echo "== draining it"
"$bin" "${args[@]}" loadgen run --server "127.0.0.1:$port" --metrics-url "http://127.0.0.1:$metrics_port/metrics" \
  --file "$work/backlog.bin" | tail -4
kill -TERM "$pid"; wait "$pid" || true
