//! farestream: ingestion back end for pay-later transit ride codes.
//!
//! The crate is split as quinn is: a sans-IO core that decides (ride-code
//! checks, replay and re-delivery decisions, the archive rows) and takes
//! `now` as an argument, and a thin shell of QUIC, disk and threads around
//! it. `ARCHITECTURE.md` has the code map.

pub mod archive;
pub mod clock;
pub mod config;
pub mod demo;
pub mod fair;
pub mod faults;
pub mod files;
pub mod gateway;
pub mod ingest;
pub mod journal;
pub mod keystore;
pub mod ridecode;
pub mod scan;
pub mod server;
pub mod service_day;
pub mod sim;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod wal;
pub mod wire;
