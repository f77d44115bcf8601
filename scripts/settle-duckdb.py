#!/usr/bin/env python3
"""The day's settlement recomputed in DuckDB, from the archives alone and
the fare table, as an outside auditor would: every rider's day priced
(bus fares, metro entries paired with their exits, incomplete trips at the
maximum fare outside the cap, the daily cap in the order rides began),
set against the day's charges, and every ride checked to be in exactly one
charge. Prints the time it took, then compares its totals and every
rider's figures with the run `farestream settle` wrote; exits 1 on any
difference.

    python3 scripts/settle-duckdb.py DATA_DIR DATE [FARES_TOML]

It covers what a generated day holds, settled once everything is priced,
decided and archived: no trip across the day's boundaries, no entry still
open, no charge still in the money store rather than the charges
archive, no scans file waiting for the pricer or the archiver's
checkpoint, no scan or charge archived twice, no run left half written by
a crash. On a live day any of those shows as riders that differ, and
`farestream settle`'s own reconciliation is the one that names them.
docs/fares.md is the rule book; crates/core/src/fares.rs is the
implementation it is checked against.
"""

import sys
import time
import tomllib
from pathlib import Path

import duckdb


def fare_table(con, fares):
    """The fare table as two small tables and a few constants."""
    con.execute("CREATE TABLE bus_fares (route_id VARCHAR, fare BIGINT)")
    con.executemany("INSERT INTO bus_fares VALUES (?, ?)", list(fares["bus"].get("routes", {}).items()))
    con.execute("CREATE TABLE zones (stop_id VARCHAR, zone BIGINT)")
    con.executemany("INSERT INTO zones VALUES (?, ?)", list(fares["metro"].get("zones", {}).items()))
    metro = fares["metro"]
    return {
        "cap": fares["daily_cap_cents"],
        "max_fare": fares["max_fare_cents"],
        "bus_default": fares["bus"].get("default_fare_cents"),
        "base": metro["base_fare_cents"],
        "per_zone": metro["fare_per_zone_cents"],
        "window_ms": metro["exit_window_secs"] * 1000,
    }


def settlement_sql(scans, charges, date, f):
    bus_default = "NULL" if f["bus_default"] is None else str(f["bus_default"])
    return f"""
CREATE TEMP TABLE rider_days AS
WITH taps AS (
    SELECT card_id, scan_id, tap_kind, epoch_ms(scanned_at) AS t, route_id, stop_id
    FROM {scans}
    WHERE service_date = DATE '{date}' AND status = 'accepted' AND card_id IS NOT NULL AND tap_kind IS NOT NULL
),
metro AS (
    SELECT *,
        lag(tap_kind) OVER w AS prev_kind, lag(t) OVER w AS prev_t,
        lag(stop_id) OVER w AS prev_stop, lag(scan_id) OVER w AS prev_id,
        lead(tap_kind) OVER w AS next_kind, lead(t) OVER w AS next_t
    FROM taps WHERE tap_kind IN ('entry', 'exit')
    WINDOW w AS (PARTITION BY card_id ORDER BY t, scan_id)
),
rides AS (
    -- A bus ride at its route's fare (the default, else the maximum, capped).
    SELECT card_id, t AS started, scan_id AS first_id,
           coalesce(b.fare, {bus_default}, {f['max_fare']}) AS fare, true AS capped
    FROM taps LEFT JOIN bus_fares b USING (route_id) WHERE tap_kind = 'single'
    UNION ALL
    -- An exit whose previous metro tap is an entry within the window: a trip.
    SELECT m.card_id, m.prev_t, m.prev_id,
           CASE WHEN zi.zone IS NULL OR zo.zone IS NULL THEN {f['max_fare']}
                ELSE {f['base']} + {f['per_zone']} * abs(zi.zone - zo.zone) END,
           true
    FROM metro m LEFT JOIN zones zi ON zi.stop_id = m.prev_stop LEFT JOIN zones zo ON zo.stop_id = m.stop_id
    WHERE m.tap_kind = 'exit' AND m.prev_kind = 'entry' AND m.t - m.prev_t <= {f['window_ms']}
    UNION ALL
    -- An exit without such an entry, and an entry without such an exit:
    -- the maximum fare, outside the cap.
    SELECT card_id, t, scan_id, {f['max_fare']}, false FROM metro
    WHERE (tap_kind = 'exit' AND NOT coalesce(prev_kind = 'entry' AND t - prev_t <= {f['window_ms']}, false))
       OR (tap_kind = 'entry' AND NOT coalesce(next_kind = 'exit' AND next_t - t <= {f['window_ms']}, false))
),
capped AS (
    SELECT card_id, fare,
        CASE WHEN capped THEN least(fare, greatest(0, {f['cap']} - coalesce(sum(fare) FILTER (WHERE capped) OVER (
            PARTITION BY card_id ORDER BY started, first_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)))
        ELSE fare END AS charged
    FROM rides
),
priced AS (
    SELECT card_id, count(*) AS rides, sum(fare) AS fares, sum(charged) AS due FROM capped GROUP BY card_id
),
day_charges AS (
    SELECT card_id, sum(amount_cents) AS charged,
        sum(amount_cents) FILTER (WHERE outcome = 'succeeded') AS succeeded,
        sum(amount_cents) FILTER (WHERE outcome = 'declined') AS declined
    FROM {charges} WHERE service_date = DATE '{date}' GROUP BY card_id
)
SELECT card_id, coalesce(rides, 0) AS rides, coalesce(fares, 0) AS fares, coalesce(due, 0) AS due,
       coalesce(charged, 0) AS charged, coalesce(succeeded, 0) AS succeeded, coalesce(declined, 0) AS declined
FROM priced FULL JOIN day_charges USING (card_id);

-- Every ride in exactly one charge, every charged scan a ride.
CREATE TEMP TABLE ride_checks AS
WITH charged_scans AS (
    SELECT unnest(scan_ids) AS scan_id FROM {charges} WHERE service_date = DATE '{date}'
),
per_scan AS (SELECT scan_id, count(*) AS n FROM charged_scans GROUP BY scan_id),
taps AS (
    SELECT scan_id FROM {scans}
    WHERE service_date = DATE '{date}' AND status = 'accepted' AND card_id IS NOT NULL AND tap_kind IS NOT NULL
)
SELECT count(*) FILTER (WHERE taps.scan_id IS NOT NULL AND per_scan.n IS NULL) AS not_charged,
       count(*) FILTER (WHERE per_scan.n > 1) AS charged_twice,
       count(*) FILTER (WHERE taps.scan_id IS NULL) AS charge_without_ride
FROM taps FULL JOIN per_scan USING (scan_id);
"""


