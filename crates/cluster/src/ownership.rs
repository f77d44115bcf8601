//! Which partitions this node owns, kept up to date: a loop that, every
//! renewal interval, says this node is alive (a key of its own in a
//! members bucket that ages out as leases do), renews the leases it holds,
//! drops one it could not renew in its term, gives back what is over its
//! fair share when nodes join, and takes free partitions up to its share
//! (the core's `fair_share`, tried in `preferred_order`). A dead node's
//! leases and its member key age out together, so the living take its
//! partitions about one lease time to live after its last renewal.
//!
//! What the node owns is published on a watch channel: the workers of a
//! partition act only while it is there and its term holds
//! (`term.holds(lease_clock_ms())`, checked before each write), and carry
//! its revision as their fencing token. A partition leaves the channel
//! before its lease is given back, so the next owner can only take it
//! after this node's workers were told to stop; and a round never runs
//! past the first held term to end, so a node cut off from the store
//! takes an ended term off the watch when it ends.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use farestream_core::cluster::{LeaseTerm, Partition, fair_share, preferred_order};
use futures_util::TryStreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bucket::open_bucket;
use crate::leases::{LeaseError, LeaseSettings, PartitionLeases};

/// The partitions a node holds now, with their terms.
pub type Owned = BTreeMap<Partition, LeaseTerm>;

/// This node's share of the partitions.
pub struct Ownership {
    leases: PartitionLeases,
    members: kv::Store,
    members_bucket: String,
    node: String,
    partitions: u16,
    held: Owned,
    owned: watch::Sender<Owned>,
}

impl Ownership {
    /// Opens the lease and members buckets for node `node` (a key-value
    /// key: letters, digits, `-` and `_`) over `partitions` partitions;
    /// holds nothing until the first [`Ownership::tick`].
    pub async fn open(
        client: async_nats::Client,
        leases: LeaseSettings,
        members_bucket: &str,
        node: &str,
        partitions: u16,
    ) -> Result<(Ownership, watch::Receiver<Owned>), LeaseError> {
        if !farestream_core::cluster::is_name_token(node) {
            return Err(LeaseError::NodeName(node.to_string()));
        }
        let ttl = Duration::from_millis(leases.timing.ttl_ms);
        let replicas = leases.replicas;
        let leases = PartitionLeases::open(client.clone(), leases, node).await?;
        let members = open_bucket(&jetstream::new(client), members_bucket, ttl, replicas).await?;
        let (owned, watching) = watch::channel(Owned::new());
        let ownership = Ownership {
            leases,
            members,
            members_bucket: members_bucket.to_string(),
            node: node.to_string(),
            partitions,
            held: Owned::new(),
            owned,
        };
        Ok((ownership, watching))
    }

    /// One round: say this node lives, renew, give back, take. A store
    /// out of reach fails the round, which never runs past the first of
    /// the held terms to end: by then that term is dropped and the watch
    /// says so, whatever the store is doing.
    pub async fn tick(&mut self) -> Result<(), LeaseError> {
        let now = self.leases.now_ms();
        let timing = self.leases.timing();
        let ends = self.held.values().map(|t| t.acts_until_ms).min().unwrap_or(now.saturating_add(timing.ttl_ms));
        let left = Duration::from_millis(ends.saturating_sub(now));
        let result = match tokio::time::timeout(left, self.round()).await {
            Ok(result) => result,
            Err(_elapsed) => {
                Err(self.store_error(&"the round outlasted the first held term: the store is out of reach"))
            }
        };
        // Terms that ended while the store was out of reach go too.
        let now = self.leases.now_ms();
        self.held.retain(|_, term| term.holds(now));
        self.publish();
        result
    }

    async fn round(&mut self) -> Result<(), LeaseError> {
        self.members
            .put(member_key(&self.node), Bytes::from_static(b"live"))
            .await
            .map_err(|e| self.store_error(&e))?;
        self.renew_all().await;
        let share = usize::from(fair_share(self.partitions, self.live_members().await?));
        self.give_back_over(share).await;
        self.take_up_to(share).await;
        Ok(())
    }

