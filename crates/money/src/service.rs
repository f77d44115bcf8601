//! What a rider's account can be asked to do, with the payment gateway
//! and the deny list kept in step: activation (agreement signed, deposit
//! paid), paying arrears (the card is allowed again at once), asking for
//! the deposit back, the refund job, and reading the account. The HTTP
//! account API is a thin layer over this.
//!
//! Every payment of the account's own (deposit, arrears, refund) is
//! written down before it goes out and sent under its attempt's key
//! (`payments`): a retry after a lost answer resends the same attempt, so
//! the gateway applies it once; a new attempt follows only a final answer.

use std::sync::Arc;

use thiserror::Error;

use crate::accounts::{self, Account, AccountError};
use crate::db::{Db, Lock};
use crate::deny_list_hub::DenyListHub;
use crate::money_metrics;
use crate::money_settings::MoneySettings;
use crate::notify::Notifier;
use crate::paygw::{Answer, Direction, PaygwError, PaymentGateway, PaymentRequest};
use crate::payments::{self, PaymentAttempt, PaymentKind, PaymentOutcome};
use crate::store::{self, StoreError, step_ended};
use crate::store_connections::StoreConnections;
use farestream_core::account::{AccountState, NotYet};
use farestream_core::clock::UnixMillis;
use farestream_core::money::Cents;
use farestream_ingest::clock_source::{Clock, duration_ms};

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("the payment was declined: {0}")]
    Declined(String),
    #[error("the payment gateway did not answer; try again: {0}")]
    GatewayUnavailable(String),
    #[error("a payment for this card is already being made; try again in a moment")]
    PaymentInProgress,
    #[error("the payment gateway refused the request: {0}")]
    GatewayRefused(String),
    #[error("no payment gateway is configured (payments.gateway_url)")]
    NoGateway,
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> ServiceError {
        ServiceError::Account(AccountError::Store(error))
    }
}

impl From<PaygwError> for ServiceError {
    fn from(error: PaygwError) -> ServiceError {
        ServiceError::GatewayUnavailable(error.to_string())
    }
}

#[derive(Clone)]
pub struct AccountService {
    /// Each call on a connection of its own where the store has several.
    pub store: Arc<StoreConnections>,
    pub gateway: Option<PaymentGateway>,
    /// Told after paying arrears takes a card off the list.
    pub deny_list: Arc<DenyListHub>,
    pub clock: Arc<dyn Clock>,
    pub deposit_cents: Cents,
    pub currency: String,
    pub notifier: Arc<dyn Notifier>,
    /// How long after a card's last credential ends its rides may still
    /// arrive (accepted lateness and clock skew): a refund waits that long.
    pub rides_arrive_within_ms: i64,
    /// Held by a refund pass: two at once (the job and an operator's call)
    /// would each find the other's card half done and report it failed.
    refund_pass_turn: Arc<tokio::sync::Mutex<()>>,
}

/// What one pass of the refund job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundReport {
    /// Deposits returned and accounts closed.
    pub closed: Vec<u64>,
    /// Still owing after the deposit was set against the arrears: told to
    /// pay first (once for each amount owed), kept pending.
    pub owing: Vec<u64>,
    /// Charges or trips still open, or rides that may still arrive: looked
    /// at again next pass.
    pub waiting: Vec<u64>,
    /// This card's refund failed this pass (declined, refused, no answer);
    /// tried again next pass. One card's failure stops no other card.
    pub failed: Vec<(u64, String)>,
}

/// What a refund-pending card needs next.
enum RefundStep {
    Wait,
    Owes {
        phone: String,
        owed: Cents,
        told_before: bool,
    },
    Pay(PaymentAttempt),
    /// Nothing owed, held or in flight: end the agreement, then close.
    Close {
        agreement_id: Option<String>,
    },
}

/// How a refund-pending card's pass ended.
enum RefundDone {
    Closed,
    Owing,
    Waiting,
}

