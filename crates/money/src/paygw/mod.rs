//! The payment gateway: its API as farestream speaks it, and the client.

pub mod api;
mod client;

pub use api::PaymentRequest;
pub use client::{ANSWER_BYTES_MAX, Answer, Direction, PaygwError, PaymentGateway};