def main(data_dir, date, fares_path):
    archive = f"{data_dir}/archive"
    fares = tomllib.loads(Path(fares_path).read_text())
    con = duckdb.connect()
    f = fare_table(con, fares)
    scans = f"read_parquet('{archive}/scans/*/*.parquet', hive_partitioning = true)"
    charges = f"read_parquet('{archive}/charges/*/*.parquet', hive_partitioning = true)"
    start = time.perf_counter()
    con.execute(settlement_sql(scans, charges, date, f))
    riders, rides, fares_sum, due, charged, succeeded, declined, mismatched = con.execute(
        """SELECT count(*), sum(rides), sum(fares), sum(due), sum(charged), sum(succeeded), sum(declined),
                  count(*) FILTER (WHERE charged <> due) FROM rider_days"""
    ).fetchone()
    not_charged, charged_twice, without_ride = con.execute("SELECT * FROM ride_checks").fetchone()
    wall = time.perf_counter() - start
    print(f"duckdb settlement: wall_s={wall:.2f} (duckdb {duckdb.__version__})")
    print(
        f"duckdb settlement: {riders} riders, {rides} rides, fares {fares_sum}, caps {fares_sum - due}, due {due}, "
        f"succeeded {succeeded}, declined {declined}; breaks: {mismatched} money, {not_charged} rides not charged, "
        f"{charged_twice} charged twice, {without_ride} charges without a ride"
    )

    # Against what `farestream settle` wrote (summed over the day's runs).
    settled = f"read_parquet('{archive}/settlements/*/*.parquet', hive_partitioning = true)"
    theirs = con.execute(
        f"""SELECT sum(rides), sum(fares_cents), sum(due_cents), sum(succeeded_cents), sum(declined_cents)
            FROM {settled} WHERE service_date = DATE '{date}'"""
    ).fetchone()
    ours = (rides, fares_sum, due, succeeded, declined)
    differing = con.execute(
        f"""WITH theirs AS (
                SELECT card_id, sum(rides) AS rides, sum(fares_cents) AS fares, sum(due_cents) AS due,
                       sum(charged_cents) AS charged
                FROM {settled} WHERE service_date = DATE '{date}' GROUP BY card_id)
            SELECT count(*) FROM rider_days r FULL JOIN theirs t USING (card_id)
            WHERE coalesce(r.rides, 0) <> coalesce(t.rides, 0) OR coalesce(r.fares, 0) <> coalesce(t.fares, 0)
               OR coalesce(r.due, 0) <> coalesce(t.due, 0) OR coalesce(r.charged, 0) <> coalesce(t.charged, 0)"""
    ).fetchone()[0]
    breaks = mismatched + not_charged + charged_twice + without_ride
    print(f"duckdb vs farestream settle: totals {'equal' if ours == theirs else f'differ: {ours} vs {theirs}'}, "
          f"{differing} riders differ, {breaks} breaks")
    if ours != theirs or differing or breaks:
        sys.exit(1)


if __name__ == "__main__":
    repo = Path(__file__).resolve().parent.parent
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else repo / "config" / "fares.toml")
