//! Cluster mode's pricing rounds (docs/scale-out.md, "Pricing"): every
//! partition pricer of a node hands what it gathered to one task, which
//! prices whatever has come in together in one store transaction
//! (`farestream_money::pricing_round`), each cursor moved under its own
//! holder. No pricer waits for another: a round takes what is waiting
//! when the last one ends, as a group commit does, so rounds grow only
//! when the store is what everyone waits for.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use farestream_core::clock::UnixMillis;
use farestream_core::fares::FareTable;
use farestream_money::money_metrics;
use farestream_money::pricer::PRICING_ROWS_TOGETHER_MAX;
use farestream_money::pricing_round::{RoundPart, price_round};
use farestream_money::store::StoreError;
use farestream_money::store_connections::StoreConnections;

/// What a pricer hears back: `None` when its part committed, or why it
/// was left out (its cursor taken or behind); an error when the round
/// failed as a whole (nothing of it written).
pub(crate) type RoundAnswer = Result<Option<StoreError>, String>;

/// A part waiting for a round.
pub(crate) struct RoundEntry {
    part: RoundPart,
    now: UnixMillis,
    answer: oneshot::Sender<RoundAnswer>,
}

/// The way into the node's rounds.
#[derive(Clone)]
pub(crate) struct PricingRounds {
    entries: mpsc::Sender<RoundEntry>,
}

/// The most parts waiting at once: a node's pricers each hand in one at
/// a time, and a node holds at most every partition.
const WAITING_PARTS_MAX: usize = farestream_core::cluster::PARTITIONS_MAX as usize;

impl PricingRounds {
    /// The rounds, and the task that prices them (run until `stop`, or
    /// until every `PricingRounds` is dropped).
    pub(crate) fn start(
        connections: Arc<StoreConnections>,
        fares: Arc<FareTable>,
        charges_written: Arc<tokio::sync::Notify>,
        stop: CancellationToken,
    ) -> (PricingRounds, impl std::future::Future<Output = ()>) {
        let (entries, waiting) = mpsc::channel(WAITING_PARTS_MAX);
        let task = price_rounds(waiting, (connections, fares, charges_written), stop);
        (PricingRounds { entries }, task)
    }

    /// Prices `part` in the next round, as of `now`.
    pub(crate) async fn price(&self, part: RoundPart, now: UnixMillis) -> RoundAnswer {
        let (answer, answered) = oneshot::channel();
        let entry = RoundEntry { part, now, answer };
        self.entries.send(entry).await.map_err(|_| "the node's pricing rounds have stopped".to_string())?;
        answered.await.map_err(|_| "the node's pricing rounds stopped before answering".to_string())?
    }
}

/// Takes the parts waiting (at least one; more only while the round
/// holds fewer than `PRICING_ROWS_TOGETHER_MAX` rows), prices them in
/// one transaction, answers each, and goes on.
async fn price_rounds(
    mut waiting: mpsc::Receiver<RoundEntry>,
    (connections, fares, charges_written): (Arc<StoreConnections>, Arc<FareTable>, Arc<tokio::sync::Notify>),
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            first = waiting.recv() => match first { Some(first) => first, None => return },
        };
        let mut rows = first.part.rows.len();
        let mut round = vec![first];
        while rows < PRICING_ROWS_TOGETHER_MAX {
            let Ok(next) = waiting.try_recv() else { break };
            rows += next.part.rows.len();
            round.push(next);
        }
        // One order of cursor locks for every node's rounds.
        round.sort_by(|a, b| a.part.reader.cmp(&b.part.reader));
        let now = round.iter().map(|entry| entry.now).max().unwrap_or(UnixMillis::MIN);
        let (parts, answers): (Vec<RoundPart>, Vec<_>) = round.into_iter().map(|e| (e.part, e.answer)).unzip();
        let (connections, fares) = (Arc::clone(&connections), Arc::clone(&fares));
        let priced =
            tokio::task::spawn_blocking(move || connections.with(|store| price_round(store, &fares, parts, now)));
        match priced.await {
            Ok(Ok(round)) => {
                money_metrics::rides_priced(round.priced.taps, round.priced.charges);
                money_metrics::pricing_round_parts(answers.len());
                if round.priced.charges > 0 {
                    charges_written.notify_one();
                }
                for (answer, left_out) in answers.into_iter().zip(round.left_out) {
                    let _ = answer.send(Ok(left_out));
                }
            }
            Ok(Err(failed)) => answer_all(answers, &failed.to_string()),
            Err(panicked) => answer_all(answers, &format!("a pricing round panicked: {panicked}")),
        }
    }
}

fn answer_all(answers: Vec<oneshot::Sender<RoundAnswer>>, why: &str) {
    for answer in answers {
        let _ = answer.send(Err(why.to_string()));
    }
}
