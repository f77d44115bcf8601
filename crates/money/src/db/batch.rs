//! Many rows in one statement: a multi-row `VALUES` list, so a pricing
//! transaction that writes and reads thousands of rows makes a few dozen
//! round trips to PostgreSQL, not one per row (each costs a trip through
//! the client, the socket and the server: at about a hundred microseconds,
//! they were most of the pricer's time there).
//!
//! A run of rows is one of a few sizes ([`RUN_ROWS`]), largest first, so
//! a connection prepares at most that many texts of each statement and
//! keeps them (a statement per row count would prepare a new one for
//! almost every transaction).

/// The row counts a statement is written for: a run of 200 rows is three
/// of 64, two of 4 (8 rows) and none of 1. At 11 values a row (a charge),
/// 64 rows bind 704 placeholders, far under either engine's limit
/// (SQLite 32 766, PostgreSQL 65 535).
pub const RUN_ROWS: [usize; 4] = [64, 16, 4, 1];

/// `items` in runs of the sizes in [`RUN_ROWS`], largest first, in order.
pub fn runs<T>(items: &[T]) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let mut rest = items;
    for size in RUN_ROWS {
        while rest.len() >= size {
            let (run, after) = rest.split_at(size);
            runs.push(run);
            rest = after;
        }
    }
    assert!(rest.is_empty(), "a run of 1 takes whatever is left");
    runs
}

/// How a row's placeholders are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typed {
    /// As they are: an `INSERT`'s columns give PostgreSQL their types.
    ByColumns,
    /// Each as `CAST(?N AS BIGINT)`: in a `VALUES` list that is not an
    /// `INSERT`'s, PostgreSQL takes a bare placeholder for text.
    Integers,
}

/// `rows` parenthesised rows of `columns` placeholders each, numbered from
/// 1 across them: `(?1, ?2), (?3, ?4)`.
pub fn values(rows: usize, columns: usize, typed: Typed) -> String {
    let mut sql = String::with_capacity(rows * columns * 24);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            let n = row * columns + column + 1;
            if column > 0 {
                sql.push_str(", ");
            }
            match typed {
                Typed::ByColumns => sql.push_str(&format!("?{n}")),
                Typed::Integers => sql.push_str(&format!("CAST(?{n} AS BIGINT)")),
            }
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item in one run and in order, runs only of the set sizes,
    /// from none to more than the largest run.
    #[test]
    fn runs_cover_every_item_in_order_in_the_set_sizes() {
        for n in [0, 1, 3, 4, 5, 63, 64, 65, 200, 4_096] {
            let items: Vec<usize> = (0..n).collect();
            let runs = runs(&items);
            assert!(runs.iter().all(|run| RUN_ROWS.contains(&run.len())), "{n}");
            assert_eq!(runs.concat(), items, "{n}");
            assert!(runs.len() <= n / 64 + 3 + 3 + 3, "{n}: at most three runs of each smaller size");
        }
    }

    #[test]
    fn placeholders_are_numbered_across_rows() {
        assert_eq!(values(2, 2, Typed::ByColumns), "(?1, ?2), (?3, ?4)");
        assert_eq!(values(1, 1, Typed::Integers), "(CAST(?1 AS BIGINT))");
        assert_eq!(values(0, 3, Typed::ByColumns), "");
    }
}
