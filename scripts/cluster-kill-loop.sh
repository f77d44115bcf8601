#!/usr/bin/env bash
# The cluster's kill loop (issue 23, docs/scale-out.md): three NATS
# servers in one JetStream cluster, two farestream nodes in cluster mode
# sharing one archive, the simulator's gateways pushing at one node and
# moving on to the other when theirs fails them. At random moments it
# kills -9 a farestream node or a NATS server and starts it again; at the
# end it audits the shared archive against every ack the gateways got:
#   kills=N node_kills=N nats_kills=N acked=N archived=N lost=0 duplicated=0 off_plan=0 ...
# and exits non-zero otherwise. Pricing the claimed stream is not built
# yet, so money is not audited here (docs/scale-out.md).
#
#   CLUSTER_KILLS=20 scripts/cluster-kill-loop.sh   # the full run (default 20)
#   CLUSTER_KILLS=2 scripts/cluster-kill-loop.sh    # what the test suite runs
#
# Without nats-server 2.10 or later it says so and passes, unless
# FARESTREAM_NATS=required. FARESTREAM_BIN names the binary; without it
# the release build is used. Traffic stays on 127.0.0.1.
set -euo pipefail

kills=${CLUSTER_KILLS:-20}
source "$(dirname "$0")/lib.sh"
if ! ensure_nats; then
  [ "${FARESTREAM_NATS:-}" = required ] && { echo "NATS is required and not installed"; exit 1; }
  echo "skipped: nats-server 2.10 or later is not installed"; exit 0
fi
resolve_farestream_bin
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; [ -n "${CLUSTER_KEEP:-}" ] || rm -rf "$work"' EXIT
start_nats_cluster "$work/nats"
urls=$(IFS=,; echo "${nats_urls[*]}")
port_a=$((20000 + RANDOM % 12000)) port_b=$((port_a + 1))

# Short leases, so a dead node's partitions move within seconds; short
# segments, so the archive keeps up; gateways that retry through every
# kill and give up on a node fast.
node_config() {
  cat <<TOML
[server]
listen_addr = "127.0.0.1:$2"
[metrics]
listen_addr = ""
[api]
listen_addr = ""
[gateway]
connect_timeout_ms = 1000
ack_timeout_ms = 3000
retry_attempts_max = 100000
retry_backoff_ms_initial = 50
retry_backoff_ms_max = 500
[cluster]
enabled = true
node_name = "$1"
nats_urls = [$urls]
partitions = 8
archive_dir = "$work/shared-archive"
append_ack_timeout_ms = 2000
lease_ttl_ms = 3000
lease_renew_interval_ms = 1000
lease_safety_margin_ms = 500
segment_age_max_ms = 1000
TOML
}
node_config node-a "$port_a" > "$work/a.toml"
node_config node-b "$port_b" > "$work/b.toml"
declare -A node_pid

# The binary runs directly (not in a subshell) so $! is its pid. A node
# that starts while its stream is between leaders (a NATS server just
# killed) tries again for cluster.start_wait_ms; one that still fails is
# started again, as its supervisor would, up to 10 times (failed_starts).
start_node() {
  local node=$1 try
  for try in $(seq 1 10); do
    : > "$work/$node.log"
    "$bin" --data-dir "$work/$node" --config "$work/$node.toml" serve >> "$work/$node.log" 2>&1 &
    node_pid[$node]=$!
    for _ in $(seq 1 300); do
      grep -q "farestream serving on" "$work/$node.log" && return 0
      kill -0 "${node_pid[$node]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "${node_pid[$node]}" 2>/dev/null || true
    wait "${node_pid[$node]}" 2>/dev/null || true
    cp "$work/$node.log" "$work/$node.failed-start-$try.log"
    node_restarts=$(( node_restarts + 1 ))
    sleep 1
  done
  echo "node $node did not start in 10 tries:"; tail -5 "$work/$node.log"; exit 1
}
node_restarts=0

export_payments_secret
start_node a
# Every node shares the first one's keys, TLS identity and fleet CA.
mkdir -p "$work/b"
cp -r "$work/a/keys" "$work/a/tls" "$work/a/fleet" "$work/b/"
start_node b

duration=$(( kills * 2 + 10 ))
"$bin" --data-dir "$work/a" --config "$work/a.toml" simulate --server "127.0.0.1:$port_a" \
  --also-server "127.0.0.1:$port_b" --riders $(( kills * 40 + 400 )) --gateways 4 --validators-per-gateway 4 \
  --duration-secs "$duration" --acked-file "$work/acked.txt" > "$work/simulate.log" 2>&1 &
simulate_pid=$!

node_kills=0 nats_kills=0
for _ in $(seq 1 "$kills"); do
  sleep "$(( RANDOM % 2 + 1 )).$(( RANDOM % 10 ))"
  if [ $(( RANDOM % 3 )) -eq 0 ]; then
    # A NATS server: one of three, so the quorum holds.
    i=$(( RANDOM % 3 ))
    kill -9 "${nats_pids[$i]}"
    wait "${nats_pids[$i]}" 2>/dev/null || true
    sleep "0.$(( RANDOM % 9 + 1 ))"
    start_nats_server "$work/nats" "$i"
    nats_kills=$(( nats_kills + 1 ))
  else
    node=$([ $(( RANDOM % 2 )) -eq 0 ] && echo a || echo b)
    kill -9 "${node_pid[$node]}"
    wait "${node_pid[$node]}" 2>/dev/null || true
    start_node "$node"
    node_kills=$(( node_kills + 1 ))
  fi
done

simulate_status=0
wait "$simulate_pid" || simulate_status=$?
if [ "$simulate_status" -ne 0 ]; then
  echo "the simulator reported errors:"; tail -5 "$work/simulate.log"; exit 1
fi
# The audit reads the shared archive, which the owners fill a segment's
# age after the last scan: it is run again while the archive still grows,
# at most CLUSTER_DRAIN_SECS (60 s).
audit() {
  "$bin" --data-dir "$work/a" --config "$work/a.toml" audit --acked-file "$work/acked.txt"
}
deadline=$(( $(date +%s) + ${CLUSTER_DRAIN_SECS:-60} ))
until result=$(audit 2>&1); do
  [ "$(date +%s)" -ge "$deadline" ] && break
  sleep 1
done
audit_status=0
result=$(audit 2>&1) || audit_status=$?
kill -TERM "${node_pid[a]}" "${node_pid[b]}"
wait "${node_pid[a]}" "${node_pid[b]}" 2>/dev/null || true
echo "kills=$kills node_kills=$node_kills nats_kills=$nats_kills failed_starts=$node_restarts $(head -1 <<< "$result")"
# The gateways' ack latency through the kills: a push a kill caught waits
# out gateway.ack_timeout_ms, then goes to the other node.
grep -o 'ack latency: .*' "$work/simulate.log" || true
acked=$(sed -n 's/.*acked=\([0-9]*\).*/\1/p' <<< "$result")
if [ "${acked:-0}" -eq 0 ]; then
  echo "nothing was acknowledged: the run proves nothing"; tail -5 "$work/simulate.log"; exit 1
fi
exit "$audit_status"
