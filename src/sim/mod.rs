//! The simulator: a city of riders, validators and fleet gateways that
//! pushes real QUIC traffic at a server. Used by `simulate`, `demo`, the
//! integration tests and the benches.

pub mod fleet;
pub mod flood;
pub mod plan;
pub mod world;

pub use fleet::{FleetReport, FleetSettings, run_fleet};
pub use flood::{FloodKind, FloodReport, FloodSettings, hostile_codes, run_flood};
pub use plan::{Anomaly, AnomalyRates, PlannedScan, Timetable, plan_day};
pub use world::{World, WorldSpec};
