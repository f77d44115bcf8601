//! The money store on PostgreSQL (issue 22): servers with one config line
//! more, and two servers sharing one store, each over its own data dir
//! and log, never charging a ride twice.

use std::collections::{BTreeMap, HashSet};

use farestream::charges::ChargeRecord;
use farestream::clock_source::Clock;
use farestream::config::Config;
use farestream::money::db::Db;
use farestream::money::outbox::{self, undecided};
use farestream::scan::TapKind;
use farestream::wire::ScanRecord;

use crate::money::{MINUTE, Money, assert_charged_once, own_validator_tap, tap};
use crate::support::{Harness, T0_MS, TestRider, batch};

/// A bus ride of each rider, `seq` minutes after T0, numbered `seq`.
fn bus_rides(riders: &[TestRider], seq: u64) -> Vec<ScanRecord> {
    let at = T0_MS + seq as i64 * MINUTE;
    riders.iter().map(|rider| tap(rider, seq, at, TapKind::Single, "bus-99")).collect()
}

/// The defaults, the money store in a new database of the test cluster;
/// `None` (the test says so and passes) where PostgreSQL is not installed
/// and not required.
async fn on_postgres() -> Option<Config> {
    let mut config = Config::defaults();
    config.payments.money_store = crate::money::postgres_database_url().await?;
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
        let tap = |seq, minutes, kind, place| own_validator_tap((n, rider), seq, minutes, kind, place);
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
    let debits = m.debits().await;
    assert_charged_once(&debits, &charges);
    let keys: Vec<&str> = debits.iter().map(|e| e.key.as_str()).collect();
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

    // A decline that either server's dispatcher takes denies the card on
    // both: each rereads the shared deny list.
    let broke = m.rider(799, 0).await;
    let ride = tap(&broke, 1, T0_MS + 20 * MINUTE, TapKind::Single, "bus-99");
    assert_eq!(client_b.push(&batch("depot-1", 2, vec![ride])).await.expect("b acks").accepted, 1);
    settle_both(&m, &b).await;
    let denied_on_both = || m.h.server.deny_list().contains(799) && b.server.deny_list().contains(799);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !denied_on_both() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(denied_on_both(), "a card in arrears is denied by every server");
    b.server.shutdown().await.expect("b stops");
    m.stop().await;
}

/// `farestream money migrate --to`: a data dir that served on SQLite
/// moves to PostgreSQL (the server stopped), every row copied and checked;
/// a second run into the now full store is refused; the server started on
/// PostgreSQL goes on from where the pricer was, and a tap it had charged,
/// delivered again, is not charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_migrates_to_postgresql_and_the_server_goes_on_from_it() {
    let Some(on_pg) = on_postgres().await else { return };
    let url = on_pg.payments.money_store.clone();
    let m = Money::start().await;
    let rider = m.rider(810, 10_000).await;
    let first = tap(&rider, 1, T0_MS + MINUTE, TapKind::Single, "bus-99");
    let second = tap(&rider, 2, T0_MS + 20 * MINUTE, TapKind::Single, "bus-99");
    m.h.client().push(&batch("depot-1", 1, vec![first.clone(), second])).await.expect("acked");
    assert_eq!(m.settle().await.len(), 2, "two rides on SQLite");

    let migrate = |dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_farestream"))
            .arg("--data-dir")
            .arg(dir)
            .args(["money", "migrate", "--to", &url])
            .output()
            .expect("running farestream money migrate")
    };
    let mut config = m.h.config.clone();
    config.payments.money_store = url.clone();
    let Money { h, paygw, control, _paygw_dir } = m;
    let mut outputs = Vec::new();
    let h = h
        .restart_after(config, |dir| {
            outputs.push(migrate(dir));
            outputs.push(migrate(dir));
        })
        .await;
    let m = Money { h, paygw, control, _paygw_dir };
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    assert!(outputs[0].status.success(), "{}", text(&outputs[0]));
    assert!(text(&outputs[0]).contains("read back and checked"), "{}", text(&outputs[0]));
    assert!(!outputs[1].status.success(), "a second migration into a full store");
    assert!(text(&outputs[1]).contains("not empty"), "{}", text(&outputs[1]));

    let third = tap(&rider, 3, T0_MS + 40 * MINUTE, TapKind::Single, "bus-99");
    m.h.client().push(&batch("depot-1", 2, vec![first, third])).await.expect("acked on PostgreSQL");
    let charges = m.settle().await;
    let amounts: Vec<(i64, &str)> = charges.iter().map(|c| (c.amount_cents.get(), c.outcome.as_str())).collect();
    assert_eq!(amounts, [(300, "succeeded"); 3], "the old rides and the new one, each once");
    let debits = m.debits().await;
    let ids: HashSet<String> = charges.iter().map(|c| hex::encode(c.charge_id)).collect();
    assert_eq!(debits.iter().filter(|d| ids.contains(&d.key)).count(), 3, "each debited once");
    let account = m.h.server.accounts().account(810).await.expect("the account came along");
    assert_eq!(account.deposit_cents.get(), 2_000);
    m.stop().await;
}

