#!/usr/bin/env python3
"""Reads farestream's archives the way docs/archive.md and docs/analytics.md
tell analysts to, with DuckDB and pyarrow, and prints what it found as one
JSON object. `tests/it/outside_readers.rs` runs it against a live server's
data directory (an open archive file in `scans/.tmp/` included) and checks
every figure against what farestream itself wrote.

    python3 scripts/read-archives.py DATA_DIR
"""

import json
import sys

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def main(data_dir):
    archive = f"{data_dir}/archive"
    con = duckdb.connect()
    found = {}

    def one(sql):
        return con.execute(sql).fetchall()[0][0]

    # The globs an analyst types; neither may trip over a file being written.
    scans = f"read_parquet('{archive}/scans/*/*.parquet', hive_partitioning = true)"
    found["duckdb_scans"] = one(f"SELECT count(*) FROM {scans}")
    found["duckdb_scans_recursive"] = one(
        f"SELECT count(*) FROM read_parquet('{archive}/scans/**/*.parquet', hive_partitioning = true)"
    )
    found["duckdb_service_date_type"] = one(f"SELECT typeof(service_date) FROM {scans} LIMIT 1")
    found["duckdb_scans_by_date"] = {
        str(day): n for day, n in con.execute(f"SELECT service_date, count(*) FROM {scans} GROUP BY ALL").fetchall()
    }
    # Every archived time converts (a hostile validator clock included).
    low, high = con.execute(f"SELECT epoch_ms(min(scanned_at)), epoch_ms(max(scanned_at)) FROM {scans}").fetchall()[0]
    found["duckdb_scanned_at_range"] = [low, high]

    # pyarrow, both ways the issue tried.
    found["pyarrow_dataset_scans"] = ds.dataset(f"{archive}/scans", partitioning="hive").count_rows()
    found["pyarrow_read_table_scans"] = pq.read_table(f"{archive}/scans").num_rows
    found["pyarrow_read_table_charges"] = pq.read_table(f"{archive}/charges").num_rows
    found["pyarrow_read_table_settlements"] = pq.read_table(f"{archive}/settlements").num_rows

    charges = f"read_parquet('{archive}/charges/*/*.parquet', hive_partitioning = true)"
    found["duckdb_charges_succeeded_cents"] = one(
        f"SELECT coalesce(sum(amount_cents), 0) FROM {charges} WHERE outcome = 'succeeded'"
    )
    settlements = f"read_parquet('{archive}/settlements/*/*.parquet', hive_partitioning = true)"
    found["duckdb_settlements_due_cents"] = {
        f"{day}/{card}": due
        for day, card, due in con.execute(
            f"SELECT service_date, card_id, sum(due_cents) FROM {settlements} GROUP BY ALL"
        ).fetchall()
    }

    # Ids as every engine reads them: signed 64-bit, not unsigned (Spark,
    # Trino, BigQuery and Java have no unsigned 64-bit integer).
    found["duckdb_id_types"] = {
        column: one(f"SELECT typeof({column}) FROM {scans} LIMIT 1") for column in ["card_id", "validator_seq"]
    }
    found["duckdb_id_types"]["charges.card_id"] = one(f"SELECT typeof(card_id) FROM {charges} LIMIT 1")
    found["pyarrow_id_types"] = {
        table: str(pq.read_table(f"{archive}/{table}").schema.field("card_id").type)
        for table in ["scans", "charges", "settlements"]
    }
    found["pyspark_id_types"] = spark_id_types(archive)

    # docs/archive.md's trips query: entry and exit side by side, across
    # the day boundary too.
    trips = con.execute(
        f"""
        WITH metro AS (
          SELECT card_id, scan_id, tap_kind, stop_id, scanned_at, service_date,
                 lead(tap_kind) OVER w AS next_kind, lead(stop_id) OVER w AS exit_stop,
                 lead(scanned_at) OVER w AS exit_at, lead(service_date) OVER w AS exit_date
          FROM {scans}
          WHERE status = 'accepted' AND tap_kind IN ('entry', 'exit')
          WINDOW w AS (PARTITION BY card_id ORDER BY scanned_at, scan_id))
        SELECT card_id, service_date, exit_date, stop_id, exit_stop
        FROM metro
        WHERE tap_kind = 'entry' AND next_kind = 'exit' AND exit_at - scanned_at <= INTERVAL 3 HOUR
        ORDER BY card_id, scanned_at
        """
    ).fetchall()
    found["trips"] = [[card, str(entry_day), str(exit_day), entry, exit_] for card, entry_day, exit_day, entry, exit_ in trips]
    print(json.dumps(found, sort_keys=True))


def spark_id_types(archive):
    """Spark's types for the ids, when pyspark (and a Java it can start) is
    installed; otherwise why not, as a string."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return "pyspark is not installed"
    try:
        spark = SparkSession.builder.master("local[1]").appName("farestream-readers").getOrCreate()
    except Exception as error:  # no Java, most often
        return f"pyspark cannot start: {error}"
    try:
        types = {}
        for table in ["scans", "charges", "settlements"]:
            frame = spark.read.parquet(f"{archive}/{table}")
            types[table] = frame.schema["card_id"].dataType.simpleString()
            frame.collect()  # every row converts
        return types
    finally:
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
