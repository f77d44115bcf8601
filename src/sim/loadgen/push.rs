//! The timed part of `loadgen run`: one task per connection sends its
//! batches when due, with at most `in_flight` pushes open at once, and
//! records each ack's latency from when its batch was due.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::gateway::{GatewayClient, GatewayError};
use crate::wire::{BatchAck, ScanBatch};

/// The longest latency the histogram holds, in microseconds (an hour);
/// longer ones are counted at it.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// One batch and when it is due, from the start of the run (`None`: as
/// soon as the connection's in-flight limit allows).
pub struct Scheduled {
    pub due: Option<Duration>,
    pub batch: ScanBatch,
}

/// A gateway's connection and its batches, in sending order.
pub struct Connection {
    pub client: GatewayClient,
    pub batches: Vec<Scheduled>,
}

/// What the acks said, and how long they took.
#[derive(Debug, Clone)]
pub struct RunTally {
    pub batches_acked: u64,
    pub scans_acked: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub redelivered: u64,
    /// Pushes that failed, by [`GatewayError::kind`].
    pub errors: BTreeMap<&'static str, u64>,
    /// Ack latency from when each batch was due, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl RunTally {
    fn new() -> RunTally {
        RunTally {
            batches_acked: 0,
            scans_acked: 0,
            accepted: 0,
            rejected: 0,
            redelivered: 0,
            errors: BTreeMap::new(),
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("bounds within hdrhistogram's range"),
        }
    }

    fn record(&mut self, waited: Duration, answer: Result<BatchAck, GatewayError>) {
        match answer {
            Ok(ack) => {
                self.batches_acked += 1;
                let (accepted, rejected, redelivered) =
                    (u64::from(ack.accepted), u64::from(ack.rejected), u64::from(ack.redelivered));
                (self.accepted, self.rejected, self.redelivered) =
                    (self.accepted + accepted, self.rejected + rejected, self.redelivered + redelivered);
                self.scans_acked += accepted + rejected + redelivered;
                let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_US_MAX);
                self.latency_us.saturating_record(us);
            }
            Err(error) => *self.errors.entry(error.kind()).or_default() += 1,
        }
    }

    /// The `q` quantile of ack latency, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1_000.0
    }
}

/// Runs every connection to its end; returns the tally and the time from
/// the start to the last ack.
pub async fn run_connections(
    connections: Vec<Connection>,
    in_flight: usize,
    progress: indicatif::ProgressBar,
) -> (RunTally, Duration) {
    let tally = Arc::new(Mutex::new(RunTally::new()));
    let start = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|connection| {
            let (tally, progress) = (Arc::clone(&tally), progress.clone());
            tokio::spawn(run_connection(connection, in_flight, start, tally, progress))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed();
    let tally = crate::sync::lock(&tally).clone();
    (tally, elapsed)
}

async fn run_connection(
    Connection { client, batches }: Connection,
    in_flight: usize,
    start: Instant,
    tally: Arc<Mutex<RunTally>>,
    progress: indicatif::ProgressBar,
) {
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut pushes = JoinSet::new();
    for Scheduled { due, batch } in batches {
        let due_at = match due {
            // A batch due past what an Instant holds never comes.
            Some(due) => match start.checked_add(due) {
                Some(at) => {
                    tokio::time::sleep_until(at.into()).await;
                    Some(at)
                }
                None => break,
            },
            None => None,
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        // Open loop: from when it was due, however long the permit took.
        let from = due_at.unwrap_or_else(Instant::now);
        let client = client.clone();
        pushes.spawn(async move {
            let answer = client.push(&batch).await;
            drop(permit);
            (from.elapsed(), batch.scans.len() as u64, answer)
        });
        while let Some(Ok(done)) = pushes.try_join_next() {
            record(&tally, &progress, done);
        }
    }
    while let Some(Ok(done)) = pushes.join_next().await {
        record(&tally, &progress, done);
    }
    client.close().await;
}

fn record(
    tally: &Mutex<RunTally>,
    progress: &indicatif::ProgressBar,
    (waited, scans, answer): (Duration, u64, Result<BatchAck, GatewayError>),
) {
    let mut tally = crate::sync::lock(tally);
    tally.record(waited, answer);
    progress.inc(scans);
    if tally.batches_acked.is_multiple_of(16) {
        progress.set_message(format!("p99 {:.1} ms", tally.latency_ms(0.99)));
    }
}
