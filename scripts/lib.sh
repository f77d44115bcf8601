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
# with its log if it dies or takes more than 10 s.
wait_until_serving() {
  local log=$1 pid=$2
  for _ in $(seq 1 100); do
    grep -q "farestream serving on" "$log" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server failed to start:"; cat "$log"; exit 1
    fi
    sleep 0.1
  done
  echo "server did not start within 10 s:"; cat "$log"; exit 1
}

# Sets the simulated payment gateway's faults (JSON) at URL.
paygw_faults() {
  local url=$1 faults=$2
  curl -sf -X PUT -H 'content-type: application/json' -d "$faults" "$url/v1/faults"
}

# Starts `simulate --accounts` in the background (its pid in $sim, its
# output in LOG) with the given arguments, and returns once its riders
# have signed up; exits with its output if it dies first.
simulate_until_signed_up() {
  local log=$1; shift
  "$bin" "$@" > "$log" 2>&1 &
  sim=$!
  until grep -q "signed up" "$log"; do
    kill -0 "$sim" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
  done
}

# Sets $port (QUIC), $api_port and $paygw_port: three loopback ports in a
# row, below Linux's ephemeral range (32768 and up), so no socket the kernel
# numbers itself (a test's client, an HTTP connection) can hold one.
pick_rig_ports() {
  port=$((20000 + RANDOM % 12000))
  api_port=$((port + 1))
  paygw_port=$((port + 2))
}
