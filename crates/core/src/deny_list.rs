//! The deny list as it travels: the server's [`DenyListLog`] (the list, its
//! version, and the recent changes) turns into [`DenyListUpdate`] messages,
//! and a gateway's [`DenyListReplica`] applies them. Pure: the server crate
//! feeds the log from the account store and writes the messages to each
//! gateway's stream; the gateway crate reads them into a replica.
//!
//! A gateway that connects, or whose version is older than the changes the
//! log still keeps, gets the whole list in pages of at most
//! `page_cards_max` cards; otherwise one update carries the net changes
//! since its version. Versions only grow; every change bumps it by one.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use thiserror::Error;

use crate::ridecode::DenyList;
use crate::wire::{DenyListUpdate, DenyListUpdateKind};

/// One change: `card_id` went on (`denied`) or off the list at `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyChange {
    /// The list's version once this change is applied.
    pub version: u64,
    /// The card that went on or came off the list.
    pub card_id: u64,
    /// True when the card went on the list, false when it came off.
    pub denied: bool,
}

/// The server's deny list.
#[derive(Debug, Clone)]
pub struct DenyListLog {
    version: u64,
    cards: BTreeSet<u64>,
    changes: VecDeque<DenyChange>,
    changes_kept_max: usize,
}

impl DenyListLog {
    /// The list as of `version`; keeps the last `changes_kept_max` changes.
    pub fn new(version: u64, cards: impl IntoIterator<Item = u64>, changes_kept_max: usize) -> DenyListLog {
        DenyListLog { version, cards: cards.into_iter().collect(), changes: VecDeque::new(), changes_kept_max }
    }

    /// The version of the last change applied, or the starting version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many cards are on the list.
    pub fn len(&self) -> usize {
        self.cards.len()
    }

    /// True when no card is on the list.
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    /// True when `card_id` is on the list.
    pub fn contains(&self, card_id: u64) -> bool {
        self.cards.contains(&card_id)
    }

    /// Applies a change from the store; one at or below the current
    /// version is already applied and is ignored.
    pub fn apply(&mut self, change: DenyChange) {
        if change.version <= self.version {
            return;
        }
        if change.denied {
            self.cards.insert(change.card_id);
        } else {
            self.cards.remove(&change.card_id);
        }
        self.version = change.version;
        self.changes.push_back(change);
        while self.changes.len() > self.changes_kept_max {
            self.changes.pop_front();
        }
    }

    /// What a gateway holding `known` (`None`: nothing yet) needs to be at
    /// this version: nothing, one update of changes, or the full list.
    pub fn updates_since(&self, known: Option<u64>, page_cards_max: usize) -> Vec<DenyListUpdate> {
        match known {
            Some(known) if known == self.version => Vec::new(),
            Some(known) if self.covers(known) => vec![self.changes_since(known)],
            _ => self.full(page_cards_max.max(1)),
        }
    }

    /// Whether the kept changes reach back to `known`.
    fn covers(&self, known: u64) -> bool {
        known < self.version && self.changes.front().is_some_and(|first| first.version <= known.saturating_add(1))
    }

    fn changes_since(&self, known: u64) -> DenyListUpdate {
        let mut last: BTreeMap<u64, bool> = BTreeMap::new();
        for change in self.changes.iter().filter(|c| c.version > known) {
            last.insert(change.card_id, change.denied);
        }
        DenyListUpdate {
            kind: DenyListUpdateKind::Changes as i32,
            version: self.version,
            from_version: known,
            denied: last.iter().filter(|(_, d)| **d).map(|(c, _)| *c).collect(),
            allowed: last.iter().filter(|(_, d)| !**d).map(|(c, _)| *c).collect(),
            last_page: false,
        }
    }

    fn full(&self, page_cards_max: usize) -> Vec<DenyListUpdate> {
        let cards: Vec<u64> = self.cards.iter().copied().collect();
        let pages: Vec<&[u64]> = if cards.is_empty() { vec![&[]] } else { cards.chunks(page_cards_max).collect() };
        let count = pages.len();
        pages
            .into_iter()
            .enumerate()
            .map(|(i, page)| DenyListUpdate {
                kind: DenyListUpdateKind::Full as i32,
                version: self.version,
                from_version: 0,
                denied: page.to_vec(),
                allowed: Vec::new(),
                last_page: i + 1 == count,
            })
            .collect()
    }
}

/// Why a replica refused an update. The gateway then closes the connection, and the next one brings the
/// whole list again.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplicaError {
    /// A changes update that does not follow the version held: the replica missed some changes.
    #[error("deny list changes from version {from} reached a gateway at version {held}: reconnect for the full list")]
    Gap {
        /// The version the changes follow.
        from: u64,
        /// The version the replica holds.
        held: u64,
    },
    /// An update of a kind this build does not know (the raw `kind` value).
    #[error("deny list update of unknown kind {0}")]
    UnknownKind(i32),
    /// The list would grow past the replica's `cards_max`: the cards held plus those the update adds.
    #[error("deny list page of {0} cards is over the gateway's limit")]
    TooLarge(usize),
}

/// A gateway's copy of the deny list, for its validators' offline checks.
#[derive(Debug, Clone, Default)]
pub struct DenyListReplica {
    version: u64,
    cards: HashSet<u64>,
    /// A full list arriving in pages, with its version.
    incoming: Option<(u64, HashSet<u64>)>,
    cards_max: usize,
}

