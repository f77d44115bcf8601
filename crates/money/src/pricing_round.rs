//! One pricing transaction for several cluster partitions
//! (docs/scale-out.md, "Pricing"). A node prices every partition it
//! holds; a transaction a partition cost the store a commit, the card
//! locks and the rider-day reads once per partition per round (2.3x a
//! single node's PostgreSQL time a scan). A round prices what each
//! partition's pricer gathered in one transaction: each cursor is moved
//! under its own holder, so a partition taken by another node is left out
//! of the round (nothing of it written) while the others commit.

use farestream_core::clock::UnixMillis;
use farestream_core::cluster::partition_of_card;
use farestream_core::fares::FareTable;
use farestream_core::scan::ArchivedScan;

use crate::MoneyStore;
use crate::pricing::{Priced, price_closed_entries_of, price_rows};
use crate::store::{CursorHolder, LastRecord, StoreError, set_log_cursor, set_priced_received_before};

/// One partition's share of a round: what its pricer read since its
/// cursor, and where that moves the cursor.
#[derive(Debug, Clone)]
pub struct RoundPart {
    pub reader: String,
    pub holder: CursorHolder,
    /// Where the holder last left the cursor.
    pub from: u64,
    /// Where the part moves it: the sequence after its last record.
    pub through: u64,
    pub last: LastRecord,
    pub rows: Vec<ArchivedScan>,
    /// The latest cut among its records, if any.
    pub cut: Option<PartCut>,
}

/// A cut a part's records hold: every scan of the partition received
/// before `arrivals_before_ms` is priced once the part commits, and the
/// exit windows of the partition's cards closed by then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartCut {
    pub arrivals_before_ms: UnixMillis,
    pub partition: u16,
    pub partitions: u16,
}

/// What a round did: what it priced, and for each part (in order) `None`
/// when it committed or why it was left out (its cursor taken, or behind
/// where its holder left it).
#[derive(Debug)]
pub struct RoundPriced {
    pub priced: Priced,
    pub left_out: Vec<Option<StoreError>>,
}

/// Prices `parts` in one transaction at `now`: every part whose cursor
/// its holder still holds moves it and has its rows priced (together,
/// one read of each rider-day) and, past a cut, its promise recorded and
/// its cards' closed windows priced. A part refused its cursor writes
/// nothing. Any other failure rolls the whole round back.
pub fn price_round(
    store: &mut MoneyStore,
    fares: &FareTable,
    parts: Vec<RoundPart>,
    now: UnixMillis,
) -> Result<RoundPriced, StoreError> {
    store.in_transaction(|tx| {
        let mut left_out = Vec::with_capacity(parts.len());
        let mut rows = Vec::new();
        let mut committing = Vec::with_capacity(parts.len());
        for mut part in parts {
            match set_log_cursor(tx, &part.reader, &part.holder, (part.from, part.through), part.last) {
                Ok(()) => {
                    left_out.push(None);
                    rows.append(&mut part.rows);
                    committing.push(part);
                }
                Err(refused @ (StoreError::CursorTaken(_) | StoreError::CursorBehind { .. })) => {
                    left_out.push(Some(refused));
                }
                Err(failed) => return Err(failed),
            }
        }
        let mut priced = price_rows(tx, fares, &rows, now)?;
        for part in &committing {
            let Some(cut) = part.cut else { continue };
            let at = cut.arrivals_before_ms;
            set_priced_received_before(tx, (&part.reader, &part.holder), part.through, at)?;
            let mine = |card| partition_of_card(card, cut.partitions).number() == cut.partition;
            priced = priced + price_closed_entries_of(tx, fares, at, mine)?;
        }
        Ok(RoundPriced { priced, left_out })
    })
}

#[cfg(test)]
mod tests;