    /// Every held lease, every round: a round is a renewal interval, so a
    /// term survives one lost renewal, as `LeaseTiming::checked` promises.
    async fn renew_all(&mut self) {
        let held: Vec<(Partition, LeaseTerm)> = self.held.iter().map(|(p, t)| (*p, *t)).collect();
        for (partition, term) in held {
            match self.leases.renew(partition, &term).await {
                Ok(renewed) => {
                    self.held.insert(partition, renewed);
                }
                Err(LeaseError::Lost { .. }) => {
                    tracing::warn!(%partition, revision = term.revision, "partition lease lost");
                    self.held.remove(&partition);
                    self.publish();
                }
                // Out of reach: the term runs on, and ends `tick`'s retain.
                Err(e) => tracing::warn!(%partition, error = %e, "partition lease not renewed"),
            }
        }
    }

    /// Gives back what is over `share`: all of it off the watch at once,
    /// then each lease released, each within a renewal interval (one not
    /// released ages out).
    async fn give_back_over(&mut self, share: usize) {
        let mut over = Vec::new();
        while self.held.len() > share {
            let Some(last) = self.held.pop_last() else { break };
            over.push(last);
        }
        if over.is_empty() {
            return;
        }
        // Workers are told first; only then may another node take it.
        self.publish();
        let wait = Duration::from_millis(self.leases.timing().renew_every_ms);
        for (partition, term) in over {
            match tokio::time::timeout(wait, self.leases.release(partition, &term)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(%partition, error = %e, "partition lease not given back: it ages out"),
                Err(_) => tracing::warn!(%partition, "partition lease not given back in time: it ages out"),
            }
        }
    }

    async fn take_up_to(&mut self, share: usize) {
        for partition in preferred_order(&self.node, self.partitions) {
            if self.held.len() >= share {
                break;
            }
            if self.held.contains_key(&partition) {
                continue;
            }
            match self.leases.acquire(partition).await {
                Ok(term) => {
                    // The kill loop times a failover by this line.
                    tracing::info!(%partition, revision = term.revision, node = %self.node, "partition taken");
                    self.held.insert(partition, term);
                }
                Err(LeaseError::Held { .. }) => {}
                Err(e) => tracing::warn!(%partition, error = %e, "partition lease not taken"),
            }
        }
    }

    async fn live_members(&self) -> Result<usize, LeaseError> {
        let keys = self.members.keys().await.map_err(|e| self.store_error(&e))?;
        let live: Vec<String> = keys.try_collect().await.map_err(|e| self.store_error(&e))?;
        Ok(live.len().max(1))
    }

    /// A round every renewal interval until `stop`; then every lease off
    /// the watch at once and given back, and this node out of the
    /// members, so the living take over at their next round.
    pub async fn run(mut self, stop: CancellationToken) {
        let every = Duration::from_millis(self.leases.timing().renew_every_ms);
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = interval.tick() => {
                    if let Err(e) = self.tick().await {
                        tracing::warn!(node = %self.node, error = %e, "partition ownership round failed");
                    }
                }
            }
        }
        self.give_back_over(0).await;
        match tokio::time::timeout(every, self.members.delete(member_key(&self.node))).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!(node = %self.node, "did not leave the members: it ages out"),
        }
    }

    fn publish(&self) {
        self.owned.send_if_modified(|owned| {
            let changed = *owned != self.held;
            if changed {
                owned.clone_from(&self.held);
            }
            changed
        });
    }

    fn store_error(&self, e: &dyn std::fmt::Display) -> LeaseError {
        LeaseError::Store { bucket: self.members_bucket.clone(), why: e.to_string() }
    }
}

fn member_key(node: &str) -> String {
    format!("m.{node}")
}
