//! What a rider's account can be asked to do, with the payment gateway
//! and the deny list kept in step: activation (agreement signed, deposit
//! paid), paying arrears (the card is allowed again at once), and reading
//! the account. The HTTP account API is a thin layer over this.
//!
//! Each payment goes out under a key derived from the account's history
//! (`deposit-CARD`, `arrears-CARD-N`), so a request retried after a lost
//! answer is applied once by the gateway.

use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::accounts::{self, Account, AccountError, AccountState};
use super::deny_list::DenyListHub;
use super::notify::Notifier;
use super::paygw::{Answer, Direction, PaygwError, PaymentGateway, PaymentRequest};
use super::store::{MoneyStore, StoreError};
use crate::clock::Clock;
use crate::sync::lock;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("the payment was declined: {0}")]
    Declined(String),
    #[error("the payment gateway did not answer; try again: {0}")]
    GatewayUnavailable(String),
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
    pub store: Arc<Mutex<MoneyStore>>,
    pub gateway: Option<PaymentGateway>,
    /// Told after paying arrears takes a card off the list.
    pub deny_list: Arc<DenyListHub>,
    pub clock: Arc<dyn Clock>,
    pub deposit_cents: u64,
    pub currency: String,
    pub notifier: Arc<dyn Notifier>,
}

/// What one pass of the refund job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundReport {
    /// Deposits returned and accounts closed.
    pub closed: Vec<u64>,
    /// Still owing: told to pay first, kept pending.
    pub owing: Vec<u64>,
    /// Charges or trips still open: looked at again next pass.
    pub waiting: Vec<u64>,
}

impl AccountService {
    /// The service over the store and gateway that `settings` name.
    pub fn open(
        settings: &crate::server::MoneySettings,
        deny_list: Arc<DenyListHub>,
        clock: Arc<dyn Clock>,
    ) -> Result<AccountService, ServiceError> {
        let gateway = match &settings.gateway {
            Some(g) => Some(PaymentGateway::new(&g.url, &g.hmac_secret, g.request_timeout)?),
            None => None,
        };
        Ok(AccountService {
            store: Arc::new(Mutex::new(settings.open_store()?)),
            gateway,
            deny_list,
            clock,
            deposit_cents: settings.deposit_cents,
            currency: settings.pricer.fares.currency.clone(),
            notifier: Arc::clone(&settings.notifier),
        })
    }

    pub async fn register(&self, card_id: u64, phone: &str) -> Result<Account, ServiceError> {
        let (now, phone) = (self.clock.now_ms(), phone.to_string());
        self.write(move |tx| accounts::register(tx, card_id, &phone, now)).await
    }

    /// Signs the debit agreement and takes the deposit: the card may ride.
    pub async fn activate(&self, card_id: u64, payment_user_id: &str) -> Result<Account, ServiceError> {
        let account = self.account(card_id).await?;
        if account.state != AccountState::Registered {
            return Err(AccountError::WrongState {
                card_id,
                state: account.state.as_str(),
                action: "activation",
                needs: "registered",
            }
            .into());
        }
        let gateway = self.gateway.as_ref().ok_or(ServiceError::NoGateway)?;
        let agreement_id = gateway.create_agreement(payment_user_id, card_id).await?;
        if self.deposit_cents > 0 {
            let key = format!("deposit-{card_id}");
            self.collect(&agreement_id, &key, self.deposit_cents, "deposit").await?;
        }
        let (now, payer, deposit) = (self.clock.now_ms(), payment_user_id.to_string(), self.deposit_cents);
        let deposit = i64::try_from(deposit).unwrap_or(i64::MAX);
        self.write(move |tx| accounts::activate(tx, card_id, &payer, &agreement_id, deposit, now)).await
    }

    /// Collects the arrears and takes the card off the deny list.
    pub async fn pay_arrears(&self, card_id: u64) -> Result<Account, ServiceError> {
        let account = self.account(card_id).await?;
        let Some(agreement_id) = account.agreement_id.clone().filter(|_| account.arrears_cents > 0) else {
            return Err(AccountError::WrongState {
                card_id,
                state: account.state.as_str(),
                action: "paying arrears",
                needs: "arrears owed",
            }
            .into());
        };
        let paid_before = self.read(move |conn| accounts::arrears_payments(conn, card_id)).await?;
        let amount = account.arrears_cents;
        let key = format!("arrears-{card_id}-{paid_before}-{amount}");
        let transaction = match self.collect(&agreement_id, &key, amount.unsigned_abs(), "arrears").await {
            Err(ServiceError::Declined(code)) => {
                let (now, cause) = (self.clock.now_ms(), format!("payment {key} declined: {code}"));
                self.write(move |tx| accounts::arrears_payment_declined(tx, card_id, &cause, now)).await?;
                return Err(ServiceError::Declined(code));
            }
            answer => answer?,
        };
        let (now, cause) = (self.clock.now_ms(), format!("payment {transaction}"));
        let paid = self.write(move |tx| accounts::pay_arrears(tx, card_id, amount, &cause, now)).await?;
        self.deny_list.sync_soon().await;
        Ok(paid)
    }