/// A refund waits for every server sharing the store: a ride one server
/// received but has not priced yet (its pricer stalled) holds the other's
/// refund of that card back, past the moment the refund is due; once it
/// is priced and that server has said so, the refund goes, after the
/// ride's charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_waits_until_every_server_sharing_the_store_has_priced_its_rides() {
    let Some(config) = on_postgres().await else { return };
    let m = Money::start_with(config).await;
    let b = Harness::start_with(m.h.config.clone()).await;
    b.clock.set(m.h.clock.now_ms());
    let rider = m.rider(820, 10_000).await;
    b.faults.set_pricing_stalled(true);
    let ride = tap(&rider, 1, T0_MS + MINUTE, TapKind::Single, "bus-99");
    assert_eq!(b.client().push(&batch("depot-1", 1, vec![ride])).await.expect("b acks").accepted, 1);
    m.h.server.accounts().request_refund(820).await.expect("refund asked for");
    let due = T0_MS + 10 * 24 * 60 * MINUTE;

    let held = m.h.server.refund_pass_as_of(due).await.expect("a's pass");
    assert!(!held.closed.contains(&820), "b holds a ride it has not priced: {held:?}");
    let account = m.h.server.accounts().account(820).await.expect("account");
    assert_eq!((account.state.as_str(), account.deposit_cents.get()), ("refund_pending", 2_000));

    b.faults.set_pricing_stalled(false);
    b.clock.set(due);
    b.server.refund_pass_as_of(due).await.expect("b prices and says so");
    // The ride's charge is decided first: a refund waits for money in flight.
    let charges = settle_both(&m, &b).await;
    let paid = m.h.server.refund_pass_as_of(due).await.expect("a's pass");
    assert_eq!(paid.closed, [820], "{paid:?}");
    let ride_charges: Vec<(i64, &str)> =
        charges.iter().filter(|c| c.card_id == 820).map(|c| (c.amount_cents.get(), c.outcome.as_str())).collect();
    assert_eq!(ride_charges, [(300, "succeeded")], "the ride charged before the agreement ended");
    b.server.shutdown().await.expect("b stops");
    m.stop().await;
}

/// A copy of a data dir (the same NODE_ID) started beside its original on
/// one store takes the pricer's cursor, and the original stops at its
/// next pricing rather than price from a cursor that is not its own (its
/// rides stay in its log, archived past). Started again, the original is
/// refused: the copy has moved the cursor past records its log does not
/// hold. Given a name of its own (its NODE_ID deleted), and after a first
/// start under it that fails (the store out of reach), it prices every
/// ride its log holds: no ride skipped, none charged twice, each debited
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_data_dir_takes_the_cursor_and_its_original_stops_rather_than_skip_rides() {
    let Some(config) = on_postgres().await else { return };
    let mut m = Money::start_with(config).await;
    m.h.clock.set(T0_MS + 55 * MINUTE);
    let riders: Vec<_> = futures_util::future::join_all((0..3u64).map(|n| m.rider(740 + n, 10_000))).await;
    let rides = |seq| bus_rides(&riders, seq);
    let pushed = m.h.client().push(&batch("depot-1", 1, rides(1))).await.expect("acks");
    assert_eq!(pushed.accepted, 3);
    m.h.server.flush_pricing().await.expect("priced before the copy");

    let copy = m.h.start_a_copy().await;
    // The original's pricer paused while its archive moves past the rides.
    m.h.faults.set_pricing_stalled(true);
    let pushed = m.h.client().push(&batch("depot-1", 2, rides(2))).await.expect("the original acks");
    assert_eq!(pushed.accepted, 3, "acked into the original's log");
    m.h.server.flush_archive().await.expect("archived");
    m.h.faults.set_pricing_stalled(false);
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), m.h.server.failed()).await;
    let reason = stopped.expect("the original stops").to_string();
    assert!(reason.contains("taken by another server"), "{reason}");
    let pushed = copy.client().push(&batch("depot-1", 3, rides(3))).await.expect("the copy acks");
    assert_eq!(pushed.accepted, 3);
    copy.server.flush_pricing().await.expect("the copy prices its own log");

    let (refused, stopped) = match m.h.crash_and_try(|_| {}).await {
        Err(refused) => refused,
        Ok(_) => panic!("the original started on a cursor the copy moved"),
    };
    assert!(refused.to_string().contains("NODE_ID"), "{refused}");
    std::fs::remove_file(stopped.dir.path().join("NODE_ID")).expect("renamed");
    let mut out_of_reach = stopped.config.clone();
    out_of_reach.payments.money_store = "postgres://farestream@127.0.0.1:1/nowhere".into();
    assert!(stopped.try_start(&out_of_reach).await.is_err(), "no store, no start");
    m.h = stopped.start_after(|_| {}).await;

    let charges = settle_both(&m, &copy).await;
    for rider in [740, 741, 742] {
        let mine: Vec<_> = charges.iter().filter(|c| c.card_id == rider).collect();
        let taps: usize = mine.iter().map(|c| c.scan_ids.len()).sum();
        let cents: i64 = mine.iter().map(|c| c.amount_cents.get()).sum();
        assert_eq!((taps, cents), (3, 900), "card {rider}: its three rides, each once: {mine:?}");
    }
    assert_charged_once(&m.debits().await, &charges);
    copy.server.shutdown().await.expect("the copy stops");
    m.stop().await;
}

