//! `farestream paygw`: a simulated payment gateway for the demo, the tests
//! and load runs. It speaks the API in `docs/payment-gateway.md`, keeps
//! payers' balances and a ledger on disk, declines a debit the balance
//! cannot cover, and follows Stripe's idempotency rules: the same key gets
//! the first result, the same key with another body an error, the same key
//! while its first request is still in flight a 409. It can be told to add
//! latency, answer 5xx, or apply a payment and then lose the answer.

mod control;
mod http;
mod ledger;

pub use control::SimControl;
pub use farestream_ingest::http_serve::HttpHandle;
pub use http::{SimFaults, SimStats, TopUp, start};
pub use ledger::{Entry, Ledger};
