//! Signing keys: the issuer's (server side, one per key id, several alive at
//! once so keys can rotate) and the rider's (on the phone). Signing uses
//! ring; verification lives in [`super::verify`]. Keys come from seeds or
//! stored PKCS#8 documents: making a new one draws OS randomness, which is
//! the shell's (the key store).

use std::collections::BTreeMap;

use ring::signature::{Ed25519KeyPair, KeyPair};
use thiserror::Error;

use super::format::{Credential, CredentialClaims, RideCode};

/// Why a key could not be loaded.
#[derive(Debug, Error)]
pub enum KeyError {
    /// A stored issuer key is not an Ed25519 PKCS#8 document.
    #[error("issuer key {key_id}: PKCS#8 document is not an Ed25519 key: {reason}")]
    BadPkcs8 {
        /// The issuer key id it was stored under.
        key_id: u32,
        /// ring's explanation.
        reason: String,
    },
    /// ring refused the seed.
    #[error("Ed25519 seed rejected: {0}")]
    BadSeed(String),
}

/// One issuer key: signs the daily credentials.
pub struct IssuerSigningKey {
    key_id: u32,
    pair: Ed25519KeyPair,
}

impl IssuerSigningKey {
    /// Loads issuer key `key_id` from its stored PKCS#8 document.
    pub fn from_pkcs8(key_id: u32, document: &[u8]) -> Result<IssuerSigningKey, KeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8(document).map_err(|e| KeyError::BadPkcs8 { key_id, reason: e.to_string() })?;
        Ok(IssuerSigningKey { key_id, pair })
    }

    /// Deterministic key from a 32-byte seed (RFC 8032 private key): used by
    /// the test vectors so an independent implementation can rebuild them.
    pub fn from_seed(key_id: u32, seed: &[u8; 32]) -> Result<IssuerSigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| KeyError::BadSeed(e.to_string()))?;
        Ok(IssuerSigningKey { key_id, pair })
    }

    /// The id that credentials name this key by.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key that validators and the server trust under this key's id.
    pub fn public_key(&self) -> [u8; 32] {
        public_key_bytes(&self.pair)
    }

    /// Issues one rider's credential for the window `[valid_from, valid_until)`.
    /// New card ids are at most [`ID_MAX`](crate::scan::ID_MAX); a card
    /// issued before keeps its id.
    pub fn issue(&self, card_id: u64, user_public_key: [u8; 32], valid_from: u32, valid_until: u32) -> Credential {
        let claims = CredentialClaims { issuer_key_id: self.key_id, card_id, user_public_key, valid_from, valid_until };
        let signature = self.pair.sign(&claims.signing_message());
        Credential { claims, issuer_signature: signature_bytes(signature.as_ref()) }
    }
}

/// The rider's key, made on the phone; its public half goes into the credential.
pub struct UserKey {
    pair: Ed25519KeyPair,
}

impl UserKey {
    /// A key from a 32-byte Ed25519 seed: the phone's own, or one the server draws for the day's keys or an
    /// online code.
    pub fn from_seed(seed: &[u8; 32]) -> Result<UserKey, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| KeyError::BadSeed(e.to_string()))?;
        Ok(UserKey { pair })
    }

    /// The Ed25519 public key, which the credential names.
    pub fn public_key(&self) -> [u8; 32] {
        public_key_bytes(&self.pair)
    }

    /// Makes a ride code offline: no network, only the phone's clock.
    pub fn make_code(&self, credential: &Credential, created_at: u32, counter: u32) -> RideCode {
        let message = RideCode::signing_message_for(credential, created_at, counter);
        let signature = self.pair.sign(&message);
        RideCode::assemble(credential, created_at, counter, signature_bytes(signature.as_ref()))
    }
}

/// The issuer public keys a validator or the server trusts, by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerPublicKeys {
    keys: BTreeMap<u32, [u8; 32]>,
}

impl IssuerPublicKeys {
    /// An empty set: no key is trusted.
    pub fn new() -> IssuerPublicKeys {
        IssuerPublicKeys::default()
    }

    /// Trusts `public_key` under `key_id`, replacing any key held under that id.
    pub fn insert(&mut self, key_id: u32, public_key: [u8; 32]) {
        self.keys.insert(key_id, public_key);
    }

    /// The public key trusted under `key_id`, if any.
    pub fn get(&self, key_id: u32) -> Option<&[u8; 32]> {
        self.keys.get(&key_id)
    }

    /// The trusted key ids, in ascending order.
    pub fn key_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }
}

fn public_key_bytes(pair: &Ed25519KeyPair) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(pair.public_key().as_ref());
    out
}

fn signature_bytes(signature: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out.copy_from_slice(signature);
    out
}
