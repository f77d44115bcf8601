#!/usr/bin/env bash
# The cluster's kill loop (issue 23, docs/scale-out.md): three NATS
# servers in one JetStream cluster, a throwaway PostgreSQL for the money
# store, a `farestream paygw` as the payment gateway, and two farestream
# nodes in cluster mode sharing one archive and one store. The riders
# sign up through node a's account API; the simulator's gateways push at
# one node and move on to the other when theirs fails them. At random
# moments it kills -9 a farestream node or a NATS server and starts it
# again; at the end it audits the shared archive against every ack the
# gateways got, and the charges against the archived rides and the
# payment gateway's ledger:
#   kills=N node_kills=N nats_kills=N acked=N archived=N lost=0 duplicated=0 off_plan=0 charges=N double_charged=0 unpriced_rides=0 ...
# then settles every day it touched from the shared archive, and exits
# non-zero when any of it fails.
#
#   CLUSTER_KILLS=20 scripts/cluster-kill-loop.sh   # the full run (default 20)
#   CLUSTER_KILLS=2 scripts/cluster-kill-loop.sh    # what the test suite runs
#   CLUSTER_ARCHIVE=s3 scripts/cluster-kill-loop.sh # the shared archive in a bucket
#
# CLUSTER_ARCHIVE=s3 puts the shared archive in a bucket of moto's S3
# server on loopback (scripts/lib.sh's ensure_s3) in place of a folder:
# the nodes write there, and the audit and the settlement read it there.
#
# Without nats-server 2.10 or later, or PostgreSQL, it says so and
# passes, unless FARESTREAM_NATS=required (FARESTREAM_POSTGRES=required). FARESTREAM_BIN names the binary; without it
# the release build is used. Traffic stays on 127.0.0.1.
set -euo pipefail

kills=${CLUSTER_KILLS:-20}
source "$(dirname "$0")/lib.sh"
if ! ensure_nats; then
  [ "${FARESTREAM_NATS:-}" = required ] && { echo "NATS is required and not installed"; exit 1; }
  echo "skipped: nats-server 2.10 or later is not installed"; exit 0
fi
if [ "${CLUSTER_ARCHIVE:-}" = s3 ] && ! ensure_s3; then
  [ "${FARESTREAM_S3:-}" = required ] && { echo "S3 is required and moto's server is not installed"; exit 1; }
  echo "skipped: moto's S3 server is not installed (pip install 'moto[server]')"; exit 0
fi
resolve_farestream_bin
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; [ -z "${pg_dir:-}" ] || pg_kill_immediate; [ -n "${CLUSTER_KEEP:-}" ] || rm -rf "$work"' EXIT
start_test_postgres_or_skip "$work/pg"
start_nats_cluster "$work/nats"
urls=$(IFS=,; echo "${nats_urls[*]}")
pick_rig_ports
port_a=$port port_b=$((port + 3))
archive_toml="archive_dir = \"$work/shared/archive\""
if [ "${CLUSTER_ARCHIVE:-}" = s3 ]; then
  start_s3_bucket "$work/s3" farestream-loop
  archive_toml=$(printf '%s\n' "archive_dir = \"s3://farestream-loop/city-1\"" \
    "archive_s3_endpoint = \"$s3_endpoint\"" "archive_s3_allow_http = true" \
    "archive_s3_credentials_file = \"$s3_credentials\"")
fi

# Short leases, so a dead node's partitions move within seconds; short
# segments, so the archive keeps up; gateways that retry through every
# kill and give up on a node fast. Node a serves the account API ($3).
node_config() {
  cat <<TOML
[server]
listen_addr = "127.0.0.1:$2"
[metrics]
listen_addr = ""
[api]
listen_addr = "$3"
notifications_file = "$work/notifications.jsonl"
otp_sends_per_client_per_hour_max = 10000000
otp_sends_per_minute_max = 10000000
[payments]
money_store = "$pg_url"
gateway_url = "http://127.0.0.1:$paygw_port"
request_timeout_ms = 2000
dispatch_lease_ms = 3000
retry_backoff_ms_initial = 50
retry_backoff_ms_max = 500
charges_archive_interval_ms = 500
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
$archive_toml
keys_dir = "$work/shared/keys"
append_ack_timeout_ms = 2000
lease_ttl_ms = 3000
lease_renew_interval_ms = 1000
lease_safety_margin_ms = 500
segment_age_max_ms = 1000
claim_checkpoint_interval_ms = 5000
TOML
}
node_config node-a "$port_a" "127.0.0.1:$api_port" > "$work/a.toml"
node_config node-b "$port_b" "" > "$work/b.toml"
declare -A node_pid

