//! The pay-later half over real sockets: QUIC in, the money store on disk,
//! charges sent over HTTP to the simulated payment gateway, whose ledger is
//! the judge of what was charged.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use farestream::charges::ChargeRecord;
use farestream::charges::{ChargeKind, ChargeOutcome};
use farestream::clock_source::Clock;
use farestream::config::Config;
use farestream::money::db::{Db, Value};
use farestream::money::outbox::{charges, undecided};
use farestream::paygw::{Entry, SimControl, SimFaults, SimGateway};
use farestream::ridecode::DenyList;
use farestream::scan::TapKind;
use farestream::wire::{GateDecision, ScanRecord};
use farestream_core::account::AccountState;

use crate::support::{Harness, T0_MS, TestRider, batch, record};
use farestream_money::test_cluster::TestCluster;

pub(crate) const MINUTE: i64 = 60_000;

/// A new database of the test cluster as `payments.money_store` names it;
/// `None` where PostgreSQL is not installed and not required. The
/// cluster's client blocks: off the async threads.
pub(crate) async fn postgres_database_url() -> Option<String> {
    let url = tokio::task::spawn_blocking(|| TestCluster::shared().map(TestCluster::new_database_url));
    url.await.expect("the test cluster")
}

pub(crate) struct Money {
    pub h: Harness,
    pub paygw: SimGateway,
    pub control: SimControl,
    pub _paygw_dir: tempfile::TempDir,
}

impl Money {
    pub(crate) async fn start() -> Money {
        Money::start_with(Config::defaults()).await
    }

    /// A money rig with `config`, its money store on `engine`: the
    /// embedded file, or a new database of the test cluster; `None` (the
    /// test says so and passes) where PostgreSQL is not installed and not
    /// required.
    pub(crate) async fn on(engine: farestream::money::db::Engine, mut config: Config) -> Option<Money> {
        if engine == farestream::money::db::Engine::Postgres {
            config.payments.money_store = postgres_database_url().await?;
        }
        Some(Money::start_with(config).await)
    }

    pub(crate) async fn start_with(mut config: Config) -> Money {
        let paygw_dir = tempfile::tempdir().expect("tempdir");
        let secret = config.payments_secret().expect("the demo secret");
        let paygw = farestream::paygw::start(paygw_dir.path(), "127.0.0.1:0".parse().expect("addr"), secret.bytes())
            .await
            .expect("paygw");
        config.payments.gateway_url = paygw.url();
        config.payments.pricer_poll_interval_ms = 20;
        config.payments.retry_backoff_ms_initial = 10;
        config.payments.retry_backoff_ms_max = 100;
        config.payments.request_timeout_ms = 2_000;
        config.payments.dispatch_lease_ms = 5_000;
        let control = paygw.control().clone();
        let h = Harness::start_with(config).await;
        // The rides below happen in the hour after T0; the server hears of them after.
        h.clock.set(T0_MS + 2 * 60 * MINUTE);
        Money { h, paygw, control, _paygw_dir: paygw_dir }
    }

    /// A registered, activated rider whose payer holds `balance` after the deposit.
    pub(crate) async fn rider(&self, card_id: u64, balance: u64) -> TestRider {
        let accounts = self.h.server.accounts();
        accounts.register(card_id, &format!("+86138{card_id:08}")).await.expect("register");
        let payer = format!("payer-{card_id}");
        self.control.top_up(&payer, balance + 2_000, &format!("topup-{card_id}-0")).await.expect("top up");
        let account = accounts.activate(card_id, &payer).await.expect("activate");
        assert_eq!((account.state, account.deposit_cents.get()), (AccountState::Active, 2_000));
        self.h.rider(card_id)
    }

    /// Runs `work` on a connection to the server's money store, on a
    /// blocking thread (as a PostgreSQL store needs); `work` asserts.
    pub(crate) async fn store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut farestream::money::MoneyStore) -> T + Send + 'static,
    ) -> T {
        self.h.server.with_money_store(move |store| Ok(work(store))).await.expect("the money store")
    }

    /// Prices what was acked and waits until every charge is decided,
    /// moving the server's clock so retries come due.
    pub(crate) async fn settle(&self) -> Vec<ChargeRecord> {
        self.h.server.flush_pricing().await.expect("price");
        let read = || {
            self.h.server.with_money_store(|store| Ok((undecided(&mut store.db())?, charges(&mut store.db(), None)?)))
        };
        for _ in 0..1_000 {
            let (waiting, charges) = read().await.expect("charges");
            if waiting == 0 {
                return charges;
            }
            self.h.clock.set(self.h.clock.now_ms() + 1_000);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("charges still undecided: {:?}", read().await);
    }

    /// Stops the server, then the payment gateway.
    pub(crate) async fn stop(self) {
        self.h.server.shutdown().await.expect("the server stops");
        self.paygw.stop().await;
    }

    pub(crate) async fn debits(&self) -> Vec<Entry> {
        self.control.ledger().await.expect("ledger").into_iter().filter(|e| e.kind == "debit").collect()
    }
}

