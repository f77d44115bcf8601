#!/usr/bin/env bash
# How fast charges reach the payment gateway: the server and a
# `farestream paygw` (its own process, ledger fsynced per payment) on
# loopback. Riders sign up through the account API and ride while the
# gateway answers every payment 503, so the day's charges pile up in the
# outbox; then the gateway recovers and the backlog drains. Prints the
# drain rate with the dispatcher's concurrency, and how fast the riders
# signed up (the account API: one-time code, agreement, deposit):
#   store=E signups=N signups_per_s=R charges=N drained_in_s=S charges_per_s=R concurrency=C connections=K
# MONEY_STORE=postgres runs the money store on a throwaway PostgreSQL
# cluster (fsync on, a Unix socket) instead of the embedded SQLite file;
# STORE_CONNECTIONS sets payments.money_store_connections_max there (1:
# every write behind one connection, as before it existed).
#
#   scripts/charges-throughput.sh
#   RIDERS=5000 CONCURRENCY=32 MONEY_STORE=postgres scripts/charges-throughput.sh
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
riders=${RIDERS:-3000}
concurrency=${CONCURRENCY:-16}
connections=${STORE_CONNECTIONS:-8}
engine=${MONEY_STORE:-sqlite}
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; [ -z "${pg_dir:-}" ] || pg_kill_immediate; rm -rf "$work"' EXIT
money_store=sqlite
if [ "$engine" = postgres ]; then
  start_test_postgres "$work/pg" || { echo "MONEY_STORE=postgres needs PostgreSQL (scripts/lib.sh ensure_postgres)"; exit 1; }
  money_store=$pg_url
fi
pick_rig_ports
cat > "$work/config.toml" <<TOML
[server]
listen_addr = "127.0.0.1:$port"
[metrics]
listen_addr = ""
[payments]
money_store = "$money_store"
gateway_url = "http://127.0.0.1:$paygw_port"
dispatch_concurrency_max = $concurrency
money_store_connections_max = $connections
retry_backoff_ms_initial = 100
retry_backoff_ms_max = 200
[api]
listen_addr = "127.0.0.1:$api_port"
notifications_file = "$work/notifications.jsonl"
# A whole city signs up from this one address.
otp_sends_per_client_per_hour_max = 10000000
otp_sends_per_minute_max = 10000000
TOML
args=(--data-dir "$work/data" --config "$work/config.toml")
export_payments_secret
start_paygw "$work/paygw" "$paygw_port" "$work/paygw.log" "$bin" --config "$work/config.toml"
"$bin" "${args[@]}" serve > "$work/server.log" 2>&1 &
wait_until_serving "$work/server.log" $!

signup_start=$(date +%s.%N)
simulate_until_signed_up "$work/simulate.log" "${args[@]}" simulate --accounts --paygw-dir "$work/paygw" --server "127.0.0.1:$port" \
  --riders "$riders" --duration-secs 5
signup_end=$(date +%s.%N)
paygw_faults '{"latency_ms":0,"unavailable_every":1,"retry_after_secs":0,"drop_answer_every":0}'
wait "$sim"
# Every ride priced before the clock starts (the pricer may lag on a
# slower store): the drain is the dispatcher's alone.
priced=-1
while :; do
  now=$("$bin" "${args[@]}" charges | sed -n 's/^charges=\([0-9]*\).*/\1/p')
  [ "$now" = "$priced" ] && break
  priced=$now
  sleep 1
done
pending=$("$bin" "${args[@]}" charges | sed -n 's/.*undecided=\([0-9]*\).*/\1/p')
start=$(date +%s.%N)
paygw_faults '{"latency_ms":0,"unavailable_every":0,"retry_after_secs":0,"drop_answer_every":0}'
wait_until_charges_decided "${args[@]}"
end=$(date +%s.%N)
kill -TERM $(jobs -p) 2>/dev/null; wait 2>/dev/null || true
awk -v e="$engine" -v r="$riders" -v sa="$signup_start" -v sb="$signup_end" \
  -v n="$pending" -v a="$start" -v b="$end" -v c="$concurrency" -v k="$connections" \
  'BEGIN { printf "store=%s signups=%d signups_per_s=%.0f charges=%d drained_in_s=%.2f charges_per_s=%.0f concurrency=%d connections=%d\n",
           e, r, r / (sb - sa), n, b - a, n / (b - a), c, k }'
