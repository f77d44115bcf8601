#!/usr/bin/env bash
# A restart with a full dedup horizon, before and after the snapshot
# (issue 21): generates a service day of SCANS scans (10 million by
# default) dated yesterday, inside the restore window, straight into the
# archive with `farestream gen-archive`; starts `serve` on it, which
# rebuilds the dedup indexes from the archive (before); stops it
# gracefully, which writes DATA_DIR/dedup/snapshot; starts it again,
# which loads the snapshot and replays the log's tail (after). Each start
# is timed from launch until it serves, under /usr/bin/time (peak RSS).
#
#   scripts/restart-bench.sh
#   SCANS=1000000 scripts/restart-bench.sh
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
scans=${SCANS:-10000000}
date=$(date -u -d yesterday +%F)
# Under WORK_DIR when given (a disk with room), in a folder of its own:
# only that folder is removed at the end.
work=$(mktemp -d "${WORK_DIR:-${TMPDIR:-/tmp}}/farestream-bench.XXXXXX")
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== generating $scans scans for $date"
"$bin" --data-dir "$work/data" gen-archive --scans "$scans" --date "$date" | tail -1
du -sh "$work/data/archive/scans" | sed 's/^/size: /'

port=$((20000 + RANDOM % 12000))
printf '[server]\nlisten_addr = "127.0.0.1:%s"\n[metrics]\nlisten_addr = ""\n[api]\nlisten_addr = ""\n' "$port" > "$work/config.toml"

# Starts serve, waits until it serves, stops it with SIGTERM; prints
# "LABEL: start_s=.. peak_rss_mib=.." and the server's recovery line.
timed_start() {
  local label=$1 log="$work/$1.log" started ended
  started=$(date +%s.%N)
  /usr/bin/time -f "peak_rss_kib=%M" -o "$work/$label.time" \
    "$bin" --data-dir "$work/data" --config "$work/config.toml" serve > "$log" 2>&1 &
  local pid=$!
  wait_until_serving "$log" "$pid" 600
  ended=$(date +%s.%N)
  # $pid is /usr/bin/time's; the server is its child.
  pkill -TERM -P "$pid"
  local stopping; stopping=$(date +%s.%N)
  wait "$pid" || true
  local stopped; stopped=$(date +%s.%N)
  local rss_kib; rss_kib=$(sed -n 's/.*peak_rss_kib=\([0-9]*\).*/\1/p' "$work/$label.time")
  grep -o "dedup indexes from .*" "$log" | sed "s/^/$label: /"
  awk -v label="$label" -v s0="$started" -v s1="$ended" -v t0="$stopping" -v t1="$stopped" -v rss="$rss_kib" \
    'BEGIN { printf "%s: start_s=%.2f peak_rss_mib=%d shutdown_s=%.2f\n", label, s1 - s0, rss / 1024, t1 - t0 }'
}

echo "== before: no snapshot, the indexes from the archive"
timed_start before
ls -l "$work/data/dedup/snapshot" | awk '{printf "snapshot: %.1f MiB\n", $5 / 1048576}'
echo "== after: the snapshot written at that shutdown"
timed_start after
