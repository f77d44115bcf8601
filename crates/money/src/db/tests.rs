//! The same statements on both engines, at the extremes of each kind of
//! value: what one engine holds and gives back, the other does too.

use super::*;
use crate::test_cluster::TestCluster;

/// Runs `test` on a SQLite connection and, where PostgreSQL is installed,
/// inside a PostgreSQL transaction, each with an empty table
/// `t (i, s, b)` of an integer, a text and a bytes column; `engine` names
/// the engine for messages.
fn on_both(test: impl Fn(&mut dyn Db, &str)) {
    let sqlite = rusqlite::Connection::open_in_memory().expect("sqlite");
    sqlite.execute_batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB)").expect("table");
    test(&mut Sqlite(&sqlite), "sqlite");

    let Some(cluster) = TestCluster::shared() else { return };
    let mut store = cluster.new_store();
    store.client().batch_execute("CREATE TABLE t (i BIGINT, s TEXT, b BYTEA)").expect("table");
    store
        .in_transaction(|db| {
            test(db, "postgres");
            Ok::<_, StoreError>(())
        })
        .expect("committed");
}

#[test]
fn every_kind_of_value_round_trips_at_its_extremes() {
    let long_text: String = "é-🚇-".repeat(100_000);
    let long_bytes: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let rows: Vec<[Value<'_>; 3]> = vec![
        [Value::Int(i64::MIN), Value::Text(""), Value::Bytes(&[])],
        [Value::Int(-1), Value::Text("a"), Value::Bytes(&[0])],
        [Value::Int(0), Value::Null, Value::Null],
        [Value::Int(i64::MAX), Value::Text(&long_text), Value::Bytes(&long_bytes)],
    ];
    on_both(|db, engine| {
        for row in &rows {
            assert_eq!(db.execute("INSERT INTO t (i, s, b) VALUES (?1, ?2, ?3)", row).expect("insert"), 1, "{engine}");
        }
        let back = db.query("SELECT i, s, b FROM t ORDER BY i", &[]).expect("select");
        assert_eq!(back.len(), rows.len(), "{engine}");
        for (read, written) in back.iter().zip(&rows) {
            let as_cell = |value: &Value<'_>| match *value {
                Value::Int(v) => Cell::Int(v),
                Value::Text(v) => Cell::Text(v.to_string()),
                Value::Bytes(v) => Cell::Bytes(v.to_vec()),
                Value::Null => Cell::Null,
            };
            assert_eq!(read.0, written.iter().map(as_cell).collect::<Vec<_>>(), "{engine}");
        }
        let last = &back[3];
        assert_eq!(last.int(0).expect("int"), i64::MAX);
        assert_eq!(last.text(1).expect("text").len(), long_text.len(), "{engine}");
        assert_eq!(back[2].opt_text(1).expect("null text"), None, "{engine}");
        assert_eq!(back[2].opt_bytes(2).expect("null bytes"), None, "{engine}");
        assert_eq!(back[0].opt_bytes(2).expect("empty bytes"), Some(&[][..]), "{engine}: empty is not null");
    });
}

#[test]
fn placeholders_bind_by_number_in_any_order_and_more_than_once() {
    on_both(|db, engine| {
        db.execute("INSERT INTO t (s, b, i) VALUES (?3, ?2, ?1)", &[Value::Int(7), Value::Bytes(b"x"), "seven".into()])
            .expect("insert");
        db.execute("INSERT INTO t (i, s) VALUES (?1, 'eight')", &[Value::Int(8)]).expect("insert");
        let changed = db
            .execute("UPDATE t SET s = ?2 WHERE i = ?1 OR i = ?1 + 1 OR i = ?3", &[7.into(), "both".into(), 99.into()])
            .expect("update");
        assert_eq!(changed, 2, "{engine}: the rows changed");
        let found = db.query("SELECT s FROM t WHERE i >= ?1 ORDER BY i", &[7.into()]).expect("select");
        let texts: Vec<&str> = found.iter().map(|r| r.text(0).expect("text")).collect();
        assert_eq!(texts, ["both", "both"], "{engine}");
        let ten_params: Vec<Value<'_>> = [Value::Null; 8].into_iter().chain([2.into(), 9.into()]).collect();
        let ten = db.query_opt(
            "SELECT i FROM t WHERE i + ?9 = ?10 AND COALESCE(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0) = 0",
            &ten_params,
        );
        assert_eq!(ten.expect("ten placeholders").map(|r| r.int(0).expect("int")), Some(7), "{engine}: ?10 is not ?1");
    });
}

