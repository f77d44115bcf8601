//! Byte-exact vectors for sealed ride codes, format version 2
//! (`tests/vectors/ride-code-v2.json`, and the valid one again in
//! docs/ride-code.md, "Test vectors, version 2").
//!
//! The vectors are rebuilt here from their documented inputs and compared
//! with the file byte for byte; `FARESTREAM_WRITE_VECTORS=1` rewrites it on
//! purpose. A second implementation, RustCrypto's `chacha20poly1305` and
//! `hkdf` (independent of ring, which farestream seals with), rebuilds every
//! byte of the valid vector from its inputs and opens it again: what a gate
//! vendor does with their own AEAD library.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use farestream::ridecode::sealed::{NONCE_LEN, SEALED_CODE_LEN, associated_data, mask, nonce_for, sealed_content};
use farestream::ridecode::terminal::{MASK_KEY_INFO, SEAL_KEY_INFO, TERMINAL_KEY_SALT, derive_subkey};
use farestream::ridecode::{
    IssuerPublicKeys, IssuerSigningKey, NobodyDenied, RideCode, TerminalKey, TerminalKeys, UserKey, check_offline, seal,
};
use farestream::scan::ScanStatus;
use serde::{Deserialize, Serialize};

use crate::support::repo_file;
// The version-1 vectors' inputs: RFC 8032 TEST 1 as issuer key 1, TEST 2 as the user key.
use crate::vectors::{CARD_ID, CREATED_AT, ISSUER_SEED, POLICY, USER_SEED, VALID_FROM, VALID_UNTIL, seed};

const VECTORS: &str = "tests/vectors/ride-code-v2.json";
const DOC: &str = "docs/ride-code.md";

