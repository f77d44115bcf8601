#!/usr/bin/env bash
# What durability costs: the same loads against a server with the
# write-ahead log fsynced (the default) and with fsync off, in one run.
#   - steady: ack latency p50/p99 at a steady rate;
#   - backlog: a fleet back from hours offline pushes everything at once;
#     the drain rate is the throughput.
# Traffic stays on 127.0.0.1.
#
#   scripts/durability-figures.sh
#   RIDERS_STEADY=3000 RIDERS_BACKLOG=20000 BATCH_SCANS=500 scripts/durability-figures.sh
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
riders_steady=${RIDERS_STEADY:-3000}
riders_backlog=${RIDERS_BACKLOG:-20000}
batch_scans=${BATCH_SCANS:-500}
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

measure() {
  local fsync=$1 dir="$work/fsync-$1" port=$((20000 + RANDOM % 12000))
  mkdir -p "$dir"
  printf '[server]\nlisten_addr = "127.0.0.1:%s"\n[metrics]\nlisten_addr = ""\n[api]\nlisten_addr = ""\n[wal]\nfsync_enabled = %s\n' \
    "$port" "$fsync" > "$dir/config.toml"
  local args=(--data-dir "$dir/data" --config "$dir/config.toml")
  "$bin" "${args[@]}" serve > "$dir/server.log" 2>&1 &
  local pid=$!
  wait_until_serving "$dir/server.log" "$pid"
  "$bin" "${args[@]}" simulate --server "127.0.0.1:$port" --riders "$riders_steady" --duration-secs 20 \
    --redelivery-percent 0 > "$dir/steady.log"
  "$bin" "${args[@]}" simulate --server "127.0.0.1:$port" --riders "$riders_backlog" --backlog \
    --batch-scans "$batch_scans" --redelivery-percent 0 --seed 8 > "$dir/backlog.log"
  kill -TERM "$pid"; wait "$pid" || true
  local steady backlog
  steady=$(grep "ack latency" "$dir/steady.log")
  backlog=$(grep "backlog drained" "$dir/backlog.log")
  printf '%-10s steady:%s\n%-10s backlog:%s |%s\n' "fsync=$fsync" "${steady#*:}" "" "${backlog#*:}" \
    "$(grep 'ack latency' "$dir/backlog.log" | cut -d: -f2)"
}

echo "farestream durability figures ($(nproc) cores; steady: $riders_steady riders over 20 s; backlog: $riders_backlog riders, $batch_scans scans per batch)"
measure true
measure false
