//! `farestream paygw`: a simulated payment gateway for the demo, the tests
//! and load runs. It speaks the API in `docs/payment-gateway.md`, keeps
//! payers' balances and a ledger on disk, declines a debit the balance
//! cannot cover, and follows Stripe's idempotency rules: the same key gets
//! the first result, the same key with another body an error, the same key
//! while its first request is still in flight a 409. It signs every answer.
//! It can be told to add latency, answer 5xx, apply a payment and then lose
//! the answer, or forge a decline; those control calls need its own token.

mod control;
mod control_routes;
mod http;
mod ledger;

pub use control::SimControl;
pub use control_routes::CONTROL_TOKEN_FILE;
pub use http::{SimFaults, SimGateway, SimStats, TopUp, start};
pub use ledger::{Entry, Ledger};
