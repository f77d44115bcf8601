//! The money store on PostgreSQL (issue 22): servers with one config line
//! more, and two servers sharing one store, each over its own data dir
//! and log, never charging a ride twice.

use std::collections::{BTreeMap, HashSet};

use farestream::charges::ChargeRecord;
use farestream::config::Config;
use farestream::money::outbox::{self, undecided};
use farestream::scan::TapKind;
use farestream_money::test_cluster::TestCluster;

use crate::money::{MINUTE, Money, tap};
use crate::support::{Harness, T0_MS, batch};

/// The defaults, the money store in a new database of the test cluster;
/// `None` (the test says so and passes) where PostgreSQL is not installed
/// and not required. The cluster's client blocks: off the async threads.
async fn on_postgres() -> Option<Config> {
    let url = tokio::task::spawn_blocking(|| TestCluster::shared().map(TestCluster::new_database_url));
    let mut config = Config::defaults();
    config.payments.money_store = url.await.expect("the test cluster")?;
    Some(config)
}

/// The demo with one config line more: the money on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_postgresql_and_its_summary_matches_the_parquet_rows() {
    let Some(config) = on_postgres().await else { return };
    crate::end_to_end::demo_summary_matches_the_parquet_rows(config).await;
}

/// Every charge decided, as both servers see the one store.
async fn settle_both(m: &Money, b: &Harness) -> Vec<ChargeRecord> {
    b.server.flush_pricing().await.expect("b prices");
    let charges = m.settle().await;
    let seen_by_b = b.server.with_money_store(|store| undecided(&mut store.db())).await.expect("b reads");
    assert_eq!(seen_by_b, 0, "b sees what a decided: one store");
    charges
}

/// Two servers, two data dirs and logs, one PostgreSQL store, both
/// dispatching: a rider's metro entry logged by one and exit by the other
/// is one trip; a bus tap delivered to both (a gateway that failed over)
/// is one ride; every ride gets one charge and the payment gateway debits
/// each once; each decided charge is in exactly one server's charges
/// archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_one_postgresql_store_charge_every_ride_once() {
    let Some(config) = on_postgres().await else { return };
    let m = Money::start_with(config).await;
    let b = Harness::start_with(m.h.config.clone()).await;
    // Both hear of the rides within the entry's exit window (3 h): the
    // trip is paired whichever server prices its half first.
    m.h.clock.set(T0_MS + 55 * MINUTE);
    b.clock.set(T0_MS + 55 * MINUTE);
    let riders: Vec<_> = futures_util::future::join_all((0..12u64).map(|n| m.rider(700 + n, 10_000))).await;

    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for (n, rider) in riders.iter().enumerate() {
        // Each rider's taps at a validator of their own, numbered from 1.
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
        on_b.push(tap(4, 50, TapKind::Single, "bus-99"));
    }
    let (client_a, client_b) = (m.h.client(), b.client());
    let (batch_a, batch_b) = (batch("depot-1", 1, on_a), batch("depot-1", 1, on_b));
    let (pushed_a, pushed_b) = tokio::join!(client_a.push(&batch_a), client_b.push(&batch_b));
    assert_eq!(pushed_a.expect("a acks").accepted, 24);
    assert_eq!(pushed_b.expect("b acks").accepted, 36, "b's log holds the bus tap too: its dedup is its own");

    let charges = settle_both(&m, &b).await;
    // Whichever server priced its half first, a rider's day comes to two
    // bus rides and one metro trip (300 + 300 + 500): an exit priced before
    // its entry arrived is a ride of its own at the longest fare, set right
    // by an adjustment once the entry is priced, never charged twice.
    let mut net: BTreeMap<u64, i64> = BTreeMap::new();
    let mut taps: BTreeMap<u64, usize> = BTreeMap::new();
    for charge in &charges {
        assert!(matches!(charge.outcome.as_str(), "succeeded" | "nothing_due"), "{charge:?}");
        *net.entry(charge.card_id).or_default() += charge.amount_cents.get();
        *taps.entry(charge.card_id).or_default() += charge.scan_ids.len();
    }
    assert_eq!(net.len(), riders.len());
    for (card, cents) in &net {
        assert_eq!((*cents, taps[card]), (1_100, 4), "card {card}: its four taps, the shared bus tap once");
    }
    let mut priced = HashSet::new();
    assert!(charges.iter().flat_map(|c| &c.scan_ids).all(|scan| priced.insert(*scan)), "a tap in two charges");

    let debits = m.debits().await;
    let keys: Vec<&str> = debits.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len(), "a key debited twice");
    let due: HashSet<String> =
        charges.iter().filter(|c| c.amount_cents.is_positive()).map(|c| hex::encode(c.charge_id)).collect();
    let fares: HashSet<&str> = keys.iter().copied().filter(|k| due.contains(*k)).collect();
    assert_eq!(fares.len(), due.len(), "the gateway debited every charge due, each once");

    let (archived_a, archived_b) = tokio::join!(m.h.server.flush_charges_archive(), b.server.flush_charges_archive());
    let archived = |h: &Harness| {
        farestream::archive::read::read_all_charges(&farestream::money::charges_archive::charges_root(h.dir.path()))
            .expect("read the charges archive")
    };
    let (in_a, in_b) = (archived(&m.h), archived(&b));
    assert_eq!(archived_a.expect("a archives") + archived_b.expect("b archives"), charges.len() as u64);
    let mut once = HashSet::new();
    for charge in in_a.iter().chain(&in_b) {
        assert!(once.insert(charge.charge_id), "a charge in both servers' archives");
    }
    assert_eq!(once, charges.iter().map(|c| c.charge_id).collect(), "every decided charge archived once");
    let left = m.h.server.with_money_store(|store| outbox::charges(&mut store.db(), None)).await.expect("read");
    assert_eq!(left.len(), charges.len(), "nothing charged while archiving");
    b.server.shutdown().await.expect("b stops");
    m.h.server.shutdown().await.expect("a stops");
    m.paygw.stop().await;
}
