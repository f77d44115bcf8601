//! farestream: ingestion back end for pay-later transit ride codes.
//!
//! Split as quinn is: the sans-IO core that decides (ride-code checks,
//! replay and re-delivery decisions, the archive rows) with `now` as an
//! argument is the `farestream-core` crate (`crates/core`), and this crate
//! is the shell of QUIC, disk and threads around it, the simulator and the
//! command line. The core's modules are re-exported under their own names,
//! so `farestream::ridecode` is the core's. `ARCHITECTURE.md` has the code
//! map.

pub use farestream_core::{ingest, journal, ridecode, scan, service_day, sync};

pub mod archive;
pub mod clock;
pub mod config;
pub mod demo;
pub mod fair;
pub mod faults;
pub mod files;
pub mod gateway;
pub mod keystore;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod wal;
pub mod wire;