/// A server whose cursor a copy took has no say over refunds: while the
/// copy holds a ride it has not priced, the original's refund pass does
/// not pay that card's refund (it is refused, its promise not written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_cursor_a_copy_took_pays_no_refund_over_the_copys_rides() {
    let Some(config) = on_postgres().await else { return };
    let m = Money::start_with(config).await;
    let rider = m.rider(760, 10_000).await;
    let copy = m.h.start_a_copy().await;
    copy.faults.set_pricing_stalled(true);
    let ride = tap(&rider, 1, T0_MS + MINUTE, TapKind::Single, "bus-99");
    assert_eq!(copy.client().push(&batch("depot-1", 1, vec![ride])).await.expect("the copy acks").accepted, 1);
    m.h.server.accounts().request_refund(760).await.expect("refund asked for");
    let due = T0_MS + 10 * 24 * 60 * MINUTE;

    let pass = m.h.server.refund_pass_as_of(due).await;
    assert!(pass.as_ref().is_err_and(|e| e.to_string().contains("taken")), "{pass:?}");
    let account = m.h.server.accounts().account(760).await.expect("account");
    assert_eq!((account.state.as_str(), account.deposit_cents.get()), ("refund_pending", 2_000));

    copy.faults.set_pricing_stalled(false);
    copy.server.shutdown().await.expect("the copy stops");
    m.stop().await;
}

/// A store that lost a committed pricing (a failover to a standby that
/// lacked it: here the transaction's rows put back by hand) has the
/// cursor behind where the pricer left it: the refund pass promises
/// nothing, the server stops at its next pricing rather than move the
/// cursor over the lost rides, and started again prices them from the
/// store's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_a_pricing_commit_stops_the_pricer_rather_than_skip_its_rides() {
    let Some(config) = on_postgres().await else { return };
    let h = Harness::start_with(config).await;
    h.clock.set(T0_MS + 55 * MINUTE);
    let riders: Vec<_> = (0..3u64).map(|n| h.rider(780 + n)).collect();
    let rides = |seq| bus_rides(&riders, seq);
    let cursor = "SELECT lsn, last_record_lsn, last_record_digest FROM log_cursors WHERE reader LIKE 'pricer@%'";
    let before = h.server.with_money_store(move |store| store.db().query_one(cursor, &[])).await.expect("cursor");
    assert_eq!(h.client().push(&batch("depot-1", 1, rides(1))).await.expect("acks").accepted, 3);
    h.server.flush_pricing().await.expect("priced");
    h.server
        .with_money_store(move |store| {
            store.in_transaction(|tx| {
                tx.execute(
                    "UPDATE log_cursors SET lsn = ?1, last_record_lsn = ?2, last_record_digest = ?3
                     WHERE reader LIKE 'pricer@%'",
                    &[before.int(0)?.into(), before.opt_int(1)?.into(), before.opt_bytes(2)?.into()],
                )?;
                tx.execute("DELETE FROM charges", &[])?;
                tx.execute("DELETE FROM taps", &[])
            })
        })
        .await
        .expect("the commit lost");
    // With nothing new to price, the loss shows at the refund pass: no
    // promise over rides nobody has priced again.
    let pass = h.server.refund_pass_as_of(T0_MS + 55 * MINUTE).await;
    assert!(pass.as_ref().is_err_and(|e| e.to_string().contains("lost committed")), "{pass:?}");
    assert_eq!(h.client().push(&batch("depot-1", 2, rides(2))).await.expect("acks").accepted, 3);
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), h.server.failed()).await;
    let reason = stopped.expect("the pricer stops").to_string();
    assert!(reason.contains("lost committed transactions"), "{reason}");

    let h = match h.crash_and_try(|_| {}).await {
        Ok(h) => h,
        Err((error, _)) => panic!("a restart after the loss: {error}"),
    };
    h.server.flush_pricing().await.expect("priced again");
    let charges = h.server.with_money_store(|store| outbox::charges(&mut store.db(), None)).await.expect("read");
    for card in [780, 781, 782] {
        let mine: Vec<_> = charges.iter().filter(|c| c.card_id == card).collect();
        let taps: usize = mine.iter().map(|c| c.scan_ids.len()).sum();
        assert_eq!(taps, 2, "card {card}: both rides, the lost one priced again: {mine:?}");
    }
    h.server.shutdown().await.expect("stops");
}
