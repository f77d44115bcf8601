//! Outcomes decided before a charge is ever sent (issue 17 items 5 and 16):
//! a credit set against what the rider owes, and a ride by a card that has
//! no account.

use farestream::charges::ChargeRecord;
use farestream::clock_source::Clock;
use farestream::config::Config;
use farestream::gateway::GatewayClient;
use farestream::money::db::{Db, Value};
use farestream::money::money_audit::{AppliedPayment, audit_money};
use farestream::paygw::Entry;
use farestream::scan::TapKind;
use farestream::wire::{GateDecision, ScanRecord};
use farestream_core::account::AccountState;

use crate::money::{MINUTE, Money, tap};
use crate::support::{T0_MS, TestRider, batch};
use farestream::settle::settle_settings;
use farestream_analytics::settle::settle_day;
use farestream_core::settlement::RiderFigures;

/// A scan the gate let through, whatever the server's list says now.
fn opened(rider: &TestRider, seq: u64, at_ms: i64, kind: TapKind, place: &str) -> ScanRecord {
    ScanRecord { gate: GateDecision::Opened as i32, ..tap(rider, seq, at_ms, kind, place) }
}

/// The rider enters the metro at `T0_MS` and no exit comes in the window:
/// the day's charges once the maximum fare is decided.
async fn entry_left_open(m: &Money, rider: &TestRider, client: &GatewayClient) -> Vec<ChargeRecord> {
    client.push(&batch("depot-1", 1, vec![opened(rider, 1, T0_MS, TapKind::Entry, "station-01")])).await.expect("ack");
    m.h.clock.set(T0_MS + 3 * 60 * MINUTE + MINUTE);
    m.settle().await
}

fn outcomes(charges: &[ChargeRecord]) -> Vec<(i64, &str)> {
    let mut out: Vec<(i64, &str)> = charges.iter().map(|c| (c.amount_cents.get(), c.outcome.as_str())).collect();
    out.sort();
    out
}

async fn credits(m: &Money) -> Vec<Entry> {
    m.control.ledger().await.expect("ledger").into_iter().filter(|e| e.kind == "credit").collect()
}

/// The service day of `T0_MS` settled with everything in: its totals, and
/// the run must reconcile.
async fn settled(m: &Money) -> RiderFigures {
    m.settle().await;
    m.h.server.flush_archive().await.expect("flush archive");
    let settings = settle_settings(&m.h.config, m.h.dir.path()).expect("settings");
    let day = "2025-11-20".parse().expect("date");
    let settled = settle_day(&settings, day, m.h.clock.now_ms()).await.expect("settle");
    assert!(settled.breaks.is_empty(), "{:?}", settled.breaks);
    settled.new_run.expect("a run").totals
}

async fn audit_is_clean(m: &Money) {
    let rows = m.h.archive_rows().await;
    let ledger: Vec<AppliedPayment> =
        m.control.ledger().await.expect("ledger").iter().filter_map(Entry::applied_payment).collect();
    let audit = m.store(move |store| audit_money(&mut store.db(), &rows, Some(&ledger))).await.expect("audit");
    assert!(audit.is_clean() && audit.undecided == 0, "{audit}");
}

on_each_engine! {
    /// Before: the exit's credit of 400 went out to a rider owing 900 for the
    /// same trip's maximum fare, and the 900 stayed owed.
    async fn a_credit_pays_the_riders_arrears_before_any_is_paid_out(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(531, 100).await;
        let client = m.h.client();
        assert_eq!(
            outcomes(&entry_left_open(&m, &rider, &client).await),
            [(900, "declined")],
            "the open entry at the maximum fare"
        );
        let owing = m.h.server.accounts().account(531).await.expect("account");
        assert_eq!((owing.state, owing.arrears_cents.get()), (AccountState::InArrears, 900));

        let exit = opened(&rider, 2, T0_MS + 20 * MINUTE, TapKind::Exit, "station-05");
        client.push(&batch("depot-1", 2, vec![exit])).await.expect("ack");
        assert_eq!(outcomes(&m.settle().await), [(-400, "netted"), (900, "declined")]);
        assert!(credits(&m).await.is_empty(), "nothing paid out to a rider who owes");
        let after = m.h.server.accounts().account(531).await.expect("account");
        assert_eq!(
            (after.state, after.arrears_cents.get()),
            (AccountState::InArrears, 500),
            "the trip's 500 is what is owed"
        );
        let history =
            m.store(|store| farestream::money::accounts::account_history(&mut store.db(), 531)).await.expect("history");
        assert!(history.iter().any(|e| e.event == "arrears_netted" && e.amount_cents.get() == -400), "{history:?}");
        audit_is_clean(&m).await;
        let day = settled(&m).await;
        assert_eq!(
            (day.due_cents.get(), day.charged_cents.get(), day.declined_cents.get(), day.netted_cents.get()),
            (500, 500, 900, -400),
            "the settlement shows the credit netted: {day:?}"
        );
        m.stop().await;
    }
}