impl AccountService {
    /// The service over the store and gateway that `settings` name.
    pub fn open(
        settings: &MoneySettings,
        deny_list: Arc<DenyListHub>,
        clock: Arc<dyn Clock>,
        notifier: Arc<dyn Notifier>,
    ) -> Result<AccountService, ServiceError> {
        let gateway = match &settings.gateway {
            Some(g) => Some(PaymentGateway::new(&g.url, &g.hmac_secret, g.request_timeout)?),
            None => None,
        };
        Ok(AccountService {
            store: Arc::new(settings.open_connections()?),
            gateway,
            deny_list,
            clock,
            deposit_cents: settings.deposit_cents,
            currency: settings.pricer.fares.currency.clone(),
            notifier,
            rides_arrive_within_ms: duration_ms(settings.rides_arrive_within),
            refund_pass_turn: Arc::default(),
        })
    }

    pub async fn register(&self, card_id: u64, phone: &str) -> Result<Account, ServiceError> {
        let (now, phone) = (self.clock.now_ms(), phone.to_string());
        self.write(move |tx| accounts::register(tx, card_id, &phone, now)).await
    }

    /// Signs the debit agreement and takes the deposit: the card may ride.
    /// A deposit whose answer was lost is sent again under its key; one
    /// that was declined is tried again as a new attempt.
    pub async fn activate(&self, card_id: u64, payment_user_id: &str) -> Result<Account, ServiceError> {
        let account = self.account(card_id).await?;
        if account.state != AccountState::Registered {
            return Err(wrong_state(&account, "activation", "registered").into());
        }
        let gateway = self.gateway.as_ref().ok_or(ServiceError::NoGateway)?;
        let agreement_id = gateway.create_agreement(payment_user_id, card_id).await?;
        let (now, payer) = (self.clock.now_ms(), payment_user_id.to_string());
        let deposit = self.deposit_cents;
        if deposit.is_zero() {
            return self
                .write(move |tx| accounts::activate(tx, card_id, &payer, &agreement_id, Cents::ZERO, now))
                .await;
        }
        let attempt = self.write(move |tx| open_deposit(tx, card_id, deposit, &agreement_id, now)).await?;
        let transaction = self.send(&attempt, Direction::Debit, "deposit").await?;
        let now = self.clock.now_ms();
        self.write(move |tx| {
            if payments::decide(tx, &attempt.key, PaymentOutcome::Succeeded, Some(&transaction), None, now)? {
                accounts::activate(tx, card_id, &payer, &attempt.agreement_id, attempt.amount_cents, now)
            } else {
                accounts::account(tx, card_id)
            }
        })
        .await
    }

    /// Collects the arrears and takes the card off the deny list. An
    /// earlier payment whose answer was lost is sent again first, for its
    /// own amount; what a decline added meanwhile stays owed.
    pub async fn pay_arrears(&self, card_id: u64) -> Result<Account, ServiceError> {
        let now = self.clock.now_ms();
        let attempt = self.write(move |tx| open_arrears_payment(tx, card_id, now)).await?;
        let transaction = self.send(&attempt, Direction::Debit, "arrears").await?;
        let now = self.clock.now_ms();
        let paid = self
            .write(move |tx| {
                if payments::decide(tx, &attempt.key, PaymentOutcome::Succeeded, Some(&transaction), None, now)? {
                    let cause = format!("payment {} ({transaction})", attempt.key);
                    accounts::pay_arrears(tx, card_id, attempt.amount_cents, &cause, now)
                } else {
                    accounts::account(tx, card_id)
                }
            })
            .await?;
        self.deny_list.sync_soon().await;
        Ok(paid)
    }

    /// The rider wants the deposit back: denied at once, no more keys; the
    /// refund job pays once no ride of the card can still arrive.
    pub async fn request_refund(&self, card_id: u64) -> Result<Account, ServiceError> {
        let (now, within) = (self.clock.now_ms(), self.rides_arrive_within_ms);
        let account = self.write(move |tx| accounts::request_refund(tx, card_id, within, now)).await?;
        self.deny_list.sync_soon().await;
        Ok(account)
    }

    /// Keys were issued to the card until `valid_until` (Unix ms): refused
    /// unless it is active, in the same transaction that records them.
    pub async fn keys_issued(
        &self,
        card_id: u64,
        valid_until: UnixMillis,
        terminal_key_id: u16,
    ) -> Result<accounts::CodeBlock, ServiceError> {
        self.write(move |tx| accounts::keys_issued(tx, card_id, valid_until, terminal_key_id)).await
    }

