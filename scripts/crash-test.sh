#!/usr/bin/env bash
# Crash test: runs the server under load from the simulator, kills it with
# SIGKILL at random moments, restarts it, and at the end checks the archive
# against every ack the gateways received, and the charges against the
# rides and against the ledger of the payment gateway, a `farestream paygw`
# running as its own process that the kills never touch. The riders sign
# up through the account API first and ride on the keys it issues. Prints
#   kills=N acked=N archived=N lost=0 duplicated=0 off_plan=0 charges=N double_charged=0 unpriced_rides=0 ...
# and exits non-zero otherwise.
#
#   CRASH_KILLS=100 scripts/crash-test.sh      # the full run (default 100 kills)
#   CRASH_KILLS=3 scripts/crash-test.sh        # what the test suite runs
#   CRASH_MONEY_STORE=postgres CRASH_PG_KILLS=5 scripts/crash-test.sh
#       # the money store on a throwaway PostgreSQL cluster, which is also
#       # crashed (immediate shutdown) that many times while the server runs
#       # (in place of that many of the server's kills) and started again;
#       # without PostgreSQL installed it says so and passes, unless
#       # FARESTREAM_POSTGRES=required
#
# FARESTREAM_BIN names the binary; without it the release build is used
# (and built if missing). Traffic stays on 127.0.0.1.
set -euo pipefail

kills=${CRASH_KILLS:-100}
source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
work=$(mktemp -d)
pg_kills=${CRASH_PG_KILLS:-0}
trap 'kill -9 $(jobs -p) 2>/dev/null || true; [ -z "${pg_dir:-}" ] || pg_kill_immediate; [ -n "${CRASH_KEEP:-}" ] || rm -rf "$work"' EXIT
pick_rig_ports
money_store=sqlite
if [ "${CRASH_MONEY_STORE:-sqlite}" = postgres ]; then
  start_test_postgres_or_skip "$work/pg"
  money_store=$pg_url
fi

# Short timeouts so a gateway notices a dead server fast, many retries so it
# keeps trying through every restart, and frequent archive cuts so kills
# land between rename and checkpoint too.
cat > "$work/crash.toml" <<TOML
[server]
listen_addr = "127.0.0.1:$port"
[metrics]
listen_addr = ""
[gateway]
connect_timeout_ms = 1000
ack_timeout_ms = 1500
retry_attempts_max = 100000
retry_backoff_ms_initial = 50
retry_backoff_ms_max = 500
[archive]
file_age_secs_max = 1
[payments]
money_store = "$money_store"
gateway_url = "http://127.0.0.1:$paygw_port"
request_timeout_ms = 2000
dispatch_lease_ms = 3000
retry_backoff_ms_initial = 50
retry_backoff_ms_max = 500
pricer_poll_interval_ms = 50
charges_archive_interval_ms = 500
[api]
listen_addr = "127.0.0.1:$api_port"
notifications_file = "$work/notifications.jsonl"
# A whole city signs up from this one address.
otp_sends_per_client_per_hour_max = 10000000
otp_sends_per_minute_max = 10000000
TOML

# The binary runs directly (not in a function's subshell) so $! is its pid.
args=(--data-dir "$work/data" --config "$work/crash.toml")

start_server() {
  : > "$work/server.log"
  "$bin" "${args[@]}" serve >> "$work/server.log" 2>&1 &
  server_pid=$!
  wait_until_serving "$work/server.log" "$server_pid"
}

export_payments_secret
start_paygw "$work/paygw" "$paygw_port" "$work/paygw.log" "$bin" --config "$work/crash.toml"
start_server
duration=$(( kills + 3 ))
"$bin" "${args[@]}" simulate --accounts --paygw-dir "$work/paygw" --server "127.0.0.1:$port" --riders $(( kills * 60 + 300 )) --gateways 4 \
  --validators-per-gateway 4 --duration-secs "$duration" --acked-file "$work/acked.txt" \
  > "$work/simulate.log" 2>&1 &
simulate_pid=$!
wait_signed_up "$work/simulate.log" "$simulate_pid"

# PostgreSQL's crashes are spread among the server's kills, each while the
# server runs: its connections end under it and must be made again.
pg_every=$(( pg_kills > 0 ? (kills + pg_kills - 1) / pg_kills : 0 ))
pg_killed=0
for i in $(seq 1 "$kills"); do
  sleep "0.$(( RANDOM % 8 + 2 ))"
  if [ "$pg_every" -gt 0 ] && [ $(( i % pg_every )) -eq 0 ] && [ "$pg_killed" -lt "$pg_kills" ]; then
    pg_kill_immediate
    sleep "0.$(( RANDOM % 5 + 1 ))"
    pg_start
    pg_killed=$(( pg_killed + 1 ))
    continue
  fi
  kill -9 "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  start_server
done

simulate_status=0
wait "$simulate_pid" || simulate_status=$?
# Every charge decided before the server stops (leases of charges in
# flight at a kill run out first); stuck for CRASH_DRAIN_STALL_SECS
# leaves the rest to the audit, which counts them against --undecided-max.
wait_charges_decided "${CRASH_DRAIN_STALL_SECS:-30}" "${args[@]}"
kill -TERM "$server_pid" "$paygw_pid"
wait "$server_pid" "$paygw_pid" || true

audit_status=0
result=$("$bin" "${args[@]}" audit --acked-file "$work/acked.txt" --paygw-dir "$work/paygw") || audit_status=$?
echo "kills=$kills pg_kills=$pg_killed $result"
acked=$(sed -n 's/.*acked=\([0-9]*\).*/\1/p' <<< "$result")
if [ "${acked:-0}" -eq 0 ]; then
  echo "nothing was acknowledged: the run proves nothing"; exit 1
fi
# The gateways retry through every kill: a batch the simulator gave up on
# is a failure, not a footnote.
if [ "$simulate_status" -ne 0 ]; then
  echo "the simulator reported errors:"; tail -5 "$work/simulate.log"; exit 1
fi
# Every day the run touched settles without a break (exit 3 names them).
for day_dir in "$work"/data/archive/scans/service_date=*; do
  [ -d "$day_dir" ] || continue
  day=${day_dir##*=}
  if ! settled=$("$bin" "${args[@]}" settle --date "$day" 2>&1); then
    echo "settle $day failed:"; echo "$settled" | tail -5; exit 1
  fi
  echo "settle $day: $(grep -o 'reconciled: no breaks' <<< "$settled" || echo "$settled" | tail -1)"
done
exit "$audit_status"
