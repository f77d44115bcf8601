#!/usr/bin/env bash
# What a payment-gateway outage costs: the server and a `farestream paygw`
# on loopback. Riders sign up through the account API and ride for a few
# seconds while the gateway answers every payment 503 for OUTAGE_SECS;
# the script samples the gateway's request counter every second of the
# outage, then restores it and times the drain of the backlog:
#   outage_s=30 requests=N per_s_mean=R per_s_max=M backlog=B drained_in_s=S
#
#   scripts/gateway-outage.sh
#   OUTAGE_SECS=30 RIDERS=2000 FARESTREAM_BIN=/path/to/other/build scripts/gateway-outage.sh
# To measure an older build's server, run the simulated gateway from this
# one (PAYGW_BIN: it counts requests at /v1/stats and signs its answers)
# and leave out the config keys the older build does not know
# (OTP_LIMITS=0); an older server reads its secret from payments.hmac_secret.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
paygw_bin=${PAYGW_BIN:-$bin}
riders=${RIDERS:-2000}
outage=${OUTAGE_SECS:-30}
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
pick_rig_ports
otp_limits=""
if [ "${OTP_LIMITS:-1}" = 1 ]; then
  otp_limits=$'otp_sends_per_client_per_hour_max = 10000000\notp_sends_per_minute_max = 10000000'
fi
cat > "$work/config.toml" <<TOML
[server]
listen_addr = "127.0.0.1:$port"
[metrics]
listen_addr = ""
[payments]
gateway_url = "http://127.0.0.1:$paygw_port"
[api]
listen_addr = "127.0.0.1:$api_port"
notifications_file = "$work/notifications.jsonl"
$otp_limits
TOML
args=(--data-dir "$work/data" --config "$work/config.toml")
export_payments_secret
start_paygw "$work/paygw" "$paygw_port" "$work/paygw.log" "$paygw_bin" --config "$work/config.toml"
"$bin" "${args[@]}" serve > "$work/server.log" 2>&1 &
wait_until_serving "$work/server.log" $!

simulate_until_signed_up "$work/simulate.log" "${args[@]}" simulate --accounts --paygw-dir "$work/paygw" --server "127.0.0.1:$port" \
  --riders "$riders" --duration-secs 5
paygw_faults '{"latency_ms":0,"unavailable_every":1,"retry_after_secs":0,"drop_answer_every":0}'
first=$(paygw_requests)
last=$first
max=0
for _ in $(seq 1 "$outage"); do
  sleep 1
  now=$(paygw_requests)
  (( now - last > max )) && max=$(( now - last ))
  last=$now
done
wait "$sim" || { cat "$work/simulate.log"; exit 1; }
backlog=$("$bin" "${args[@]}" charges | sed -n 's/.*undecided=\([0-9]*\).*/\1/p')
start=$(date +%s.%N)
paygw_faults '{"latency_ms":0,"unavailable_every":0,"retry_after_secs":0,"drop_answer_every":0}'
wait_until_charges_decided "${args[@]}"
end=$(date +%s.%N)
kill -TERM $(jobs -p) 2>/dev/null; wait 2>/dev/null || true
awk -v o="$outage" -v n="$(( last - first ))" -v m="$max" -v b="$backlog" -v a="$start" -v e="$end" \
  'BEGIN { printf "outage_s=%d requests=%d per_s_mean=%.1f per_s_max=%d backlog=%d drained_in_s=%.2f\n", o, n, n / o, m, b, e - a }'
