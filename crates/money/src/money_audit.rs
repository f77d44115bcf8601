//! Checks the money against the rides and the payment gateway's books: no
//! ride charged twice, none left unpriced, and the gateway applied exactly
//! what the outbox and the accounts' payments say (deposits, arrears and
//! refunds included: none is exempt). The crash test ends with it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::db::Db;
use crate::outbox::charges;
use crate::payments::{PaymentAttempt, PaymentKind, PaymentOutcome, all_attempts};
use crate::store::StoreError;
use farestream_core::charges::{ChargeOutcome, ChargeRecord};
use farestream_core::fares::is_ride;
use farestream_core::scan::ArchivedScan;

/// A payment the gateway applied, as its ledger shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPayment {
    /// `debit` or `credit` (agreements and top-ups are left out).
    pub kind: String,
    pub key: String,
    pub amount_cents: u64,
    pub succeeded: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoneyAudit {
    pub charges: u64,
    /// Still pending or failed (retried): not an error, but not done.
    pub undecided: u64,
    /// Rides in a day whose metro entry may still get its exit.
    pub awaiting_exit: u64,
    /// Taps priced by two charges, keys the gateway applied twice, and
    /// payments the gateway applied for no charge.
    pub double_charged: u64,
    /// Rides in the archive that no charge prices and no open trip holds.
    pub unpriced_rides: u64,
    /// Decided charges whose outcome the gateway's ledger does not show.
    pub ledger_mismatched: u64,
}

impl MoneyAudit {
    pub fn is_clean(&self) -> bool {
        self.double_charged == 0 && self.unpriced_rides == 0 && self.ledger_mismatched == 0
    }
}

impl fmt::Display for MoneyAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "charges={} double_charged={} unpriced_rides={} undecided={} awaiting_exit={} ledger_mismatched={}",
            self.charges,
            self.double_charged,
            self.unpriced_rides,
            self.undecided,
            self.awaiting_exit,
            self.ledger_mismatched
        )
    }
}

pub fn audit_money(
    db: &mut dyn Db,
    archived: &[ArchivedScan],
    ledger: Option<&[AppliedPayment]>,
) -> Result<MoneyAudit, StoreError> {
    let outbox = charges(db, None)?;
    let mut audit = MoneyAudit { charges: outbox.len() as u64, ..MoneyAudit::default() };
    audit.undecided = outbox.iter().filter(|c| !c.outcome.is_final()).count() as u64;
    let mut priced = HashSet::new();
    for scan in outbox.iter().flat_map(|c| &c.scan_ids) {
        if !priced.insert(*scan) {
            audit.double_charged += 1;
        }
    }
    let open = open_trip_taps(db)?;
    for ride in archived.iter().filter(|r| is_ride(r)) {
        if priced.contains(&ride.scan_id) {
            continue;
        }
        if open.contains(&ride.scan_id) {
            audit.awaiting_exit += 1;
        } else {
            audit.unpriced_rides += 1;
        }
    }
    let accounts = all_attempts(db)?;
    // An account's payment still waiting for its answer is undecided too.
    audit.undecided += accounts.iter().filter(|a| a.outcome == PaymentOutcome::Unknown).count() as u64;
    if let Some(ledger) = ledger {
        check_ledger(&outbox, &accounts, ledger, &mut audit);
    }
    Ok(audit)
}

/// Every payment the gateway applied is a charge or an account's payment
/// the store recorded before it went out, and each agrees with its
/// record; a payment nobody recorded counts as a double charge (money
/// moved that the store does not know of).
fn check_ledger(
    outbox: &[ChargeRecord],
    accounts: &[PaymentAttempt],
    ledger: &[AppliedPayment],
    audit: &mut MoneyAudit,
) {
    let mut applied: HashMap<(&str, &str), &AppliedPayment> = HashMap::new();
    for payment in ledger {
        if applied.insert((&payment.kind, &payment.key), payment).is_some() {
            audit.double_charged += 1;
        }
    }
    let ids: HashSet<String> = outbox.iter().map(|c| hex::encode(c.charge_id)).collect();
    let account_keys: HashSet<&str> = accounts.iter().map(|a| a.key.as_str()).collect();
    for payment in ledger {
        let known = ids.contains(&payment.key) || account_keys.contains(payment.key.as_str());
        if !known && !is_legacy_account_key(&payment.key) {
            audit.double_charged += 1;
        }
    }
    for attempt in accounts {
        let kind = if attempt.kind == PaymentKind::Refund { "credit" } else { "debit" };
        let at_gateway = applied.get(&(kind, attempt.key.as_str())).copied();
        let agrees = match (attempt.outcome, at_gateway) {
            (PaymentOutcome::Succeeded, Some(p)) => {
                p.succeeded && p.amount_cents == attempt.amount_cents.unsigned_abs()
            }
            (PaymentOutcome::Declined, Some(p)) => !p.succeeded,
            (PaymentOutcome::Refused, None) => true,
            // No answer yet: the gateway may or may not have applied it.
            (PaymentOutcome::Unknown, _) => true,
            _ => false,
        };
        audit.ledger_mismatched += u64::from(!agrees);
    }
    for charge in outbox {
        let kind = if charge.amount_cents.is_negative() { "credit" } else { "debit" };
        let at_gateway = applied.get(&(kind, hex::encode(charge.charge_id).as_str())).copied();
        let agrees = match (charge.outcome, at_gateway) {
            (ChargeOutcome::Succeeded, Some(p)) => p.succeeded && p.amount_cents == charge.amount_cents.unsigned_abs(),
            (ChargeOutcome::Declined, Some(p)) => !p.succeeded,
            (ChargeOutcome::Succeeded | ChargeOutcome::Declined, None) => false,
            // Decided without a request: nothing may be at the gateway.
            (ChargeOutcome::NothingDue | ChargeOutcome::NoAccount | ChargeOutcome::Netted, at_gateway) => {
                at_gateway.is_none()
            }
            // Undecided: the gateway may or may not have applied it yet.
            (ChargeOutcome::Pending | ChargeOutcome::Failed, _) => true,
        };
        audit.ledger_mismatched += u64::from(!agrees);
    }
}

/// A key an account's payment had before payments were recorded (schema 4
/// and older: `deposit-CARD`, `arrears-CARD-N-AMOUNT`, `refund-CARD`):
/// nothing in the store can match it, so it is left out, as before. A
/// recorded payment's key has three parts (`KIND-CARD-N`).
fn is_legacy_account_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('-').collect();
    match parts.as_slice() {
        ["deposit" | "refund", card] => card.parse::<u64>().is_ok(),
        ["arrears", card, n, amount] => [card, n, amount].iter().all(|p| p.parse::<u64>().is_ok()),
        _ => false,
    }
}

/// Taps of rider-days whose entry may still get its exit: not yet priced.
fn open_trip_taps(db: &mut dyn Db) -> Result<HashSet<[u8; 16]>, StoreError> {
    let mut out = HashSet::new();
    db.query_each(
        "SELECT t.scan_id FROM taps t JOIN open_entries o ON o.card_id = t.card_id AND o.service_date = t.service_date",
        &[],
        &mut |row| {
            out.insert(crate::codec::id_from_sql(row.bytes(0)?)?);
            Ok(())
        },
    )?;
    Ok(out)
}
