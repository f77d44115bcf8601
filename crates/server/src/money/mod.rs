//! The pay-later half: the money store (SQLite), the pricer that turns
//! logged rides into charges in its outbox, the dispatcher that sends them
//! to the payment gateway, and rider accounts with their arrears and the
//! deny list. The arithmetic (fares, caps, which charges a day needs) is
//! the core's (`farestream_core::fares`, `::charges`); this is the I/O.

pub mod accounts;
pub mod charges_archive;
pub mod codec;
pub mod deny_list_hub;
pub mod dispatcher;
pub mod money_audit;
pub mod notify;
pub mod outbox;
pub mod paygw;
pub mod payments;
pub mod pricer;
pub mod pricing;
pub mod service;
pub mod snapshot;
pub mod store;

pub use deny_list_hub::DenyListHub;
pub use dispatcher::{Dispatcher, DispatcherSettings};
pub use pricer::{Pricer, PricerSettings, PricerStatus};
pub use service::{AccountService, RefundReport, ServiceError};
pub use store::{MoneyStore, StoreError, store_path};