    /// The refunds due at `now`: every due refund is paid back and its
    /// account closed when nothing is owed or in flight; arrears are set
    /// against the deposit first; a rider who still owes is told to pay
    /// (once for each amount) and stays pending. Each card stands alone:
    /// one card's failure is reported and the pass goes on. It decides on
    /// the rides priced so far: `serve` and the demo call it through
    /// `Server::refund_pass_as_of`, which waits until every ride received
    /// is priced.
    /// Records that every ride this server received before `received_before`
    /// is priced (`reader`: its pricer, holding its cursor with `holder`,
    /// flushed to log position `priced`), and returns the moment refunds may
    /// be paid as of: `now`, or earlier while another server sharing the
    /// store has not priced that far (a refund due later waits for it).
    pub async fn refunds_may_go_as_of(
        &self,
        (reader, holder): (&str, &store::CursorHolder),
        (priced, received_before): (u64, UnixMillis),
        now: UnixMillis,
    ) -> Result<UnixMillis, ServiceError> {
        let (reader, holder) = (reader.to_string(), *holder);
        self.write(move |tx| {
            store::set_priced_received_before(tx, (&reader, &holder), priced, received_before)?;
            let others = store::others_priced_received_before(tx, &reader)?;
            Ok(others.map_or(now, |others| others.min(now)))
        })
        .await
    }

    /// The moment refunds may be paid as of, for a server that logs no
    /// rides of its own (a cluster node, whose partitions' pricers price
    /// them): `now`, or earlier while another pricer sharing the store has
    /// not priced that far (`reader`: its own, not counted).
    pub async fn refunds_wait_for_other_pricers(
        &self,
        reader: &str,
        now: UnixMillis,
    ) -> Result<UnixMillis, ServiceError> {
        let reader = reader.to_string();
        self.read(move |db| {
            let others = store::others_priced_received_before(db, &reader)?;
            Ok(others.map_or(now, |others| others.min(now)))
        })
        .await
    }

    pub async fn process_refunds_as_of(&self, now: UnixMillis) -> Result<RefundReport, ServiceError> {
        let _turn = self.refund_pass_turn.lock().await;
        let within = self.rides_arrive_within_ms;
        let due = self.read(move |conn| Ok(accounts::refunds_due(conn, now, within)?)).await?;
        let mut report = RefundReport::default();
        for card_id in due {
            match self.refund_one(card_id, now).await {
                Ok(RefundDone::Closed) => report.closed.push(card_id),
                Ok(RefundDone::Owing) => report.owing.push(card_id),
                Ok(RefundDone::Waiting) => report.waiting.push(card_id),
                Err(error) => {
                    tracing::warn!(card_id, %error, "a refund did not go through; it is tried again next pass");
                    report.failed.push((card_id, error.to_string()));
                }
            }
        }
        Ok(report)
    }

    async fn refund_one(&self, card_id: u64, now: UnixMillis) -> Result<RefundDone, ServiceError> {
        let within = self.rides_arrive_within_ms;
        let close = match self.write(move |tx| refund_step(tx, card_id, within, now)).await? {
            RefundStep::Wait => return Ok(RefundDone::Waiting),
            RefundStep::Owes { phone, owed, told_before } => {
                if !told_before {
                    let message = format!("your deposit is held until you pay the {owed} you owe for card {card_id}");
                    self.notifier.notify(&phone, &message);
                }
                return Ok(RefundDone::Owing);
            }
            RefundStep::Close { agreement_id } => agreement_id,
            RefundStep::Pay(attempt) => {
                let transaction = self.send(&attempt, Direction::Credit, "deposit refund").await?;
                let closable = self
                    .write(move |tx| {
                        if payments::decide(tx, &attempt.key, PaymentOutcome::Succeeded, Some(&transaction), None, now)?
                        {
                            let cause = format!("deposit returned: {} ({transaction})", attempt.key);
                            accounts::deposit_returned(tx, card_id, &cause, now)?;
                        }
                        Ok(accounts::may_close(tx, card_id, within, now)?.ok().map(|account| account.agreement_id))
                    })
                    .await?;
                match closable {
                    Some(agreement_id) => agreement_id,
                    None => return Ok(RefundDone::Waiting),
                }
            }
        };
        // The agreement ends before the account closes: a failure here
        // leaves the card pending, and the next pass ends it again (the
        // gateway treats a second end as the first).
        if let (Some(agreement_id), Some(gateway)) = (&close, &self.gateway) {
            gateway.end_agreement(agreement_id).await?;
        }
        let cause = "deposit returned, agreement ended";
        self.write(move |tx| accounts::close(tx, card_id, cause, within, now)).await?;
        self.deny_list.sync_soon().await;
        Ok(RefundDone::Closed)
    }

