//! Turns at a shared resource, handed out fairly between parties (the
//! connections, and once gateways have identities, the gateways): while
//! several parties wait, each gets one turn in rotation, however many
//! requests it has queued. One peer flooding the verifier with batches
//! therefore delays an honest peer's batch by at most one of its turns per
//! party ahead in the rotation, not by its whole backlog.
//!
//! A [`Turn`] is released when dropped. A waiter that gives up (its future
//! dropped) is skipped, and a turn handed to it is passed on, so no turn
//! is ever lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use farestream_core::sync::lock;

/// Who asks for turns.
pub type Party = u64;

#[derive(Clone)]
pub struct FairTurns {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
}

struct State {
    free: usize,
    waiting: HashMap<Party, VecDeque<oneshot::Sender<Turn>>>,
    /// Parties with waiters, in the order they get their next turn.
    rotation: VecDeque<Party>,
}

/// One turn; given back when dropped.
pub struct Turn {
    owner: Option<Arc<Inner>>,
}

impl FairTurns {
    /// `turns` turns, all free.
    pub fn new(turns: usize) -> FairTurns {
        let state = State { free: turns, waiting: HashMap::new(), rotation: VecDeque::new() };
        FairTurns { inner: Arc::new(Inner { state: Mutex::new(state) }) }
    }

    /// Waits for a turn for `party`: at once when one is free (then nobody
    /// waits: a released turn goes to a waiter before it is freed), else in
    /// its place in the rotation.
    pub async fn take(&self, party: Party) -> Turn {
        let receiver = {
            let mut state = lock(&self.inner.state);
            if state.free > 0 {
                state.free -= 1;
                return Turn { owner: Some(Arc::clone(&self.inner)) };
            }
            let (sender, receiver) = oneshot::channel();
            let queue = state.waiting.entry(party).or_default();
            queue.push_back(sender);
            if queue.len() == 1 {
                state.rotation.push_back(party);
            }
            receiver
        };
        // The sender is dropped only by handing over a turn: this cannot
        // fail while `self` is alive, and a turn is never lost.
        match receiver.await {
            Ok(turn) => turn,
            Err(_) => Turn { owner: None },
        }
    }

    /// Turns free now (for tests and metrics).
    pub fn free(&self) -> usize {
        lock(&self.inner.state).free
    }
}

impl Inner {
    /// Hands a released turn to the next party in rotation, or frees it.
    fn release(self: &Arc<Inner>) {
        loop {
            let next = {
                let mut state = lock(&self.state);
                match state.next_waiter() {
                    Some(waiter) => waiter,
                    None => {
                        state.free += 1;
                        return;
                    }
                }
            };
            match next.send(Turn { owner: Some(Arc::clone(self)) }) {
                Ok(()) => return,
                // The waiter gave up: take the turn back and try the next.
                Err(mut unclaimed) => unclaimed.owner = None,
            }
        }
    }
}

impl State {
    fn next_waiter(&mut self) -> Option<oneshot::Sender<Turn>> {
        while let Some(party) = self.rotation.pop_front() {
            let Some(queue) = self.waiting.get_mut(&party) else { continue };
            let waiter = queue.pop_front();
            if queue.is_empty() {
                self.waiting.remove(&party);
            } else {
                self.rotation.push_back(party);
            }
            if let Some(waiter) = waiter.filter(|w| !w.is_closed()) {
                return Some(waiter);
            }
        }
        None
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Records the order in which parties got turns.
    async fn grant_order(turns: &FairTurns, requests: &[Party]) -> Vec<Party> {
        let order = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = requests
            .iter()
            .map(|&party| {
                let (turns, order) = (turns.clone(), Arc::clone(&order));
                tokio::spawn(async move {
                    let _turn = turns.take(party).await;
                    lock(&order).push(party);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        lock(&order).clone()
    }

    #[tokio::test]
    async fn a_flooding_party_gets_one_turn_per_round_while_others_wait() {
        let turns = FairTurns::new(1);
        let held = turns.take(0).await;
        // Party 1 queues eight requests first, then party 2 one.
        let mut requests = vec![1; 8];
        requests.push(2);
        let order = tokio::spawn({
            let turns = turns.clone();
            async move { grant_order(&turns, &requests).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let order = order.await.expect("order");
        let position = order.iter().position(|&p| p == 2).expect("party 2 served");
        assert!(position <= 1, "party 2 waited behind party 1's backlog: {order:?}");
        assert_eq!(turns.free(), 1, "every turn came back");
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_lose_a_turn() {
        let turns = FairTurns::new(1);
        let held = turns.take(0).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), turns.take(1)).await;
        assert!(gave_up.is_err());
        drop(held);
        assert_eq!(turns.free(), 1);
        let _again = tokio::time::timeout(Duration::from_millis(100), turns.take(2)).await.expect("a free turn");
        assert_eq!(turns.free(), 0);
    }
}
