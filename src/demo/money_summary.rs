//! The demo's money: every rider opens an account (agreement signed,
//! deposit paid) at the simulated payment gateway before the day; a few
//! riders' banks hold too little, so their charges are declined and they
//! fall into arrears; after the day half of them top up and pay. The
//! summary sets the charges beside the archive's rides and the gateway's
//! ledger.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use indicatif::ProgressBar;

use super::DemoError;
use crate::charges::{ChargeOutcome, ChargeRecord};
use crate::fares::is_ride;
use crate::money::money_audit::{AppliedPayment, MoneyAudit, audit_money};
use crate::money::outbox::{charges, undecided};
use crate::money::pricing::entries_closing_by;
use crate::paygw::{Entry, SimControl};
use crate::scan::ArchivedScan;
use crate::server::Server;
use crate::sim::{AppError, Balances, Member, RiderApp};
use farestream_core::money::Cents;

/// What the simulated banks hold after the deposit: one rider in fifty
/// has less than a bus ride, so the day's first charge is declined.
pub(super) const BALANCES: Balances =
    Balances { deposit_cents: 2_000, ample_cents: 100_000, short_cents: 150, short_every: 50 };
/// One rider in this many asks for the deposit back after the day.
const REFUND_EVERY: usize = 200;
/// A day in milliseconds: the demo pays refunds two days past their wait.
const DAY_MS: i64 = 86_400_000;
/// How long the demo waits for its charges to be decided after the day.
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(120);

