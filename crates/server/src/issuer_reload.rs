//! Issuer key rotation without a restart: the key store is read again
//! every `keys.reload_interval_ms`, and the keys in force at the clock's
//! `now` replace the ones held ([`LiveIssuerKeys::advance`]: the pipeline
//! and every gateway's push stream first, the account API's signer
//! last). A store that cannot be read is logged and counted; the keys held
//! stay in force, but each still runs out at its `trusted_until`
//! ([`IssuerKeysNow::as_time_passes`]), so a broken key store never makes
//! an old key trusted longer.
//!
//! In a cluster the store is shared (`cluster.keys_dir`), and another
//! node may make or hand out a terminal key between two of this node's
//! reads. A batch naming a terminal key this node does not hold is
//! therefore decided only after a read begun since it was verified
//! ([`read_keys_begun_after`]): whether a code opens decides its row's
//! partition, and a scan resent to another node must land in the same one.
//! A read that fails or outlasts `keys.unknown_key_read_wait_ms_max`
//! leaves the batch undecided: it is answered BACKOFF.

use std::sync::Arc;
use std::time::Instant;

use crate::Shared;
use farestream_core::service_day::ServiceDayPolicy;
use farestream_ingest::issuer_keys::IssuerKeysNow;
use farestream_ingest::keystore::Keystore;
use farestream_ingest::telemetry;

/// The last read of this node's key store: when it began and whether it
/// read. Held through each read (by the task doing it, so a waiter that
/// gives up never lets a second read start beside a hung one): whoever
/// gets it knows every read begun before has finished.
#[derive(Debug, Default)]
pub(crate) struct KeyStoreReads {
    last: Arc<tokio::sync::Mutex<Option<KeyStoreRead>>>,
}

#[derive(Debug, Clone)]
struct KeyStoreRead {
    started: Instant,
    outcome: Result<(), String>,
}

pub(super) async fn reload_issuer_keys(shared: Arc<Shared>) {
    let Some(reads) = &shared.key_store_reads else { return };
    let mut every = tokio::time::interval(shared.settings.issuer_keys_reload_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut last = reads.last.lock().await;
        let started = Instant::now();
        let outcome = read_key_store(&shared, MakeDayKeys::Yes).await;
        *last = Some(KeyStoreRead { started, outcome });
    }
}

/// For a batch verified from `verified_from` that met a terminal key this
/// node does not hold: `Ok` once a read of the key store begun after
/// `verified_from` has put its keys in place (one already begun, or one
/// this call starts; batches waiting at once share it). `Err` when that
/// read failed or did not finish within `keys.unknown_key_read_wait_ms_max`:
/// the batch cannot be decided as every node would, so it is not acked.
pub(crate) async fn read_keys_begun_after(shared: &Arc<Shared>, verified_from: Instant) -> Result<(), String> {
    let Some(reads) = &shared.key_store_reads else { return Ok(()) };
    let wait = shared.settings.unknown_key_read_wait;
    let read = tokio::time::timeout(wait, read_after(shared, reads, verified_from)).await;
    read.unwrap_or_else(|_| {
        Err(format!("the key store was not read within {wait:?} (keys.unknown_key_read_wait_ms_max)"))
    })
}

async fn read_after(shared: &Arc<Shared>, reads: &KeyStoreReads, verified_from: Instant) -> Result<(), String> {
    let mut last = Arc::clone(&reads.last).lock_owned().await;
    if let Some(read) = last.as_ref().filter(|read| read.started > verified_from) {
        return read.outcome.clone();
    }
    telemetry::key_store_read_for_unknown_terminal_key();
    let task_shared = Arc::clone(shared);
    let reading = tokio::spawn(async move {
        let started = Instant::now();
        let outcome = read_key_store(&task_shared, MakeDayKeys::No).await;
        *last = Some(KeyStoreRead { started, outcome: outcome.clone() });
        outcome
    });
    reading.await.unwrap_or_else(|e| Err(format!("the key store read stopped: {e}")))
}

/// Whether a read makes the coming service days' keys when missing: the
/// periodic one does; one on a batch's path only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MakeDayKeys {
    Yes,
    No,
}

/// Reads the key store once and puts the keys in force now in place;
/// why not, when it could not be read (the keys held then stay, each
/// until it runs out).
async fn read_key_store(shared: &Arc<Shared>, make: MakeDayKeys) -> Result<(), String> {
    let (dir, options) = (shared.settings.data_dir.clone(), shared.settings.keystore.clone());
    let policy = shared.pipeline.config().service_day;
    let now_ms = shared.handles.clock.now_ms();
    let now_secs = now_ms.div_euclid(1000);
    let before = shared.issuer_keys.now();
    let kept_secs = shared.pipeline.config().horizons().terminal_key_kept_secs();
    let read = tokio::task::spawn_blocking(move || {
        let mut store = Keystore::open(&dir, options)?;
        if make == MakeDayKeys::Yes {
            make_day_terminal_keys(&mut store, &policy, now_ms);
        }
        IssuerKeysNow::at(&store, now_secs, &before, kept_secs)
    });
    let read = read.await.map_err(|e| e.to_string()).and_then(|keys| keys.map_err(|e| e.to_string()));
    let (next, outcome) = match read {
        Ok(next) => (next, Ok(())),
        Err(error) => {
            tracing::warn!(%error, "cannot read the issuer key store; keys still run out on time");
            telemetry::issuer_keys_reload_failed();
            (
                shared.issuer_keys.now().as_time_passes(now_secs, kept_secs),
                Err(format!("the key store could not be read: {error}")),
            )
        }
    };
    let trust = |keys: &IssuerKeysNow| {
        shared.pipeline.set_issuer_keys(keys.trusted.clone());
        shared.pipeline.set_terminal_keys(keys.terminal_trusted());
    };
    if shared.issuer_keys.advance(next, trust) {
        let now = shared.issuer_keys.now();
        let trusted: Vec<u32> = now.trusted.key_ids().collect();
        let terminal: Vec<u16> = now.terminal.iter().map(|k| k.key_id).collect();
        let ran_out: Vec<u16> = now.terminal_ran_out.iter().map(|k| k.key_id).collect();
        let signer = now.signer.as_ref().map(|s| s.key_id());
        tracing::info!(?trusted, ?signer, ?terminal, terminal_ran_out = ?ran_out, "ride-code keys changed");
        telemetry::issuer_keys_changed();
    }
    outcome
}

/// The current and next service days' terminal keys, made once each when
/// missing. A failure (a full disk) is logged and counted, and the keys
/// held stay in force: it is tried again at the next reread, a day ahead
/// of the first code that needs the key.
pub(super) fn make_day_terminal_keys(store: &mut Keystore, policy: &ServiceDayPolicy, now_ms: i64) {
    match store.make_day_terminal_keys(policy, now_ms) {
        Ok(made) if made.is_empty() => {}
        Ok(made) => tracing::info!(?made, "terminal keys made for the coming service days"),
        Err(error) => {
            tracing::warn!(%error, "cannot make the coming service days' terminal keys; trying again at the next reread");
            telemetry::issuer_keys_reload_failed();
        }
    }
}