# The binary runs directly (not in a subshell) so $! is its pid. A node
# that starts while its stream is between leaders (a NATS server just
# killed) tries again for cluster.start_wait_ms; one that still fails is
# started again, as its supervisor would, up to 10 times (failed_starts).
start_node() {
  local node=$1 try
  for try in $(seq 1 10); do
    # Every start's log is kept, for the failover times at the end.
    [ -f "$work/$node.log" ] && cat "$work/$node.log" >> "$work/$node.all.log"
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
  # The last lines that say why, not a backtrace's frames.
  echo "node $node did not start in 10 tries:"
  grep -v -E '^ +([0-9]+: |at )' "$work/$node.log" | tail -8
  explain_nats_cluster "$work/nats"
  exit 1
}
node_restarts=0

export_payments_secret
start_paygw "$work/paygw" "$paygw_port" "$work/paygw.log" "$bin" --config "$work/a.toml"
start_node a
# Every node shares the first one's TLS identity and fleet CA (copied)
# and its key store (cluster.keys_dir, the one every node opens).
mkdir -p "$work/b"
cp -r "$work/a/tls" "$work/a/fleet" "$work/b/"
start_node b

duration=$(( kills * 2 + 10 ))
"$bin" --data-dir "$work/a" --config "$work/a.toml" simulate --server "127.0.0.1:$port_a" \
  --also-server "127.0.0.1:$port_b" --accounts --paygw-dir "$work/paygw" --riders $(( kills * 40 + 400 )) \
  --gateways 4 --validators-per-gateway 4 --duration-secs "$duration" --acked-file "$work/acked.txt" \
  > "$work/simulate.log" 2>&1 &
simulate_pid=$!
wait_signed_up "$work/simulate.log" "$simulate_pid"

node_kills=0 nats_kills=0
for _ in $(seq 1 "$kills"); do
  sleep "$(( RANDOM % 2 + 1 )).$(( RANDOM % 10 ))"
  if [ $(( RANDOM % 3 )) -eq 0 ]; then
    # A NATS server: one of three, so the quorum holds.
    i=$(( RANDOM % 3 ))
    kill -9 "${nats_pids[$i]}"
    wait "${nats_pids[$i]}" 2>/dev/null || true
    sleep "0.$(( RANDOM % 9 + 1 ))"
    restart_nats_server "$work/nats" "$i" || { explain_nats_cluster "$work/nats"; exit 1; }
    nats_kills=$(( nats_kills + 1 ))
  else
    node=$([ $(( RANDOM % 2 )) -eq 0 ] && echo a || echo b)
    date -u +%s.%N >> "$work/node-kills.txt"
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
# age after the last scan, and the charges, which their pricers write and
# the dispatchers decide: it is run again while they still grow, at most
# CLUSTER_DRAIN_SECS (60 s).
wait_charges_decided 30 --data-dir "$work/a" --config "$work/a.toml"
audit() {
  "$bin" --data-dir "$work/a" --config "$work/a.toml" audit --acked-file "$work/acked.txt" --paygw-dir "$work/paygw"
}
deadline=$(( $(date +%s) + ${CLUSTER_DRAIN_SECS:-60} ))
until result=$(audit 2>&1); do
  [ "$(date +%s)" -ge "$deadline" ] && break
  sleep 1