    pub async fn account(&self, card_id: u64) -> Result<Account, ServiceError> {
        self.read(move |conn| accounts::account(conn, card_id)).await
    }

    /// Sends one attempt under its key. A success's transaction id comes
    /// back for the caller to apply with [`payments::decide`]; a decline or
    /// a refusal of its first send is recorded here as final (the next
    /// attempt is a new key); no answer leaves the attempt undecided, to be
    /// sent again. A refusal of an attempt sent more than once leaves it
    /// undecided too ([`Self::refused`]). A decline is final: the gateway
    /// answers a key with its first result (docs/payment-gateway.md).
    async fn send(&self, attempt: &PaymentAttempt, direction: Direction, what: &str) -> Result<String, ServiceError> {
        let gateway = self.gateway.as_ref().ok_or(ServiceError::NoGateway)?;
        let key = attempt.key.clone();
        let sends = self.write(move |tx| payments::count_send(tx, &key)).await?;
        if sends == 0 {
            // Decided by another call meanwhile: its answer stands.
            return Err(ServiceError::PaymentInProgress);
        }
        let request = PaymentRequest {
            agreement_id: attempt.agreement_id.clone(),
            amount_cents: attempt.amount_cents.unsigned_abs(),
            currency: self.currency.clone(),
            description: format!("farestream {what}"),
        };
        match gateway.pay(direction, &attempt.key, &request).await {
            Answer::Succeeded { transaction_id } => Ok(transaction_id),
            Answer::Declined { decline_code } => {
                self.not_made(attempt, PaymentOutcome::Declined, &decline_code).await?;
                Err(ServiceError::Declined(decline_code))
            }
            Answer::Refused { reason } => Err(self.refused(attempt, reason).await?),
            Answer::InFlight { .. } => Err(ServiceError::PaymentInProgress),
            Answer::Retry { reason, .. } => Err(ServiceError::GatewayUnavailable(reason)),
        }
    }

    /// A refusal decides the attempt only if it answers the attempt's one
    /// send: when another send was counted (a resend after a lost answer,
    /// or a concurrent call's send that may have reached the gateway
    /// first), that send may have been applied, and deciding would open a
    /// new key that takes the money twice. Then it stays undecided, is
    /// logged and counted for a person, and goes again under its key.
    async fn refused(&self, attempt: &PaymentAttempt, reason: String) -> Result<ServiceError, ServiceError> {
        if self.not_made(attempt, PaymentOutcome::Refused, &reason).await? {
            return Ok(ServiceError::GatewayRefused(reason));
        }
        let reason = format!(
            "{reason}; {} was sent more than once and may have been applied when an answer was lost: it stays undecided and is sent again under its key until the gateway answers it (a person should look)",
            attempt.key
        );
        tracing::error!(key = %attempt.key, %reason, "a payment sent more than once was refused");
        money_metrics::payment_refused_on_resend();
        let (key, noted) = (attempt.key.clone(), reason.clone());
        self.write(move |tx| payments::note_undecided(tx, &key, &noted)).await?;
        Ok(ServiceError::GatewayRefused(reason))
    }

    /// A final answer that moved no money, in the attempt and the history;
    /// whether it decided the attempt ([`payments::decide`]).
    async fn not_made(
        &self,
        attempt: &PaymentAttempt,
        outcome: PaymentOutcome,
        reason: &str,
    ) -> Result<bool, ServiceError> {
        let (now, key, card_id, reason) =
            (self.clock.now_ms(), attempt.key.clone(), attempt.card_id, reason.to_string());
        let event = format!("{}_payment_{}", attempt.kind.as_str(), outcome.as_str());
        self.write(move |tx| {
            let decided = payments::decide(tx, &key, outcome, None, Some(&reason), now)?;
            if decided {
                accounts::note(tx, card_id, &event, Cents::ZERO, &format!("payment {key}: {reason}"), now)?;
            }
            Ok(decided)
        })
        .await
    }