pub(crate) fn tap(rider: &TestRider, seq: u64, at_ms: i64, kind: TapKind, place: &str) -> ScanRecord {
    let mut scan = record("validator-1", seq, at_ms, kind, rider.code_at(at_ms, seq as u32));
    match kind {
        TapKind::Single => scan.route_id = place.into(),
        _ => scan.stop_id = place.into(),
    }
    scan
}

/// Rider number `n`'s tap at a validator of their own (`validator-N`),
/// `minutes` after T0: many riders' taps in one batch, each validator's
/// numbered from 1.
pub(crate) fn own_validator_tap(
    (n, rider): (usize, &TestRider),
    seq: u64,
    minutes: i64,
    kind: TapKind,
    place: &str,
) -> ScanRecord {
    let mut scan = tap(rider, seq, T0_MS + minutes * MINUTE, kind, place);
    scan.validator_id = format!("validator-{n}");
    scan
}

/// Polls `seen` for up to a second.
async fn within_a_second(seen: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        if seen() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen()
}

/// Every ledger debit is a charge (or a deposit), each key once.
pub(crate) fn assert_charged_once(debits: &[Entry], charges: &[ChargeRecord]) {
    let keys: Vec<&str> = debits.iter().map(|e| e.key.as_str()).collect();
    let unique: HashSet<&str> = keys.iter().copied().collect();
    assert_eq!(unique.len(), keys.len(), "a key debited twice");
    let ids: HashSet<String> = charges.iter().map(|c| hex::encode(c.charge_id)).collect();
    for key in keys.iter().filter(|k| !k.starts_with("deposit-") && !k.starts_with("arrears-")) {
        assert!(ids.contains(*key), "the gateway debited {key}, which is no charge");
    }
    let mut priced = HashSet::new();
    for scan in charges.iter().flat_map(|c| &c.scan_ids) {
        assert!(priced.insert(*scan), "a tap priced by two charges");
    }
}

on_each_engine! {
    /// Issue 21: a pricer that fell behind prices the backlog in several
    /// transactions (about 4 096 rows each, so the store's write lock is
    /// never held long: here 4 500 and 500). One rider-day split across them is priced in each,
    /// and every ride still gets exactly one charge, the cap holding over all.
    async fn a_backlog_priced_in_several_transactions_charges_each_ride_once(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(502, 10_000).await;
        m.h.faults.set_pricing_stalled(true);
        let rides = 5_000u64;
        let client = m.h.client();
        for (n, seqs) in (0..rides).collect::<Vec<_>>().chunks(500).enumerate() {
            let taps =
                seqs.iter().map(|s| tap(&rider, s + 1, T0_MS + *s as i64 * 700, TapKind::Single, "bus-99")).collect();
            let acked = client.push(&batch("depot-1", n as u64 + 1, taps)).await.expect("acked while pricing waits");
            assert_eq!(acked.accepted, seqs.len() as u32);
        }
        m.h.faults.set_pricing_stalled(false);
        let charges = m.settle().await;
        assert_eq!(charges.len() as u64, rides, "one charge a ride, none twice");
        assert!(charges.iter().all(|c| c.kind == ChargeKind::Ride && c.scan_ids.len() == 1));
        let due: i64 = charges.iter().map(|c| c.amount_cents.get()).sum();
        assert_eq!(due, 1_500, "the daily cap over every transaction");
        let debited: i64 = m.debits().await.iter().map(|d| -d.balance_change()).sum();
        assert_eq!(debited, 2_000 + 1_500, "the deposit and the day's fares, each collected once");
    }
}

on_each_engine! {
    async fn a_rider_with_balance_is_charged_each_ride_once_and_the_cap_holds(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(501, 10_000).await;
        let mut rides = vec![
            tap(&rider, 1, T0_MS + MINUTE, TapKind::Single, "bus-99"),
            tap(&rider, 2, T0_MS + 10 * MINUTE, TapKind::Entry, "station-01"),
            tap(&rider, 3, T0_MS + 30 * MINUTE, TapKind::Exit, "station-05"),
        ];
        rides.extend((0..5).map(|n| tap(&rider, 10 + n, T0_MS + (40 + n as i64) * MINUTE, TapKind::Single, "bus-99")));
        let client = m.h.client();
        let first = batch("depot-1", 1, rides.clone());
        assert_eq!(client.push(&first).await.expect("ack").accepted, 8);
        client.push(&first).await.expect("a re-delivery is acked");
        // A screenshot of the first bus code shown at another validator.
        let mut replay = rides[0].clone();
        replay.validator_id = "validator-2".into();
        assert_eq!(m.h.client_as("depot-2").push(&batch("depot-2", 1, vec![replay])).await.expect("ack").accepted, 0);

        let charges = m.settle().await;
        let amounts: Vec<(ChargeKind, i64, &str)> =
            charges.iter().map(|c| (c.kind, c.amount_cents.get(), c.outcome.as_str())).collect();
        let ride = |amount, outcome| (ChargeKind::Ride, amount, outcome);
        let expected = [
            ride(300, "succeeded"),
            ride(500, "succeeded"),
            ride(300, "succeeded"),
            ride(300, "succeeded"),
            ride(100, "succeeded"),
            ride(0, "nothing_due"),
            ride(0, "nothing_due"),
        ];
        let mut sorted = amounts.clone();
        sorted.sort_by_key(|(_, amount, _)| std::cmp::Reverse(*amount));
        let mut want = expected.to_vec();
        want.sort_by_key(|(_, amount, _)| std::cmp::Reverse(*amount));
        assert_eq!(sorted, want, "seven rides, capped at 1500: {amounts:?}");
        let debits = m.debits().await;
        assert_charged_once(&debits, &charges);
        let fares: u64 = debits.iter().filter(|e| !e.key.starts_with("deposit-")).map(|e| e.amount_cents).sum();
        assert_eq!(fares, 1_500, "the daily cap, collected once");

        // The charges archive holds each decided charge once, as the outbox has it.
        assert_eq!(m.h.server.flush_charges_archive().await.expect("archive"), 7);
        assert_eq!(m.h.server.flush_charges_archive().await.expect("again"), 0);
        let root = farestream::money::charges_archive::charges_root(m.h.dir.path());
        let mut archived = farestream::archive::read::read_all_charges(&root).expect("read");
        archived.sort_by_key(|c| c.charge_id);
        let mut outbox = charges.clone();
        outbox.sort_by_key(|c| c.charge_id);
        let seen = |c: &ChargeRecord| (c.charge_id, c.amount_cents, c.outcome, c.scan_ids.clone(), c.service_date);
        assert_eq!(
            archived
                .iter()
                .map(|c| (c.charge_id, c.amount_cents, c.outcome, c.scan_ids.clone(), c.service_date))
                .collect::<Vec<_>>(),
            outbox.iter().map(seen).collect::<Vec<_>>()
        );
        assert!(archived.iter().all(|c| c.service_date.to_string() == "2025-11-20" && c.card_id == 501));
        m.stop().await;
    }
}