    /// The rider wants the deposit back; the refund job decides after the wait.
    pub async fn request_refund(&self, card_id: u64) -> Result<Account, ServiceError> {
        let now = self.clock.now_ms();
        self.write(move |tx| accounts::request_refund(tx, card_id, now)).await
    }

    /// The refund job, once: every refund asked for at least `wait` ago is
    /// paid back and its account closed when nothing is owed or in flight;
    /// a rider who owes is told to pay first and stays pending.
    pub async fn process_refunds(&self, wait: std::time::Duration) -> Result<RefundReport, ServiceError> {
        let asked_by = self.clock.now_ms().saturating_sub(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        let due = self.read(move |conn| Ok(accounts::refunds_due(conn, asked_by)?)).await?;
        let mut report = RefundReport::default();
        for card_id in due {
            let busy = self.read(move |conn| Ok(accounts::money_in_flight(conn, card_id)?)).await?;
            let account = self.account(card_id).await?;
            if busy {
                report.waiting.push(card_id);
            } else if account.arrears_cents > 0 {
                let owed = account.arrears_cents;
                self.notifier.notify(
                    &account.phone,
                    &format!("your deposit is held until you pay the {owed} you owe for card {card_id}"),
                );
                report.owing.push(card_id);
            } else {
                self.refund(&account).await?;
                report.closed.push(card_id);
            }
        }
        Ok(report)
    }

    async fn refund(&self, account: &Account) -> Result<(), ServiceError> {
        let card_id = account.card_id;
        let mut cause = "no deposit held".to_string();
        if let (Some(agreement_id), true) = (&account.agreement_id, account.deposit_cents > 0) {
            let gateway = self.gateway.as_ref().ok_or(ServiceError::NoGateway)?;
            let request = PaymentRequest {
                agreement_id: agreement_id.clone(),
                amount_cents: account.deposit_cents.unsigned_abs(),
                currency: self.currency.clone(),
                description: "farestream deposit refund".into(),
            };
            match gateway.pay(Direction::Credit, &format!("refund-{card_id}"), &request).await {
                Answer::Succeeded { transaction_id } => cause = format!("deposit returned: {transaction_id}"),
                Answer::Declined { decline_code } => return Err(ServiceError::Declined(decline_code)),
                Answer::Retry { reason, .. } | Answer::Refused { reason } => {
                    return Err(ServiceError::GatewayUnavailable(reason));
                }
            }
        }
        let now = self.clock.now_ms();
        self.write(move |tx| accounts::close(tx, card_id, &cause, now)).await?;
        Ok(())
    }

    pub async fn account(&self, card_id: u64) -> Result<Account, ServiceError> {
        self.read(move |conn| accounts::account(conn, card_id)).await
    }

    /// One debit, answered: its transaction id, or why not.
    async fn collect(&self, agreement_id: &str, key: &str, amount: u64, what: &str) -> Result<String, ServiceError> {
        let gateway = self.gateway.as_ref().ok_or(ServiceError::NoGateway)?;
        let request = PaymentRequest {
            agreement_id: agreement_id.to_string(),
            amount_cents: amount,
            currency: self.currency.clone(),
            description: format!("farestream {what}"),
        };
        match gateway.pay(Direction::Debit, key, &request).await {
            Answer::Succeeded { transaction_id } => Ok(transaction_id),
            Answer::Declined { decline_code } => Err(ServiceError::Declined(decline_code)),
            Answer::Retry { reason, .. } | Answer::Refused { reason } => Err(ServiceError::GatewayUnavailable(reason)),
        }
    }

    /// Runs `work` in one store write transaction, off the async threads.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, AccountError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = Arc::clone(&self.store);
        let done = tokio::task::spawn_blocking(move || {
            let mut store = lock(&store);
            let tx = store.transaction()?;
            let value = work(&tx)?;
            tx.commit().map_err(StoreError::from)?;
            Ok::<_, AccountError>(value)
        });
        Ok(done.await.map_err(|e| StoreError::Task(e.to_string()))??)
    }

    /// Runs `work` on the store's connection, off the async threads.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T, AccountError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = Arc::clone(&self.store);
        let done = tokio::task::spawn_blocking(move || work(lock(&store).connection()));
        Ok(done.await.map_err(|e| StoreError::Task(e.to_string()))??)
    }
}
