#!/usr/bin/env bash
# What sealing ride codes costs (issue 20): one server drains a fleet's
# backlog of sealed (version 2) codes and of unsealed (version 1) codes,
# ROUNDS times each, in one run, alternating which goes first. Each backlog is a different
# city (its own seed), so no scan of one is a re-delivery of another.
# Prints each drain rate and the ratio of the sealed mean to the unsealed.
# Traffic stays on 127.0.0.1.
#
#   scripts/sealing-cost.sh
#   RIDERS=20000 ROUNDS=3 BATCH_SCANS=500 scripts/sealing-cost.sh
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
riders=${RIDERS:-20000}
rounds=${ROUNDS:-2}
batch_scans=${BATCH_SCANS:-500}
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start_loopback_server "" ""

# The drain rate, scans/s, of one backlog.
drain() {
  local seed=$1 flag=$2
  "$bin" "${args[@]}" simulate --server "127.0.0.1:$port" --riders "$riders" --backlog $flag \
    --batch-scans "$batch_scans" --redelivery-percent 0 --seed "$seed" > "$work/run-$seed.log"
  grep "backlog drained" "$work/run-$seed.log" | grep -oE '[0-9]+ scans/s' | grep -oE '^[0-9]+'
}

echo "farestream sealing cost ($(nproc) cores; $riders riders per backlog, $batch_scans scans per batch, $rounds rounds)"
sealed=() unsealed=()
for round in $(seq 1 "$rounds"); do
  # Alternate which goes first: a server's indexes grow with each backlog.
  if [ $((round % 2)) -eq 1 ]; then
    unsealed+=("$(drain $((100 + 2 * round)) --unsealed)")
    sealed+=("$(drain $((101 + 2 * round)) "")")
  else
    sealed+=("$(drain $((101 + 2 * round)) "")")
    unsealed+=("$(drain $((100 + 2 * round)) --unsealed)")
  fi
  echo "round $round: version 1 ${unsealed[-1]} scans/s, version 2 ${sealed[-1]} scans/s"
done
kill -TERM "$pid"; wait "$pid" || true
mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.0f", s / NR }'; }
v1=$(mean "${unsealed[@]}") v2=$(mean "${sealed[@]}")
echo "version1_scans_per_s=$v1 version2_scans_per_s=$v2 ratio=$(awk -v a="$v2" -v b="$v1" 'BEGIN { printf "%.3f", a / b }')"
