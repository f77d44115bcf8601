#!/usr/bin/env bash
# What a hostile gateway costs an honest one: the honest fleet's ack
# latency alone, then with a second connection flooding the server with
# the most expensive batches it can build, in one run on one server.
# Traffic stays on 127.0.0.1; every load stops by itself.
#
#   scripts/hostile-load.sh
#   KIND=one-bad-per-64 DURATION_SECS=20 RIDERS=2000 scripts/hostile-load.sh
#   SERVER_TOML='verify_slices_in_flight_max = 2' scripts/hostile-load.sh   # [server] keys to try
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
kind=${KIND:-bad-issuer-and-user}
duration=${DURATION_SECS:-20}
riders=${RIDERS:-2000}
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start_loopback_server "${SERVER_TOML:-}" ""

honest() {
  "$bin" "${args[@]}" simulate --server "127.0.0.1:$port" --riders "$riders" --duration-secs "$duration" \
    --redelivery-percent 0 --seed "$1" | grep "ack latency" | sed 's/^ *//'
}

echo "farestream under a hostile gateway ($(nproc) cores; honest: $riders riders over $duration s; flood: $kind)"
echo "honest alone:      $(honest 1)"
"$bin" "${args[@]}" flood --server "127.0.0.1:$port" --kind "$kind" --duration-secs "$duration" > "$work/flood.log" &
flood_pid=$!
sleep 1
echo "honest with flood: $(honest 2)"
wait "$flood_pid"
echo "$(cat "$work/flood.log")"
kill -TERM "$pid"; wait "$pid" || true