done
audit_status=0
result=$(audit 2>&1) || audit_status=$?
kill -TERM "${node_pid[a]}" "${node_pid[b]}" "$paygw_pid"
wait "${node_pid[a]}" "${node_pid[b]}" "$paygw_pid" 2>/dev/null || true
echo "kills=$kills node_kills=$node_kills nats_kills=$nats_kills failed_starts=$node_restarts $(head -1 <<< "$result")"
# The gateways' ack latency through the kills: a push a kill caught waits
# out gateway.ack_timeout_ms, then goes to the other node.
grep -o 'ack latency: .*' "$work/simulate.log" || true
# The partition failover time through the kills, from a node's kill to
# the partitions taken in the next two leases' time to live (by either
# node): the first (the dead node's leases age out together, so most of
# them move then) and the last (which includes the restarted node taking
# its share back). Kills close together share their takes; the two-node
# test measures one failover alone.
cat "$work/a.log" >> "$work/a.all.log"; cat "$work/b.log" >> "$work/b.all.log"
python3 - "$work/node-kills.txt" "$work/a.all.log" "$work/b.all.log" <<'PY' || true
import re, sys, datetime
kills = [float(line) for line in open(sys.argv[1]) if line.strip()]
taken = []
for path in sys.argv[2:]:
    for line in open(path, errors="replace"):
        if "partition taken" in line:
            stamp = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
            if stamp:
                at = datetime.datetime.fromisoformat(stamp.group(1)[:26]).replace(tzinfo=datetime.timezone.utc)
                taken.append(at.timestamp())
after = [[t - k for t in taken if k <= t <= k + 6.0] for k in kills]
after = [seen for seen in after if seen]
first, last = sorted(min(seen) for seen in after), sorted(max(seen) for seen in after)
if after:
    p50 = lambda times: times[len(times) // 2]
    print(f"partition failover over {len(after)} node kills (lease time to live 3 s): first partition taken "
          f"p50 {p50(first):.2f} s, max {first[-1]:.2f} s; last p50 {p50(last):.2f} s, max {last[-1]:.2f} s")
PY
acked=$(sed -n 's/.*acked=\([0-9]*\).*/\1/p' <<< "$result")
if [ "${acked:-0}" -eq 0 ]; then
  echo "nothing was acknowledged: the run proves nothing"; tail -5 "$work/simulate.log"; exit 1
fi
[ "$audit_status" -eq 0 ] || exit "$audit_status"
# Every day the run touched settles from the shared archive without a
# break (exit 3 names them).
days=$("$bin" --data-dir "$work/a" --config "$work/a.toml" query --format csv \
  "SELECT DISTINCT CAST(service_date AS VARCHAR) AS day FROM scans ORDER BY day" | tail -n +2)
for day in $days; do
  if ! settled=$("$bin" --data-dir "$work/a" --config "$work/a.toml" settle --date "$day" 2>&1); then
    echo "settle $day failed:"; echo "$settled" | tail -5; exit 1
  fi
  echo "settle $day: $(grep -o 'reconciled: no breaks' <<< "$settled" || echo "$settled" | tail -1)"
done
# The shared archive as analysts read it (docs/archive.md), with DuckDB
# and pyarrow when installed: the same scans and charges `query` counts.
# (A bucket's outside readers are tests/it/cluster_s3.rs's.)
if [ "${CLUSTER_ARCHIVE:-}" != s3 ] && python3 -c "import duckdb, pyarrow" 2>/dev/null; then
  counted() {
    "$bin" --data-dir "$work/a" --config "$work/a.toml" query --format csv "SELECT count(*) AS n FROM $1" | tail -1
  }
  # The reader's JSON holds a figure a rider: through a pipe, not argv.
  read -r duckdb_scans pyarrow_charges < <(python3 "$(dirname "$0")/read-archives.py" "$work/shared" | python3 -c '
import json, sys
found = json.load(sys.stdin)
print(found["duckdb_scans"], found["pyarrow_read_table_charges"])')
  echo "outside readers: scans=$duckdb_scans charges=$pyarrow_charges"
  if [ "$duckdb_scans" != "$(counted scans)" ] || [ "$pyarrow_charges" != "$(counted charges)" ]; then
    echo "DuckDB and pyarrow read other counts than query: scans $(counted scans), charges $(counted charges)"; exit 1
  fi
fi
