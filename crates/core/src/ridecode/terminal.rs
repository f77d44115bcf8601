//! Terminal keys: the symmetric key of a service day that seals ride codes
//! for the gate (format version 2, [`super::sealed`]). The key store makes
//! one per service day; the account API hands the day's key to each rider's
//! app with its credential, and the server pushes the keys of the days
//! around now to every gateway for its validators.
//!
//! Each key's 32-byte secret is never used directly: HKDF-SHA256 (RFC 5869)
//! derives two keys from it, one that seals the code (ChaCha20-Poly1305)
//! and one that masks the nonce, so no key ever serves two purposes. Both
//! are derived once, when a key is loaded, not per code.

use std::collections::BTreeMap;
use std::sync::Arc;

use ring::{aead, hkdf};

/// Length of a terminal key's secret, in bytes.
pub const TERMINAL_KEY_SECRET_LEN: usize = 32;

/// The HKDF salt every terminal key's subkeys are derived with.
pub const TERMINAL_KEY_SALT: &[u8] = b"farestream/terminal-key/v2";
/// HKDF `info` of the subkey that seals codes.
pub const SEAL_KEY_INFO: &[u8] = b"seal";
/// HKDF `info` of the subkey that masks the nonce.
pub const MASK_KEY_INFO: &[u8] = b"mask";

/// One terminal key, ready to seal and open codes. Its secret is wiped
/// when it is dropped (ring's derived keys are ring's to keep).
pub struct TerminalKey {
    key_id: u16,
    secret: [u8; TERMINAL_KEY_SECRET_LEN],
    pub(crate) seal: aead::LessSafeKey,
    pub(crate) mask: aead::LessSafeKey,
}

impl Drop for TerminalKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl TerminalKey {
    /// The key `key_id` from its secret.
    pub fn from_secret(key_id: u16, secret: &[u8; TERMINAL_KEY_SECRET_LEN]) -> TerminalKey {
        let aead_key = |info| {
            let bytes = derive_subkey(secret, info);
            let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &*bytes)
                .expect("a 32-byte key is what ChaCha20-Poly1305 takes");
            aead::LessSafeKey::new(unbound)
        };
        TerminalKey { key_id, secret: *secret, seal: aead_key(SEAL_KEY_INFO), mask: aead_key(MASK_KEY_INFO) }
    }

    /// The id a sealed code names it by, in its clear header.
    pub fn key_id(&self) -> u16 {
        self.key_id
    }

    /// The secret, as the key store keeps it and validators are handed it.
    pub fn secret(&self) -> &[u8; TERMINAL_KEY_SECRET_LEN] {
        &self.secret
    }
}

/// Whether a reread key set changed; not an authentication check.
impl PartialEq for TerminalKey {
    fn eq(&self, other: &TerminalKey) -> bool {
        self.key_id == other.key_id && self.secret == other.secret
    }
}

impl Eq for TerminalKey {}

impl std::fmt::Debug for TerminalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TerminalKey({}, ..)", self.key_id)
    }
}

/// HKDF-SHA256 with [`TERMINAL_KEY_SALT`]: extract from `secret`, expand
/// with `info` to 32 bytes. Public so the test vectors can show each
/// subkey.
pub fn derive_subkey(secret: &[u8; TERMINAL_KEY_SECRET_LEN], info: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let info = [info];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, TERMINAL_KEY_SALT).extract(secret);
    let okm = prk.expand(&info, Len32).expect("32 bytes is within HKDF-SHA256's limit of 8160");
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    okm.fill(&mut *out).expect("the length asked for");
    out
}

/// The terminal keys a gate or the server opens codes with, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalKeys {
    keys: BTreeMap<u16, Arc<TerminalKey>>,
    /// Keys whose trust has ended by the holder's clock, which a server
    /// keeps to open codes read before the end and to read the card of
    /// those read after ([`TerminalKeys::with_ran_out`]); a gate holds none.
    ran_out: BTreeMap<u16, Arc<TerminalKey>>,
    /// Unix seconds from which each key, held or kept, opens no code read
    /// then or later, where known ([`super::sealed::check_key_in_force`]).
    ends: BTreeMap<u16, i64>,
}

impl TerminalKeys {
    /// No key: every sealed code is refused.
    pub fn new() -> TerminalKeys {
        TerminalKeys::default()
    }

    /// Holds `key`, replacing any key held under its id, with no end
    /// known: what a gate holds, deciding trust by its own clock.
    pub fn insert(&mut self, key: TerminalKey) {
        self.insert_ending(key, None);
    }

    /// Holds `key`, trusted for codes read before `trusted_until_secs`
    /// (or for ever while `None`): what a server holds, so that every
    /// node decides a code by when it was read, not by its own clock.
    pub fn insert_ending(&mut self, key: TerminalKey, trusted_until_secs: Option<i64>) {
        let key_id = key.key_id;
        self.ran_out.remove(&key_id);
        self.keys.insert(key_id, Arc::new(key));
        match trusted_until_secs {
            Some(end) => self.ends.insert(key_id, end),
            None => self.ends.remove(&key_id),
        };
    }

