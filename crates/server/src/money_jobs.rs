//! Start-up of the pay-later half: the money store opened and migrated,
//! the pricer placed in the log (and the log told to keep what it still
//! needs), the deny list loaded into the pipeline, and the dispatcher
//! built when a payment gateway is configured.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::handles::Handles;
use crate::{RecoveryReport, ServerError, ServerSettings};
use farestream_core::clock::UnixMillis;
use farestream_core::ingest::Pipeline;
use farestream_ingest::archive::Arrivals;
use farestream_ingest::log_reader::LogReaders;
use farestream_ingest::node_id::NodeId;
use farestream_ingest::wal::committer::Progress;
use farestream_money::charges_archive::{ChargesArchive, ChargesRoot, charges_root};
use farestream_money::pricer::{OpenedStore, cluster_node_reader_name, log_vouches_for, pricer_start, reader_name};
use farestream_money::store::{CURSOR_HOLD_TRIES, StoreError, fresh_cursor_holder, hold_log_cursor, last_record};
use farestream_money::{AccountService, DenyListHub, Dispatcher, Pricer, RefundReport};

/// The money side of a running server.
pub(super) struct Money {
    pub pricer: Arc<Pricer>,
    pub charges_archive: Arc<ChargesArchive>,
    pub dispatcher: Option<Arc<Dispatcher>>,
    pub accounts: AccountService,
    pub deny_list: Arc<DenyListHub>,
    /// Woken when a pricer writes charges: the dispatcher waits on it.
    pub charges_written: Arc<Notify>,
}

/// Opens the store where this server's pricer left off and takes its
/// cursor, refusing a pricer position the recovered log does not hold or
/// that another log moved (blocking: a PostgreSQL store is opened off the
/// async threads). A pricer new to the store starts at `start_if_new`.
pub(super) fn open_money_store(
    settings: &ServerSettings,
    recovery: &RecoveryReport,
    (node, start_if_new): (&NodeId, u64),
) -> Result<OpenedStore, ServerError> {
    let money = &settings.money;
    let mut store = money.open_store()?;
    store.set_page_cache_mib(money.pricer.store_cache_mib)?;
    let reader = match settings.cluster {
        Some(_) => cluster_node_reader_name(&node.to_string()),
        None => reader_name(store.engine(), node),
    };
    let holder = fresh_cursor_holder()?;
    let mut tries = CURSOR_HOLD_TRIES;
    let start = loop {
        let start = pricer_start(&mut store, &reader, start_if_new)?;
        if start < recovery.wal_first_lsn || start > recovery.wal_end_lsn {
            return Err(ServerError::Recovery(format!(
                "the log holds [{}, {}) but the pricer is at {start}: rides would go unpriced",
                recovery.wal_first_lsn, recovery.wal_end_lsn
            )));
        }
        let last = last_record(&mut store.db(), &reader)?;
        let (wal_dir, record_bytes_max) = (&money.pricer.wal_dir, money.pricer.record_bytes_max);
        log_vouches_for(wal_dir, record_bytes_max, (start, last), recovery.wal_first_lsn)
            .map_err(ServerError::Recovery)?;
        // Taken from the start: a server still pricing under this NODE_ID
        // (the data dir it was copied from) stops at its next move. It
        // exists from the start too: another server's refunds wait for
        // this one's promise (`priced_received_before`) once it is known.
        match store.in_transaction(|tx| hold_log_cursor(tx, &reader, &holder, start)) {
            Ok(()) => break start,
            // Moved since it was read (a commit of the last run that landed
            // late): read and check it again.
            Err(StoreError::CursorMovedAtStart(_)) if tries > 1 => tries -= 1,
            Err(error) => return Err(error.into()),
        }
    };
    tracing::info!(store = money.store.describe(), %reader, priced_lsn = start, "money store opened");
    Ok(OpenedStore { store, reader, holder, priced_lsn: start, log_readers: Arc::new(LogReaders::new(start)) })
}

/// Starts the pricer where `opened` says, then the deny list, the
/// accounts, the dispatcher (with a gateway) and the charges archive
/// (blocking: each opens its own store connection).
pub(super) fn start_money(
    settings: &ServerSettings,
    handles: &Handles,
    (opened, node): (OpenedStore, NodeId),
    progress: tokio::sync::watch::Receiver<Progress>,
    pipeline: Arc<Pipeline>,
) -> Result<Money, ServerError> {
    let wake = Arc::new(Notify::new());
    let pricer = Arc::new(Pricer::spawn(
        settings.money.pricer.clone(),
        opened,
        progress,
        Arc::clone(&wake),
        Arc::clone(&handles.clock),
        Arc::clone(&handles.faults),
    ));
    let deny_list =
        Arc::new(DenyListHub::load(settings.money.open_store()?, pipeline, settings.deny_list_changes_kept_max)?);
    tracing::info!(version = deny_list.version(), cards = deny_list.len(), "deny list loaded");
    let accounts = AccountService::open(
        &settings.money,
        Arc::clone(&deny_list),
        Arc::clone(&handles.clock),
        Arc::clone(&handles.notifier),
    )
    .map_err(|e| ServerError::Recovery(e.to_string()))?;
    let dispatcher = match (&settings.money.gateway, &accounts.gateway) {
        (Some(gateway), Some(client)) => Some(Arc::new(Dispatcher::new(
            gateway.dispatch.clone(),
            Arc::new(settings.money.open_connections()?),
            client.clone(),
            Arc::clone(&handles.clock),
            Arc::clone(&wake),
            Arc::clone(&deny_list),
        ))),
        _ => {
            tracing::warn!("no payments.gateway_url: charges are priced and kept, and nothing is sent");
            None
        }
    };
    let charges_archive = Arc::new(ChargesArchive {
        store: Mutex::new(settings.money.open_store()?),
        root: match &settings.cluster {
            Some(cluster) => ChargesRoot::Shared(
                cluster.shared_store().map_err(|e| ServerError::Cluster(format!("the shared archive: {e}")))?,
                tokio::runtime::Handle::current(),
            ),
            None => ChargesRoot::Dir(charges_root(&settings.data_dir)),
        },
        node,
        batches: settings.money.charges_archive_batches,
        faults: Arc::clone(&handles.faults),
        clock: Arc::clone(&handles.clock),
    });
    Ok(Money { pricer, charges_archive, dispatcher, accounts, deny_list, charges_written: wake })
}

