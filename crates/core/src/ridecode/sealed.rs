//! The ride-code wire format, version 2: a version-1 code sealed for the
//! gate under the day's terminal key, so a photographed code shows nothing
//! but the format, the day's key id and bytes that look random.
//! `docs/ride-code.md` documents every byte and holds test vectors.
//!
//! ```text
//! offset size field
//!      0    1 version           = 0x02
//!      1    2 terminal_key_id   u16
//!      3   12 masked_nonce      nonce XOR mask
//!     15  176 ciphertext        ChaCha20-Poly1305 of the sealed content
//!    191   16 tag
//!    207      end
//! ```
//!
//! - nonce = `card_id` (8 bytes) ‖ `counter` (4 bytes), both big-endian:
//!   unique under one key because the account API hands each credential a
//!   block of counters no other credential of that card got under that
//!   key, and the app never uses a counter twice. The card id and counter
//!   then need not be sealed again: the content is the version-1 code
//!   without its version byte, `card_id` and `counter` (176 bytes).
//! - associated data = bytes 0..3 ‖ nonce (the header with the nonce
//!   unmasked, as QUIC binds its packet number, RFC 9001 §5.3).
//! - mask = the first 12 bytes of ChaCha20-Poly1305 sealing 12 zero bytes
//!   under the mask key, with the tag's first 12 bytes as nonce and no
//!   associated data (RFC 9001 §5.4's header protection, with the tag as
//!   the sample). Without it the clear nonce would show the card id.

use ring::aead::{Aad, Nonce, Tag};

use super::check::Rejection;
use super::format::{DecodeError, RIDE_CODE_LEN, RideCode};
use super::terminal::{TerminalKey, TerminalKeys};

/// Counters in the block the account API hands each credential: one code a
/// second for 18 hours, far beyond a day of codes refreshed each minute
/// (1 440).
pub const CODE_COUNTER_BLOCK_LEN: u32 = 1 << 16;
/// Blocks one card can be handed under one terminal key: every 32-bit
/// counter, once. So many that retries and online codes never run a card
/// out in a day (a review found 4 096 blocks of 2^20 let an app stuck in a
/// retry loop refuse itself keys within hours): a block every 1.3 s for a
/// whole day.
pub const CODE_COUNTER_BLOCKS_MAX: u32 = 1 << 16;

/// The counters `[from, until)` of a card's block number `index` under one
/// terminal key; `None` past [`CODE_COUNTER_BLOCKS_MAX`]. Blocks of one card
/// never overlap, so neither do the nonces of its codes.
pub fn code_counter_block(index: u32) -> Option<(u32, u64)> {
    let from = index.checked_mul(CODE_COUNTER_BLOCK_LEN).filter(|_| index < CODE_COUNTER_BLOCKS_MAX)?;
    Some((from, u64::from(from) + u64::from(CODE_COUNTER_BLOCK_LEN)))
}

/// The format version byte of a sealed code.
pub const SEALED_FORMAT_VERSION: u8 = 0x02;
/// Length of a version-2 code: a QR code of version 10 at level M holds 213 bytes.
pub const SEALED_CODE_LEN: usize = 207;
/// Length of the AEAD nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of the version-1 code that are sealed.
pub const SEALED_CONTENT_LEN: usize = 176;
/// Length of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes 0..3: version and terminal key id, in the clear.
const KEY_ID_END: usize = 3;
const NONCE_END: usize = KEY_ID_END + NONCE_LEN;
const CIPHERTEXT_END: usize = NONCE_END + SEALED_CONTENT_LEN;

/// Where each sealed run of the version-1 code lies (start, end), in order:
/// `issuer_key_id`; `user_public_key` through `created_at`; `user_signature`.
const SEALED_RUNS: [(usize, usize); 3] = [(1, 5), (13, 121), (125, RIDE_CODE_LEN)];
/// Where the nonce's parts lie in the version-1 code: `card_id`, `counter`.
const CARD_ID_RUN: (usize, usize) = (5, 13);
const COUNTER_RUN: (usize, usize) = (121, 125);

/// The nonce a code is sealed under: its card id and its counter.
pub fn nonce_for(code: &RideCode) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&code.bytes[CARD_ID_RUN.0..CARD_ID_RUN.1]);
    nonce[8..].copy_from_slice(&code.bytes[COUNTER_RUN.0..COUNTER_RUN.1]);
    nonce
}