    /// Runs `work` in one store write transaction, off the async threads.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Db) -> Result<T, AccountError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = Arc::clone(&self.store);
        let done = tokio::task::spawn_blocking(move || store.with(|store| store.in_transaction(work)));
        Ok(done.await.map_err(step_ended)??)
    }

    /// Runs `work` on the store's connection, off the async threads.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Db) -> Result<T, AccountError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = Arc::clone(&self.store);
        let done = tokio::task::spawn_blocking(move || store.with(|store| work(&mut store.db())));
        Ok(done.await.map_err(step_ended)??)
    }
}

/// The next step of a due refund, decided in one transaction: an attempt
/// whose answer was lost goes again first; then the card closes, waits,
/// sets its arrears against the deposit, or has its deposit paid back.
fn refund_step(
    tx: &mut dyn Db,
    card_id: u64,
    rides_arrive_within_ms: i64,
    now: UnixMillis,
) -> Result<RefundStep, AccountError> {
    // A second server's refund job on the same card waits here, then
    // reads what this one decided.
    tx.lock(Lock::Card(card_id))?;
    if let Some(open) = payments::undecided(tx, card_id, PaymentKind::Refund)? {
        return Ok(RefundStep::Pay(open));
    }
    // Only a card that owes and has nothing in flight has its arrears set
    // against the deposit (a payment of them may be out: `MoneyInFlight`
    // comes first), and then it is looked at again.
    let mut verdict = accounts::may_close(tx, card_id, rides_arrive_within_ms, now)?;
    if matches!(verdict, Err(NotYet::Owes { .. }))
        && accounts::set_off_arrears_against_deposit(tx, card_id, now)?.is_positive()
    {
        tracing::info!(card_id, "arrears set against the deposit before its refund");
        verdict = accounts::may_close(tx, card_id, rides_arrive_within_ms, now)?;
    }
    match verdict {
        Ok(account) => Ok(RefundStep::Close { agreement_id: account.agreement_id }),
        Err(NotYet::RidesMayArrive { .. } | NotYet::MoneyInFlight) => Ok(RefundStep::Wait),
        Err(NotYet::Owes { arrears_cents }) => {
            let account = accounts::account(tx, card_id)?;
            let told_before = accounts::last_note_amount(tx, card_id, "refund_held_owing")? == Some(arrears_cents);
            if !told_before {
                accounts::note(tx, card_id, "refund_held_owing", arrears_cents, "told to pay first", now)?;
            }
            Ok(RefundStep::Owes { phone: account.phone, owed: arrears_cents, told_before })
        }
        Err(NotYet::DepositHeld { deposit_cents }) => {
            let account = accounts::account(tx, card_id)?;
            let agreement_id = account.agreement_id.ok_or_else(|| {
                AccountError::Store(StoreError::Corrupt(format!("card {card_id} holds a deposit without an agreement")))
            })?;
            let attempt = payments::open_attempt(tx, card_id, PaymentKind::Refund, deposit_cents, &agreement_id, now)?;
            Ok(RefundStep::Pay(attempt))
        }
    }
}

/// The deposit attempt of an activation. The state is checked in the
/// transaction that opens the attempt, with the card locked before it is
/// read: a second activation at the same moment (on this server or
/// another) finds the card active and takes no second deposit, or finds
/// the same attempt undecided.
fn open_deposit(
    tx: &mut dyn Db,
    card_id: u64,
    deposit: Cents,
    agreement_id: &str,
    now: UnixMillis,
) -> Result<PaymentAttempt, AccountError> {
    let account = accounts::locked_account(tx, card_id)?;
    if account.state != AccountState::Registered {
        return Err(wrong_state(&account, "activation", "registered"));
    }
    payments::open_attempt(tx, card_id, PaymentKind::Deposit, deposit, agreement_id, now)
}

/// The attempt that pays the card's arrears: the one whose answer was lost,
/// else a new one for what is owed, read with the card locked, so a
/// payment, a decline or a netted credit on another server commits first
/// and is seen (no second collection, no stale amount).
fn open_arrears_payment(tx: &mut dyn Db, card_id: u64, now: UnixMillis) -> Result<PaymentAttempt, AccountError> {
    let account = accounts::locked_account(tx, card_id)?;
    if let Some(open) = payments::undecided(tx, card_id, PaymentKind::Arrears)? {
        return Ok(open);
    }
    let Some(agreement_id) = account.agreement_id.clone().filter(|_| account.arrears_cents.is_positive()) else {
        return Err(wrong_state(&account, "paying arrears", "arrears owed"));
    };
    payments::open_attempt(tx, card_id, PaymentKind::Arrears, account.arrears_cents, &agreement_id, now)
}