on_each_engine! {
    async fn a_decline_denies_the_card_until_the_arrears_are_paid(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(502, 100).await;
        let client = m.h.client();
        let watching = m.h.client();
        watching.connect().await.expect("a gateway connected before the decline");
        let trip = vec![
            tap(&rider, 1, T0_MS, TapKind::Entry, "station-01"),
            tap(&rider, 2, T0_MS + 20 * MINUTE, TapKind::Exit, "station-05"),
        ];
        client.push(&batch("depot-1", 1, trip)).await.expect("ack");
        let charges = m.settle().await;
        assert_eq!(
            charges.iter().map(|c| (c.amount_cents.get(), c.outcome.as_str())).collect::<Vec<_>>(),
            [(500, "declined")]
        );
        let account = m.h.server.accounts().account(502).await.expect("account");
        assert_eq!((account.state, account.arrears_cents.get()), (AccountState::InArrears, 500));
        let pushed = within_a_second(|| watching.with_deny_list(|list| list.is_denied(502))).await;
        assert!(pushed, "the connected gateway sees the card denied within a second");
        let newcomer = m.h.client();
        newcomer.connect().await.expect("connect");
        assert!(
            within_a_second(|| newcomer.with_deny_list(|list| list.is_denied(502))).await,
            "a new gateway gets the full list"
        );
        assert_eq!(newcomer.deny_list_version(), watching.deny_list_version());

        // The server's list now refuses the card when the gateway does not say
        // what its gate did.
        let refused =
            client.push(&batch("depot-1", 2, vec![tap(&rider, 3, T0_MS + 40 * MINUTE, TapKind::Single, "bus-1")])).await;
        assert_eq!(refused.expect("ack").accepted, 0, "denied on the server's list");
        assert!(m.h.server.accounts().pay_arrears(502).await.is_err(), "100 left cannot pay 500");

        m.control.top_up("payer-502", 1_000, "topup-502-1").await.expect("top up");
        let paid = m.h.server.accounts().pay_arrears(502).await.expect("pay");
        assert_eq!((paid.state, paid.arrears_cents.get()), (AccountState::Active, 0));
        assert!(within_a_second(|| !watching.with_deny_list(|list| list.is_denied(502))).await, "allowed again, pushed");
        let again =
            client.push(&batch("depot-1", 3, vec![tap(&rider, 4, T0_MS + 50 * MINUTE, TapKind::Single, "bus-1")])).await;
        assert_eq!(again.expect("ack").accepted, 1, "allowed again");
        let charges = m.settle().await;
        let outcomes: BTreeMap<&str, i64> = charges.iter().map(|c| (c.outcome.as_str(), c.amount_cents.get())).collect();
        assert_eq!(outcomes, BTreeMap::from([("declined", 500), ("succeeded", 200)]));
        let debits = m.debits().await;
        assert_charged_once(&debits, &charges);
        let collected: Vec<(String, u64, String)> = debits
            .iter()
            .filter(|e| !e.key.starts_with("deposit-"))
            .map(|e| (e.key.split('-').next().unwrap_or("").to_string(), e.amount_cents, e.outcome.clone()))
            .collect();
        assert_eq!(collected.iter().filter(|(_, _, o)| o == "succeeded").map(|(_, a, _)| a).sum::<u64>(), 700);
        m.stop().await;
    }
}

