//! What every node of a cluster must share (docs/scale-out.md): the TLS
//! identity gateways pin and the fleet CA that lets them in. Each node
//! puts a fingerprint of each into a key-value bucket: the first node to
//! start sets it, every node after compares, and one whose differs
//! refuses to start instead of turning gateways away one by one.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use thiserror::Error;

use crate::bucket::open_bucket;

/// How many times a fact's write is tried while JetStream cannot answer
/// for the bucket, and the pause between.
const CREATE_TRIES: u32 = 20;
const CREATE_AGAIN_AFTER: Duration = Duration::from_millis(500);

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
        // One that failed otherwise (a stream between leaders, a lost
        // answer) says nothing about the cluster's: it is tried again, and
        // the facts compared only once read.
        let mut tries = CREATE_TRIES;
        let theirs = loop {
            let failed = match store.create(*what, ours.clone().into()).await {
                Ok(_) => break None,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match store.get(*what).await {
                    Ok(Some(theirs)) => break Some(String::from_utf8_lossy(&theirs).into_owned()),
                    Ok(None) => "the key is gone".to_string(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            tries -= 1;
            if tries == 0 {
                return Err(store_error(&failed));
            }
            tokio::time::sleep(CREATE_AGAIN_AFTER).await;
        };
        match theirs {
            Some(theirs) if theirs != ours => {
                return Err(SharedIdentityError::Differs { what: what.to_string(), ours, theirs });
            }
            _ => {}
        }
    }
    Ok(())
}
