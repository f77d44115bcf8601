#!/usr/bin/env bash
# The server's end-to-end rate against its ceiling, in one run (issue 21):
#
# 1. ceiling: the core pipeline alone (`loadgen ceiling`: codes,
#    signatures in the server's batch equations, the indexes; no network,
#    log or archive) over a prepared city, on the server's cores;
# 2. e2e: a fresh server pinned to those cores, durability on (every ack
#    after its fsync), takes the same city from `loadgen run` pinned to the
#    other cores, as fast as acks allow;
# 3. half load: a second city, open loop at half the e2e rate, for the
#    ack latency an operator plans with.
#
# Prints `ceiling=N e2e=N ratio=R`, then the latency and, from the
# server's own metrics, its CPU, the pricer's share of it during the
# burst, how long after the last ack everything was priced (each run
# waits for that, so the next starts on a quiet server) and peak RSS.
# Traffic stays on 127.0.0.1.
# Charging is off: no payment gateway is configured (the pricer still
# prices every ride).
#
#   scripts/bench.sh
#   RIDERS=100000 SERVER_CPUS=1 LOADGEN_CPUS=0 scripts/bench.sh
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
riders=${RIDERS:-40000}
cores=$(nproc)
server_cpus=${SERVER_CPUS:-$((cores > 1 ? 1 : 0))-$((cores - 1))}
loadgen_cpus=${LOADGEN_CPUS:-0}
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start_loopback_server "" metrics taskset -c "$server_cpus"

echo "farestream bench ($cores cores: server on $server_cpus, generator on $loadgen_cpus; $riders riders a city)"
"$bin" "${args[@]}" loadgen prepare --out "$work/full.bin" --riders "$riders" --seed 1 | sed 's/^/  /'
"$bin" "${args[@]}" loadgen prepare --out "$work/half.bin" --riders "$riders" --seed 2 | sed 's/^/  /'

taskset -c "$server_cpus" "$bin" "${args[@]}" loadgen ceiling --file "$work/full.bin" | tee "$work/ceiling.log" | sed 's/^/  /'
ceiling=$(grep -oE 'ceiling scans_per_sec=[0-9]+' "$work/ceiling.log" | cut -d= -f2)

metrics="http://127.0.0.1:$metrics_port/metrics"
run() {
  taskset -c "$loadgen_cpus" "$bin" "${args[@]}" loadgen run --server "127.0.0.1:$port" \
    --metrics-url "$metrics" "$@"
}
run --file "$work/full.bin" | tee "$work/e2e.log" | sed 's/^/  /'
e2e=$(grep -oE '^loadgen scans_per_sec=[0-9]+' "$work/e2e.log" | cut -d= -f2)
half=$((e2e / 2))
run --file "$work/half.bin" --rate "$half" | tee "$work/half.log" | sed 's/^/  /'
kill -TERM "$pid"; wait "$pid" || true

field() { grep -oE "$1=[0-9.]+" "$2" | cut -d= -f2; }
echo "ceiling=$ceiling e2e=$e2e ratio=$(awk -v a="$e2e" -v b="$ceiling" 'BEGIN { printf "%.2f", a / b }')"
echo "half_load_scans_per_s=$half p50_ms=$(field p50_ms "$work/half.log") p99_ms=$(field p99_ms "$work/half.log") p999_ms=$(field p999_ms "$work/half.log")"
echo "e2e_server_cpu_secs=$(field server_cpu_secs "$work/e2e.log") pricer_cpu_share=$(field pricer_cpu_share "$work/e2e.log") pricing_caught_up_secs=$(field pricing_caught_up_secs "$work/e2e.log") catch_up_cpu_secs=$(field catch_up_cpu_secs "$work/e2e.log") server_peak_rss_mib=$(field server_peak_rss_mib "$work/half.log")"
