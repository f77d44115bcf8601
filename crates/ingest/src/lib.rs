//! farestream's ingest shell, below the QUIC endpoint: the write-ahead log
//! every acknowledged batch goes into, the threads that read it forward,
//! the Parquet archive and its archiver, the issuer key store and the TLS
//! identity, and the plumbing every shell room shares (the clock source,
//! fsync, failpoints, metrics, HTTP serving, the config file). It owns
//! files and threads; the decisions are the core's, named by their own
//! path (`farestream_core::fares`), never re-exported under this crate's.

pub mod archive;
pub mod clock_source;
pub mod config;
pub mod data_dir_lock;
pub mod faults;
pub mod files;
pub mod fleet_ca;
pub mod http_serve;
pub mod issuer_keys;
pub mod keystore;
pub mod log_reader;
pub mod node_id;
pub mod telemetry;
pub mod thread_priority;
pub mod tls_identity;
pub mod wal;
