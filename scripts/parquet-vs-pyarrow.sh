#!/usr/bin/env bash
# The scans archive's writer against pyarrow's, same rows, same encoding:
# generates a service day of SCANS scans (2 million by default) with
# `farestream gen-archive`, which writes it through the production
# ArchiveWriter (rows in, each row group sorted by validator and encoded,
# bloom filter on card_id, fsynced, renamed in) and prints its write time;
# then pyarrow (installed when missing) reads those files and writes the
# same rows again in the same order with the same settings, read from
# farestream's files: ZSTD level 3, the same columns with and without a
# dictionary, the same encodings, row groups of the same size, bloom
# filters on the same columns at the same false positive rate, the page
# index. pyarrow starts from an Arrow table
# already in memory and in order; it is timed twice, writing only, and
# sorting each row group first as the archiver does. Prints bytes a row
# and rows a second for each, and the ratio.
#
#   scripts/parquet-vs-pyarrow.sh
#   SCANS=10000000 scripts/parquet-vs-pyarrow.sh
set -euo pipefail

source "$(dirname "$0")/lib.sh"
resolve_farestream_bin
ensure_python_readers
scans=${SCANS:-2000000}
date=${DATE:-2026-11-25}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data="$work/data"

echo "== generating $scans scans for $date with farestream gen-archive"
"$bin" --data-dir "$data" gen-archive --scans "$scans" --date "$date" | tee "$work/gen.txt"
farestream_rate=$(sed -n 's/.*written in [0-9.]* s (\([0-9]*\) scans\/s).*/\1/p' "$work/gen.txt")
[ -n "$farestream_rate" ] || { echo "no write rate in gen-archive's output"; exit 1; }

echo "== the same rows through pyarrow"
python3 - "$data/archive/scans" "$work" "$farestream_rate" <<'PY'
import glob, os, sys, time
import pyarrow as pa, pyarrow.parquet as pq
if int(pa.__version__.split(".")[0]) < 24:
    sys.exit(f"pyarrow {pa.__version__} cannot write bloom filters; 24 or later is needed")
root, work, farestream_rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
files = sorted(glob.glob(f"{root}/*/*.parquet"))
farestream_bytes = sum(os.path.getsize(f) for f in files)
table = pa.concat_tables([pq.read_table(f) for f in files]).combine_chunks()
metas = [pq.ParquetFile(f).metadata for f in files]
# farestream's settings, read from its own files so the two cannot drift:
# each column's dictionary or encoding (the one that is not the levels'
# RLE), which columns carry a bloom filter, the row group size. Only the
# false positive rate is not in a file: BLOOM_FILTER_FALSE_POSITIVES in
# crates/ingest/src/archive/parquet_writer.rs.
bloom_false_positives = 0.03
first = [metas[0].row_group(0).column(i) for i in range(metas[0].num_columns)]
row_group = max(m.row_group(g).num_rows for m in metas for g in range(m.num_row_groups))
dictionary = [c.path_in_schema for c in first if c.has_dictionary_page]
encodings = {c.path_in_schema: next(e for e in c.encodings if e != "RLE") for c in first if not c.has_dictionary_page}
bloom = {c.path_in_schema: {"fpp": bloom_false_positives, "ndv": row_group} for c in first if c.bloom_filter_offset}
settings = dict(compression="zstd", compression_level=3, row_group_size=row_group, use_dictionary=dictionary,
                column_encoding=encodings, write_page_index=True, bloom_filter_options=bloom)
print(f"settings read from farestream's files: row groups of {row_group}, dictionaries on {', '.join(dictionary)}; "
      f"encodings {encodings}; bloom filters on {', '.join(bloom)}")

def write(label, sort_first):
    out = f"{work}/pyarrow-{label}.parquet"
    started = time.perf_counter()
    if sort_first:
        groups = [table.slice(at, row_group).sort_by([("validator_id", "ascending"), ("validator_seq", "ascending")])
                  for at in range(0, table.num_rows, row_group)]
        data = pa.concat_tables(groups)
    else:
        data = table
    pq.write_table(data, out, **settings)
    with open(out, "rb") as f:
        os.fsync(f.fileno())
    secs = time.perf_counter() - started
    return secs, os.path.getsize(out)

rows = table.num_rows
print(f"farestream: {farestream_bytes / rows:.2f} bytes a row, {farestream_rate:,.0f} rows/s")
by_column = {}
for meta in metas:
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            by_column[chunk.path_in_schema] = by_column.get(chunk.path_in_schema, 0) + chunk.total_compressed_size
columns = sorted(by_column.items(), key=lambda kv: -kv[1])
print("farestream bytes a row by column:", ", ".join(f"{name} {size / rows:.2f}" for name, size in columns),
      f"; bloom filter, page index and footer {(farestream_bytes - sum(by_column.values())) / rows:.2f}")
for label, sort_first in [("write", False), ("sort+write", True)]:
    secs, size = write(label, sort_first)
    print(f"pyarrow {pa.__version__} {label}: {size / rows:.2f} bytes a row, {rows / secs:,.0f} rows/s ({secs:.2f} s); "
          f"farestream's speed against it: {farestream_rate * secs / rows:.2f}x")
PY
