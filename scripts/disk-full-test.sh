#!/usr/bin/env bash
# A real full disk (not a failpoint): the server's data dir on a 3 MiB
# tmpfs, mostly taken by a filler file, under load from the simulator. The
# disk fills, the server answers BACKOFF; the filler is removed, the server
# resumes; at the end every acked scan must be archived exactly once.
# Needs root (it mounts a tmpfs). Traffic stays on 127.0.0.1.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
work=$(mktemp -d)
mount -t tmpfs -o size=3m tmpfs "$work"
trap 'kill -9 $(jobs -p) 2>/dev/null || true; umount "$work" 2>/dev/null; rm -rf "$work" "$work.toml" "$work.acked"' EXIT
port=$((20000 + RANDOM % 30000))
printf '[server]\nlisten_addr = "127.0.0.1:%s"\n[metrics]\nlisten_addr = ""\n[api]\nlisten_addr = ""\n[gateway]\nretry_attempts_max = 1000\nretry_backoff_ms_max = 300\n[archive]\nfile_age_secs_max = 2\n' "$port" > "$work.toml"
args=(--data-dir "$work/data" --config "$work.toml")

"$bin" "${args[@]}" serve > "$work.server.log" 2>&1 &
server=$!
wait_until_serving "$work.server.log" "$server"
dd if=/dev/zero of="$work/filler" bs=1k count=2500 2>/dev/null
"$bin" "${args[@]}" simulate --server "127.0.0.1:$port" --riders 3000 --duration-secs 8 --acked-file "$work.acked" > "$work.sim.log" 2>&1 &
simulate=$!
sleep 6
full=$(grep -c "disk full" "$work.server.log" || true)
rm "$work/filler"
wait "$simulate"
kill -TERM "$server"; wait "$server" || true
echo "disk-full warnings while full: $full"
grep "ack latency" "$work.sim.log"
"$bin" "${args[@]}" audit --acked-file "$work.acked"
rm -f "$work.server.log" "$work.sim.log"
[ "$full" -gt 0 ] || { echo "the disk never filled: the run proves nothing"; exit 1; }