    /// Holds every key of `keys`.
    pub fn extend(&mut self, keys: impl IntoIterator<Item = TerminalKey>) {
        keys.into_iter().for_each(|key| self.insert(key));
    }

    /// Also keeps `keys`, each with the moment its trust ended: a code
    /// read before then still opens (it was uploaded late, or reached
    /// this node after another node, whose clock is behind, took it), and
    /// one read after is refused with its card read. Every node thus
    /// gives every copy of a scan one verdict and one partition
    /// (docs/scale-out.md). A key also held as trusted stays so.
    pub fn with_ran_out(mut self, keys: impl IntoIterator<Item = (TerminalKey, i64)>) -> TerminalKeys {
        for (key, ended_secs) in keys {
            if !self.keys.contains_key(&key.key_id) {
                self.ends.insert(key.key_id, ended_secs);
                self.ran_out.insert(key.key_id, Arc::new(key));
            }
        }
        self
    }
}

impl FromIterator<TerminalKey> for TerminalKeys {
    fn from_iter<I: IntoIterator<Item = TerminalKey>>(keys: I) -> TerminalKeys {
        let mut held = TerminalKeys::new();
        held.extend(keys);
        held
    }
}

impl TerminalKeys {
    /// The key held under `key_id`, if any.
    pub fn get(&self, key_id: u16) -> Option<&TerminalKey> {
        self.keys.get(&key_id).map(|k| &**k)
    }

    /// The ids held, in ascending order.
    pub fn key_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.keys.keys().copied()
    }

    /// The key kept under `key_id` since it ran out, if any.
    pub fn ran_out(&self, key_id: u16) -> Option<&TerminalKey> {
        self.ran_out.get(&key_id).map(|k| &**k)
    }

    /// The key a sealed code naming `key_id` opens with: held, or kept
    /// since it ran out.
    pub fn held_or_kept(&self, key_id: u16) -> Option<&TerminalKey> {
        self.get(key_id).or_else(|| self.ran_out(key_id))
    }

    /// Unix seconds from which the key under `key_id` opens no code read
    /// then or later, where known.
    pub fn trusted_until(&self, key_id: u16) -> Option<i64> {
        self.ends.get(&key_id).copied()
    }

    /// Whether a key id that is not held belongs to a key no longer
    /// trusted. The key store gives ids one after another as it makes
    /// keys, none skipped, so an id below the highest held was made before
    /// that key: not held, it has run out. Not "below the lowest held": an
    /// emergency rotation's key (made after tomorrow's, so a higher id)
    /// runs out before tomorrow's does. An id above every key held was
    /// never made, or not yet received; 0 is never made. A key kept
    /// since it ran out is past whatever its id.
    pub fn is_past(&self, key_id: u16) -> bool {
        key_id != 0
            && !self.keys.contains_key(&key_id)
            && (self.ran_out.contains_key(&key_id)
                || self.keys.keys().next_back().is_some_and(|highest| key_id < *highest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_subkeys_differ_and_neither_is_the_secret() {
        let secret = [7u8; 32];
        let (seal, mask) = (derive_subkey(&secret, SEAL_KEY_INFO), derive_subkey(&secret, MASK_KEY_INFO));
        assert_ne!(seal, mask);
        assert_ne!(*seal, secret);
        assert_eq!(seal, derive_subkey(&secret, SEAL_KEY_INFO), "deterministic");
    }

    /// Keys 1 to 6: day keys 1, 2, 4, 5 and 6, and an emergency rotation,
    /// key 3, made after tomorrow's key 2 and run out before it. Held now:
    /// 2, 4 and 5 (6 not yet received).
    #[test]
    fn an_id_made_before_the_newest_held_and_not_held_is_past_whatever_its_order() {
        let mut keys = TerminalKeys::new();
        assert!(!keys.is_past(0) && !keys.is_past(1), "holding nothing, nothing is known to be past");
        for id in [2, 4, 5] {
            keys.insert(TerminalKey::from_secret(id, &[id as u8; 32]));
        }
        assert!(keys.is_past(1) && keys.is_past(3), "the emergency key 3 ran out while key 2 is held");
        assert!(!keys.is_past(2) && !keys.is_past(5), "held");
        assert!(!keys.is_past(0), "id 0 is never made: unknown, not expired");
        assert!(!keys.is_past(6) && !keys.is_past(u16::MAX), "not made yet, or not received");
        assert_eq!(keys.key_ids().collect::<Vec<_>>(), vec![2, 4, 5]);
        assert_eq!(format!("{:?}", keys.get(5).expect("key 5")), "TerminalKey(5, ..)", "the secret is never printed");
    }
}
