#!/usr/bin/env bash
# A real full disk (not a failpoint): the server's data dir (the log, the
# archive and the money store) on a 64 MiB tmpfs, all but FREE_KIB of it
# taken by a filler file, under load from the simulator. The disk fills:
# the server answers BACKOFF and the pricer's money-store writes fail; the
# filler is removed and both resume. At the end every acked scan must be
# archived exactly once, every ride priced once, and every charge decided
# (the simulator's riders have no accounts: `no_account`, never sent).
# Needs root (it mounts a tmpfs). Traffic stays on 127.0.0.1.
#
#   scripts/disk-full-test.sh
#   # disk-full warnings while full: N; money-store writes refused: M
#   # acked=… archived=… lost=0 duplicated=0 off_plan=0 charges=… undecided=0 …
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
FREE_KIB=${FREE_KIB:-1024}
work=$(mktemp -d)
mkdir "$work/disk"
mount -t tmpfs -o size=64m tmpfs "$work/disk"
trap 'kill -9 $(jobs -p) 2>/dev/null || true; umount "$work/disk" 2>/dev/null; rm -rf "$work"' EXIT
pick_rig_ports
cat > "$work/full.toml" <<TOML
[server]
listen_addr = "127.0.0.1:$port"
[metrics]
listen_addr = ""
[api]
listen_addr = ""
[gateway]
retry_attempts_max = 1000
retry_backoff_ms_max = 300
[archive]
file_age_secs_max = 2
[payments]
gateway_url = "http://127.0.0.1:$paygw_port"
pricer_poll_interval_ms = 100
TOML
args=(--data-dir "$work/disk/data" --config "$work/full.toml")

export_payments_secret
start_paygw "$work/paygw" "$paygw_port" "$work/paygw.log" "$bin" --config "$work/full.toml"
"$bin" "${args[@]}" serve > "$work/server.log" 2>&1 &
server=$!
wait_until_serving "$work/server.log" "$server"
avail_kib=$(df --output=avail -k "$work/disk" | tail -1)
dd if=/dev/zero of="$work/disk/filler" bs=1k count=$(( avail_kib - FREE_KIB )) 2>/dev/null
"$bin" "${args[@]}" simulate --server "127.0.0.1:$port" --riders 3000 --duration-secs 8 \
  --acked-file "$work/acked.txt" > "$work/sim.log" 2>&1 &
simulate=$!
sleep 6
full=$(grep -c "disk full" "$work/server.log" || true)
store_full=$(grep -c "database or disk is full" "$work/server.log" || true)
rm "$work/disk/filler"
wait "$simulate" || { cat "$work/sim.log"; echo "the simulation failed"; exit 1; }
# Pricing resumes: wait (at most a minute) for every charge to be decided.
for _ in $(seq 1 600); do
  undecided=$("$bin" "${args[@]}" charges | sed -n 's/.*undecided=\([0-9]*\).*/\1/p')
  [ "${undecided:-1}" = 0 ] && break
  sleep 0.1
done
kill -TERM "$server"; wait "$server" || true
echo "disk-full warnings while full: $full; money-store writes refused: $store_full"
grep "ack latency" "$work/sim.log"
"$bin" "${args[@]}" audit --acked-file "$work/acked.txt" --paygw-dir "$work/paygw"
[ "$full" -gt 0 ] || { echo "the disk never filled: the run proves nothing"; exit 1; }
