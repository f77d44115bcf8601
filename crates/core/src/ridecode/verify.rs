//! Ed25519 signature verification, single and batched.
//!
//! We verify with `ed25519-zebra` (on the maintained `curve25519-dalek` 4),
//! which implements ZIP-215: its batch verification accepts exactly what
//! its single verification accepts, for every input, small-order and
//! non-canonical ones included. That is the
//! property the pipeline needs: batching is an optimisation and must never
//! change a decision. `ed25519-dalek`'s `verify_batch` does not promise it
//! (its docs warn batch and single rules differ), so it is not used.
//!
//! On top of ZIP-215 we refuse non-canonical point encodings of `A` and `R`
//! before any curve arithmetic, in both paths alike. ZIP-215 accepts them,
//! which would let anyone re-encode a captured signature into different
//! bytes; replay detection keys on the code's claims, not its bytes, but
//! refusing them also keeps our decisions equal to RFC 8032's strict rules
//! (and ring's) on every input that honest signers produce. Small-order user
//! keys are refused where credentials are checked ([`is_weak_public_key`]).

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_zebra::{Signature, VerificationKey, VerificationKeyBytes, batch};
use rand_core::{CryptoRng, RngCore};

/// One signature to check: the key, the signature, and the exact message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The Ed25519 public key the signature must verify under.
    pub public_key: [u8; 32],
    /// The signature: `R` then `S`.
    pub signature: [u8; 64],
    /// The whole signed message, domain prefix included.
    pub message: Vec<u8>,
}

/// Verifies one signature.
pub fn verify_single(check: &SignatureCheck) -> bool {
    if !encodings_are_canonical(check) {
        return false;
    }
    let Ok(key) = VerificationKey::try_from(check.public_key) else {
        return false;
    };
    key.verify(&Signature::from(check.signature), &check.message).is_ok()
}

/// Verifies many signatures at once and says which are valid. One batch
/// equation covers them all; when it fails, each is verified alone to find
/// the bad ones, so the answer is per signature and equals [`verify_single`].
/// `rng` draws the equation's random coefficients: it must be unpredictable
/// to whoever chose the signatures (see [`BatchEntropy`]).
pub fn verify_batch(checks: &[SignatureCheck], rng: impl RngCore + CryptoRng) -> Vec<bool> {
    if let [check] = checks {
        // A batch equation over one signature costs more than a single
        // check, and a second one when it fails.
        return vec![verify_single(check)];
    }
    let mut valid = vec![false; checks.len()];
    let mut verifier = batch::Verifier::new();
    let mut queued = Vec::with_capacity(checks.len());
    for (index, check) in checks.iter().enumerate() {
        if !encodings_are_canonical(check) {
            continue;
        }
        let item = batch::Item::from((
            VerificationKeyBytes::from(check.public_key),
            Signature::from(check.signature),
            &check.message,
        ));
        verifier.queue(item.clone());
        queued.push((index, item));
    }
    if queued.is_empty() {
        return valid;
    }
    if verifier.verify(rng).is_ok() {
        for (index, _) in &queued {
            valid[*index] = true;
        }
    } else {
        for (index, item) in queued {
            valid[index] = item.verify_single().is_ok();
        }
    }
    valid
}

/// The secret from which batch verification draws its coefficients: a
/// forger who could predict them could make a bad signature pass a batch
/// equation. The shell fills it from the OS once at start; each batch
/// equation then gets its own ChaCha20 stream of it.
#[derive(Clone)]
pub struct BatchEntropy {
    seed: [u8; 32],
    next_stream: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl BatchEntropy {
    /// Entropy from a secret 32-byte seed: fill it from the OS, never from anything a peer can see.
    pub fn new(seed: [u8; 32]) -> BatchEntropy {
        BatchEntropy { seed, next_stream: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)) }
    }

    /// A generator no other batch equation shares.
    pub fn rng(&self) -> rand_chacha::ChaCha20Rng {
        use rand_core::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(self.seed);
        rng.set_stream(self.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        rng
    }

    /// A secret number for another use (the dedup indexes' key mix),
    /// from a stream no batch equation shares.
    pub fn secret_u128(&self) -> u128 {
        let mut bytes = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut self.rng(), &mut bytes);
        u128::from_le_bytes(bytes)
    }
}

impl std::fmt::Debug for BatchEntropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchEntropy(..)")
    }
}

fn encodings_are_canonical(check: &SignatureCheck) -> bool {
    let mut r = [0u8; 32];
    r.copy_from_slice(&check.signature[..32]);
    point_encoding_is_canonical(&check.public_key) && point_encoding_is_canonical(&r)
}

