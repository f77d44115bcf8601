//! Periodic work: sweep the dedup indexes, publish their sizes and the
//! archive lag, and notice a failed log, archiver or pricer.

use std::sync::Arc;
use std::time::Duration;

use crate::{Fatal, Shared, fail};
use farestream_ingest::archive::Archiver;
use farestream_ingest::telemetry;
use farestream_ingest::wal::committer::WalState;
use farestream_money::Pricer;

/// Periodic work: sweep the dedup indexes; notice a failed log or archiver.
pub(super) async fn housekeeping(shared: Arc<Shared>, (archiver, pricer): (Arc<Archiver>, Arc<Pricer>)) {
    let mut sweep = tokio::time::interval(shared.settings.dedup_sweep_interval);
    let mut health = tokio::time::interval(Duration::from_millis(100));
    let mut wal = shared.wal.subscribe();
    loop {
        shared.handles.faults.panic_point("housekeeping");
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = sweep.tick() => {
                let pipeline = Arc::clone(&shared.pipeline);
                let now = shared.gate.clock.now_ms();
                let sizes = tokio::task::spawn_blocking(move || {
                    pipeline.sweep(now);
                    pipeline.dedup_sizes()
                }).await;
                if let Ok(sizes) = sizes {
                    telemetry::dedup_sizes(sizes);
                }
            }
            _ = wal.changed() => {
                let state = wal.borrow_and_update().state.clone();
                if let WalState::Failed(reason) = state {
                    fail(&shared, Fatal::Wal(reason));
                }
            }
            _ = health.tick() => {
                if let Some(reason) = archiver.failure() {
                    fail(&shared, Fatal::Archiver(reason));
                }
                let pricing = pricer.status();
                if let Some(reason) = pricing.failure {
                    fail(&shared, Fatal::Pricer(reason));
                }
                let durable_lsn = shared.wal.progress().durable_lsn;
                telemetry::archive_lag(durable_lsn, archiver.archived_lsn());
                farestream_money::money_metrics::pricer_position(durable_lsn, pricing.priced_lsn);
            }
        }
    }
}
