//! A simulated city, set up once for `demo` and `simulate` alike: riders
//! with credentials, validators behind fleet gateways, a planned day of
//! scans, and the fleet that pushes them at a server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use rustls::pki_types::CertificateDer;

use super::{AnomalyRates, FleetReport, FleetSettings, PlannedScan, Timetable, World, WorldSpec, plan_day, run_fleet};
use crate::clock_source::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::fleet::GatewayScope;
use crate::fleet_ca::{FleetCa, FleetError};
use crate::gateway::{GatewayClient, GatewaySettings};
use crate::ridecode::{IssuerPublicKeys, IssuerSigningKey, KeyError};

/// Who rides and how the fleet is laid out and behaves.
#[derive(Debug, Clone)]
pub struct CitySpec {
    pub riders: usize,
    pub gateways: usize,
    pub validators_per_gateway: usize,
    /// Mean trips per rider per day (a metro trip is two scans).
    pub trips_per_rider: f64,
    /// Riders on the deny list (only where the server is told of them).
    pub denied_riders_percent: f64,
    /// Batches sent a second time, as when an ack is lost.
    pub redelivery_percent: f64,
    pub seed: u64,
}

/// How the fleet uploads.
#[derive(Debug, Clone, Copy)]
pub struct Uploads {
    /// Wall time between a gateway's uploads.
    pub tick: Duration,
    pub batch_scans_max: usize,
    /// Build every batch first, then push them back to back (a fleet back
    /// from hours offline).
    pub backlog: bool,
}

/// A city's world, its planned day, and how its gateways behave.
pub struct City {
    pub world: World,
    pub plan: Vec<PlannedScan>,
    redelivery_percent: f64,
    seed: u64,
}

/// The server a fleet pushes at, the certificate its gateways pin, and the
/// data dir whose fleet CA enrols them.
pub struct Target {
    pub server: SocketAddr,
    /// A cluster's other nodes, which a gateway moves on to when its
    /// server fails it (`GatewaySettings::other_server_addrs`).
    pub other_servers: Vec<SocketAddr>,
    pub cert: CertificateDer<'static>,
    pub data_dir: PathBuf,
}

impl Target {
    /// A client for the simulated gateway `gateway_id`, which speaks for
    /// the validators named `gateway_id/…` (enrolment's default) and is
    /// enrolled with the data dir's fleet CA on first use.
    pub fn client(
        &self,
        config: &Config,
        settings: GatewaySettings,
        gateway_id: &str,
    ) -> Result<GatewayClient, TargetError> {
        let scope = GatewayScope::default_for(gateway_id).map_err(FleetError::from)?;
        let now_secs = SystemClock.now_ms() / 1000;
        let valid_days = config.fleet.gateway_cert_valid_days;
        let credentials = FleetCa::enrolled_here(&self.data_dir, &scope, valid_days, now_secs)?;
        Ok(GatewayClient::new(settings, &self.cert, &credentials)?)
    }
}

/// Why a simulated gateway has no client.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("enrolling the simulated gateway: {0}")]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
}

impl City {
    /// Riders whose credentials `issuer` signed, valid from `valid_from` for
    /// the configured credential validity, and their day on `timetable`.
    pub fn plan(
        spec: &CitySpec,
        config: &Config,
        issuer: IssuerSigningKey,
        trusted: IssuerPublicKeys,
        valid_from: u32,
        timetable: Timetable,
    ) -> Result<City, KeyError> {
        Ok(City::plan_day(spec, City::world(spec, config, issuer, trusted, valid_from)?, timetable))
    }

    /// The city's gateways, validators and riders, before their day: riders
    /// may still sign up and take the API's cards and credentials
    /// ([`World::adopt`]).
    pub fn world(
        spec: &CitySpec,
        config: &Config,
        issuer: IssuerSigningKey,
        trusted: IssuerPublicKeys,
        valid_from: u32,
    ) -> Result<World, KeyError> {
        let world_spec = WorldSpec {
            riders: spec.riders,
            gateways: spec.gateways,
            validators_per_gateway: spec.validators_per_gateway,
            denied_riders_percent: spec.denied_riders_percent,
            seed: spec.seed,
        };
        let valid_until = valid_from.saturating_add(config.ride_code.credential_validity_secs);
        World::build(&world_spec, issuer, trusted, valid_from, valid_until)
    }

    /// The world's day on `timetable`.
    pub fn plan_day(spec: &CitySpec, world: World, timetable: Timetable) -> City {
        let plan = plan_day(&world, timetable, spec.trips_per_rider, AnomalyRates::DEMO, spec.seed);
        City { world, plan, redelivery_percent: spec.redelivery_percent, seed: spec.seed }
    }

    /// Pushes the planned day at the target, one gateway client per
    /// simulated gateway.
    pub async fn run(
        self,
        config: &Config,
        target: &Target,
        clock: Arc<dyn Clock>,
        uploads: Uploads,
        progress: ProgressBar,
    ) -> Result<FleetReport, ConfigError> {
        let settings = FleetSettings {
            upload_tick: uploads.tick,
            redelivery_percent: self.redelivery_percent,
            batch_scans_max: uploads.batch_scans_max,
            frame_bytes_max: config.wire.frame_bytes_max,
            freshness: config.freshness_policy()?,
            seed: self.seed,
            backlog: uploads.backlog,
        };
        let mut gateway_settings = config.gateway_settings(target.server);
        gateway_settings.other_server_addrs = target.other_servers.clone();
        let client =
            |gateway_id: &str| target.client(config, gateway_settings.clone(), gateway_id).map_err(|e| e.to_string());
        Ok(run_fleet(Arc::new(self.world), Arc::new(self.plan), clock, settings, client, progress).await)
    }
}
