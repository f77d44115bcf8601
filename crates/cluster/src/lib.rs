//! farestream's cluster shell (docs/scale-out.md): the scans stream on
//! NATS JetStream, one subject a partition and three replicas, where a
//! record counts as written only once JetStream has acknowledged it (a
//! quorum of the stream's replicas holds it); and the partition leases in
//! JetStream's key-value store, whose revisions fence a paused owner out.
//! The rules (which partition a card is in, how long a lease may be
//! acted on) are the core's `cluster` module; this crate only talks.
//!
//! Every call takes an `async_nats::Client` the caller connected, so one
//! connection serves the stream and the leases.

pub mod archive_progress;
pub mod bucket;
pub mod checkpoints;
pub mod claim;
pub mod leases;
pub mod ownership;
pub mod publish;
pub mod retention;
pub mod shared_identity;
pub mod stream_log;
#[cfg(any(test, feature = "test-nats"))]
pub mod test_nats;

pub use archive_progress::{ArchiveProgress, ArchivedThrough};
pub use checkpoints::{CHECKPOINTS_KEPT, ClaimCheckpoints, KeptCheckpoint};
pub use claim::{ClaimError, ClaimLogs, ClaimSettings, ClaimStop, WallClock, claim_partition};
pub use leases::{LeaseError, LeaseSettings, PartitionLeases, lease_clock_ms};
pub use ownership::{Owned, Ownership};
pub use publish::append_batch;
pub use retention::{Purged, purge_consumed};
pub use shared_identity::{SharedIdentityError, check_shared_identity};
pub use stream_log::{
    Appended, PartitionReader, StoredRecord, StreamLog, StreamLogError, StreamLogSettings, StreamRecord,
};
#[cfg(test)]
mod checkpoint_tests;
#[cfg(test)]
mod claim_tests;
#[cfg(test)]
mod tests;

/// Connects to the NATS servers at `urls` (`nats://host:port`) as
/// `user`, if given, failing when none answers within `timeout` or the
/// server refuses the user; once connected, the client reconnects to
/// whichever server lives.
pub async fn connect(
    urls: &[String],
    timeout: std::time::Duration,
    user: Option<&NatsUser>,
) -> Result<async_nats::Client, ConnectError> {
    let addrs = urls
        .iter()
        .map(|url| url.parse::<async_nats::ServerAddr>().map_err(|e| ConnectError(format!("{url:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    connect_options(timeout, user).connect(addrs).await.map_err(|e| ConnectError(format!("{}: {e}", urls.join(", "))))
}

/// How every client of the cluster connects: within `timeout`, as `user`.
pub(crate) fn connect_options(timeout: std::time::Duration, user: Option<&NatsUser>) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new().connection_timeout(timeout);
    match user {
        Some(user) => options.user_and_password(user.name.clone(), user.password.clone()),
        None => options,
    }
}

/// A NATS user and its password. `Debug` names the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for NatsUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsUser").field("name", &self.name).finish_non_exhaustive()
    }
}

/// No NATS server at the configured addresses answered.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {0}")]
pub struct ConnectError(String);
