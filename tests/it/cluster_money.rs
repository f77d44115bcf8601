//! Money in cluster mode (docs/scale-out.md, "Pricing"): each partition's
//! owner prices its claimed stream into the one PostgreSQL store, under
//! the partition's cursor; the dispatchers of every node send the charges.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use farestream::charges::ChargeRecord;
use farestream::clock_source::Clock;
use farestream::money::db::Db;
use farestream::money::outbox::{charges, undecided};
use farestream::scan::TapKind;
use farestream_cluster::test_nats::NatsCluster;
use farestream_core::cluster::partition_of_card;

use crate::cluster::{cluster_config, looked_at_until, quick_leases};
use crate::money::{MINUTE, Money, assert_charged_once, own_validator_tap, tap};
use crate::support::{Harness, T0_MS, batch};

/// The store's charges once `taps` taps are priced and every charge is
/// decided (or after a minute: the caller's assertions say what is
/// missing).
pub(crate) async fn charged_once_it_holds(node: &Harness, taps: usize) -> Vec<ChargeRecord> {
    let read = async || {
        let read =
            node.server.with_money_store(|store| Ok((undecided(&mut store.db())?, charges(&mut store.db(), None)?)));
        read.await.expect("the money store")
    };
    let priced = |(undecided, charges): &(u64, Vec<ChargeRecord>)| {
        *undecided == 0 && charges.iter().map(|c| c.scan_ids.len()).sum::<usize>() >= taps
    };
    looked_at_until(read, priced).await.1
}

/// A rider's metro entry pushed at one node and its exit at the other is
/// one trip; a bus tap pushed at both (a gateway that failed over) is
/// one ride. One node dies with rides acked and unpriced (its pricing
/// stalled): the living one
/// takes its partitions, their cursors with them, and prices what the
/// dead one had not, and what comes after. Every ride gets one charge and
/// the payment gateway debits each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_owners_charge_every_ride_once_across_a_node_death() {
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let m = Money::start_with(quick_leases(config, "node-a")).await;
    let b = m.h.start_a_copy_with(quick_leases(m.h.config.clone(), "node-b")).await;
    // Both hear of the rides within the entry's exit window (3 h).
    m.h.clock.set(T0_MS + 55 * MINUTE);
    let riders: Vec<_> = futures_util::future::join_all((0..12u64).map(|n| m.rider(700 + n, 10_000))).await;

    let (mut on_a, mut on_b, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for (n, rider) in riders.iter().enumerate() {
        let tap = |seq, minutes, kind, place| own_validator_tap((n, rider), seq, minutes, kind, place);
        let bus = tap(1, 1, TapKind::Single, "bus-99");
        on_a.push(bus.clone());
        on_a.push(tap(2, 10, TapKind::Entry, "station-01"));
        on_b.push(bus);
        on_b.push(tap(3, 30, TapKind::Exit, "station-05"));
        after.push(tap(4, 50, TapKind::Single, "bus-99"));
    }
    m.h.faults.set_pricing_stalled(true);
    let pushed_a = m.h.client().push(&batch("depot-1", 1, on_a)).await.expect("a acks");
    let pushed_b = b.client().push(&batch("depot-1", 1, on_b)).await.expect("b acks");
    assert_eq!((pushed_a.accepted, pushed_b.accepted), (24, 24), "the ingest nodes keep no history");
    let Money { h: a, paygw, control, _paygw_dir } = m;
    a.server.abandon().await;
    let pushed = b.client().push(&batch("depot-1", 2, after)).await.expect("b acks");
    assert_eq!(pushed.accepted, 12);

    let charges = charged_once_it_holds(&b, 4 * riders.len()).await;
    let mut net: BTreeMap<u64, (i64, usize)> = BTreeMap::new();
    for charge in &charges {
        assert!(matches!(charge.outcome.as_str(), "succeeded" | "nothing_due"), "{charge:?}");
        let card = net.entry(charge.card_id).or_default();
        (card.0, card.1) = (card.0 + charge.amount_cents.get(), card.1 + charge.scan_ids.len());
    }
    assert_eq!(net.len(), riders.len(), "{charges:?}");
    for (card, priced) in &net {
        assert_eq!(*priced, (1_100, 4), "card {card}: two bus rides and a trip, the shared bus tap once");
    }
    let ledger = control.ledger().await.expect("the ledger");
    assert_charged_once(&ledger.into_iter().filter(|e| e.kind == "debit").collect::<Vec<_>>(), &charges);
    let cursors = partition_cursors(&b).await;
    assert_eq!(cursors.len(), usize::from(b.config.cluster.partitions), "a cursor for every partition: {cursors:?}");
    b.server.shutdown().await.expect("b stops");
    paygw.stop().await;
}