/// True when `encoding` is the one canonical encoding of its point: the
/// y coordinate is below p = 2^255 - 19, and the sign bit is clear when
/// x = 0 (y = 1 or y = p - 1), where a set bit would encode "-0".
pub(crate) fn point_encoding_is_canonical(encoding: &[u8; 32]) -> bool {
    let sign_bit_set = encoding[31] & 0x80 != 0;
    let mut y = *encoding;
    y[31] &= 0x7f;
    // p - 1 = 2^255 - 20, little-endian: 0xec, 0xff x 30, 0x7f.
    let high_bytes_all_set = y[1..31].iter().all(|&b| b == 0xff) && y[31] == 0x7f;
    if high_bytes_all_set && y[0] >= 0xed {
        return false; // y >= p
    }
    let y_is_one = y[0] == 1 && y[1..].iter().all(|&b| b == 0);
    let y_is_p_minus_one = high_bytes_all_set && y[0] == 0xec;
    !(sign_bit_set && (y_is_one || y_is_p_minus_one))
}

/// A user key that must never be trusted: not a canonical point encoding,
/// not a point at all, or of small order (with a small-order key, a
/// signature that verifies for every message is trivial to make).
pub fn is_weak_public_key(public_key: &[u8; 32]) -> bool {
    if !point_encoding_is_canonical(public_key) {
        return true;
    }
    match CompressedEdwardsY(*public_key).decompress() {
        Some(point) => point.is_small_order(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entropy() -> BatchEntropy {
        BatchEntropy::new([9; 32])
    }
    use crate::ridecode::keys::UserKey;

    fn signed(seed: u8, message: &[u8]) -> SignatureCheck {
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("seed");
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(ring::signature::KeyPair::public_key(&key).as_ref());
        let mut signature = [0u8; 64];
        signature.copy_from_slice(key.sign(message).as_ref());
        SignatureCheck { public_key, signature, message: message.to_vec() }
    }

    /// The identity point (0, 1): small order, canonical encoding.
    const IDENTITY: [u8; 32] = {
        let mut b = [0u8; 32];
        b[0] = 1;
        b
    };

    /// Adds the group order l to S, giving a non-canonical scalar encoding.
    fn with_s_plus_l(mut check: SignatureCheck) -> SignatureCheck {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (s, l) in check.signature[32..].iter_mut().zip(L) {
            let sum = *s as u16 + l as u16 + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        check
    }

    fn tricky_inputs() -> Vec<SignatureCheck> {
        let good = signed(1, b"a ride");
        let mut flipped = good.clone();
        flipped.message[0] ^= 1;
        // A small-order key with R = identity and S = 0 satisfies the
        // cofactored equation for any message: ZIP-215 accepts it.
        let small_order_key = SignatureCheck {
            public_key: IDENTITY,
            signature: {
                let mut s = [0u8; 64];
                s[..32].copy_from_slice(&IDENTITY);
                s
            },
            message: b"anything".to_vec(),
        };
        let mut non_canonical_r = good.clone();
        // y = p encodes the same point as y = 0; not canonical.
        non_canonical_r.signature[..32].copy_from_slice(&{
            let mut y = [0xffu8; 32];
            y[0] = 0xed;
            y[31] = 0x7f;
            y
        });
        let mut negative_zero_key = small_order_key.clone();
        negative_zero_key.public_key[31] |= 0x80;
        vec![
            good.clone(),
            flipped,
            small_order_key,
            non_canonical_r,
            negative_zero_key,
            with_s_plus_l(good),
            signed(2, b"another ride"),
        ]
    }

    #[test]
    fn batch_decisions_equal_single_decisions_on_tricky_inputs() {
        let inputs = tricky_inputs();
        let single: Vec<bool> = inputs.iter().map(verify_single).collect();
        assert_eq!(single, vec![true, false, true, false, false, false, true]);
        assert_eq!(verify_batch(&inputs, entropy().rng()), single);
        for (i, input) in inputs.iter().enumerate() {
            assert_eq!(verify_batch(std::slice::from_ref(input), entropy().rng()), vec![single[i]], "alone {i}");
        }
        // Every subset of two, so a lone bad item meets every good one.
        for i in 0..inputs.len() {
            for j in 0..inputs.len() {
                let pair = [inputs[i].clone(), inputs[j].clone()];
                assert_eq!(verify_batch(&pair, entropy().rng()), vec![single[i], single[j]], "pair {i},{j}");
            }
        }
    }

    #[test]
    fn small_order_and_non_canonical_keys_are_weak() {
        assert!(is_weak_public_key(&IDENTITY));
        let mut negative_zero = IDENTITY;
        negative_zero[31] |= 0x80;
        assert!(is_weak_public_key(&negative_zero));
        let honest = UserKey::from_seed(&[9; 32]).expect("seed").public_key();
        assert!(!is_weak_public_key(&honest));
    }

    #[test]
    fn canonical_encoding_boundaries() {
        let mut p_minus_one = [0xffu8; 32];
        p_minus_one[0] = 0xec;
        p_minus_one[31] = 0x7f;
        assert!(point_encoding_is_canonical(&p_minus_one));
        let mut p = p_minus_one;
        p[0] = 0xed;
        assert!(!point_encoding_is_canonical(&p));
        let mut negative_p_minus_one = p_minus_one;
        negative_p_minus_one[31] |= 0x80;
        assert!(!point_encoding_is_canonical(&negative_p_minus_one));
    }
}