on_each_engine! {
    /// A credit larger than the arrears clears them, the card rides again, and
    /// only the rest is paid out, once.
    async fn a_credit_larger_than_the_arrears_clears_them_and_pays_out_the_rest(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(532, 1_000).await;
        let client = m.h.client();
        assert_eq!(outcomes(&entry_left_open(&m, &rider, &client).await), [(900, "succeeded")]);
        let bus = opened(&rider, 2, T0_MS + 30 * MINUTE, TapKind::Single, "bus-99");
        client.push(&batch("depot-1", 2, vec![bus])).await.expect("ack");
        assert_eq!(outcomes(&m.settle().await), [(300, "declined"), (900, "succeeded")], "100 left cannot pay 300");

        let exit = opened(&rider, 3, T0_MS + 20 * MINUTE, TapKind::Exit, "station-05");
        client.push(&batch("depot-1", 3, vec![exit])).await.expect("ack");
        let charges = m.settle().await;
        assert_eq!(outcomes(&charges), [(-300, "netted"), (-100, "succeeded"), (300, "declined"), (900, "succeeded")]);
        assert_eq!(charges.iter().map(|c| c.amount_cents.get()).sum::<i64>(), 800, "the trip's 500 and the bus's 300");
        let paid_out: Vec<(String, u64)> = credits(&m).await.into_iter().map(|e| (e.key, e.amount_cents)).collect();
        let rest = charges.iter().find(|c| c.amount_cents.get() == -100).expect("the rest");
        assert_eq!(paid_out, [(hex::encode(rest.charge_id), 100)], "only the rest, once");
        let after = m.h.server.accounts().account(532).await.expect("account");
        assert_eq!((after.state, after.arrears_cents.get()), (AccountState::Active, 0), "rides again");
        audit_is_clean(&m).await;
        m.stop().await;
    }
}

on_each_engine! {
    /// Before: a ride by a card with no account was refused by the dispatcher
    /// and retried every ten minutes for ever (`serve` then `simulate`).
    async fn a_ride_by_a_card_with_no_account_is_decided_and_never_sent(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let stranger = m.h.rider(533);
        let known = m.rider(534, 5_000).await;
        let scans = vec![
            opened(&stranger, 1, T0_MS, TapKind::Single, "bus-99"),
            opened(&known, 1, T0_MS + MINUTE, TapKind::Single, "bus-99"),
        ];
        m.h.client().push(&batch("depot-1", 1, scans)).await.expect("ack");
        let charges = m.settle().await;
        let by_card: Vec<(u64, i64, &str)> = {
            let mut rows: Vec<_> = charges.iter().map(|c| (c.card_id, c.amount_cents.get(), c.outcome.as_str())).collect();
            rows.sort();
            rows
        };
        assert_eq!(by_card, [(533, 300, "no_account"), (534, 300, "succeeded")]);
        let stranger_charge = charges.iter().find(|c| c.card_id == 533).expect("charge");
        assert_eq!(stranger_charge.attempts, 0, "never sent");
        assert!(stranger_charge.decided_at.is_some());
        let ledger = m.control.ledger().await.expect("ledger");
        assert!(!ledger.iter().any(|e| e.key == hex::encode(stranger_charge.charge_id)), "the gateway never heard of it");
        audit_is_clean(&m).await;
        let day = settled(&m).await;
        assert_eq!(
            (day.due_cents.get(), day.succeeded_cents.get(), day.no_account_cents.get()),
            (600, 300, 300),
            "{day:?}"
        );
        m.stop().await;
    }
}