/// The version-1 `valid` vector's counter; its other inputs are shared.
const COUNTER: u32 = 7;
/// The terminal key: id 3, secret 0x00 0x01 … 0x1f.
const TERMINAL_KEY_ID: u16 = 3;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct VectorFile {
    format: String,
    aead: String,
    terminal_key_id: u16,
    terminal_key_secret_hex: String,
    hkdf_salt: String,
    seal_key_info: String,
    seal_key_hex: String,
    mask_key_info: String,
    mask_key_hex: String,
    issuer_public_key_hex: String,
    vectors: Vec<Vector>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Vector {
    name: String,
    description: String,
    /// The code inside, version 1 (tests/vectors/ride-code-v1.json's `valid`).
    version_1_code_hex: String,
    nonce_hex: String,
    associated_data_hex: String,
    /// The 176 bytes sealed.
    plaintext_hex: String,
    ciphertext_and_tag_hex: String,
    mask_hex: String,
    sealed_code_hex: String,
    /// The validator clock, Unix seconds.
    validator_time: u32,
    expected_status: String,
}

fn secret() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

fn issuer() -> IssuerSigningKey {
    IssuerSigningKey::from_seed(1, &seed(ISSUER_SEED)).expect("issuer")
}

fn valid_code() -> RideCode {
    let user = UserKey::from_seed(&seed(USER_SEED)).expect("user");
    user.make_code(&issuer().issue(CARD_ID, user.public_key(), VALID_FROM, VALID_UNTIL), CREATED_AT, COUNTER)
}

fn vector(name: &str, description: &str, code: &RideCode, sealed: &[u8], expected: ScanStatus) -> Vector {
    let key = TerminalKey::from_secret(TERMINAL_KEY_ID, &secret());
    let nonce = nonce_for(code);
    let genuine = seal(code, &key);
    Vector {
        name: name.into(),
        description: description.into(),
        version_1_code_hex: hex::encode(code.bytes),
        nonce_hex: hex::encode(nonce),
        associated_data_hex: hex::encode(associated_data(TERMINAL_KEY_ID, &nonce)),
        plaintext_hex: hex::encode(sealed_content(code)),
        ciphertext_and_tag_hex: hex::encode(&genuine[15..]),
        mask_hex: hex::encode(mask(&key, &genuine[191..])),
        sealed_code_hex: hex::encode(sealed),
        validator_time: CREATED_AT + 20,
        expected_status: expected.as_str().into(),
    }
}

fn build() -> VectorFile {
    let code = valid_code();
    let key = TerminalKey::from_secret(TERMINAL_KEY_ID, &secret());
    let sealed = seal(&code, &key);
    let flip = |at: usize| {
        let mut bytes = sealed;
        bytes[at] ^= 0x01;
        bytes
    };
    let under = |id: u16| seal(&code, &TerminalKey::from_secret(id, &secret()));
    let vectors = vec![
        vector(
            "valid",
            "The version-1 `valid` vector sealed under terminal key 3.",
            &code,
            &sealed,
            ScanStatus::Accepted,
        ),
        vector("nonce_flipped", "First byte of the masked nonce changed.", &code, &flip(3), ScanStatus::Undecryptable),
        vector(
            "ciphertext_flipped",
            "A byte inside the ciphertext changed.",
            &code,
            &flip(100),
            ScanStatus::Undecryptable,
        ),
        vector("tag_flipped", "Last byte of the tag changed.", &code, &flip(206), ScanStatus::Undecryptable),
        vector(
            "unknown_terminal_key",
            "Sealed under terminal key 4 with the same secret: the validator holds only key 3.",
            &code,
            &under(4),
            ScanStatus::UnknownTerminalKey,
        ),
        vector(
            "past_terminal_key",
            "Sealed under terminal key 2: older than every key the validator holds.",
            &code,
            &under(2),
            ScanStatus::ExpiredTerminalKey,
        ),
        vector("truncated", "The valid sealed code less its last byte.", &code, &sealed[..206], ScanStatus::Malformed),
    ];
    VectorFile {
        format: "farestream ride code v2 (docs/ride-code.md)".into(),
        aead: "ChaCha20-Poly1305 (RFC 8439)".into(),
        terminal_key_id: TERMINAL_KEY_ID,
        terminal_key_secret_hex: hex::encode(secret()),
        hkdf_salt: String::from_utf8(TERMINAL_KEY_SALT.to_vec()).expect("ASCII"),
        seal_key_info: String::from_utf8(SEAL_KEY_INFO.to_vec()).expect("ASCII"),
        seal_key_hex: hex::encode(*derive_subkey(&secret(), SEAL_KEY_INFO)),
        mask_key_info: String::from_utf8(MASK_KEY_INFO.to_vec()).expect("ASCII"),
        mask_key_hex: hex::encode(*derive_subkey(&secret(), MASK_KEY_INFO)),
        issuer_public_key_hex: hex::encode(issuer().public_key()),
        vectors,
    }
}

fn load() -> VectorFile {
    let expected = serde_json::to_string_pretty(&build()).expect("json") + "\n";
    if std::env::var_os("FARESTREAM_WRITE_VECTORS").is_some() {
        std::fs::write(repo_file(VECTORS), &expected).expect("write vectors");
    }
    let on_disk = std::fs::read_to_string(repo_file(VECTORS)).expect("tests/vectors/ride-code-v2.json");
    assert!(
        on_disk == expected,
        "tests/vectors/ride-code-v2.json differs from the format; review, then FARESTREAM_WRITE_VECTORS=1"
    );
    serde_json::from_str(&on_disk).expect("vector file parses")
}

fn bytes<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).expect("hex of the documented length");
    out
}

#[test]
fn every_sealed_vector_gets_its_expected_status_without_a_signature_check_when_refused() {
    let file = load();
    let mut issuer_keys = IssuerPublicKeys::new();
    issuer_keys.insert(1, bytes(&file.issuer_public_key_hex));
    let mut terminal = TerminalKeys::new();
    terminal.insert(TerminalKey::from_secret(file.terminal_key_id, &bytes(&file.terminal_key_secret_hex)));
    for v in &file.vectors {
        let code = hex::decode(&v.sealed_code_hex).expect("hex");
        let status = match check_offline(&code, &issuer_keys, &terminal, &NobodyDenied, &POLICY, v.validator_time) {
            Ok(opened) => {
                assert_eq!(hex::encode(opened.bytes), v.version_1_code_hex, "{}", v.name);
                ScanStatus::Accepted
            }
            Err(rejection) => rejection.status(),
        };
        assert_eq!(status.as_str(), v.expected_status, "vector {}", v.name);
    }
}

/// HKDF-SHA256 by RustCrypto's `hkdf`.
fn independent_subkey(secret: &[u8; 32], salt: &str, info: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(salt.as_bytes()), secret).expand(info.as_bytes(), &mut out).expect("32 bytes");
    out
}

