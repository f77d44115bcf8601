//! farestream's sans-IO core: every decision about ride codes, scans and
//! their archive rows, with `now`, events and inputs as arguments. No
//! async runtime, no files, no sockets, no clock: the `farestream` shell
//! (QUIC, the write-ahead log, Parquet, the account store) does the I/O
//! and calls in here. CI fails if one of those creeps into its source
//! (clippy, below) or its dependencies (the root's
//! `tests/it/dependencies.rs`).
//!
//! Data structures and data parallelism are allowed: the dedup indexes are
//! `dashmap`s and verification runs on `rayon`, because both are
//! computation, not I/O.
//!
//! The compiler holds the boundary: `clippy.toml` bans the clock, file,
//! socket, environment and OS-randomness paths in this crate, and CI runs
//! clippy with `-D warnings`. Every item other crates may use is
//! documented (`missing_docs`); the rest is `pub(crate)`.

#![warn(missing_docs)]
#![forbid(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod account;
#[cfg(feature = "archive")]
pub mod archive;
pub mod charges;
pub mod clock;
pub mod cluster;
pub mod deny_list;
pub mod fares;
pub mod fleet;
pub mod gateway_answer;
pub mod ingest;
pub mod journal;
pub mod limits;
pub mod money;
pub mod retry;
pub mod ridecode;
pub mod scan;
pub mod service_day;
pub mod settlement;
pub mod sync;
pub mod wal;
pub mod wire;
