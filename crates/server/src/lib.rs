//! farestream's server: the shell around the sans-IO core
//! (`farestream-core`). It owns the sockets, the threads, the files and the
//! clock: the QUIC endpoint, the write-ahead log, the Parquet archive and
//! its archiver, the issuer key store, TLS, the configuration and the
//! metrics. Every decision is the core's.
//!
//! The core's modules and the gateway crate's `wire` are re-exported under
//! their own names, so `crate::ridecode` here is the core's.

pub use farestream_core::{charges, deny_list, fares, ingest, journal, retry, ridecode, scan, service_day, sync};
pub use farestream_gateway::wire;

pub mod api;
pub mod archive;
pub mod clock;
pub mod config;
pub mod data_dir_lock;
pub mod fair;
pub mod faults;
pub mod files;
pub mod handles;
pub mod http;
pub mod keystore;
pub mod log_reader;
pub mod money;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod wal;