/// A refund waits until every partition's pricer has priced past the
/// moment it is due (each says so at a cut it prices), so a ride acked
/// before then is charged first, whichever node owns the rider's
/// partition and however far behind its pricing is (node b's is stalled;
/// node a passes on refunds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_waits_until_every_partition_has_priced_past_its_due_moment() {
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let m = Money::start_with(quick_leases(config, "node-a")).await;
    let b = m.h.start_a_copy_with(quick_leases(m.h.config.clone(), "node-b")).await;
    let rider = m.rider(820, 10_000).await;
    b.faults.set_pricing_stalled(true);
    let ride = tap(&rider, 1, T0_MS + MINUTE, TapKind::Single, "bus-99");
    assert_eq!(b.client().push(&batch("depot-1", 1, vec![ride])).await.expect("b acks").accepted, 1);
    m.h.server.accounts().request_refund(820).await.expect("refund asked for");
    let due = T0_MS + 10 * 24 * 60 * MINUTE;

    let held = m.h.server.refund_pass_as_of(due).await.expect("a's pass");
    assert!(!held.closed.contains(&820), "no partition has priced past the due moment: {held:?}");
    let account = m.h.server.accounts().account(820).await.expect("account");
    assert_eq!((account.state.as_str(), account.deposit_cents.get()), ("refund_pending", 2_000));

    // Cuts count the arrivals before their moment less the append timeout
    // and the clocks' allowance (a minute): past `due` two minutes on.
    m.h.clock.set(due + 2 * 60_000);
    b.faults.set_pricing_stalled(false);
    let pass = async || m.h.server.refund_pass_as_of(due).await.expect("a's pass");
    let paid = looked_at_until(pass, |report| report.closed.contains(&820)).await;
    assert_eq!(paid.closed, [820], "{paid:?}");
    let charges = b.server.with_money_store(|store| charges(&mut store.db(), None)).await.expect("charges");
    let ride_charges: Vec<(i64, &str)> =
        charges.iter().filter(|c| c.card_id == 820).map(|c| (c.amount_cents.get(), c.outcome.as_str())).collect();
    assert_eq!(ride_charges, [(300, "succeeded")], "the ride charged before the agreement ended");
    b.server.shutdown().await.expect("b stops");
    m.stop().await;
}

/// Every partition pricer's cursor in the store: its name and position,
/// by name.
async fn partition_cursors(node: &Harness) -> Vec<(String, i64)> {
    let read = node.server.with_money_store(|store| {
        let sql = "SELECT reader, lsn FROM log_cursors WHERE reader LIKE 'pricer@partition-%' ORDER BY reader";
        let rows = store.db().query(sql, &[])?;
        rows.iter().map(|r| Ok((r.text(0)?.to_string(), r.int(1)?))).collect::<Result<Vec<_>, _>>()
    });
    read.await.expect("the cursors")
}

/// The cards whose rider-day still has an open metro entry.
async fn open_entry_cards(node: &Harness) -> BTreeSet<u64> {
    let read = node.server.with_money_store(|store| {
        let rows = store.db().query("SELECT card_id FROM open_entries", &[])?;
        rows.iter().map(|row| Ok(row.int(0)? as u64)).collect::<Result<BTreeSet<u64>, _>>()
    });
    read.await.expect("the money store")
}

async fn store_charges(node: &Harness) -> (u64, Vec<ChargeRecord>) {
    let read = node.server.with_money_store(|store| Ok((undecided(&mut store.db())?, charges(&mut store.db(), None)?)));
    read.await.expect("the money store")
}

/// How many taps the store has priced.
async fn taps_priced(node: &Harness) -> i64 {
    let read = node.server.with_money_store(|store| store.db().query_one("SELECT count(*) FROM taps", &[])?.int(0));
    read.await.expect("the money store")
}

/// Each card's charges as (kind, amount), in write order.
fn by_card(charges: &[ChargeRecord]) -> BTreeMap<u64, Vec<(String, i64)>> {
    let mut cards: BTreeMap<u64, Vec<(String, i64)>> = BTreeMap::new();
    for c in charges {
        cards.entry(c.card_id).or_default().push((format!("{:?}", c.kind), c.amount_cents.get()));
    }
    cards
}

