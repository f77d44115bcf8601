//! The money shell's settings: plain data the server builds from the
//! config's `payments` section.

use std::time::Duration;

use farestream_core::money::Cents;

use crate::dispatcher::DispatcherSettings;
use crate::money_store::{MoneyStore, StoreLocation};
use crate::pricer::PricerSettings;
use crate::store::StoreError;
use crate::store_connections::StoreConnections;

/// The pay-later half: where the money store is, how rides are priced,
/// and the payment gateway charges go to.
#[derive(Debug, Clone)]
pub struct MoneySettings {
    /// The money store: the SQLite file or a PostgreSQL database
    /// (`payments.money_store`).
    pub store: StoreLocation,
    /// What activation takes from the rider and a refund returns.
    pub deposit_cents: Cents,
    pub store_busy_wait: Duration,
    /// Connections the dispatcher and the account API each write on
    /// ([`StoreConnections`]).
    pub store_connections_max: usize,
    pub pricer: PricerSettings,
    /// `None`: charges wait in the outbox (no `payments.gateway_url`).
    pub gateway: Option<PaymentGatewaySettings>,
    /// How long after a card's last credential ends its rides may still
    /// arrive: the accepted lateness plus the clock skew. A refund waits
    /// for it.
    pub rides_arrive_within: Duration,
    /// How often the refund job looks.
    pub refund_check_interval: Duration,
    /// How often the deny list is reread from the store (other servers'
    /// changes).
    pub deny_list_sync_interval: Duration,
    pub charges_archive_interval: Duration,
    pub charges_archive_batches: crate::charges_archive::BatchLimits,
}

/// The payment gateway charges and payments go to (not a fleet gateway:
/// that is `farestream_gateway::GatewaySettings`).
#[derive(Debug, Clone)]
pub struct PaymentGatewaySettings {
    pub url: String,
    pub hmac_secret: Vec<u8>,
    pub request_timeout: Duration,
    pub dispatch: DispatcherSettings,
}

impl MoneySettings {
    /// A new connection to the money store (blocking: off the async threads).
    pub fn open_store(&self) -> Result<MoneyStore, StoreError> {
        MoneyStore::open(&self.store, self.store_busy_wait)
    }

    /// Connections for work that runs side by side (blocking: the first
    /// is opened now).
    pub fn open_connections(&self) -> Result<StoreConnections, StoreError> {
        let (store, busy_wait) = (self.store.clone(), self.store_busy_wait);
        StoreConnections::open(self.store_connections_max, move || MoneyStore::open(&store, busy_wait))
    }
}