impl DenyListReplica {
    /// An empty copy that holds at most `cards_max` cards (a bound on what
    /// a server can make a gateway allocate).
    pub fn new(cards_max: usize) -> DenyListReplica {
        DenyListReplica { cards_max, ..DenyListReplica::default() }
    }

    /// The version of the list in force (0 for a new replica).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The cards on the list in force; a full list still arriving in pages is not among them.
    pub fn cards(&self) -> &HashSet<u64> {
        &self.cards
    }

    /// Applies one update: a page of a full list, taken only once its last page arrives, or the changes since
    /// the version held. An error leaves the list in force as it was.
    pub fn apply(&mut self, update: &DenyListUpdate) -> Result<(), ReplicaError> {
        match DenyListUpdateKind::try_from(update.kind) {
            Ok(DenyListUpdateKind::Full) => self.apply_page(update),
            Ok(DenyListUpdateKind::Changes) => self.apply_changes(update),
            _ => Err(ReplicaError::UnknownKind(update.kind)),
        }
    }

    fn apply_page(&mut self, update: &DenyListUpdate) -> Result<(), ReplicaError> {
        let (version, mut cards) = match self.incoming.take() {
            Some((version, cards)) if version == update.version => (version, cards),
            _ => (update.version, HashSet::new()),
        };
        if cards.len().saturating_add(update.denied.len()) > self.cards_max {
            return Err(ReplicaError::TooLarge(cards.len() + update.denied.len()));
        }
        cards.extend(&update.denied);
        if update.last_page {
            self.version = version;
            self.cards = cards;
        } else {
            self.incoming = Some((version, cards));
        }
        Ok(())
    }

    fn apply_changes(&mut self, update: &DenyListUpdate) -> Result<(), ReplicaError> {
        if update.from_version != self.version {
            return Err(ReplicaError::Gap { from: update.from_version, held: self.version });
        }
        if self.cards.len().saturating_add(update.denied.len()) > self.cards_max {
            return Err(ReplicaError::TooLarge(self.cards.len() + update.denied.len()));
        }
        self.cards.extend(&update.denied);
        for card in &update.allowed {
            self.cards.remove(card);
        }
        self.version = update.version;
        Ok(())
    }
}

impl DenyList for DenyListReplica {
    fn is_denied(&self, card_id: u64) -> bool {
        self.cards.contains(&card_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(version: u64, card_id: u64, denied: bool) -> DenyChange {
        DenyChange { version, card_id, denied }
    }

    fn replay(updates: &[DenyListUpdate], replica: &mut DenyListReplica) -> Result<(), ReplicaError> {
        updates.iter().try_for_each(|u| replica.apply(u))
    }

    #[test]
    fn a_new_gateway_gets_every_card_in_pages_then_only_changes() {
        let mut log = DenyListLog::new(10, 1..=5, 100);
        let mut replica = DenyListReplica::new(1_000);
        let full = log.updates_since(None, 2);
        assert_eq!(
            full.iter().map(|u| (u.denied.len(), u.last_page)).collect::<Vec<_>>(),
            [(2, false), (2, false), (1, true)]
        );
        replay(&full, &mut replica).expect("full");
        assert_eq!((replica.version(), replica.cards().len()), (10, 5));
        assert!(log.updates_since(Some(10), 2).is_empty(), "up to date");
        log.apply(change(11, 9, true));
        log.apply(change(12, 1, false));
        log.apply(change(13, 9, false));
        log.apply(change(14, 7, true));
        log.apply(change(12, 5, false)); // already applied: ignored
        let changes = log.updates_since(Some(10), 2);
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].denied.clone(), changes[0].allowed.clone()), (vec![7], vec![1, 9]), "net effect");
        replay(&changes, &mut replica).expect("changes");
        let mut held: Vec<u64> = replica.cards().iter().copied().collect();
        held.sort_unstable();
        assert_eq!((replica.version(), held), (14, vec![2, 3, 4, 5, 7]));
    }

    #[test]
    fn a_gateway_older_than_the_kept_changes_gets_the_full_list_and_a_gap_is_refused() {
        let mut log = DenyListLog::new(0, [], 2);
        for version in 1..=5 {
            log.apply(change(version, version, true));
        }
        let update = log.updates_since(Some(1), 100);
        assert_eq!(DenyListUpdateKind::try_from(update[0].kind), Ok(DenyListUpdateKind::Full), "only 4 and 5 are kept");
        assert_eq!(
            DenyListUpdateKind::try_from(log.updates_since(Some(3), 100)[0].kind),
            Ok(DenyListUpdateKind::Changes)
        );
        let mut replica = DenyListReplica::new(1_000);
        let changes = log.updates_since(Some(3), 100);
        assert_eq!(replica.apply(&changes[0]), Err(ReplicaError::Gap { from: 3, held: 0 }));
        let empty = DenyListLog::new(0, [], 2).updates_since(None, 100);
        assert_eq!(empty.len(), 1, "an empty list is one empty last page");
        assert!(empty[0].last_page && empty[0].denied.is_empty());
    }

    #[test]
    fn a_replica_refuses_more_cards_than_its_limit_and_unknown_kinds() {
        let log = DenyListLog::new(3, 0..10, 10);
        let mut small = DenyListReplica::new(9);
        assert_eq!(replay(&log.updates_since(None, 4), &mut small), Err(ReplicaError::TooLarge(10)));
        assert_eq!(small.version(), 0, "an incomplete list is never taken");
        let odd = DenyListUpdate { kind: 7, ..DenyListUpdate::default() };
        assert_eq!(DenyListReplica::new(1).apply(&odd), Err(ReplicaError::UnknownKind(7)));
    }
}
