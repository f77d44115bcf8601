//! farestream: ingestion back end for pay-later transit ride codes.
//!
//! The workspace is split as quinn is: the sans-IO core that decides
//! (ride-code checks, replay and re-delivery decisions, the archive rows)
//! with `now` as an argument is `farestream-core` (`crates/core`); the
//! server shell of QUIC, disk and threads is `farestream-server`
//! (`crates/server`); what a gateway embeds is `farestream-gateway`
//! (`crates/gateway`). This crate is the `farestream` binary with the
//! simulator, the load generators and the demo, and re-exports the other
//! crates' modules under their own names (`farestream::ridecode`,
//! `farestream::server`, `farestream::gateway`), so tests and benches use
//! one path. `ARCHITECTURE.md` has the code map.

pub use farestream_core::{charges, fares, ingest, journal, retry, ridecode, scan, service_day, sync};
pub use farestream_gateway as gateway;
pub use farestream_gateway::wire;
pub use farestream_server::{
    api, archive, clock_source, config, fair, faults, files, handles, keystore, money, server, telemetry, tls_identity,
    wal,
};

pub mod demo;
pub mod paygw;
pub mod settle;
pub mod sim;
