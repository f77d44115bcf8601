//! The deny list, kept in step with the account store: the store records
//! every change (a decline puts a card on, paying takes it off, in the
//! transaction that moves the arrears); [`DenyListHub::sync`] reads what is
//! new, applies it to the pipeline's check and to the log that the
//! per-connection push tasks turn into updates, and wakes those tasks.
//! Whoever commits a change calls `sync` after the commit.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::accounts::{deny_changes_since, deny_list};
use crate::money_store::MoneyStore;
use crate::store::StoreError;
use farestream_core::deny_list::DenyListLog;
use farestream_core::ingest::Pipeline;
use farestream_core::sync::lock;
use farestream_core::wire::DenyListUpdate;

pub struct DenyListHub {
    store: Mutex<MoneyStore>,
    log: Mutex<DenyListLog>,
    pipeline: Arc<Pipeline>,
    versions: watch::Sender<u64>,
}

impl DenyListHub {
    /// The list as the store has it, loaded into `pipeline`'s check.
    pub fn load(
        mut store: MoneyStore,
        pipeline: Arc<Pipeline>,
        changes_kept_max: usize,
    ) -> Result<DenyListHub, StoreError> {
        let (version, cards) = deny_list(&mut store.db())?;
        for card_id in &cards {
            pipeline.set_denied(*card_id, true);
        }
        let log = DenyListLog::new(version, cards, changes_kept_max);
        Ok(DenyListHub {
            store: Mutex::new(store),
            log: Mutex::new(log),
            pipeline,
            versions: watch::Sender::new(version),
        })
    }

    pub fn version(&self) -> u64 {
        lock(&self.log).version()
    }

    pub fn len(&self) -> usize {
        lock(&self.log).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the card is on the list as last synced.
    pub fn contains(&self, card_id: u64) -> bool {
        lock(&self.log).contains(card_id)
    }

    /// Applies the store's changes since the last sync (blocking: a query).
    pub fn sync(&self) -> Result<u64, StoreError> {
        let mut log = lock(&self.log);
        let changes = deny_changes_since(&mut lock(&self.store).db(), log.version())?;
        for change in changes {
            self.pipeline.set_denied(change.card_id, change.denied);
            log.apply(change);
        }
        let version = log.version();
        self.versions.send_if_modified(|v| std::mem::replace(v, version) != version);
        Ok(version)
    }

    /// [`sync`](Self::sync) off the async threads; a failure is logged (the
    /// next sync catches up: changes are read by version).
    pub async fn sync_soon(self: &Arc<Self>) {
        let hub = Arc::clone(self);
        match tokio::task::spawn_blocking(move || hub.sync()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot read deny list changes; the next sync catches up"),
            Err(error) => tracing::warn!(%error, "deny list sync stopped"),
        }
    }

    /// Wakes when the version moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }

    pub fn updates_since(&self, known: Option<u64>, page_cards_max: usize) -> Vec<DenyListUpdate> {
        lock(&self.log).updates_since(known, page_cards_max)
    }
}
