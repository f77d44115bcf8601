//! The demo's money: every rider opens an account (agreement signed,
//! deposit paid) at the simulated payment gateway before the day; a few
//! riders' banks hold too little, so their charges are declined and they
//! fall into arrears; after the day half of them top up and pay. The
//! summary sets the charges beside the archive's rides and the gateway's
//! ledger.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::ProgressBar;

use crate::money::outbox::{ChargeRow, charges, undecided};
use crate::money::{AccountService, MoneyStore, ServiceError};
use crate::paygw::{Entry, SimControl};
use crate::scan::{ArchivedScan, ScanStatus};
use crate::server::Server;

/// Accounts opened at once.
const ACCOUNTS_IN_FLIGHT_MAX: usize = 32;
/// One rider in this many has too little in the bank for the day's rides.
const SHORT_BALANCE_EVERY: usize = 50;
/// What a short rider's bank holds after the deposit, in fen: less than a bus ride.
const SHORT_BALANCE_FEN: u64 = 150;
const AMPLE_BALANCE_FEN: u64 = 100_000;
/// How long the demo waits for its charges to be decided after the day.
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(120);

/// Registers and activates every rider; returns the cards whose bank is short.
pub async fn open_accounts(
    accounts: &AccountService,
    control: &SimControl,
    cards: &[u64],
    progress: &ProgressBar,
) -> Result<Vec<u64>, ServiceError> {
    let opened = futures_util::stream::iter(cards.iter().enumerate())
        .map(|(index, &card_id)| async move {
            let short = index % SHORT_BALANCE_EVERY == SHORT_BALANCE_EVERY - 1;
            let payer = payer(card_id);
            accounts.register(card_id, &format!("+86{card_id:011}")).await?;
            let balance = accounts.deposit_cents + if short { SHORT_BALANCE_FEN } else { AMPLE_BALANCE_FEN };
            control
                .top_up(&payer, balance, &format!("topup-{card_id}-0"))
                .await
                .map_err(|e| ServiceError::GatewayUnavailable(e.to_string()))?;
            accounts.activate(card_id, &payer).await?;
            progress.inc(1);
            Ok::<_, ServiceError>(short.then_some(card_id))
        })
        .buffer_unordered(ACCOUNTS_IN_FLIGHT_MAX)
        .collect::<Vec<_>>()
        .await;
    let mut short = Vec::new();
    for result in opened {
        short.extend(result?);
    }
    Ok(short)
}

fn payer(card_id: u64) -> String {
    format!("payer-{card_id}")
}