on_each_engine! {
    async fn what_the_gate_did_decides_the_charge_not_the_servers_newer_list(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(503, 5_000).await;
        m.h.server.pipeline().set_denied(503, true);
        let with_gate = |seq, minute, gate: GateDecision| ScanRecord {
            gate: gate as i32,
            deny_list_version: 1,
            ..tap(&rider, seq, T0_MS + minute * MINUTE, TapKind::Single, "bus-99")
        };
        let scans = vec![with_gate(1, 1, GateDecision::Opened), with_gate(2, 5, GateDecision::Refused)];
        assert_eq!(m.h.client().push(&batch("depot-1", 1, scans)).await.expect("ack").accepted, 1);
        let charges = m.settle().await;
        assert_eq!(
            charges.iter().map(|c| (c.amount_cents.get(), c.outcome.as_str())).collect::<Vec<_>>(),
            [(300, "succeeded")]
        );
        m.stop().await;
    }
}

on_each_engine! {
    async fn outages_lost_answers_and_latency_never_charge_twice(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let riders: Vec<TestRider> = {
            let mut riders = Vec::new();
            for card in 600..612 {
                riders.push(m.rider(card, 5_000).await);
            }
            riders
        };
        let faults = SimFaults { latency_ms: 5, unavailable_every: 3, drop_answer_every: 4, ..SimFaults::default() };
        m.control.set_faults(faults).await.expect("faults");
        let scans: Vec<ScanRecord> = riders
            .iter()
            .flat_map(|r| {
                [
                    tap(r, 1, T0_MS + MINUTE, TapKind::Single, "bus-99"),
                    tap(r, 2, T0_MS + 9 * MINUTE, TapKind::Single, "bus-7"),
                ]
            })
            .collect();
        assert_eq!(m.h.client().push(&batch("depot-1", 1, scans)).await.expect("ack").accepted, 24);
        let charges = m.settle().await;
        assert_eq!(charges.len(), 24);
        assert!(charges.iter().all(|c| c.outcome == ChargeOutcome::Succeeded), "{charges:?}");
        assert!(charges.iter().any(|c| c.attempts > 1), "the faults made some charges retry");
        let debits = m.debits().await;
        assert_charged_once(&debits, &charges);
        let fares: u64 = debits.iter().filter(|e| !e.key.starts_with("deposit-")).map(|e| e.amount_cents).sum();
        assert_eq!(fares, 12 * 500);
        m.stop().await;
    }
}

on_each_engine! {
    /// Issue 19: a decline forged between the server and the gateway (the
    /// debit applied, the answer turned into a 402) made arrears of a paid
    /// ride and denied the card. The forged answer does not verify, the charge
    /// is asked again under its key, and the gateway's own answer stands.
    async fn a_forged_decline_denies_no_card_and_charges_nothing_twice(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let mut riders = Vec::new();
        for card in 620..626 {
            riders.push(m.rider(card, 5_000).await);
        }
        m.control.set_faults(SimFaults { forged_decline_every: 2, ..SimFaults::default() }).await.expect("faults");
        let scans: Vec<ScanRecord> = riders.iter().map(|r| tap(r, 1, T0_MS + MINUTE, TapKind::Single, "bus-99")).collect();
        assert_eq!(m.h.client().push(&batch("depot-1", 1, scans)).await.expect("ack").accepted, 6);
        let charges = m.settle().await;
        assert_eq!(charges.len(), 6);
        assert!(charges.iter().all(|c| c.outcome == ChargeOutcome::Succeeded), "{charges:?}");
        assert!(charges.iter().any(|c| c.attempts > 1), "some answers were forged and asked again");
        assert_charged_once(&m.debits().await, &charges);
        for card in 620..626 {
            let account = m.h.server.accounts().account(card).await.expect("account");
            assert_eq!((account.state, account.arrears_cents.get()), (AccountState::Active, 0), "card {card}");
            assert!(!farestream_core::account::is_denied(account.state, account.arrears_cents), "card {card} denied");
        }
        m.stop().await;
    }
}

on_each_engine! {
    async fn with_no_deposit_a_card_activates_and_closes_without_a_payment(engine) {
        let mut config = Config::defaults();
        config.payments.deposit_cents = 0;
        let Some(m) = Money::on(engine, config).await else { return };
        let accounts = m.h.server.accounts();
        accounts.register(700, "+8613800000700").await.expect("register");
        let active = accounts.activate(700, "payer-700").await.expect("activate");
        assert_eq!((active.state, active.deposit_cents.get()), (AccountState::Active, 0));
        accounts.request_refund(700).await.expect("refund");
        let due = accounts.clock.now_ms() + accounts.rides_arrive_within_ms;
        let report = accounts.process_refunds_as_of(due).await.expect("refunds");
        assert_eq!(report.closed, vec![700]);
        let payments: Vec<Entry> =
            m.control.ledger().await.expect("ledger").into_iter().filter(|e| !e.kind.starts_with("agreement")).collect();
        assert!(payments.is_empty(), "no deposit taken, none returned: {payments:?}");
        m.stop().await;
    }
}

/// A rider with nothing left after the deposit: `rides` bus rides through
/// gates that opened (with a list that did not deny the card yet), each
/// declined, so the card owes their fares. Returns what it owes.
async fn declined_rides(m: &Money, rider: &TestRider, first_seq: u64, rides: u64) -> i64 {
    let scans = (0..rides)
        .map(|n| ScanRecord {
            gate: GateDecision::Opened as i32,
            ..tap(rider, first_seq + n, T0_MS + (first_seq + n) as i64 * MINUTE, TapKind::Single, "bus-99")
        })
        .collect();
    m.h.client().push(&batch("depot-1", first_seq, scans)).await.expect("ack");
    m.settle().await;
    m.h.server.accounts().account(rider.credential.claims.card_id).await.expect("account").arrears_cents.get()
}

