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
