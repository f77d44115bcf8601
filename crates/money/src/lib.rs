//! farestream's money shell, the pay-later half: the money store
//! (SQLite or PostgreSQL), the pricer that turns logged rides into charges in its
//! outbox, the dispatcher that sends them to the payment gateway, rider
//! accounts with their arrears and the deny list, the charges archive and
//! the account API. The arithmetic (fares, caps, which charges a day
//! needs, what a gateway answer does) is the core's
//! (`farestream_core::fares`, `::charges`, `::gateway_answer`); this is the
//! I/O. It reads the log through the ingest shell (`farestream_ingest`)
//! and never reaches the QUIC side: the server crate wires the two.

pub mod accounts;
pub mod api;
pub mod charges_archive;
pub mod codec;
pub mod db;
pub mod deny_list_hub;
pub mod dispatcher;
pub mod migrate_store;
pub mod money_audit;
pub mod money_metrics;
pub mod money_settings;
pub mod money_store;
pub mod notify;
pub mod outbox;
pub mod paygw;
pub mod payments;
pub mod pg_store;
pub mod pricer;
pub mod pricing;
pub mod pricing_round;
pub mod service;
pub mod session_lock;
pub mod snapshot;
pub mod store;
pub mod store_connections;
#[cfg(any(test, feature = "test-cluster"))]
pub mod test_cluster;

pub use deny_list_hub::DenyListHub;
pub use dispatcher::{Dispatcher, DispatcherSettings};
pub use money_store::{MoneyStore, StoreLocation};
pub use pricer::{Pricer, PricerSettings, PricerStatus};
pub use service::{AccountService, RefundReport, ServiceError};
pub use store::{SqliteStore, StoreError, store_path};