/// The associated data: the clear header with the nonce unmasked.
pub fn associated_data(key_id: u16, nonce: &[u8; NONCE_LEN]) -> [u8; NONCE_END] {
    let mut aad = [0u8; NONCE_END];
    aad[0] = SEALED_FORMAT_VERSION;
    aad[1..KEY_ID_END].copy_from_slice(&key_id.to_be_bytes());
    aad[KEY_ID_END..].copy_from_slice(nonce);
    aad
}

/// The version-1 bytes that are sealed, in order.
pub fn sealed_content(code: &RideCode) -> [u8; SEALED_CONTENT_LEN] {
    let mut content = [0u8; SEALED_CONTENT_LEN];
    let mut at = 0;
    for (start, end) in SEALED_RUNS {
        content[at..at + end - start].copy_from_slice(&code.bytes[start..end]);
        at += end - start;
    }
    assert_eq!(at, SEALED_CONTENT_LEN, "the sealed runs fill the content");
    content
}

/// Seals a version-1 code under `key`: what the phone shows.
pub fn seal(code: &RideCode, key: &TerminalKey) -> [u8; SEALED_CODE_LEN] {
    let nonce = nonce_for(code);
    let mut content = sealed_content(code);
    let tag = key
        .seal
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(key.key_id(), &nonce)),
            &mut content,
        )
        .expect("176 bytes is far within ChaCha20-Poly1305's limit");
    let mut out = [0u8; SEALED_CODE_LEN];
    out[0] = SEALED_FORMAT_VERSION;
    out[1..KEY_ID_END].copy_from_slice(&key.key_id().to_be_bytes());
    let mask = mask(key, tag.as_ref());
    for (i, byte) in out[KEY_ID_END..NONCE_END].iter_mut().enumerate() {
        *byte = nonce[i] ^ mask[i];
    }
    out[NONCE_END..CIPHERTEXT_END].copy_from_slice(&content);
    out[CIPHERTEXT_END..].copy_from_slice(tag.as_ref());
    out
}

/// The nonce mask for a code whose tag is `tag`.
pub fn mask(key: &TerminalKey, tag: &[u8]) -> [u8; NONCE_LEN] {
    let mut sample = [0u8; NONCE_LEN];
    sample.copy_from_slice(&tag[..NONCE_LEN]);
    let mut mask = [0u8; NONCE_LEN];
    let _: Tag = key
        .mask
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(sample), Aad::empty(), &mut mask)
        .expect("12 bytes is far within ChaCha20-Poly1305's limit");
    mask
}

/// Opens a sealed code with the key its header names, held or kept since
/// it ran out, and gives back the version-1 code inside (its signatures
/// are still to check; whether the key was in force when the code was
/// read is [`check_key_in_force`]'s to say). Costs no signature check: a
/// code that fails here never reaches one.
pub fn open(input: &[u8], keys: &TerminalKeys) -> Result<RideCode, Rejection> {
    let bytes: &[u8; SEALED_CODE_LEN] =
        input.try_into().map_err(|_| DecodeError::SealedWrongLength { actual: input.len() })?;
    if bytes[0] != SEALED_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(bytes[0]).into());
    }
    let key_id = u16::from_be_bytes([bytes[1], bytes[2]]);
    let key = keys.held_or_kept(key_id).ok_or_else(|| match keys.is_past(key_id) {
        true => Rejection::ExpiredTerminalKey { key_id },
        false => Rejection::UnknownTerminalKey { key_id },
    })?;
    open_with(bytes, key)
}

