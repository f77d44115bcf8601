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
use super::paygw::{Answer, Direction, PaygwError, PaymentGateway, PaymentRequest};
use super::store::{MoneyStore, StoreError};
use crate::clock::Clock;
use crate::ingest::Pipeline;
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
    pub pipeline: Arc<Pipeline>,
    pub clock: Arc<dyn Clock>,
    pub deposit_cents: u64,
    pub currency: String,
}

impl AccountService {
    /// The service over the store and gateway that `settings` name.
    pub fn open(
        settings: &crate::server::MoneySettings,
        pipeline: Arc<Pipeline>,
        clock: Arc<dyn Clock>,
    ) -> Result<AccountService, ServiceError> {
        let gateway = match &settings.gateway {
            Some(g) => Some(PaymentGateway::new(&g.url, &g.hmac_secret, g.request_timeout)?),
            None => None,
        };
        Ok(AccountService {
            store: Arc::new(Mutex::new(MoneyStore::open(&settings.store_path, settings.store_busy_wait)?)),
            gateway,
            pipeline,
            clock,
            deposit_cents: settings.deposit_cents,
            currency: settings.pricer.fares.currency.clone(),
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
        let key = format!("deposit-{card_id}");
        self.collect(&agreement_id, &key, self.deposit_cents, "deposit").await?;
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
        if paid.arrears_cents == 0 {
            self.pipeline.set_denied(card_id, false);
        }
        Ok(paid)
    }

    pub async fn account(&self, card_id: u64) -> Result<Account, ServiceError> {
        Ok(self.read(move |conn| accounts::account(conn, card_id)).await?)
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

    async fn write<T: Send + 'static>(
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

    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T, AccountError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = Arc::clone(&self.store);
        let done = tokio::task::spawn_blocking(move || work(lock(&store).connection()));
        Ok(done.await.map_err(|e| StoreError::Task(e.to_string()))??)
    }
}
