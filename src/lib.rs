//! farestream: ingestion back end for pay-later transit ride codes.
//!
//! The workspace is split as quinn is: the sans-IO core that decides
//! (ride codes, ingest, fares, charges, money rules, settlement) with `now`
//! as an argument is `farestream-core` (`crates/core`); the shells around
//! it are the ingest shell (the log, the archive, keys, TLS:
//! `farestream-ingest`), the money shell (store, pricer, dispatcher,
//! accounts, account API: `farestream-money`) and the server that runs
//! both behind QUIC (`farestream-server`); what a gateway embeds is
//! `farestream-gateway`, the SQL over the archives `farestream-analytics`.
//! This crate is the `farestream` binary with the simulator, the load
//! generators and the demo, and re-exports the other crates' modules under
//! their own names (`farestream::ridecode`, `farestream::money`,
//! `farestream::server`), so tests and benches use one path.
//! `ARCHITECTURE.md` has the code map.

pub use farestream_core::{charges, fares, fleet, ingest, journal, retry, ridecode, scan, service_day, sync};
pub use farestream_gateway as gateway;
pub use farestream_gateway::wire;
pub use farestream_ingest::{
    archive, clock_source, config, faults, files, fleet_ca, issuer_keys, keystore, telemetry, tls_identity, wal,
};
pub use farestream_money as money;
pub use farestream_money::api;
pub use farestream_server as server;
pub use farestream_server::handles;
pub use farestream_shared_archive as shared_archive;

pub mod demo;
pub mod paygw;
pub mod settle;
pub mod sim;