on_each_engine! {
    /// Review of issue 17: two credits of one card in one dispatcher round
    /// were both judged against the arrears as the round began; the second
    /// asked to net more than was left, and every claim failed from then on.
    async fn two_credits_of_one_card_in_one_round_net_what_is_left_and_pay_the_rest(engine) {
        const DAY: i64 = 24 * 60 * MINUTE;
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(536, 1_800).await;
        let client = m.h.client();
        assert_eq!(outcomes(&entry_left_open(&m, &rider, &client).await), [(900, "succeeded")]);
        m.h.clock.set(T0_MS + DAY + MINUTE);
        let entry = opened(&rider, 2, T0_MS + DAY, TapKind::Entry, "station-01");
        client.push(&batch("depot-1", 2, vec![entry])).await.expect("ack");
        m.h.clock.set(T0_MS + DAY + 3 * 60 * MINUTE + MINUTE);
        assert_eq!(outcomes(&m.settle().await), [(900, "succeeded"), (900, "succeeded")], "the payer is empty now");
        let bus = opened(&rider, 3, T0_MS + DAY + 30 * MINUTE, TapKind::Single, "bus-99");
        client.push(&batch("depot-1", 3, vec![bus])).await.expect("ack");
        m.settle().await;
        let owing = m.h.server.accounts().account(536).await.expect("account");
        assert_eq!(owing.arrears_cents.get(), 300, "the bus declined on an empty payer");

        let exits = vec![
            opened(&rider, 4, T0_MS + 20 * MINUTE, TapKind::Exit, "station-05"),
            opened(&rider, 5, T0_MS + DAY + 20 * MINUTE, TapKind::Exit, "station-05"),
        ];
        client.push(&batch("depot-1", 4, exits)).await.expect("ack");
        let charges = m.settle().await;
        let credits_decided: Vec<(i64, &str)> = outcomes(&charges).into_iter().filter(|(amount, _)| *amount < 0).collect();
        assert_eq!(credits_decided, [(-400, "succeeded"), (-300, "netted"), (-100, "succeeded")]);
        let paid_out: u64 = credits(&m).await.iter().map(|e| e.amount_cents).sum();
        assert_eq!(paid_out, 500, "800 of credits: 300 set against the arrears, 500 paid out");
        let after = m.h.server.accounts().account(536).await.expect("account");
        assert_eq!((after.state, after.arrears_cents.get()), (AccountState::Active, 0));
        audit_is_clean(&m).await;
        m.stop().await;
    }
}

on_each_engine! {
    /// Review of issue 17: a credit netted while a payment of the arrears was
    /// out (sized before the credit) collected the credit twice, leaving an
    /// overpayment for a person to return. Only what the payment would leave
    /// owed is netted (here nothing): the credit goes out at once.
    async fn a_credit_nets_only_what_a_payment_of_the_arrears_still_out_leaves_owed(engine) {
        use farestream::paygw::SimFaults;
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        let rider = m.rider(537, 100).await;
        let client = m.h.client();
        assert_eq!(outcomes(&entry_left_open(&m, &rider, &client).await), [(900, "declined")]);
        m.control.top_up("payer-537", 800, "topup-537-1").await.expect("top up");
        m.control.set_faults(SimFaults { drop_answer_every: 1, ..SimFaults::default() }).await.expect("faults");
        m.h.server.accounts().pay_arrears(537).await.expect_err("the answer was lost");
        m.control.set_faults(SimFaults::default()).await.expect("faults off");

        let exit = opened(&rider, 2, T0_MS + 20 * MINUTE, TapKind::Exit, "station-05");
        client.push(&batch("depot-1", 2, vec![exit])).await.expect("ack");
        assert_eq!(outcomes(&m.settle().await), [(-400, "succeeded"), (900, "declined")], "paid out, not netted");
        let paid = m.h.server.accounts().pay_arrears(537).await.expect("the lost payment, sent again");
        assert_eq!((paid.state, paid.arrears_cents.get()), (AccountState::Active, 0));
        let history =
            m.store(|store| farestream::money::accounts::account_history(&mut store.db(), 537)).await.expect("history");
        assert!(!history.iter().any(|e| e.event == "arrears_overpaid"), "{history:?}");
        assert_eq!(credits(&m).await.iter().map(|e| e.amount_cents).sum::<u64>(), 400);
        audit_is_clean(&m).await;
        m.stop().await;
    }
}

on_each_engine! {
    /// Review of issue 17: stores from before `no_account` hold such charges
    /// `failed`, claimed many times; they are decided too.
    async fn a_failed_charge_of_a_card_with_no_account_from_before_is_decided(engine) {
        let Some(m) = Money::on(engine, Config::defaults()).await else { return };
        m.store(|store| {
            store.db().execute(
                "INSERT INTO charges (charge_id, card_id, service_date, kind, amount_cents, currency, scan_ids,
                                      created_at, outcome, next_attempt_at, attempts, claims)
                 VALUES (?1, 538, 20412, 'ride', 300, 'CNY', ?2, 1, 'failed', 0, 0, 3)",
                &[Value::Bytes(&[0x0a; 16]), Value::Bytes(&[])],
            )
        })
        .await
        .expect("a charge as an older server left it");
        let charges = m.settle().await;
        assert_eq!(outcomes(&charges), [(300, "no_account")]);
        assert_eq!(charges[0].attempts, 0);
        m.stop().await;
    }
}
