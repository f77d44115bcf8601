use farestream_core::cluster::partition_of_card;

use super::*;
use crate::db::{Db, Value};
use crate::pricing::tests::{DAY_START_MS, MINUTE_MS, a_city, fares, outcome};
use crate::store::{hold_log_cursor, make_log_cursor};
use crate::test_cluster::on_each_engine;

const PARTITIONS: u16 = 2;

fn reader(partition: u16) -> String {
    crate::pricer::partition_reader_name(partition)
}

/// Both partitions' cursors made at 1 and held, each by a holder of its own.
fn held_cursors(store: &mut MoneyStore) -> [CursorHolder; 2] {
    let holders = [[1u8; 16], [2u8; 16]];
    store
        .in_transaction(|tx| {
            for (partition, holder) in holders.iter().enumerate() {
                make_log_cursor(tx, &reader(partition as u16), 1)?;
                hold_log_cursor(tx, &reader(partition as u16), holder, 1)?;
            }
            Ok::<_, StoreError>(())
        })
        .expect("cursors held");
    holders
}

/// `rows` split by partition, each part moving its cursor from `from` to
/// `through`, with a cut at `cut_ms`.
fn parts(
    rows: &[ArchivedScan],
    holders: &[CursorHolder; 2],
    (from, through): (u64, u64),
    cut_ms: i64,
) -> Vec<RoundPart> {
    (0..PARTITIONS)
        .map(|partition| RoundPart {
            reader: reader(partition),
            holder: holders[usize::from(partition)],
            from,
            through,
            last: LastRecord { lsn: through - 1, digest: [partition as u8; 16] },
            rows: rows
                .iter()
                .filter(|r| r.card_id.is_some_and(|c| partition_of_card(c, PARTITIONS).number() == partition))
                .cloned()
                .collect(),
            cut: Some(PartCut { arrivals_before_ms: cut_ms, partition, partitions: PARTITIONS }),
        })
        .collect()
}

fn cursor(db: &mut dyn Db, partition: u16) -> (i64, Option<i64>) {
    let row = db
        .query_opt(
            "SELECT lsn, priced_received_before FROM log_cursors WHERE reader = ?1",
            &[Value::Text(&reader(partition))],
        )
        .expect("read")
        .expect("a cursor");
    (row.int(0).expect("lsn"), row.opt_int(1).expect("promise"))
}

/// A city's three days priced as one round of two partitions charge each
/// rider-day, and leave open, what the same partitions priced in a
/// transaction each do; both cursors move and hold their cut's promise.
#[test]
fn a_round_charges_what_each_partitions_own_transaction_would() {
    on_each_engine(|store, engine| {
        let fares = fares();
        let holders = held_cursors(store);
        let now = DAY_START_MS + 3 * 24 * 60 * MINUTE_MS;
        let cut_ms = DAY_START_MS + (2 * 24 * 60 + 23 * 60 + 30) * MINUTE_MS;
        let together = price_round(store, &fares, parts(&a_city(&fares, 1), &holders, (1, 10), cut_ms), now)
            .expect("priced in one round");
        assert!(together.left_out.iter().all(Option::is_none), "{engine}: {:?}", together.left_out);
        let mut apart = Priced::default();
        for part in parts(&a_city(&fares, 2_000), &holders, (10, 20), cut_ms) {
            let one = price_round(store, &fares, vec![part], now).expect("priced alone");
            assert!(one.left_out[0].is_none(), "{engine}");
            apart = apart + one.priced;
        }
        assert_eq!(together.priced, apart, "{engine}: the same taps, charges and amounts");
        assert!(together.priced.charges > 100, "{engine}: {:?}", together.priced);
        let outcomes = store
            .in_transaction(|tx| {
                Ok::<_, StoreError>((outcome(tx, 1), outcome(tx, 2_000), cursor(tx, 0), cursor(tx, 1)))
            })
            .expect("read");
        assert_eq!(outcomes.0, outcomes.1, "{engine}: each rider-day charged and left open alike");
        assert_eq!((outcomes.2, outcomes.3), ((20, Some(cut_ms)), (20, Some(cut_ms))), "{engine}");
    });
}

/// A partition another node took since its pricer read (its cursor held
/// by other bits) is left out of the round: its rows are not charged,
/// its cursor and promise do not move; the other partition commits.
#[test]
fn a_partition_taken_by_another_node_is_left_out_and_the_rest_commit() {
    on_each_engine(|store, engine| {
        let fares = fares();
        let holders = held_cursors(store);
        store
            .in_transaction(|tx| hold_log_cursor(tx, &reader(1), &[9; 16], 1))
            .expect("partition 1 taken by another node");
        let now = DAY_START_MS + 3 * 24 * 60 * MINUTE_MS;
        let city = a_city(&fares, 1);
        let round = price_round(store, &fares, parts(&city, &holders, (1, 10), now), now).expect("the round");
        assert!(round.left_out[0].is_none(), "{engine}");
        assert!(matches!(round.left_out[1], Some(StoreError::CursorTaken(_))), "{engine}: {:?}", round.left_out);
        let charged_cards: Vec<i64> = store
            .in_transaction(|tx| {
                let rows = tx.query("SELECT DISTINCT card_id FROM charges ORDER BY card_id", &[])?;
                rows.iter().map(|r| r.int(0)).collect::<Result<Vec<i64>, StoreError>>()
            })
            .expect("charged cards");
        let of_partition_0: Vec<i64> =
            (1..71).filter(|c| partition_of_card(*c, PARTITIONS).number() == 0).map(|c| c as i64).collect();
        assert_eq!(charged_cards, of_partition_0, "{engine}: only partition 0's riders charged");
        let cursors = store.in_transaction(|tx| Ok::<_, StoreError>((cursor(tx, 0), cursor(tx, 1)))).expect("read");
        assert_eq!(cursors, ((10, Some(now)), (1, None)), "{engine}");
    });
}