/// What a gate vendor does with the document and any ChaCha20-Poly1305:
/// derive both keys, seal the plaintext, make the mask, assemble the code,
/// byte for byte; then open the sealed code the other way round.
#[test]
fn an_independent_implementation_rebuilds_and_opens_the_valid_vector_byte_for_byte() {
    let file = load();
    let v = &file.vectors[0];
    assert_eq!(v.name, "valid");
    let secret = bytes::<32>(&file.terminal_key_secret_hex);
    let seal_key = independent_subkey(&secret, &file.hkdf_salt, &file.seal_key_info);
    let mask_key = independent_subkey(&secret, &file.hkdf_salt, &file.mask_key_info);
    assert_eq!((hex::encode(seal_key), hex::encode(mask_key)), (file.seal_key_hex.clone(), file.mask_key_hex.clone()));
    let aead = ChaCha20Poly1305::new(Key::from_slice(&seal_key));
    let nonce = bytes::<NONCE_LEN>(&v.nonce_hex);
    let mut buffer = hex::decode(&v.plaintext_hex).expect("hex");
    let aad = hex::decode(&v.associated_data_hex).expect("hex");
    let tag = aead.encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut buffer).expect("seal");
    let sealed_body = [buffer.as_slice(), tag.as_slice()].concat();
    assert_eq!(hex::encode(&sealed_body), v.ciphertext_and_tag_hex);
    let mut mask = [0u8; NONCE_LEN];
    ChaCha20Poly1305::new(Key::from_slice(&mask_key))
        .encrypt_in_place_detached(Nonce::from_slice(&tag[..NONCE_LEN]), b"", &mut mask)
        .expect("mask");
    assert_eq!(hex::encode(mask), v.mask_hex);
    let masked: Vec<u8> = nonce.iter().zip(mask).map(|(n, m)| n ^ m).collect();
    let assembled = [&aad[..3], &masked, &sealed_body].concat();
    assert_eq!(assembled.len(), SEALED_CODE_LEN);
    assert_eq!(hex::encode(&assembled), v.sealed_code_hex, "the independent seal is farestream's, byte for byte");

    // Opening: unmask with the tag, then open with the header as associated data.
    let code = hex::decode(&v.sealed_code_hex).expect("hex");
    let tag = Tag::from_slice(&code[191..]);
    let mut mask = [0u8; NONCE_LEN];
    ChaCha20Poly1305::new(Key::from_slice(&mask_key))
        .encrypt_in_place_detached(Nonce::from_slice(&tag[..NONCE_LEN]), b"", &mut mask)
        .expect("mask");
    let nonce: Vec<u8> = code[3..15].iter().zip(mask).map(|(c, m)| c ^ m).collect();
    let aad = [&code[..3], &nonce].concat();
    let mut content = code[15..191].to_vec();
    aead.decrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut content, tag).expect("opens");
    // The version-1 code: version, content's key id, the nonce's card id, the
    // content through created_at, the nonce's counter, the user signature.
    let rebuilt = [&[1u8][..], &content[..4], &nonce[..8], &content[4..112], &nonce[8..], &content[112..]].concat();
    assert_eq!(hex::encode(rebuilt), v.version_1_code_hex);
    let decoded = RideCode::decode(&hex::decode(&v.version_1_code_hex).expect("hex")).expect("a version-1 code");
    assert_eq!((decoded.credential.claims.card_id, decoded.counter), (CARD_ID, COUNTER));
}

/// The document carries the valid vector itself, so a vendor needs no
/// repository: every value of it appears in docs/ride-code.md.
#[test]
fn the_document_holds_the_valid_vector() {
    let file = load();
    let doc = std::fs::read_to_string(repo_file(DOC)).expect("docs/ride-code.md");
    let v = &file.vectors[0];
    let documented = [
        ("terminal key secret", &file.terminal_key_secret_hex),
        ("seal key", &file.seal_key_hex),
        ("mask key", &file.mask_key_hex),
        ("version-1 code", &v.version_1_code_hex),
        ("nonce", &v.nonce_hex),
        ("associated data", &v.associated_data_hex),
        ("plaintext", &v.plaintext_hex),
        ("ciphertext and tag", &v.ciphertext_and_tag_hex),
        ("mask", &v.mask_hex),
        ("sealed code", &v.sealed_code_hex),
    ];
    for (name, value) in documented {
        let line = format!("{name} = {value}");
        assert!(doc.lines().any(|l| l.trim() == line), "docs/ride-code.md lacks the line `{line}`");
    }
}