/// A partition's pricer closes its cards' exit windows, once it has
/// priced past a cut whose arrivals are past them; no node's own pricer
/// closes any. An exit acked well inside its entry's window, but not yet
/// priced because its partition's pricing is behind (an owner's stall, a
/// failover's time to live, PostgreSQL refusing for a while), is priced
/// with its entry as one trip, never after the entry was charged the
/// longest fare (an outside review found that: 900, then -400). Every
/// rider here made the same trip and is charged the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_acked_inside_its_window_is_not_max_fared_by_another_nodes_window_closing() {
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let m = Money::start_with(quick_leases(config, "node-a")).await;
    let b = m.h.start_a_copy_with(quick_leases(m.h.config.clone(), "node-b")).await;
    // b takes its half of the partitions.
    tokio::time::sleep(Duration::from_secs(4)).await;
    m.h.clock.set(T0_MS + 55 * MINUTE);
    let riders: Vec<_> = futures_util::future::join_all((0..12u64).map(|n| m.rider(900 + n, 10_000))).await;
    let taps = |seq, minutes, kind, place| -> Vec<_> {
        riders.iter().enumerate().map(|rider| own_validator_tap(rider, seq, minutes, kind, place)).collect()
    };
    let entries = m.h.client().push(&batch("depot-1", 1, taps(2, 10, TapKind::Entry, "station-01"))).await;
    assert_eq!(entries.expect("a acks").accepted, 12);
    let open = looked_at_until(async || open_entry_cards(&m.h).await, |open| open.len() == 12).await;
    assert_eq!(open.len(), 12, "every entry priced and open: {open:?}");

    // Node b's pricing stalls; the exits, scanned 20 minutes after their
    // entries and acked at once, wait in b's partitions.
    b.faults.set_pricing_stalled(true);
    let exits = m.h.client().push(&batch("depot-1", 2, taps(3, 30, TapKind::Exit, "station-05"))).await;
    assert_eq!(exits.expect("a acks").accepted, 12);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let waiting_on_b = open_entry_cards(&m.h).await;
    assert!(!waiting_on_b.is_empty() && waiting_on_b.len() < 12, "b owns some riders' partitions: {waiting_on_b:?}");

    // The entries' windows (3 h) close on the clock. A node's own pricer
    // once closed them all here; now each partition closes its own at its
    // next cut, b's only past the exits it has not priced yet. Then b
    // prices on.
    m.h.clock.set(T0_MS + 10 * MINUTE + 3 * 60 * MINUTE + 5 * MINUTE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.faults.set_pricing_stalled(false);
    let _ = looked_at_until(
        async || store_charges(&m.h).await,
        |(undecided, charges)| {
            *undecided == 0 && by_card(charges).len() == 12 && {
                let cards = by_card(charges);
                cards.values().all(|c| !c.is_empty())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, charges) = store_charges(&m.h).await;
    let cards = by_card(&charges);
    let reference = cards.iter().find(|(card, _)| !waiting_on_b.contains(card)).map(|(_, c)| c.clone());
    let reference = reference.expect("a rider priced by a");
    for (card, charged) in &cards {
        assert_eq!(
            charged,
            &reference,
            "card {card} (exit waiting on b: {}) is charged otherwise than a rider of the same trip whose \
             partition was priced in time; all: {cards:?}",
            waiting_on_b.contains(card)
        );
    }
    b.server.shutdown().await.expect("b stops");
    m.stop().await;
}

/// A partition's cursor is vouched for by its claimed stream: the record
/// it was last moved past must be there, at its place. The partition
/// count is fixed when the streams are made, so a new count means new
/// streams numbered from 1; every partition's pricer then finds its
/// cursor past records the stream does not hold and prices the stream
/// from its start (none twice), rather than skip every ride acked there
/// below its old place. The cursors of partitions past the new count are
/// retired, or their promises would hold every refund for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_on_new_streams_prices_every_ride_acked_there() {
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let m = Money::start_with(quick_leases(config, "node-a")).await;
    m.h.clock.set(T0_MS + 55 * MINUTE);
    let riders: Vec<_> = futures_util::future::join_all((0..8u64).map(|n| m.rider(1_000 + n, 10_000))).await;
    let bus = |seq: u64, minutes: i64| -> Vec<_> {
        riders
            .iter()
            .enumerate()
            .map(|rider| own_validator_tap(rider, seq, minutes, TapKind::Single, "bus-99"))
            .collect()
    };
    // Ten batches: each partition's claimed records and cursor move on.
    for n in 1..=10u64 {
        let pushed = m.h.client().push(&batch("depot-1", n, bus(n, n as i64))).await.expect("acked");
        assert_eq!(pushed.accepted, 8);
    }
    let priced = looked_at_until(async || taps_priced(&m.h).await, |taps| *taps >= 80).await;
    assert_eq!(priced, 80, "the first rides priced");
    let before = partition_cursors(&m.h).await;
    assert_eq!(before.len(), 8);

    // The operator moves the cluster to new streams (a new partition
    // count needs them) and restarts the node.
    let Money { h, paygw, control: _control, _paygw_dir } = m;
    let mut h = h;
    let mut config = h.config.clone();
    config.cluster.stream = format!("{}-v2", config.cluster.stream);
    config.cluster.subject_prefix = format!("v2.{}", config.cluster.subject_prefix);
    config.cluster.claimed_stream = format!("{}-v2", config.cluster.claimed_stream);
    config.cluster.claimed_subject_prefix = format!("v2.{}", config.cluster.claimed_subject_prefix);
    config.cluster.partitions = 4;
    h.config = config;
    let h = match h.crash_and_try(|_| {}).await {
        Ok(h) => h,
        Err((error, _)) => panic!("the node restarts on the new streams: {error}"),
    };
    for _ in 0..6 {
        eprintln!("cursors after the restart: {:?}", partition_cursors(&h).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let second = h.client().push(&batch("depot-1", 11, bus(11, 20))).await.expect("acked");
    assert_eq!(second.accepted, 8);
    let priced = looked_at_until(async || taps_priced(&h).await, |taps| *taps >= 88).await;
    let cursors = partition_cursors(&h).await;
    assert_eq!(priced, 88, "every ride acked on the new streams is priced; cursors: {cursors:?}");
    let readers: Vec<&str> = cursors.iter().map(|(reader, _)| reader.as_str()).collect();
    assert_eq!(readers, (0..4).map(|n| format!("pricer@partition-{n}")).collect::<Vec<_>>(), "4 to 7 retired");
    h.server.shutdown().await.expect("stops");
    paygw.stop().await;
}

/// Riders in every partition; pricing stalled (a PostgreSQL that cannot
/// take the pricer's transactions) before any partition priced
/// anything, so each partition's pricing position is 0. The archive and
/// the checkpoints pass the rides; the retention, once a second, must
/// keep what the pricing has not read, so every ride is charged once
/// pricing comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rides_acked_while_pricing_is_stalled_are_charged_once_it_returns() {
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(mut config) = cluster_config(&nats).await else { return };
    config.cluster.claim_checkpoint_interval_ms = 1_000;
    let m = Money::start_with(config).await;
    m.h.faults.set_pricing_stalled(true);
    let partitions = m.h.config.cluster.partitions;
    let mut cards = Vec::new();
    for p in 0..partitions {
        let card = (900..2_000u64).find(|c| partition_of_card(*c, partitions).number() == p).expect("a card");
        cards.push(card);
    }
    let mut taps = Vec::new();
    for (n, card) in cards.iter().enumerate() {
        let rider = m.rider(*card, 10_000).await;
        taps.push(tap(&rider, 1, T0_MS + MINUTE + n as i64, TapKind::Single, "bus-99"));
    }
    let pushed = m.h.client().push(&batch("depot-1", 1, taps)).await.expect("acked");
    assert_eq!(pushed.accepted as usize, cards.len());
    // Cuts, checkpoints and the archive pass the rides; the retention
    // runs once a second.
    for _ in 0..5 {
        m.h.clock.set(m.h.clock.now_ms() + 2_000);
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
    m.h.faults.set_pricing_stalled(false);
    let read = async || {
        let read = m.h.server.with_money_store(|store| charges(&mut store.db(), None));
        read.await.expect("the money store")
    };
    let charged = looked_at_until(read, |c| c.len() >= cards.len()).await;
    cards.sort_unstable();
    let mut charged_cards: Vec<u64> = charged.iter().map(|c| c.card_id).collect();
    charged_cards.sort_unstable();
    assert_eq!(charged_cards, cards, "every acked ride charged once pricing is back");
    m.stop().await;
}
