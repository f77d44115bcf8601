//! Money in cluster mode (docs/scale-out.md, "Pricing"): each partition's
//! owner prices its claimed stream into the one PostgreSQL store, under
//! the partition's cursor; the dispatchers of every node send the charges.

use std::collections::BTreeMap;

use farestream::charges::ChargeRecord;
use farestream::config::Config;
use farestream::money::outbox::{charges, undecided};
use farestream::scan::TapKind;
use farestream_cluster::test_nats::NatsCluster;

use crate::cluster::{cluster_config, looked_at_until};
use crate::money::{MINUTE, Money, assert_charged_once, tap};
use crate::support::{Harness, T0_MS, batch};

/// A two-node cluster's config whose dead node's partitions move within
/// seconds (a lease lives 3 s).
fn quick_leases(mut config: Config, name: &str) -> Config {
    config.cluster.node_name = name.into();
    config.cluster.lease_ttl_ms = 3_000;
    config.cluster.lease_renew_interval_ms = 1_000;
    config.cluster.lease_safety_margin_ms = 500;
    config
}

/// The store's charges once `taps` taps are priced and every charge is
/// decided (or after a minute: the caller's assertions say what is
/// missing).
async fn charged_once_it_holds(node: &Harness, taps: usize) -> Vec<ChargeRecord> {
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
        let tap = |seq, minutes, kind, place| {
            let mut scan = tap(rider, seq, T0_MS + minutes * MINUTE, kind, place);
            scan.validator_id = format!("validator-{n}");
            scan
        };
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
    let cursors = b.server.with_money_store(|store| Ok(partition_cursors(store))).await.expect("the store");
    assert_eq!(cursors.len(), usize::from(b.config.cluster.partitions), "a cursor for every partition: {cursors:?}");
    b.server.shutdown().await.expect("b stops");
    paygw.stop().await;
}

/// Every partition pricer's cursor in the store: its name and position.
fn partition_cursors(store: &mut farestream::money::MoneyStore) -> Vec<(String, i64)> {
    use farestream::money::db::Db;
    let rows = store.db().query("SELECT reader, lsn FROM log_cursors WHERE reader LIKE 'pricer@partition-%'", &[]);
    let rows = rows.expect("the cursors");
    rows.iter().map(|row| (row.text(0).expect("reader").to_string(), row.int(1).expect("lsn"))).collect()
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