on_each_engine! {
    /// Issue 17 item 2: a payment of arrears whose answer was lost, then a
    /// new decline, sent a second payment under a new key (the amount was in
    /// the key) and the gateway collected 1 300 for 800 owed. The lost one is
    /// sent again, for its own amount, before any new attempt.
    async fn arrears_paid_after_a_lost_answer_are_collected_once(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(801, 0).await;
        let accounts = m.h.server.accounts();
        let first_owed = declined_rides(&m, &rider, 1, 2).await;
        assert!(first_owed > 0);
        m.control.top_up("payer-801", first_owed.unsigned_abs(), "topup-801-1").await.expect("top up");
        let lost = SimFaults { drop_answer_every: 1, ..SimFaults::default() };
        m.control.set_faults(lost).await.expect("faults");
        let unanswered = accounts.pay_arrears(801).await.expect_err("the answer was lost");
        assert!(unanswered.to_string().contains("did not answer"), "{unanswered}");
        m.control.set_faults(SimFaults::default()).await.expect("faults off");
        let total_owed = declined_rides(&m, &rider, 10, 1).await;
        let second_owed = total_owed - first_owed;
        assert!(second_owed > 0, "the payer is empty again: the new ride is declined");
        let after_resend = accounts.pay_arrears(801).await.expect("the lost payment, sent again");
        assert_eq!(after_resend.arrears_cents.get(), second_owed, "the first payment's amount, not what is owed now");
        assert_eq!(after_resend.state, AccountState::InArrears);
        m.control.top_up("payer-801", second_owed.unsigned_abs(), "topup-801-2").await.expect("top up");
        let paid = accounts.pay_arrears(801).await.expect("pay the rest");
        assert_eq!((paid.state, paid.arrears_cents.get()), (AccountState::Active, 0));
        let arrears_debits: Vec<(String, u64)> = m
            .debits()
            .await
            .into_iter()
            .filter(|e| e.key.starts_with("arrears-") && e.outcome == "succeeded")
            .map(|e| (e.key, e.amount_cents))
            .collect();
        assert_eq!(
            arrears_debits,
            [
                ("arrears-801-1".to_string(), first_owed.unsigned_abs()),
                ("arrears-801-2".into(), second_owed.unsigned_abs())
            ],
            "collected exactly what was declined"
        );
        m.stop().await;
    }
}

on_each_engine! {
    /// Review of issue 19: the resend of an arrears payment whose answer was
    /// lost was refused (a gateway's 422, or one forged from a copy of the
    /// request), the attempt was taken as decided, and the rider's next
    /// payment went out under a new key: the arrears collected twice. A
    /// refused resend stays undecided and goes again under its own key.
    async fn a_refused_resend_of_a_lost_payment_never_opens_a_second_one(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(802, 0).await;
        let accounts = m.h.server.accounts();
        let owed = declined_rides(&m, &rider, 1, 2).await;
        m.control.top_up("payer-802", 10 * owed.unsigned_abs(), "topup-802-1").await.expect("top up");
        m.control.set_faults(SimFaults { drop_answer_every: 1, ..SimFaults::default() }).await.expect("faults");
        accounts.pay_arrears(802).await.expect_err("applied, the answer lost");
        m.control.set_faults(SimFaults { refuse_seen_keys: true, ..SimFaults::default() }).await.expect("faults");
        let before = crate::support::metric("farestream_account_payments_refused_on_resend_total");
        let refused = accounts.pay_arrears(802).await.expect_err("the resend refused");
        assert!(refused.to_string().contains("stays undecided"), "{refused}");
        let open = m
            .store(|store| {
                use farestream::money::payments::{PaymentKind, undecided};
                undecided(&mut store.db(), 802, PaymentKind::Arrears).expect("read")
            })
            .await;
        assert_eq!(open.map(|a| a.key), Some("arrears-802-1".to_string()), "still undecided, under its key");
        assert!(crate::support::metric("farestream_account_payments_refused_on_resend_total") > before);
        accounts.pay_arrears(802).await.expect_err("refused again: still the same key, never a new one");
        m.control.set_faults(SimFaults::default()).await.expect("faults off");
        let paid = accounts.pay_arrears(802).await.expect("the gateway's first result");
        assert_eq!((paid.state, paid.arrears_cents.get()), (AccountState::Active, 0));
        let arrears: Vec<String> =
            m.debits().await.into_iter().filter(|e| e.key.starts_with("arrears-")).map(|e| e.key).collect();
        assert_eq!(arrears, ["arrears-802-1"], "collected once");
        m.stop().await;
    }
}