fn wrong_state(account: &Account, action: &'static str, needs: &'static str) -> AccountError {
    AccountError::WrongState { card_id: account.card_id, state: account.state.as_str(), action, needs }
}

#[cfg(test)]
mod tests {
    //! Two servers on one PostgreSQL store at the same moment: the second
    //! one's transaction waits on the card's lock, then reads what the
    //! first committed (faults found by an outside review: a second
    //! deposit, arrears collected twice).
    use super::*;
    use crate::StoreLocation;
    use crate::test_cluster::{TestCluster, an_owing_card, open_store as open, second_waits_for_first};

    const CARD: u64 = 7;
    const NOW: UnixMillis = 1_800_000_000_000;

    fn attempts(location: &StoreLocation, kind: PaymentKind) -> usize {
        let all = open(location).in_transaction(|tx| payments::all_attempts(tx)).expect("attempts");
        all.iter().filter(|attempt| attempt.kind == kind).count()
    }

    /// A card registered and, with `arrears`, active and owing them.
    fn a_card(location: &StoreLocation, arrears: Option<Cents>) {
        open(location)
            .in_transaction(|tx| match arrears {
                Some(arrears) => an_owing_card(tx, CARD, arrears, NOW),
                None => accounts::register(tx, CARD, "+15550000007", NOW).map(drop),
            })
            .expect("the card");
    }

    /// One server's activation pays the deposit and activates the card;
    /// the other's, retried at the same moment, waits, finds the card
    /// active, and opens no second deposit.
    #[test]
    fn an_activation_on_a_second_server_at_the_same_moment_takes_no_second_deposit() {
        let Some(cluster) = TestCluster::shared() else { return };
        let location = cluster.new_location();
        a_card(&location, None);
        let deposit = Cents::new(500);
        let (first, second) = second_waits_for_first(
            &location,
            |tx| {
                let attempt = open_deposit(tx, CARD, deposit, "agreement-1", NOW)?;
                assert!(payments::decide(tx, &attempt.key, PaymentOutcome::Succeeded, Some("txn-1"), None, NOW)?);
                accounts::activate(tx, CARD, "payer-7", "agreement-1", deposit, NOW).map(drop)
            },
            |_| Ok(()),
            |tx| open_deposit(tx, CARD, deposit, "agreement-2", NOW),
        );
        first.expect("the first activation commits");
        assert!(matches!(second, Err(AccountError::WrongState { state: "active", .. })), "{second:?}");
        assert_eq!(attempts(&location, PaymentKind::Deposit), 1, "one deposit");
    }

    /// One server collects the arrears in full; the other's payment of
    /// them at the same moment waits, finds nothing owed, and collects
    /// nothing.
    #[test]
    fn arrears_paid_on_two_servers_at_the_same_moment_are_collected_once() {
        let Some(cluster) = TestCluster::shared() else { return };
        let location = cluster.new_location();
        a_card(&location, Some(Cents::new(300)));
        let (first, second) = second_waits_for_first(
            &location,
            |tx| {
                let attempt = open_arrears_payment(tx, CARD, NOW)?;
                assert_eq!(attempt.amount_cents, Cents::new(300));
                assert!(payments::decide(tx, &attempt.key, PaymentOutcome::Succeeded, Some("txn-1"), None, NOW)?);
                accounts::pay_arrears(tx, CARD, attempt.amount_cents, "paid", NOW).map(drop)
            },
            |_| Ok(()),
            |tx| open_arrears_payment(tx, CARD, NOW),
        );
        first.expect("the first payment commits");
        assert!(matches!(second, Err(AccountError::WrongState { action: "paying arrears", .. })), "{second:?}");
        assert_eq!(attempts(&location, PaymentKind::Arrears), 1, "the arrears collected once");
        let account = open(&location).in_transaction(|tx| accounts::account(tx, CARD)).expect("account");
        assert_eq!(account.arrears_cents, Cents::ZERO);
    }
}
