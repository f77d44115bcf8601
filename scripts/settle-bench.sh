#!/usr/bin/env bash
# The settlement at scale: generates a service day of SCANS scans (10
# million by default) straight into the archive formats with `farestream
# gen-archive` (scans through the production writer, each rider's charges
# planned by the core, declines as arrears), also written with the previous
# encoding for the size and write-speed comparison; then settles it under
# /usr/bin/time (time and peak memory), recomputes the settlement in DuckDB
# (scripts/settle-duckdb.py: every rider's fares, caps and charges from the
# same files, checked against what settle wrote) for the time ratio, and
# runs the same per-rider query in `farestream query` and in DuckDB
# (Python's duckdb package). Prints one line per figure.
#
#   scripts/settle-bench.sh
#   SCANS=1000000 scripts/settle-bench.sh
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
scans=${SCANS:-10000000}
date=${DATE:-2026-11-25}
# Under WORK_DIR when given (a disk with room), in a folder of its own:
# only that folder is removed at the end.
work=$(mktemp -d "${WORK_DIR:-${TMPDIR:-/tmp}}/farestream-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
data="$work/data"

echo "== generating $scans scans for $date in $data"
"$bin" --data-dir "$data" gen-archive --scans "$scans" --date "$date" --compare-baseline
du -sh "$data/archive/scans" "$data"/encodings/* "$data/archive/charges" | sed 's/^/size: /'

echo "== settling"
/usr/bin/time -o "$work/settle.time" -f "%e %M" "$bin" --data-dir "$data" settle --date "$date" | tail -3
read -r settle_s settle_kib < "$work/settle.time"
echo "settle: wall_s=$settle_s peak_rss_kib=$settle_kib"

echo "== the same settlement recomputed in DuckDB, checked against settle's tables"
python3 "$(dirname "$0")/settle-duckdb.py" "$data" "$date" | tee "$work/duckdb.out"
duckdb_s=$(sed -n 's/^duckdb settlement: wall_s=\([0-9.]*\).*/\1/p' "$work/duckdb.out")
python3 -c "import sys; s, d = map(float, sys.argv[1:]); print(f'settle vs duckdb: {s:.2f} s vs {d:.2f} s = {s / d:.2f}x')" \
  "$settle_s" "$duckdb_s"

per_rider="SELECT card_id, count(*) AS rides FROM scans WHERE service_date = DATE '$date' AND status = 'accepted' GROUP BY card_id ORDER BY rides DESC, card_id LIMIT 5"
echo "== the per-rider query in farestream query (DataFusion)"
/usr/bin/time -f "farestream query: wall_s=%e peak_rss_kib=%M" "$bin" --data-dir "$data" query "$per_rider"

echo "== the same query in DuckDB"
python3 - "$data" "$date" <<'PY'
import sys, time, duckdb
data, date = sys.argv[1], sys.argv[2]
con = duckdb.connect()
sql = f"""SELECT card_id, count(*) AS rides
FROM read_parquet('{data}/archive/scans/*/*.parquet', hive_partitioning = true)
WHERE service_date = DATE '{date}' AND status = 'accepted'
GROUP BY card_id ORDER BY rides DESC, card_id LIMIT 5"""
start = time.perf_counter()
rows = con.execute(sql).fetchall()
print(f"duckdb: wall_s={time.perf_counter() - start:.2f} (duckdb {duckdb.__version__})")
for r in rows:
    print(r)
# One card's scans: what bloom filters on card_id are for.
card = rows[0][0]
for label, root in [("chosen encoding", f"{data}/archive/scans"), ("without bloom filters", f"{data}/encodings/zstd_without_bloom_filters")]:
    lookup = f"SELECT count(*) FROM read_parquet('{root}/*/*.parquet', hive_partitioning = true) WHERE card_id = {card}"
    con.execute(lookup).fetchall()
    start = time.perf_counter()
    for _ in range(20):
        n = con.execute(lookup).fetchall()[0][0]
    print(f"duckdb card lookup, {label}: {(time.perf_counter() - start) / 20 * 1000:.1f} ms ({n} scans)")
PY
