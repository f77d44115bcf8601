//! When each issuer key signs and until when it is trusted: the one rule
//! the server, the account API and every validator follow, computed from
//! the key list and `now` alone.
//!
//! A key's life:
//!
//! 1. **published** from the moment the key store holds it: trusted, pushed
//!    to gateways, but no credential is signed with it yet, so validators
//!    learn it before any rider shows a code under it;
//! 2. **signing** from `signs_from`: it signs every new credential until the
//!    next key's `signs_from`;
//! 3. **superseded** once a newer key signs: still trusted, because riders
//!    hold credentials it signed and validators upload late, until
//!    `trust_tail_secs` after it stopped signing (the longest credential,
//!    the accepted lateness and the clock skew);
//! 4. **expired** after that, or **retired** at once by an operator (a
//!    leaked key): trusted by no one.

use super::keys::IssuerPublicKeys;

/// The most keys published at once: what a gateway holds. A rotation that
/// would publish more is refused where it is made.
pub const ISSUER_KEYS_PUBLISHED_MAX: usize = 64;

/// One issuer key as the schedule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledKey {
    /// The id credentials name it by.
    pub key_id: u32,
    /// The raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// Unix seconds from which it signs new credentials.
    pub signs_from_secs: i64,
    /// When an operator retired it (Unix seconds): distrusted from then,
    /// whatever the times say. A key retired after its `signs_from` had
    /// signed, so it still ended its predecessor's signing.
    pub retired_at_secs: Option<i64>,
}

impl ScheduledKey {
    fn order(&self) -> (i64, u32) {
        (self.signs_from_secs, self.key_id)
    }

    /// It signed at some moment (retired or not).
    fn has_signed(&self) -> bool {
        self.retired_at_secs.is_none_or(|retired| self.signs_from_secs <= retired)
    }
}

/// A key as it is published to validators at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedKey {
    /// The id credentials name it by.
    pub key_id: u32,
    /// The raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// Unix seconds from which it signs new credentials.
    pub signs_from_secs: i64,
    /// Unix seconds from which it is no longer trusted; `None` while no
    /// newer key has been scheduled to sign after it.
    pub trusted_until_secs: Option<i64>,
}

impl PublishedKey {
    /// Whether it is trusted at `now_secs`: the one rule for the server,
    /// the gateway and a validator that is offline.
    pub fn trusted_at(&self, now_secs: i64) -> bool {
        trusted_until_allows(self.trusted_until_secs, now_secs)
    }
}

/// The trust rule of every key with an end (issuer and terminal keys): a
/// key is trusted before its `trusted_until`, and for ever while it has none.
pub(crate) fn trusted_until_allows(trusted_until_secs: Option<i64>, now_secs: i64) -> bool {
    trusted_until_secs.is_none_or(|until| now_secs < until)
}

/// Every issuer key and the rule above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerKeySchedule {
    /// Not retired, in signing order: by `signs_from_secs`, then key id.
    keys: Vec<ScheduledKey>,
    /// Where each key that ever signed (retired ones too) took over, in
    /// signing order: what ends its predecessor's signing, so retiring a
    /// key never gives the one before it back its trust.
    takeovers: Vec<(i64, u32)>,
    trust_tail_secs: i64,
}

impl IssuerKeySchedule {
    /// The schedule of `keys`; a superseded key stays trusted for
    /// `trust_tail_secs` after it stops signing.
    pub fn new(keys: impl IntoIterator<Item = ScheduledKey>, trust_tail_secs: i64) -> IssuerKeySchedule {
        let all: Vec<ScheduledKey> = keys.into_iter().collect();
        let mut takeovers: Vec<(i64, u32)> = all.iter().filter(|k| k.has_signed()).map(ScheduledKey::order).collect();
        takeovers.sort_unstable();
        let mut keys: Vec<ScheduledKey> = all.into_iter().filter(|k| k.retired_at_secs.is_none()).collect();
        keys.sort_by_key(ScheduledKey::order);
        IssuerKeySchedule { keys, takeovers, trust_tail_secs: trust_tail_secs.max(0) }
    }

    /// The key that signs credentials at `now_secs`: the last one whose
    /// `signs_from` has come. `None` before the first key signs.
    pub fn signer_at(&self, now_secs: i64) -> Option<u32> {
        self.keys.iter().rev().find(|k| k.signs_from_secs <= now_secs).map(|k| k.key_id)
    }

    /// Every key published at `now_secs`, with the moment it stops being
    /// trusted: what gateways pass on to their validators.
    pub fn published_at(&self, now_secs: i64) -> Vec<PublishedKey> {
        let published: Vec<PublishedKey> = self.timed().filter(|key| key.trusted_at(now_secs)).collect();
        if let Some(signer) = self.signer_at(now_secs) {
            assert!(published.iter().any(|k| k.key_id == signer), "the signing key {signer} is always trusted");
        }
        published
    }