on_each_engine! {
    /// Issue 17 item 3: the deposit's key was fixed per card, so after a
    /// decline the gateway replayed the decline for ever, however much the
    /// rider topped up.
    async fn a_declined_deposit_can_be_paid_after_a_top_up(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let accounts = m.h.server.accounts();
        accounts.register(802, "+8613800000802").await.expect("register");
        let declined = accounts.activate(802, "payer-802").await.expect_err("no money for the deposit");
        assert!(matches!(declined, farestream::money::ServiceError::Declined(_)), "{declined}");
        assert_eq!(accounts.account(802).await.expect("account").state, AccountState::Registered);
        m.control.top_up("payer-802", 2_000, "topup-802").await.expect("top up");
        let active = accounts.activate(802, "payer-802").await.expect("the deposit, again");
        assert_eq!((active.state, active.deposit_cents.get()), (AccountState::Active, 2_000));
        let deposits: Vec<(String, String)> =
            m.debits().await.into_iter().filter(|e| e.key.starts_with("deposit-")).map(|e| (e.key, e.outcome)).collect();
        assert_eq!(
            deposits,
            [("deposit-802-1".to_string(), "declined".to_string()), ("deposit-802-2".into(), "succeeded".into())]
        );
        m.stop().await;
    }
}

on_each_engine! {
    /// Issue 17 items 6 and 7: the refund pass stopped at the first card the
    /// gateway refused, so every refund behind it waited for ever; and a rider
    /// who owed more than the deposit was messaged on every pass.
    async fn one_card_refused_a_refund_stops_no_other_and_an_owing_rider_is_told_once(engine) {
        let mut config = Config::defaults();
        config.payments.deposit_cents = 100;
        let Some(m) = Money::on(engine, config).await else { return };
        let accounts = m.h.server.accounts();
        for card in [803, 804, 805] {
            accounts.register(card, &format!("+86138{card:08}")).await.expect("register");
            m.control.top_up(&format!("payer-{card}"), 100, &format!("topup-{card}")).await.expect("top up");
            accounts.activate(card, &format!("payer-{card}")).await.expect("activate");
        }
        let owes = declined_rides(&m, &m.h.rider(805), 1, 1).await;
        assert!(owes > 100, "a bus fare is more than this deposit");
        m.store(|store| store.db().execute("UPDATE accounts SET agreement_id = 'gone' WHERE card_id = 803", &[]))
            .await
            .expect("break");
        for card in [803, 804, 805] {
            accounts.request_refund(card).await.expect("refund");
        }
        let due = accounts.clock.now_ms() + 2 * accounts.rides_arrive_within_ms + 100_000_000;
        let report = accounts.process_refunds_as_of(due).await.expect("the pass goes on");
        assert_eq!(report.closed, vec![804], "{report:?}");
        assert_eq!(report.failed.iter().map(|(card, _)| *card).collect::<Vec<_>>(), [803], "{report:?}");
        assert!(report.failed[0].1.contains("agreement"), "the gateway's reason: {report:?}");
        assert_eq!(report.owing, vec![805]);
        let owing = accounts.account(805).await.expect("account");
        assert_eq!(
            (owing.arrears_cents.get(), owing.deposit_cents.get()),
            (owes - 100, 0),
            "the deposit was set against it"
        );
        let told = || m.h.inbox.all_to("+8613800000805").into_iter().filter(|t| t.contains("deposit is held")).count();
        assert_eq!(told(), 1);
        for _ in 0..3 {
            assert_eq!(accounts.process_refunds_as_of(due).await.expect("pass").owing, vec![805]);
        }
        assert_eq!(told(), 1, "told once for the same amount, not on every pass");
        m.control.top_up("payer-805", owes.unsigned_abs(), "topup-805-2").await.expect("top up");
        accounts.pay_arrears(805).await.expect("pay");
        assert_eq!(accounts.account(805).await.expect("account").state, AccountState::RefundPending, "still leaving");
        assert_eq!(accounts.process_refunds_as_of(due).await.expect("pass").closed, vec![805], "nothing left to return");
        m.stop().await;
    }
}