/// Refuses a sealed code read at `read_at_secs` (the validator's time)
/// under a key whose trust had ended by then. The end is the key
/// schedule's, the same at every node, and the time is the scan's, the
/// same in every copy: so every node that opens a code gives it one
/// verdict, whatever its own clock. A version-1 code, or a key with no
/// end known (a gate's), passes.
pub fn check_key_in_force(input: &[u8], keys: &TerminalKeys, read_at_secs: i64) -> Result<(), Rejection> {
    match input {
        [SEALED_FORMAT_VERSION, high, low, ..] => {
            let key_id = u16::from_be_bytes([*high, *low]);
            match keys.trusted_until(key_id) {
                Some(end) if read_at_secs >= end => Err(Rejection::ExpiredTerminalKey { key_id }),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// Opens a sealed code of the right length with `key`, the one its
/// header names.
fn open_with(bytes: &[u8; SEALED_CODE_LEN], key: &TerminalKey) -> Result<RideCode, Rejection> {
    let key_id = key.key_id();
    let mask = mask(key, &bytes[CIPHERTEXT_END..]);
    let mut nonce = [0u8; NONCE_LEN];
    for (i, byte) in nonce.iter_mut().enumerate() {
        *byte = bytes[KEY_ID_END + i] ^ mask[i];
    }
    let mut sealed = [0u8; SEALED_CONTENT_LEN + TAG_LEN];
    sealed.copy_from_slice(&bytes[NONCE_END..]);
    let content = key
        .seal
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(associated_data(key_id, &nonce)), &mut sealed)
        .map_err(|_| Rejection::Undecryptable { key_id })?;
    Ok(RideCode::decode(&unsealed(content, &nonce))?)
}

/// The version-1 code from its sealed content and its nonce.
fn unsealed(content: &[u8], nonce: &[u8; NONCE_LEN]) -> [u8; RIDE_CODE_LEN] {
    let mut code = [0u8; RIDE_CODE_LEN];
    code[0] = super::format::FORMAT_VERSION;
    code[CARD_ID_RUN.0..CARD_ID_RUN.1].copy_from_slice(&nonce[..8]);
    code[COUNTER_RUN.0..COUNTER_RUN.1].copy_from_slice(&nonce[8..]);
    let mut at = 0;
    for (start, end) in SEALED_RUNS {
        code[start..end].copy_from_slice(&content[at..at + end - start]);
        at += end - start;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ridecode::{IssuerSigningKey, UserKey};

    fn code(card_id: u64, counter: u32) -> RideCode {
        let issuer = IssuerSigningKey::from_seed(3, &[1; 32]).expect("issuer");
        let user = UserKey::from_seed(&[2; 32]).expect("user");
        let credential = issuer.issue(card_id, user.public_key(), 1_800_000_000, 1_800_090_000);
        user.make_code(&credential, 1_800_000_100, counter)
    }

    fn keys(ids: &[u16]) -> TerminalKeys {
        let mut keys = TerminalKeys::new();
        for id in ids {
            keys.insert(TerminalKey::from_secret(*id, &[*id as u8; 32]));
        }
        keys
    }

    #[test]
    fn a_sealed_code_opens_to_the_code_it_sealed() {
        let keys = keys(&[4, 5]);
        let original = code(0x0102_0304_0506_0708, 77);
        let sealed = seal(&original, keys.get(5).expect("key 5"));
        assert_eq!(sealed.len(), SEALED_CODE_LEN);
        assert_eq!(&sealed[..3], &[0x02, 0, 5]);
        assert_eq!(open(&sealed, &keys), Ok(original));
    }

    /// What a camera sees: not the card id, and nothing that links two
    /// codes of one rider but the day's key id.
    #[test]
    fn a_sealed_code_shows_no_card_id_and_two_codes_of_one_rider_share_nothing_but_the_header() {
        let keys = keys(&[5]);
        let key = keys.get(5).expect("key 5");
        let card_id: u64 = 0x0102_0304_0506_0708;
        let (first, second) = (seal(&code(card_id, 1), key), seal(&code(card_id, 2), key));
        let card = card_id.to_be_bytes();
        assert!(!first.windows(8).any(|w| w == card), "the card id is not in the clear");
        let shared_runs = first[3..].windows(4).filter(|w| second[3..].windows(4).any(|v| v == *w)).count();
        assert_eq!(shared_runs, 0, "no 4 bytes after the header repeat between two codes of one rider");
    }

    #[test]
    fn a_flipped_bit_anywhere_after_the_version_byte_is_refused_without_a_signature_check() {
        let keys = keys(&[4, 5]);
        let sealed = seal(&code(42, 1), keys.get(5).expect("key 5"));
        for bit in 8..SEALED_CODE_LEN * 8 {
            let mut altered = sealed;
            altered[bit / 8] ^= 1 << (bit % 8);
            let verdict = open(&altered, &keys);
            let expected_key = u16::from_be_bytes([altered[1], altered[2]]);
            match verdict {
                Err(Rejection::Undecryptable { key_id }) => assert_eq!(key_id, expected_key, "bit {bit}"),
                Err(Rejection::UnknownTerminalKey { .. } | Rejection::ExpiredTerminalKey { .. }) => {
                    assert!(bit < 24, "bit {bit}: only a key id bit names another key")
                }
                other => panic!("bit {bit}: {other:?}"),
            }
        }
    }

    /// A key opens codes whether held or kept since it ran out; whether
    /// it was in force is decided by the code's time against the key's
    /// end alone. A key with no end known (a gate's) never refuses.
    #[test]
    fn a_key_is_in_force_for_codes_read_before_its_end_whether_held_or_kept() {
        let under = |id: u16| TerminalKey::from_secret(id, &[id as u8; 32]);
        let mut held = keys(&[7]);
        held.insert_ending(under(8), Some(1_000));
        let keys = held.with_ran_out([(under(9), 500), (under(7), 1)]);
        let original = code(0x0A0B_0C0D_0E0F_1011, 5);
        for id in [8u16, 9] {
            let sealed = seal(&original, &under(id));
            assert_eq!(open(&sealed, &keys), Ok(original), "key {id} opens, held or kept");
            let end = keys.trusted_until(id).expect("an end");
            assert_eq!(check_key_in_force(&sealed, &keys, end - 1), Ok(()), "read before the end");
            let expired = Err(Rejection::ExpiredTerminalKey { key_id: id });
            assert_eq!(check_key_in_force(&sealed, &keys, end), expired, "read at the end");
            assert_eq!(check_key_in_force(&sealed, &keys, i64::MAX), expired);
        }
        let gates = seal(&original, keys.get(7).expect("key 7"));
        assert_eq!((keys.trusted_until(7), keys.ran_out(7).is_some()), (None, false), "held stays held");
        assert_eq!(check_key_in_force(&gates, &keys, i64::MAX), Ok(()), "no end known");
        assert!(keys.is_past(9) && !keys.is_past(8) && !keys.is_past(7));
        for not_sealed in [&original.bytes[..], &[][..], &[SEALED_FORMAT_VERSION][..], &[SEALED_FORMAT_VERSION, 0][..]]
        {
            assert_eq!(check_key_in_force(not_sealed, &keys, i64::MAX), Ok(()), "{} bytes", not_sealed.len());
        }
        assert_eq!(open(&seal(&original, &under(10)), &keys), Err(Rejection::UnknownTerminalKey { key_id: 10 }));
    }

    #[test]
    fn unknown_past_truncated_and_other_version_codes_each_get_their_own_rejection() {
        let held = keys(&[4, 5]);
        let sealed_under = |id: u16| seal(&code(42, 1), &TerminalKey::from_secret(id, &[id as u8; 32]));
        assert_eq!(open(&sealed_under(6), &held), Err(Rejection::UnknownTerminalKey { key_id: 6 }));
        assert_eq!(open(&sealed_under(3), &held), Err(Rejection::ExpiredTerminalKey { key_id: 3 }));
        assert_eq!(open(&sealed_under(3), &TerminalKeys::new()), Err(Rejection::UnknownTerminalKey { key_id: 3 }));
        let good = sealed_under(5);
        for len in [0, 1, 3, 15, SEALED_CODE_LEN - 1] {
            assert_eq!(
                open(&good[..len], &held),
                Err(Rejection::Malformed(DecodeError::SealedWrongLength { actual: len })),
                "{len}"
            );
        }
        let longer = [&good[..], &[0]].concat();
        assert!(matches!(open(&longer, &held), Err(Rejection::Malformed(DecodeError::SealedWrongLength { .. }))));
        // Sealed under another secret with the same id: it does not open.
        let impostor = seal(&code(42, 1), &TerminalKey::from_secret(5, &[9; 32]));
        assert_eq!(open(&impostor, &held), Err(Rejection::Undecryptable { key_id: 5 }));
    }

    #[test]
    fn counter_blocks_tile_every_32_bit_counter_once() {
        assert_eq!(code_counter_block(0), Some((0, 1 << 16)));
        assert_eq!(code_counter_block(1), Some((1 << 16, 2 << 16)));
        assert_eq!(code_counter_block(65_535), Some((u32::MAX - (1 << 16) + 1, 1 << 32)));
        assert_eq!(code_counter_block(CODE_COUNTER_BLOCKS_MAX), None);
        assert_eq!(code_counter_block(u32::MAX), None);
    }

    #[test]
    fn card_ids_and_counters_at_their_extremes_round_trip() {
        let keys = keys(&[u16::MAX]);
        let key = keys.get(u16::MAX).expect("key");
        for (card_id, counter) in [(0, 0), (u64::MAX, u32::MAX), (crate::scan::ID_MAX, 1), (1, u32::MAX)] {
            let original = code(card_id, counter);
            assert_eq!(open(&seal(&original, key), &keys), Ok(original), "{card_id} {counter}");
        }
    }
}