/// Waits until every ride is priced (the last entries' exit windows
/// closed on the server's clock) and every charge decided.
pub(super) async fn settle(server: &Server, progress: &ProgressBar) -> Result<(), String> {
    let started = std::time::Instant::now();
    loop {
        server.flush_pricing().await.map_err(|e| e.to_string())?;
        let (open, waiting) = server
            .with_money_store(|store| Ok((entries_closing_by(&mut store.db(), i64::MAX)?, undecided(&mut store.db())?)))
            .await
            .map_err(|e| e.to_string())?;
        progress.set_message(format!("{waiting} charges undecided, {open} metro entries awaiting their exit window"));
        if waiting == 0 && open == 0 {
            return Ok(());
        }
        if started.elapsed() > SETTLE_WAIT_MAX {
            return Err(format!("{waiting} charges still undecided after {SETTLE_WAIT_MAX:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What riders did after the day, in their apps.
#[derive(Debug, Clone, Default)]
pub struct AfterDay {
    /// Riders in arrears who asked for tomorrow's keys and were refused.
    pub keys_refused_in_arrears: u64,
    /// Riders in arrears who got keys anyway (must be 0).
    pub keys_issued_in_arrears: u64,
    pub arrears_paid: u64,
    /// Of those who paid, how many got keys again.
    pub keys_after_paying: u64,
    pub refunds_closed: u64,
    /// Of those, riders who owed: the arrears came out of the deposit.
    pub refunds_net_of_arrears: u64,
    /// Owing more than the deposit: held until the rider pays the rest.
    pub refunds_held_owing: u64,
    /// Refunds the gateway did not take this pass (tried again next pass).
    pub refunds_failed: u64,
}

/// Riders in arrears ask for tomorrow's keys (refused); half of them top
/// up, pay and ask again; a few riders, one of them owing, ask for their
/// deposit back, and the refund job runs as it would once no ride of
/// theirs can still arrive (the demo does not wait those days).
pub(super) async fn after_the_day(
    server: &Server,
    app: &RiderApp,
    bank: &SimControl,
    members: &[Member],
) -> Result<AfterDay, DemoError> {
    let mut after = AfterDay::default();
    let mut owing = Vec::new();
    for member in members.iter().filter(|m| m.short) {
        if server.accounts().account(member.session.card_id).await?.arrears_cents.is_positive() {
            owing.push(member);
        }
    }
    for (n, member) in owing.iter().enumerate() {
        match app.daily_keys(&member.session, [0; 32]).await {
            Err(AppError::Refused { error, .. }) if error == "keys_refused" => after.keys_refused_in_arrears += 1,
            _ => after.keys_issued_in_arrears += 1,
        }
        if n % 2 == 1 {
            continue;
        }
        let owed = server.accounts().account(member.session.card_id).await?.arrears_cents;
        let key = format!("topup-{}-1", member.session.card_id);
        bank.top_up(&member.payer, owed.unsigned_abs(), &key).await.map_err(|e| AppError::Http(e.to_string()))?;
        app.pay_arrears(&member.session).await?;
        after.arrears_paid += 1;
        let fresh = crate::ridecode::UserKey::from_seed(&[7; 32])?;
        if app.daily_keys(&member.session, fresh.public_key()).await.is_ok() {
            after.keys_after_paying += 1;
        }
    }
    let owing_leaver = owing.iter().skip(1).step_by(2).take(1).copied();
    let leaving = members.iter().filter(|m| !m.short).step_by(REFUND_EVERY).chain(owing_leaver.clone());
    for member in leaving {
        app.request_refund(&member.session).await?;
    }
    let accounts = server.accounts();
    let days_later = accounts.clock.now_ms().saturating_add(accounts.rides_arrive_within_ms).saturating_add(DAY_MS * 2);
    let refunds = server.refund_pass_as_of(days_later).await?;
    after.refunds_closed = refunds.closed.len() as u64;
    after.refunds_held_owing = refunds.owing.len() as u64;
    after.refunds_failed = refunds.failed.len() as u64;
    after.refunds_net_of_arrears = owing_leaver.filter(|m| refunds.closed.contains(&m.session.card_id)).count() as u64;
    Ok(after)
}

/// The money of the demo's day, and whether it adds up.
#[derive(Debug, Clone, Default)]
pub struct MoneySummary {
    pub accounts: usize,
    pub charges_by_outcome: BTreeMap<ChargeOutcome, (u64, Cents)>,
    /// This run's rides, and how many of them some charge prices.
    pub rides: u64,
    pub rides_priced: u64,
    /// The money audit over the store, this run's rides and the gateway's
    /// ledger: no ride charged twice or left unpriced, the ledger agrees.
    pub audit: MoneyAudit,
    /// What the gateway's ledger holds for this run's charges.
    pub gateway_fares_debited: Cents,
    pub after_day: AfterDay,
    pub arrears_outstanding: Cents,
    pub accounts_in_arrears: u64,
    /// This run's charges read back from the charges archive.
    pub charges_archived: u64,
    pub charges_root: std::path::PathBuf,
}

impl MoneySummary {
    pub fn amount(&self, outcome: ChargeOutcome) -> Cents {
        self.charges_by_outcome.get(&outcome).map(|(_, amount)| *amount).unwrap_or_default()
    }

    pub fn is_consistent(&self) -> bool {
        self.rides == self.rides_priced
            && self.audit.is_clean()
            && self.audit.undecided == 0
            && self.charges_archived == self.charges_by_outcome.values().map(|(n, _)| n).sum::<u64>()
            && self.after_day.keys_issued_in_arrears == 0
            && self.after_day.keys_after_paying == self.after_day.arrears_paid
            && self.after_day.refunds_failed == 0
    }
}

/// Sets this run's charges beside its archived rides and the gateway's ledger.
pub(super) async fn summarize(
    server: &Server,
    control: &SimControl,
    cards: &[u64],
    rows: &[ArchivedScan],
    after_day: AfterDay,
) -> Result<MoneySummary, String> {
    let ours: HashSet<u64> = cards.iter().copied().collect();
    let charges: Vec<ChargeRecord> = server
        .with_money_store(|store| charges(&mut store.db(), None))
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| ours.contains(&c.card_id))
        .collect();
    let mut summary = MoneySummary { accounts: cards.len(), after_day, ..MoneySummary::default() };
    for charge in &charges {
        let entry = summary.charges_by_outcome.entry(charge.outcome).or_default();
        entry.0 += 1;
        entry.1 += charge.amount_cents;
    }
    let ledger: Vec<Entry> = control.ledger().await.map_err(|e| e.to_string())?;
    let applied: Vec<AppliedPayment> = ledger.iter().filter_map(Entry::applied_payment).collect();
    summary.audit = {
        let (rows, applied) = (rows.to_vec(), applied.clone());
        server.with_money_store(move |store| audit_money(&mut store.db(), &rows, Some(&applied))).await
    }
    .map_err(|e| e.to_string())?;
    summary.rides = rows.iter().filter(|r| is_ride(r)).count() as u64;
    summary.rides_priced = summary.rides.saturating_sub(summary.audit.unpriced_rides + summary.audit.awaiting_exit);
    let ids: HashSet<String> = charges.iter().map(|c| hex::encode(c.charge_id)).collect();
    for payment in applied.iter().filter(|p| p.succeeded && ids.contains(&p.key)) {
        let amount = Cents::from_unsigned(payment.amount_cents);
        summary.gateway_fares_debited += if payment.kind == "credit" { -amount } else { amount };
    }
    server.flush_charges_archive().await.map_err(|e| e.to_string())?;
    summary.charges_root = crate::money::charges_archive::charges_root(server.data_dir());
    let archived = crate::archive::read::read_all_charges(&summary.charges_root).map_err(|e| e.to_string())?;
    summary.charges_archived = archived.iter().filter(|c| ours.contains(&c.card_id)).count() as u64;
    for &card in cards {
        let owed = server.accounts().account(card).await.map_err(|e| e.to_string())?.arrears_cents;
        summary.arrears_outstanding += owed;
        summary.accounts_in_arrears += u64::from(owed.is_positive());
    }
    Ok(summary)
}

/// The money lines of the demo's summary.
pub(super) fn render(summary: &MoneySummary, currency: &str, out: &mut String) {
    let yuan = |amount: Cents| format!("{amount} {currency}");
    let count = |outcome: ChargeOutcome| summary.charges_by_outcome.get(&outcome).map(|(n, _)| *n).unwrap_or(0);
    out.push_str(&format!(
        "  money: {} accounts; {} rides priced into {} charges\n",
        summary.accounts,
        summary.rides_priced,
        summary.charges_by_outcome.values().map(|(n, _)| n).sum::<u64>()
    ));
    out.push_str(&format!(
        "         charged {} ({} charges), declined {} ({}), nothing due under the cap: {}, credits netted against arrears: {} ({})\n",
        yuan(summary.amount(ChargeOutcome::Succeeded)),
        count(ChargeOutcome::Succeeded),
        yuan(summary.amount(ChargeOutcome::Declined)),
        count(ChargeOutcome::Declined),
        count(ChargeOutcome::NothingDue),
        yuan(summary.amount(ChargeOutcome::Netted)),
        count(ChargeOutcome::Netted),
    ));
    let after = &summary.after_day;
    out.push_str(&format!(
        "         arrears: {} accounts owe {}; gateway ledger: {} for these charges\n",
        summary.accounts_in_arrears,
        yuan(summary.arrears_outstanding),
        yuan(summary.gateway_fares_debited),
    ));
    out.push_str(&format!("         audit: {}\n", summary.audit));
    out.push_str(&format!(
        "         charges archive: {} rows under {}\n",
        summary.charges_archived,
        summary.charges_root.display()
    ));
    out.push_str(&format!(
        "  after the day: {} riders in arrears refused keys ({} issued by mistake); {} paid and got keys again ({})\n",
        after.keys_refused_in_arrears, after.keys_issued_in_arrears, after.arrears_paid, after.keys_after_paying,
    ));
    out.push_str(&format!(
        "                 refunds: {} deposits returned and accounts closed ({} net of arrears), {} held until the rider pays, {} failed\n",
        after.refunds_closed, after.refunds_net_of_arrears, after.refunds_held_owing, after.refunds_failed,
    ));
}
