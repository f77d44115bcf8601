//! The ceiling a load is measured against: the sans-IO core alone over the
//! same batches (read or open each code, check the signatures in batch
//! equations of `ingest.verify_chunk_signatures` on rayon's threads, the
//! re-delivery and replay indexes, the credential cache), with no network,
//! log, archive or pricing. What the server would reach if everything but
//! its decisions cost nothing; `scripts/bench.sh` runs it on the server's
//! cores.

use std::path::Path;
use std::time::{Duration, Instant};

use super::super::load::SimulateError;
use crate::clock_source::{Clock, SystemClock};
use crate::config::Config;
use crate::ingest::pipeline::Pipeline;
use crate::issuer_keys::IssuerKeysNow;
use crate::keystore::{Keystore, KeystoreOptions};
use crate::wire::ScanBatch;

/// What the core alone did with a file's batches.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub scans: u64,
    /// Signatures checked (a rider's credential is checked once, then cached).
    pub signatures: u64,
    pub elapsed: Duration,
}

impl Ceiling {
    pub fn scans_per_sec(&self) -> f64 {
        self.scans as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `batches`, in order, through a pipeline with the data dir's keys in
/// force now, as the server's would be.
pub fn measure_ceiling(
    data_dir: &Path,
    config: &Config,
    batches: &[ScanBatch],
    progress: &indicatif::ProgressBar,
) -> Result<Ceiling, SimulateError> {
    let keystore = Keystore::open(data_dir, KeystoreOptions::from_config(config))?;
    let now = SystemClock.now_ms();
    let pipeline_config = config.pipeline_config()?;
    let kept_secs = pipeline_config.horizons().terminal_key_kept_secs();
    let keys = IssuerKeysNow::at(&keystore, now.div_euclid(1000), &IssuerKeysNow::none(), kept_secs)?;
    let pipeline = Pipeline::new(pipeline_config, keys.trusted.clone(), [7; 32]);
    pipeline.set_terminal_keys(keys.terminal_trusted());
    progress.set_length(batches.iter().map(|b| b.scans.len() as u64).sum());
    let (mut scans, mut signatures) = (0u64, 0u64);
    let started = Instant::now();
    for batch in batches {
        let verified = pipeline.verify(batch).map_err(|e| SimulateError::Pipeline(e.to_string()))?;
        signatures += verified.signature_counts().0 as u64;
        let outcome = pipeline.commit(batch, verified, now);
        scans += outcome.rows.len() as u64;
        progress.inc(batch.scans.len() as u64);
    }
    Ok(Ceiling { scans, signatures, elapsed: started.elapsed() })
}