/// Waits until every ride is priced (the last entries' exit windows
/// closed on the server's clock) and every charge decided.
pub async fn settle(server: &Server, progress: &ProgressBar) -> Result<(), String> {
    let store = open_store(server)?;
    let started = std::time::Instant::now();
    loop {
        server.flush_pricing().await.map_err(|e| e.to_string())?;
        let open: i64 = store
            .connection()
            .query_row("SELECT count(*) FROM open_entries", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        let waiting = undecided(store.connection()).map_err(|e| e.to_string())?;
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

/// Half the riders in arrears top up and pay; returns how many paid.
pub async fn collect_arrears(server: &Server, control: &SimControl, short: &[u64]) -> Result<usize, ServiceError> {
    let accounts = server.accounts();
    let mut paid = 0;
    for &card_id in short.iter().step_by(2) {
        let owed = accounts.account(card_id).await?.arrears_cents;
        if owed == 0 {
            continue;
        }
        control
            .top_up(&payer(card_id), owed.unsigned_abs(), &format!("topup-{card_id}-1"))
            .await
            .map_err(|e| ServiceError::GatewayUnavailable(e.to_string()))?;
        accounts.pay_arrears(card_id).await?;
        paid += 1;
    }
    Ok(paid)
}

/// The money of the demo's day, and whether it adds up.
#[derive(Debug, Clone, Default)]
pub struct MoneySummary {
    pub accounts: usize,
    pub charges_by_outcome: BTreeMap<String, (u64, i64)>,
    /// Accepted scans of this run, and how many of them some charge prices.
    pub rides: u64,
    pub rides_priced: u64,
    /// Taps priced twice, or charges for scans that are not rides (must be 0).
    pub priced_wrongly: u64,
    /// Debits at the gateway for charge ids, in fen, and charge ids debited twice.
    pub gateway_fares_debited: i64,
    pub gateway_double_debits: u64,
    pub arrears_paid: usize,
    pub arrears_outstanding: i64,
    pub accounts_in_arrears: u64,
}

impl MoneySummary {
    pub fn amount(&self, outcome: &str) -> i64 {
        self.charges_by_outcome.get(outcome).map(|(_, amount)| *amount).unwrap_or(0)
    }

    pub fn is_consistent(&self) -> bool {
        self.rides == self.rides_priced
            && self.priced_wrongly == 0
            && self.gateway_double_debits == 0
            && self.gateway_fares_debited == self.amount("succeeded")
            && !self.charges_by_outcome.contains_key("pending")
            && !self.charges_by_outcome.contains_key("failed")
    }
}

/// Sets this run's charges beside its archived rides and the gateway's ledger.
pub async fn summarize(
    server: &Server,
    control: &SimControl,
    cards: &[u64],
    rows: &[ArchivedScan],
    arrears_paid: usize,
) -> Result<MoneySummary, String> {
    let store = open_store(server)?;
    let ours: HashSet<u64> = cards.iter().copied().collect();
    let charges: Vec<ChargeRow> =
        charges(store.connection(), None).map_err(|e| e.to_string())?.into_iter().filter(|c| ours.contains(&c.card_id)).collect();
    let mut summary = MoneySummary { accounts: cards.len(), arrears_paid, ..MoneySummary::default() };
    for charge in &charges {
        let entry = summary.charges_by_outcome.entry(charge.outcome.clone()).or_default();
        entry.0 += 1;
        entry.1 += charge.amount_cents;
    }
    let rides: HashSet<[u8; 16]> =
        rows.iter().filter(|r| r.status == ScanStatus::Accepted && r.gate_opened != Some(false)).map(|r| r.scan_id).collect();
    summary.rides = rides.len() as u64;
    let mut priced = HashSet::new();
    for scan in charges.iter().flat_map(|c| &c.scan_ids) {
        if !priced.insert(*scan) || !rides.contains(scan) {
            summary.priced_wrongly += 1;
        }
    }
    summary.rides_priced = priced.iter().filter(|s| rides.contains(*s)).count() as u64;
    let ledger: Vec<Entry> = control.ledger().await.map_err(|e| e.to_string())?;
    let ids: HashSet<String> = charges.iter().map(|c| hex::encode(c.charge_id)).collect();
    let mut seen = HashSet::new();
    for entry in ledger.iter().filter(|e| ids.contains(&e.key) && e.outcome == "succeeded") {
        if !seen.insert((entry.kind.clone(), entry.key.clone())) {
            summary.gateway_double_debits += 1;
        }
        let amount = i64::try_from(entry.amount_cents).unwrap_or(i64::MAX);
        summary.gateway_fares_debited += if entry.kind == "credit" { -amount } else { amount };
    }
    for &card in cards {
        let owed = server.accounts().account(card).await.map_err(|e| e.to_string())?.arrears_cents;
        summary.arrears_outstanding += owed;
        summary.accounts_in_arrears += u64::from(owed > 0);
    }
    Ok(summary)
}

fn open_store(server: &Server) -> Result<MoneyStore, String> {
    MoneyStore::open(server.money_store_path(), Duration::from_secs(10)).map_err(|e| e.to_string())
}

/// The money lines of the demo's summary.
pub fn render(summary: &MoneySummary, currency: &str, out: &mut String) {
    let yuan = |fen: i64| format!("{}.{:02} {currency}", fen / 100, (fen % 100).abs());
    let count = |outcome: &str| summary.charges_by_outcome.get(outcome).map(|(n, _)| *n).unwrap_or(0);
    out.push_str(&format!(
        "  money: {} accounts; {} rides priced into {} charges\n",
        summary.accounts,
        summary.rides_priced,
        summary.charges_by_outcome.values().map(|(n, _)| n).sum::<u64>()
    ));
    out.push_str(&format!(
        "         charged {} ({} charges), declined {} ({}), nothing due under the cap: {}\n",
        yuan(summary.amount("succeeded")),
        count("succeeded"),
        yuan(summary.amount("declined")),
        count("declined"),
        count("nothing_due"),
    ));
    out.push_str(&format!(
        "         arrears: {} accounts owe {} after {} paid theirs; gateway ledger: {} for these charges\n",
        summary.accounts_in_arrears,
        yuan(summary.arrears_outstanding),
        summary.arrears_paid,
        yuan(summary.gateway_fares_debited),
    ));
}