    /// Every key not retired, in signing order, with the moment it stops
    /// being trusted, whether that has come or not.
    pub fn timed(&self) -> impl Iterator<Item = PublishedKey> + '_ {
        self.keys.iter().map(|key| PublishedKey {
            key_id: key.key_id,
            public_key: key.public_key,
            signs_from_secs: key.signs_from_secs,
            trusted_until_secs: self.signing_end(key).map(|end| end.saturating_add(self.trust_tail_secs)),
        })
    }

    /// When `key` stopped signing: the first key after it in signing order
    /// that signed, retired since or not.
    fn signing_end(&self, key: &ScheduledKey) -> Option<i64> {
        self.takeovers.iter().find(|next| **next > key.order()).map(|(from, _)| *from)
    }

    /// The keys trusted at `now_secs`: what the server checks codes with.
    pub fn trusted_at(&self, now_secs: i64) -> IssuerPublicKeys {
        let mut trusted = IssuerPublicKeys::new();
        for key in self.published_at(now_secs) {
            trusted.insert(key.key_id, key.public_key);
        }
        trusted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAIL: i64 = 1_000;

    fn key(key_id: u32, signs_from_secs: i64) -> ScheduledKey {
        ScheduledKey { key_id, public_key: [key_id as u8; 32], signs_from_secs, retired_at_secs: None }
    }

    fn ids(trusted: &IssuerPublicKeys) -> Vec<u32> {
        trusted.key_ids().collect()
    }

    #[test]
    fn a_rotation_publishes_then_signs_then_lets_the_old_key_run_out() {
        let schedule = IssuerKeySchedule::new([key(1, 0), key(2, 500)], TAIL);
        // Published at 100, signing from 500.
        assert_eq!((schedule.signer_at(100), ids(&schedule.trusted_at(100))), (Some(1), vec![1, 2]));
        assert_eq!((schedule.signer_at(500), ids(&schedule.trusted_at(500))), (Some(2), vec![1, 2]));
        // Key 1 stopped signing at 500: trusted until 500 + TAIL, not a second more.
        assert_eq!(ids(&schedule.trusted_at(500 + TAIL - 1)), vec![1, 2]);
        assert_eq!(ids(&schedule.trusted_at(500 + TAIL)), vec![2]);
        let published = schedule.published_at(0);
        assert_eq!(published[0].trusted_until_secs, Some(500 + TAIL));
        assert_eq!(published[1].trusted_until_secs, None, "the newest key has no end yet");
    }

    #[test]
    fn a_retired_key_is_trusted_by_no_one_at_once() {
        let mut leaked = key(1, 0);
        leaked.retired_at_secs = Some(20);
        let schedule = IssuerKeySchedule::new([leaked, key(2, 10)], TAIL);
        assert_eq!(ids(&schedule.trusted_at(11)), vec![2]);
        assert_eq!(schedule.signer_at(5), None, "a retired key never signs");
    }

    /// Review: retiring a key gave the key before it back its trust (its
    /// end came from the next key not retired).
    #[test]
    fn retiring_a_key_that_signed_gives_no_trust_back_to_the_one_before() {
        let mut middle = key(2, 100);
        middle.retired_at_secs = Some(1_150);
        let schedule = IssuerKeySchedule::new([key(1, 0), middle, key(3, 200)], TAIL);
        assert_eq!(ids(&schedule.trusted_at(100 + TAIL)), vec![3], "key 1 ran out when key 2 took over");
        // A key retired before it ever signed ends nothing.
        let mut never_signed = key(2, 500);
        never_signed.retired_at_secs = Some(400);
        let schedule = IssuerKeySchedule::new([key(1, 0), never_signed], TAIL);
        assert_eq!((schedule.signer_at(600), schedule.published_at(600)[0].trusted_until_secs), (Some(1), None));
    }

    #[test]
    fn nothing_signs_before_the_first_key_and_extreme_times_do_not_overflow() {
        let schedule = IssuerKeySchedule::new([key(1, i64::MAX), key(2, i64::MAX)], i64::MAX);
        assert_eq!(schedule.signer_at(i64::MIN), None);
        assert_eq!(schedule.signer_at(i64::MAX), Some(2), "a tie goes to the higher id");
        assert_eq!(ids(&schedule.trusted_at(i64::MAX - 1)), vec![1, 2]);
        assert_eq!(ids(&schedule.trusted_at(i64::MAX)), vec![2], "the tail saturates at the end of time");
        assert_eq!(IssuerKeySchedule::new([], TAIL).published_at(0), vec![]);
    }

    proptest! {
        /// The signer is always trusted, and a key trusted at some moment
        /// after it signed was trusted at every moment before then.
        #[test]
        fn the_signer_is_trusted_and_trust_never_comes_back(
            starts in proptest::collection::vec(-1_000i64..1_000, 1..6),
            now in -2_000i64..4_000,
            later in 0i64..3_000,
        ) {
            let keys: Vec<ScheduledKey> = starts.iter().enumerate().map(|(i, s)| key(i as u32 + 1, *s)).collect();
            let schedule = IssuerKeySchedule::new(keys, TAIL);
            if let Some(signer) = schedule.signer_at(now) {
                prop_assert!(schedule.trusted_at(now).get(signer).is_some());
            }
            let after = ids(&schedule.trusted_at(now + later));
            let before = ids(&schedule.trusted_at(now));
            prop_assert!(after.iter().all(|id| before.contains(id)), "{before:?} then {after:?}");
        }
    }
}
