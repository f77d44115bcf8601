//! A key-value bucket every node opens alike: made on the cluster's first
//! start, and refused when it was made with another time to live,
//! history or replicas (a shorter time to live would let two nodes hold
//! one lease).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BucketError {
    #[error(
        "the bucket {bucket} keeps (time to live, history, replicas) {found}, the settings say {wanted}: every node must use the bucket's"
    )]
    Mismatch { bucket: String, found: String, wanted: String },
    #[error("the bucket {bucket}: {why}")]
    Store { bucket: String, why: String },
}

/// Opens `bucket`, one value a key, entries kept `max_age` (zero: for
/// ever) on `replicas` servers; makes it when it does not exist.
pub(crate) async fn open_bucket(
    context: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, BucketError> {
    let store_error = |e: &dyn std::fmt::Display| BucketError::Store { bucket: bucket.to_string(), why: e.to_string() };
    let store = match context.get_key_value(bucket).await {
        Ok(store) => store,
        Err(_missing) => context
            .create_key_value(kv::Config {
                bucket: bucket.to_string(),
                history: 1,
                max_age,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| store_error(&e))?,
    };
    let status = store.status().await.map_err(|e| store_error(&e))?;
    let found = (status.max_age(), status.history(), status.info.config.num_replicas);
    if found != (max_age, 1, replicas) {
        return Err(BucketError::Mismatch {
            bucket: bucket.to_string(),
            found: format!("{found:?}"),
            wanted: format!("{:?}", (max_age, 1, replicas)),
        });
    }
    Ok(store)
}
