//! What every node of a cluster must share (docs/scale-out.md): the TLS
//! identity gateways pin and the fleet CA that lets them in. Each node
//! puts a fingerprint of each into a key-value bucket: the first node to
//! start sets it, every node after compares, and one whose differs
//! refuses to start instead of turning gateways away one by one.

use std::time::Duration;

use async_nats::jetstream;
use thiserror::Error;

use crate::bucket::open_bucket;

#[derive(Debug, Error)]
pub enum SharedIdentityError {
    #[error(
        "this node's {what} is not the cluster's (fingerprint {ours}, the cluster's {theirs}): copy the first node's to every node (docs/scale-out.md, \"What every node must share\")"
    )]
    Differs { what: String, ours: String, theirs: String },
    #[error("the bucket {bucket}: {why}")]
    Store { bucket: String, why: String },
    #[error(transparent)]
    Bucket(#[from] crate::bucket::BucketError),
}

/// Sets the SHA-256 of each `(what, bytes)` in `bucket` where none is,
/// and checks it where one is. `what` is a key-value key (letters,
/// digits, `-`, `_`).
pub async fn check_shared_identity(
    client: async_nats::Client,
    bucket: &str,
    replicas: usize,
    facts: &[(&str, &[u8])],
) -> Result<(), SharedIdentityError> {
    let store_error =
        |e: &dyn std::fmt::Display| SharedIdentityError::Store { bucket: bucket.into(), why: e.to_string() };
    let store = open_bucket(&jetstream::new(client), bucket, Duration::ZERO, replicas).await?;
    for (what, bytes) in facts {
        let ours = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
        // A create loses to a node that set the key first: read it then.
        if store.create(*what, ours.clone().into()).await.is_ok() {
            continue;
        }
        let theirs = store.get(*what).await.map_err(|e| store_error(&e))?;
        let theirs = theirs.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
        if theirs != ours {
            return Err(SharedIdentityError::Differs { what: what.to_string(), ours, theirs });
        }
    }
    Ok(())
}
