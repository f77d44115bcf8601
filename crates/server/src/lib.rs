//! farestream's server: the shell around the sans-IO core
//! (`farestream-core`). It owns the sockets, the threads, the files and the
//! clock: the QUIC endpoint, the write-ahead log, the Parquet archive and
//! its archiver, the issuer key store, TLS, the configuration and the
//! metrics. The decisions are the core's: this crate names them by their
//! own path (`farestream_core::fares`), never re-exported under its own.

pub mod api;
pub mod archive;
pub mod clock_source;
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
pub mod tls_identity;
pub mod wal;
