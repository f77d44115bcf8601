//! The simulator: a city of riders, validators and fleet gateways that
//! pushes real QUIC traffic at a server. Used by `simulate`, `demo`, the
//! integration tests and the benches.

pub mod app;
pub mod archive_day;
pub mod city;
pub mod fleet;
pub mod flood;
pub mod load;
pub mod loadgen;
pub mod plan;
pub mod signup;
pub mod world;

pub use app::{AppError, CodeInbox, FileInbox, RiderApp, Session};
pub use city::{City, CitySpec, Target, Uploads};
pub use fleet::{FleetReport, FleetSettings, run_fleet};
pub use flood::{FLOOD_GATEWAY, FloodKind, FloodReport, FloodSettings, hostile_codes, run_flood};
pub use load::{AccountsRig, Load, SimulateError, SimulateReport, reach_server, simulate};
pub use plan::{Anomaly, AnomalyRates, PlannedScan, Timetable, plan_day};
pub use signup::{Balances, Member, sign_up_riders};
pub use world::{World, WorldSpec};
