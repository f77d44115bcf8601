//! The one start-up sequence. `serve`, the demo and the tests all start a
//! server through [`Assembly`], so the order that keeps a data dir safe is
//! written once: the data dir's lock first (a second server must not touch
//! the keys, the certificate or the log of one that serves), then the key
//! store, the TLS identity and the fleet CA under it (made on a first
//! start, so the default stays zero-config), the settings from the config, and
//! the server over them with its live handles (clock, failpoints, notifier).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::handles::Handles;
use crate::{DailySettlement, Server, ServerError, ServerSettings, lock_data_dir};
use farestream_core::ingest::{Pipeline, PipelineConfig};
use farestream_core::ridecode::IssuerPublicKeys;
use farestream_ingest::clock_source::Clock;
use farestream_ingest::config::Config;
use farestream_ingest::data_dir_lock::DataDirLock;
use farestream_ingest::faults::Faults;
use farestream_ingest::fleet_ca::{FleetCa, RevocationList};
use farestream_ingest::issuer_keys::{IssuerKeysNow, LiveIssuerKeys};
use farestream_ingest::keystore::{Keystore, KeystoreOptions, random_seed};
use farestream_ingest::tls_identity::{NewIdentity, ServerIdentity};
use farestream_money::notify::{FileNotifier, Notifier};

/// A server being put together: its data dir locked, its keys and TLS
/// identity open, its settings read. [`Assembly::start`] starts it.
pub struct Assembly {
    data_dir_lock: DataDirLock,
    keystore: Keystore,
    identity: ServerIdentity,
    fleet: RevocationList,
    settings: ServerSettings,
    pipeline: PipelineConfig,
    /// Keys of the tests' own instead of the key store's.
    fixed_keys: Option<IssuerPublicKeys>,
    handles: Handles,
    settlement: Option<Arc<dyn DailySettlement>>,
}

impl Assembly {
    /// Locks `data_dir`, then opens (or creates) its key store and TLS
    /// identity and reads the settings from `config`. Riders are told
    /// things through `api.notifications_file` when it names one.
    pub fn open(config: &Config, data_dir: &Path, new_identity: NewIdentity) -> Result<Assembly, ServerError> {
        let data_dir_lock = lock_data_dir(data_dir)?;
        let keystore = Keystore::open_or_create(data_dir, KeystoreOptions::from_config(config))?;
        let identity = ServerIdentity::load_or_create(data_dir, new_identity)?;
        let mut handles = Handles::default();
        // Made on a first start only: on a data dir that served, a missing
        // CA is lost (every enrolled gateway would be refused), not new.
        if !farestream_ingest::wal::has_served(data_dir) {
            FleetCa::create_if_absent(data_dir, handles.clock.now_ms() / 1000, &handles.faults)?;
        }
        let fleet = RevocationList::read(data_dir)?;
        if !config.api.notifications_file.is_empty() {
            let path = Path::new(&config.api.notifications_file);
            let notifier =
                FileNotifier::open(path).map_err(|source| ServerError::NotWritable { path: path.into(), source })?;
            handles.notifier = Arc::new(notifier);
        }
        Ok(Assembly {
            fixed_keys: None,
            settings: ServerSettings::from_config(config, data_dir)?,
            pipeline: config.pipeline_config()?,
            data_dir_lock,
            keystore,
            identity,
            fleet,
            handles,
            settlement: None,
        })
    }

    /// The issuer key store: the account API signs credentials with it.
    pub fn keystore(&self) -> &Keystore {
        &self.keystore
    }

    /// The TLS identity gateways pin.
    pub fn identity(&self) -> &ServerIdentity {
        &self.identity
    }

    /// The settings the server will start with.
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// Listens on `addr` instead of `server.listen_addr`.
    pub fn listen_on(mut self, addr: SocketAddr) -> Assembly {
        self.settings.listen_addr = addr;
        self
    }

    /// Serves under `identity` instead of the data dir's (a test that
    /// moves one identity between data dirs).
    pub fn with_identity(mut self, identity: ServerIdentity) -> Assembly {
        self.identity = identity;
        self
    }

    /// Trusts ride codes from exactly these issuer keys, for the server's
    /// life, instead of following the key store (tests that sign with keys
    /// of their own). Nothing signs and nothing is published.
    pub fn trusting(mut self, keys: IssuerPublicKeys) -> Assembly {
        self.fixed_keys = Some(keys);
        self
    }

    /// Reads `now` from `clock` instead of the wall clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Assembly {
        self.handles.clock = clock;
        self
    }

    /// Checks these failpoints (tests).
    pub fn with_faults(mut self, faults: Arc<Faults>) -> Assembly {
        self.handles.faults = faults;
        self
    }

    /// Tells riders things through `notifier`.
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Assembly {
        self.handles.notifier = notifier;
        self
    }

    /// Runs `settlement` at each daily cut-over (when
    /// `settlement.cut_over_enabled`), supervised like every other job.
    pub fn with_daily_settlement(mut self, settlement: Arc<dyn DailySettlement>) -> Assembly {
        self.settlement = Some(settlement);
        self
    }

    /// Recovers the data dir and starts serving.
    pub async fn start(mut self) -> Result<Server, ServerError> {
        let now_ms = self.handles.clock.now_ms();
        let now_secs = now_ms.div_euclid(1000);
        let (keys_now, follow_key_store) = match self.fixed_keys.take() {
            Some(trusted) => (IssuerKeysNow::fixed(trusted), false),
            None => {
                // A failure (a full disk) is retried at each reread; the
                // server starts with the keys it holds.
                crate::issuer_reload::make_day_terminal_keys(&mut self.keystore, &self.pipeline.service_day, now_ms);
                let kept_secs = self.pipeline.horizons().terminal_key_kept_secs();
                (IssuerKeysNow::at(&self.keystore, now_secs, &IssuerKeysNow::none(), kept_secs)?, true)
            }
        };
        let Assembly { data_dir_lock, identity, fleet, settings, pipeline, handles, settlement, .. } = self;
        let pipeline = Arc::new(Pipeline::new(pipeline, keys_now.trusted.clone(), random_seed()?));
        pipeline.set_terminal_keys(keys_now.terminal_trusted());
        let issuer_keys = IssuerKeys { live: LiveIssuerKeys::new(keys_now), follow_key_store };
        let (tls, keys) = ((&identity, fleet), (pipeline, issuer_keys));
        Server::start_locked(data_dir_lock, settings, handles, tls, keys, settlement).await
    }
}

/// The issuer keys a server starts with, and whether it follows the key
/// store after that (every server but a test's with keys of its own).
pub(crate) struct IssuerKeys {
    pub(crate) live: LiveIssuerKeys,
    pub(crate) follow_key_store: bool,
}