on_each_engine! {
    /// Issue 17 item 8: `attempts` went up when up to 512 charges were
    /// claimed, before any was sent, so every crash counted attempts that never
    /// happened and paid charges turned `failed`. Now it counts requests sent.
    async fn a_charge_counts_only_the_attempts_that_were_sent(engine) {
        let mut config = Config::defaults();
        config.payments.dispatch_concurrency_max = 1;
        let Some(m) = Money::on(engine, config).await else { return };
        let rider = m.rider(806, 10_000).await;
        m.control.set_faults(SimFaults { latency_ms: 400, ..SimFaults::default() }).await.expect("faults");
        let scans = (1..=4).map(|n| tap(&rider, n, T0_MS + n as i64 * MINUTE, TapKind::Single, "bus-99")).collect();
        assert_eq!(m.h.client().push(&batch("depot-1", 1, scans)).await.expect("ack").accepted, 4);
        m.h.server.flush_pricing().await.expect("price");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let one_decided = loop {
            let now = m.store(|store| charges(&mut store.db(), None)).await.expect("charges");
            if now.iter().any(|c| c.outcome == ChargeOutcome::Succeeded) || std::time::Instant::now() > deadline {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let waiting: Vec<u32> =
            one_decided.iter().filter(|c| c.outcome == ChargeOutcome::Pending).map(|c| c.attempts).collect();
        assert!(!waiting.is_empty(), "one request at a time: the others wait");
        assert!(waiting.iter().all(|&a| a == 0), "claimed but not answered is no attempt: {one_decided:?}");
        m.control.set_faults(SimFaults::default()).await.expect("faults off");
        let decided = m.settle().await;
        assert!(decided.iter().all(|c| c.outcome == ChargeOutcome::Succeeded && c.attempts == 1), "{decided:?}");
        m.stop().await;
    }
}

on_each_engine! {
    /// Issue 17 item 9: during a gateway outage every charge spent its
    /// attempts within seconds and the request rate at the dead gateway grew
    /// with the backlog. The breaker holds the backlog back (a few probes),
    /// and the first answered probe sends it all.
    async fn a_dead_gateway_sees_a_few_probes_and_the_backlog_drains_once_it_returns(engine) {
        let mut config = Config::defaults();
        config.payments.breaker_failures_to_open = 5;
        config.payments.breaker_probe_interval_ms_initial = 100;
        config.payments.breaker_probe_interval_ms_max = 400;
        let Some(m) = Money::on(engine, config).await else { return };
        let riders: Vec<TestRider> = {
            let mut riders = Vec::new();
            for card in 900..940 {
                riders.push(m.rider(card, 5_000).await);
            }
            riders
        };
        let down = SimFaults { unavailable_every: 1, ..SimFaults::default() };
        m.control.set_faults(down).await.expect("faults");
        let before = m.control.stats().await.expect("stats").payment_requests;
        let scans = riders.iter().map(|r| tap(r, 1, T0_MS + MINUTE, TapKind::Single, "bus-99")).collect();
        assert_eq!(m.h.client().push(&batch("depot-1", 1, scans)).await.expect("ack").accepted, 40);
        m.h.server.flush_pricing().await.expect("price");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = m.control.stats().await.expect("stats").payment_requests - before;
        // 5 to open it, the 16 already in flight, and one probe per 200-400 ms.
        assert!(during <= 5 + 16 + 16, "{during} requests at a dead gateway in 3 s (without the breaker: hundreds)");
        assert_eq!(m.store(|store| undecided(&mut store.db())).await.expect("count"), 40, "nothing lost, nothing failed");
        m.control.set_faults(SimFaults::default()).await.expect("back");
        let charges = m.settle().await;
        assert_eq!(charges.iter().filter(|c| c.outcome == ChargeOutcome::Succeeded).count(), 40, "{charges:?}");
        assert!(charges.iter().all(|c| c.attempts >= 1));
        m.stop().await;
    }
}

on_each_engine! {
    /// Issue 17 item 10: the money audit passed whatever deposit-, arrears-
    /// and refund- payments the gateway applied, and nothing showed that it
    /// fails at all. Each planted fault must fail it.
    async fn the_money_audit_fails_on_each_planted_fault(engine) {
        use farestream::money::money_audit::AppliedPayment;
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let riders = [m.rider(807, 5_000).await, m.rider(808, 5_000).await];
        let scans = riders.iter().map(|r| tap(r, 1, T0_MS + MINUTE, TapKind::Single, "bus-99")).collect();
        m.h.client().push(&batch("depot-1", 1, scans)).await.expect("ack");
        let charges = m.settle().await;
        let rows = m.h.archive_rows().await;
        let ledger: Vec<AppliedPayment> =
            m.control.ledger().await.expect("ledger").iter().filter_map(Entry::applied_payment).collect();
        m.store(move |store| plant_each_fault(store, &rows, &ledger, &charges)).await;
        m.stop().await;
    }
}

/// The planted faults of [`the_money_audit_fails_on_each_planted_fault`],
/// each failing the audit.
fn plant_each_fault(
    store: &mut farestream::money::MoneyStore,
    rows: &[farestream::scan::ArchivedScan],
    ledger: &[farestream::money::money_audit::AppliedPayment],
    charges: &[ChargeRecord],
) {
    use farestream::money::money_audit::{AppliedPayment, audit_money};
    let ledger = ledger.to_vec();
    let clean = audit_money(&mut store.db(), rows, Some(&ledger)).expect("audit");
    assert!(clean.is_clean() && clean.undecided == 0 && clean.charges == 2, "{clean}");

    let legacy =
        AppliedPayment { kind: "debit".into(), key: "deposit-807".into(), amount_cents: 2_000, succeeded: true };
    let with_legacy = [ledger.clone(), vec![legacy]].concat();
    let audit = audit_money(&mut store.db(), rows, Some(&with_legacy)).expect("audit");
    assert!(audit.is_clean(), "a key from before payments were recorded is left out: {audit}");

    let unrecorded =
        AppliedPayment { kind: "debit".into(), key: "arrears-807-9".into(), amount_cents: 500, succeeded: true };
    let with_unrecorded = [ledger.clone(), vec![unrecorded]].concat();
    let audit = audit_money(&mut store.db(), rows, Some(&with_unrecorded)).expect("audit");
    assert_eq!(audit.double_charged, 1, "an account payment the store never recorded: {audit}");

    let mut deposit_lost = ledger.clone();
    deposit_lost.retain(|p| p.key != "deposit-808-1");
    let audit = audit_money(&mut store.db(), rows, Some(&deposit_lost)).expect("audit");
    assert_eq!(audit.ledger_mismatched, 1, "a deposit recorded as paid that the gateway lacks: {audit}");

    let mut flipped = ledger.clone();
    let charge_key = hex::encode(charges[0].charge_id);
    flipped.iter_mut().filter(|p| p.key == charge_key).for_each(|p| p.succeeded = false);
    let audit = audit_money(&mut store.db(), rows, Some(&flipped)).expect("audit");
    assert_eq!(audit.ledger_mismatched, 1, "the gateway declined what the outbox says succeeded: {audit}");

    let mut unpriced = rows.to_vec();
    let mut ghost = unpriced.iter().find(|r| farestream::fares::is_ride(r)).expect("a ride").clone();
    ghost.scan_id = [0xee; 16];
    unpriced.push(ghost);
    let audit = audit_money(&mut store.db(), &unpriced, Some(&ledger)).expect("audit");
    assert_eq!(audit.unpriced_rides, 1, "an archived ride no charge prices: {audit}");

    let both: Vec<u8> = charges.iter().flat_map(|c| c.scan_ids.iter().flatten().copied()).collect();
    store
        .db()
        .execute(
            "UPDATE charges SET scan_ids = ?1 WHERE charge_id = ?2",
            &[Value::Bytes(&both), Value::Bytes(&charges[1].charge_id)],
        )
        .expect("plant a double charge");
    let audit = audit_money(&mut store.db(), rows, Some(&ledger)).expect("audit");
    assert!(audit.double_charged >= 1 && !audit.is_clean(), "a tap in two charges: {audit}");
}

on_each_engine! {
    /// Review of issue 17: two activations at the same moment both opened a
    /// deposit attempt, and the gateway took two deposits.
    async fn two_activations_at_once_take_one_deposit(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let accounts = m.h.server.accounts().clone();
        accounts.register(809, "+8613800000809").await.expect("register");
        m.control.top_up("payer-809", 10_000, "topup-809").await.expect("top up");
        m.control.set_faults(SimFaults { latency_ms: 300, ..SimFaults::default() }).await.expect("slow");
        let (a, b) = (accounts.clone(), accounts.clone());
        let (first, second) = tokio::join!(a.activate(809, "payer-809"), b.activate(809, "payer-809"));
        assert!(first.is_ok() || second.is_ok(), "{first:?} {second:?}");
        assert_eq!(accounts.account(809).await.expect("account").state, AccountState::Active);
        let deposits: Vec<Entry> = m.debits().await.into_iter().filter(|e| e.key.starts_with("deposit-")).collect();
        assert_eq!(deposits.len(), 1, "one deposit: {deposits:?}");
        m.stop().await;
    }
}

on_each_engine! {
    /// Review of issue 17: arrears were set against the deposit while a
    /// payment of them was still out (its answer lost), so the rider paid
    /// twice; and a refund asked for before due times were recorded never
    /// closed.
    async fn a_refund_waits_for_a_payment_still_out_and_an_old_request_still_closes(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let accounts = m.h.server.accounts();
        let rider = m.rider(810, 0).await;
        let owed = declined_rides(&m, &rider, 1, 1).await;
        accounts.request_refund(810).await.expect("refund");
        m.control.top_up("payer-810", owed.unsigned_abs(), "topup-810-1").await.expect("top up");
        let lost = SimFaults { drop_answer_every: 1, ..SimFaults::default() };
        m.control.set_faults(lost).await.expect("faults");
        accounts.pay_arrears(810).await.expect_err("the answer was lost");
        m.control.set_faults(SimFaults::default()).await.expect("faults off");
        let due = accounts.clock.now_ms() + 30 * 86_400_000;
        let report = accounts.process_refunds_as_of(due).await.expect("refunds");
        assert_eq!(report.waiting, vec![810], "a payment of the arrears is still out: {report:?}");
        assert_eq!(accounts.account(810).await.expect("account").deposit_cents.get(), 2_000, "nothing set against it yet");
        accounts.pay_arrears(810).await.expect("the same payment, answered");
        let closed = accounts.process_refunds_as_of(due).await.expect("refunds");
        assert_eq!(closed.closed, vec![810]);
        let refund: u64 =
            m.control.ledger().await.expect("ledger").iter().filter(|e| e.kind == "credit").map(|e| e.amount_cents).sum();
        assert_eq!(refund, 2_000, "the whole deposit back: the arrears were paid, once");

        // A request from before due times were recorded (none in the row).
        m.rider(811, 5_000).await;
        accounts.request_refund(811).await.expect("refund");
        m.store(|store| store.db().execute("UPDATE accounts SET refund_due_at = NULL WHERE card_id = 811", &[]))
            .await
            .expect("legacy");
        let asked = accounts.account(811).await.expect("account").refund_requested_at.expect("asked");
        let week = 604_800_000;
        let early = accounts.process_refunds_as_of(asked + accounts.rides_arrive_within_ms + week - 1).await.expect("p");
        assert!(!early.closed.contains(&811), "{early:?}");
        let late = accounts.process_refunds_as_of(asked + accounts.rides_arrive_within_ms + week).await.expect("p");
        assert_eq!(late.closed, vec![811], "it closes once the longest credential and the lateness have passed");
        m.stop().await;
    }
}