#[test]
fn at_most_one_row_and_cells_of_the_wrong_kind_are_errors_not_panics() {
    on_both(|db, engine| {
        assert_eq!(db.query_opt("SELECT i FROM t", &[]).expect("none"), None, "{engine}");
        db.execute("INSERT INTO t (i, s) VALUES (1, 'one')", &[]).expect("insert");
        let row = db.query_opt("SELECT i, s FROM t", &[]).expect("one").expect("a row");
        let error = row.text(0).expect_err("an integer read as text").to_string();
        assert!(error.contains("column 0 holds an integer where text was expected"), "{engine}: {error}");
        assert!(row.int(5).is_err(), "{engine}: no column 5");
        db.execute("INSERT INTO t (i) VALUES (2)", &[]).expect("insert");
        assert!(db.query_opt("SELECT i FROM t", &[]).is_err(), "{engine}: two rows where one was expected");
        let mut seen = 0;
        let stopped = db.query_each("SELECT i FROM t ORDER BY i", &[], &mut |_| {
            seen += 1;
            Err(StoreError::Corrupt("stop".into()))
        });
        assert!(stopped.is_err() && seen == 1, "{engine}: the callback's error stops the query");
    });
}

/// PostgreSQL types each parameter from the statement: a value of another
/// kind is refused with both named (SQLite would store it as given).
#[test]
fn on_postgresql_a_value_of_the_wrong_kind_is_refused_by_name() {
    let Some(cluster) = TestCluster::shared() else { return };
    let mut store = cluster.new_store();
    store.client().batch_execute("CREATE TABLE t (i BIGINT, s TEXT, b BYTEA, small INTEGER)").expect("table");
    let mut db = store.db();
    let error = db.execute("INSERT INTO t (i) VALUES (?1)", &["seven".into()]).expect_err("text into bigint");
    assert!(error.to_string().contains("text bound to a int8 parameter"), "{error}");
    let error = db.execute("INSERT INTO t (b) VALUES (?1)", &[7.into()]).expect_err("an integer into bytea");
    assert!(error.to_string().contains("an integer bound to a bytea parameter"), "{error}");
    let error = db.execute("INSERT INTO t (small) VALUES (?1)", &[Value::Int(1)]).expect_err("a 32-bit parameter");
    assert!(error.to_string().contains("write CAST(?N AS BIGINT)"), "{error}");
}

/// A placeholder in arithmetic is typed by its other operand on
/// PostgreSQL, a 32-bit integer for a literal: written as a cast it
/// takes a time in milliseconds on both engines.
#[test]
fn a_cast_placeholder_takes_a_time_in_milliseconds_on_both_engines() {
    on_both(|db, engine| {
        db.execute("INSERT INTO t (i) VALUES (?1)", &[0.into()]).expect("insert");
        let now = 1_764_547_200_000i64;
        db.execute("UPDATE t SET i = CAST(?1 AS BIGINT) + 1000", &[now.into()]).expect("update");
        let found = db.query_opt("SELECT i FROM t WHERE i > CAST(?1 AS BIGINT) - 3600000", &[now.into()]);
        assert_eq!(found.expect("select").map(|r| r.int(0).expect("int")), Some(now + 1000), "{engine}");
    });
}

#[test]
fn placeholders_are_numbered_for_postgresql_as_for_sqlite() {
    assert_eq!(postgres_placeholders("SELECT ?1, ?10, ?2"), "SELECT $1, $10, $2");
    assert_eq!(postgres_placeholders("no placeholders"), "no placeholders");
    assert_eq!(postgres_placeholders("? alone, ?a, a?1"), "? alone, ?a, a$1");
    assert_eq!(postgres_placeholders(""), "");
}