/// Runs `round` every `interval` until `stop`.
async fn every<F: std::future::Future<Output = ()>>(
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    mut round: impl FnMut() -> F,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => round().await,
        }
    }
}

/// The undecided charges and the oldest one's age, as gauges: a stuck
/// charge shows on `/metrics` (blocking: a query).
fn publish_undecided(archive: &ChargesArchive) {
    let mut store = farestream_core::sync::lock(&archive.store);
    match farestream_money::outbox::undecided_charges(&mut store.db()) {
        Ok(undecided) => farestream_money::money_metrics::charges_undecided(undecided, archive.clock.now_ms()),
        Err(error) => tracing::warn!(%error, "cannot count undecided charges"),
    }
}

/// Archives decided charges every `interval` (and `Server::shutdown` once
/// more), and publishes the undecided charges' gauges each round. An error (a full disk) is logged and the next round tries again:
/// the store keeps every charge until it is archived.
pub(super) async fn charges_archive_job(
    archive: Arc<ChargesArchive>,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    every(interval, stop, || {
        let archive = Arc::clone(&archive);
        async move {
            match tokio::task::spawn_blocking(move || {
                publish_undecided(&archive);
                archive.run_once()
            })
            .await
            {
                Ok(Ok(archived)) if archived > 0 => tracing::debug!(archived, "charges archived"),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "archiving charges failed; trying again next round"),
                Err(error) => tracing::warn!(%error, "archiving charges stopped"),
            }
        }
    })
    .await
}

/// Rereads the deny list's changes every `interval`: another server
/// sharing the store denies and clears cards too.
pub(super) async fn deny_list_sync_job(
    deny_list: Arc<DenyListHub>,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    every(interval, stop, || {
        let hub = Arc::clone(&deny_list);
        async move { hub.sync_soon().await }
    })
    .await
}

/// `serve`'s refund job: every `refund_check_interval`, a [`refund_pass`]
/// at the clock's time. An error is logged and the next pass tries again.
pub(super) async fn refund_job(
    accounts: AccountService,
    pricer: Arc<Pricer>,
    arrivals: Option<Arc<dyn Arrivals>>,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    every(interval, stop, || async {
        match refund_pass(&accounts, &pricer, arrivals.as_deref(), accounts.clock.now_ms()).await {
            Ok(report) if report != Default::default() => tracing::info!(?report, "refund job"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "refund job failed; trying again next pass"),
        }
    })
    .await
}

/// Pays back or holds the refunds due at `now` (see
/// [`AccountService::process_refunds_as_of`]), once every ride received
/// before the pass is priced: a ride not yet priced (a backlog after a
/// restart, a store that refused a write, a record still waiting for a
/// full disk) would otherwise be charged after the deposit went back and
/// the agreement ended. The lateness check refuses a ride received after
/// its card's refund is due, so what the mark covers is every ride the
/// card can still have. Servers sharing the store each say how far they
/// have priced; a refund waits until every one has priced past the moment
/// it is due. A cluster node (`arrivals`: `None`) logs no rides of its
/// own: the partitions' pricers say how far they have priced, at each cut.
pub(super) async fn refund_pass(
    accounts: &AccountService,
    pricer: &Pricer,
    arrivals: Option<&dyn Arrivals>,
    now: UnixMillis,
) -> Result<RefundReport, ServerError> {
    let priced = pricer.flush().await.map_err(ServerError::PricingBehind)?;
    let as_of = match arrivals {
        Some(arrivals) => {
            let received = arrivals.mark();
            if priced < received.lsn {
                return Err(ServerError::PricingBehind(format!(
                    "rides received before the pass end at log position {}, priced to {priced} (not yet durable)",
                    received.lsn
                )));
            }
            accounts.refunds_may_go_as_of((pricer.reader(), pricer.holder()), (priced, received.at), now).await?
        }
        None => accounts.refunds_wait_for_other_pricers(pricer.reader(), now).await?,
    };
    if as_of < now {
        tracing::info!(as_of, now, "refunds wait for another server sharing the money store to price its rides");
    }
    Ok(accounts.process_refunds_as_of(as_of).await?)
}
