//! Partition leases in a JetStream key-value bucket: key `p.N` holds the
//! owner's node name. The bucket's `max_age` is the lease's time to live,
//! so a lease nobody renews ages out and the partition is free; taking it
//! is a create (refused while it exists), renewing is an update expecting
//! the revision the owner last wrote (refused once anyone else wrote it).
//! The revision is the owner's fencing token: it only grows, so every
//! write the owner makes for its partition carries it, and a store that
//! has seen a newer one refuses the older.
//!
//! When the owner may act is the core's rule ([`LeaseTiming`]): counted
//! from before it sent its last write, on its own monotonic clock, and
//! ending a margin before the bucket can let the lease go.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};

use crate::bucket::open_bucket;
use bytes::Bytes;
use farestream_core::cluster::{LeaseTerm, LeaseTiming, Partition};
use thiserror::Error;

/// The bucket and the timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The key-value bucket's name.
    pub bucket: String,
    /// On how many servers the bucket is stored.
    pub replicas: usize,
    pub timing: LeaseTiming,
}

#[derive(Debug, Error)]
pub enum LeaseError {
    #[error("the node name {0:?} is not letters, digits, '-' and '_'")]
    NodeName(String),
    #[error("lease timing: {0}")]
    Timing(#[from] farestream_core::cluster::LeaseTimingError),
    #[error("partition {partition} is leased to {owner} (revision {revision})")]
    Held { partition: Partition, owner: String, revision: u64 },
    #[error("the lease on partition {partition} at revision {revision} is lost: it aged out or another node took it")]
    Lost { partition: Partition, revision: u64 },
    #[error(
        "the bucket {bucket} keeps (time to live, history, replicas) {found}, the settings say {wanted}: every node must use the bucket's"
    )]
    Mismatch { bucket: String, found: String, wanted: String },
    #[error("the lease bucket {bucket}: {why}")]
    Store { bucket: String, why: String },
}

/// This node's view of the leases.
pub struct PartitionLeases {
    store: kv::Store,
    bucket: String,
    timing: LeaseTiming,
    node: String,
}

impl PartitionLeases {
    /// Opens the bucket (making it when missing) for node `node`.
    pub async fn open(
        client: async_nats::Client,
        settings: LeaseSettings,
        node: &str,
    ) -> Result<PartitionLeases, LeaseError> {
        let timing = settings.timing.checked()?;
        let ttl = Duration::from_millis(timing.ttl_ms);
        let store = open_bucket(&jetstream::new(client), &settings.bucket, ttl, settings.replicas).await?;
        Ok(PartitionLeases { store, bucket: settings.bucket, timing, node: node.to_string() })
    }

    /// Milliseconds on the clock terms count in ([`lease_clock_ms`]).
    pub fn now_ms(&self) -> u64 {
        lease_clock_ms()
    }

    /// The timing its terms follow.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// Takes partition `p` if nobody holds it.
    pub async fn acquire(&self, partition: Partition) -> Result<LeaseTerm, LeaseError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let sent_at = self.now_ms();
            match self.store.create(key(partition), Bytes::from(self.node.clone())).await {
                Ok(revision) => return Ok(self.timing.term(revision, sent_at)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match self.holder(partition).await? {
                    Some((owner, revision)) => return Err(LeaseError::Held { partition, owner, revision }),
                    // Aged out between the create and the read (or the
                    // read was answered by a server that had expired it
                    // first): the create may go through now.
                    None if tries < ACQUIRE_TRIES => continue,
                    None => return Err(self.store_error(&e)),
                },
                Err(e) => return Err(self.store_error(&e)),
            }
        }
    }

    /// Renews the lease held at `term`; [`LeaseError::Lost`] when anyone
    /// wrote it since or it aged out.
    pub async fn renew(&self, partition: Partition, term: &LeaseTerm) -> Result<LeaseTerm, LeaseError> {
        let sent_at = self.now_ms();
        match self.store.update(key(partition), Bytes::from(self.node.clone()), term.revision).await {
            Ok(revision) => Ok(self.timing.term(revision, sent_at)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(LeaseError::Lost { partition, revision: term.revision })
            }
            Err(e) => Err(self.store_error(&e)),
        }
    }

    /// Gives the lease up, so another node need not wait for it to age
    /// out. Deletes it only at this term's revision: an error when
    /// another node wrote it since (or the store is out of reach), and
    /// then the lease is not this node's to give.
    pub async fn release(&self, partition: Partition, term: &LeaseTerm) -> Result<(), LeaseError> {
        self.store.delete_expect_revision(key(partition), Some(term.revision)).await.map_err(|e| self.store_error(&e))
    }

    /// Who holds partition `p` and at which revision.
    pub async fn holder(&self, partition: Partition) -> Result<Option<(String, u64)>, LeaseError> {
        let entry = self.store.entry(key(partition)).await.map_err(|e| self.store_error(&e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.revision)))
    }

    fn store_error(&self, e: &dyn std::fmt::Display) -> LeaseError {
        LeaseError::Store { bucket: self.bucket.clone(), why: e.to_string() }
    }
}

/// The bucket's own errors as a lease's: the same words either way.
impl From<crate::bucket::BucketError> for LeaseError {
    fn from(error: crate::bucket::BucketError) -> LeaseError {
        match error {
            crate::bucket::BucketError::Mismatch { bucket, found, wanted } => {
                LeaseError::Mismatch { bucket, found, wanted }
            }
            crate::bucket::BucketError::Store { bucket, why } => LeaseError::Store { bucket, why },
        }
    }
}

/// Creates tried while the lease is seen both there and gone.
const ACQUIRE_TRIES: u32 = 3;

/// Milliseconds on this process's monotonic clock since its first
/// reading: the one clock every lease term counts in, so a partition's
/// workers check a term themselves (`term.holds(lease_clock_ms())`)
/// before each write they make for it.
pub fn lease_clock_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn key(partition: Partition) -> String {
    format!("p.{}", partition.number())
}
