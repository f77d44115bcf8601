//! Byte-exact ride-code test vectors (`tests/vectors/ride-code-v1.json`).
//!
//! The vectors are rebuilt here from their documented seeds and compared
//! with the file byte for byte, so any change to the format shows up as a
//! diff. Set `FARESTREAM_WRITE_VECTORS=1` to rewrite the file on purpose.
//! ring, an Ed25519 implementation independent of the one the server uses
//! (ed25519-zebra), must agree on every signature in them.

use std::collections::HashSet;

use farestream::ridecode::format::{CODE_SIGNED_LEN, CREDENTIAL_DOMAIN, CREDENTIAL_SIGNED_LEN, RIDE_CODE_DOMAIN};
use farestream::ridecode::{
    Credential, FreshnessPolicy, IssuerPublicKeys, IssuerSigningKey, RideCode, TerminalKeys, UserKey, check_offline,
};
use farestream::scan::ScanStatus;
use serde::{Deserialize, Serialize};

use crate::support::repo_file;

const VECTORS: &str = "tests/vectors/ride-code-v1.json";

/// RFC 8032 section 7.1, TEST 1 and TEST 2 secret keys: any Ed25519
/// implementation can rebuild these keys.
pub(crate) const ISSUER_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
pub(crate) const USER_SEED: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
const ROGUE_SEED: &str = "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7";
pub(crate) const CARD_ID: u64 = 12_345_678;
/// 2025-11-20 04:00 in Shanghai: the start of that service day.
pub(crate) const VALID_FROM: u32 = 1_763_582_400;
pub(crate) const VALID_UNTIL: u32 = VALID_FROM + 93_600;
/// 2025-11-20 10:00 in Shanghai.
pub(crate) const CREATED_AT: u32 = 1_763_604_000;
pub(crate) const POLICY: FreshnessPolicy = FreshnessPolicy {
    code_validity_secs: 60,
    clock_skew_secs: 30,
    credential_validity_secs: 93_600,
    unsealed_refused_from_secs: None,
};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct VectorFile {
    format: String,
    issuer_key_id: u32,
    issuer_seed_hex: String,
    issuer_public_key_hex: String,
    user_seed_hex: String,
    user_public_key_hex: String,
    code_validity_secs: u32,
    clock_skew_secs: u32,
    vectors: Vec<Vector>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Vector {
    name: String,
    description: String,
    code_hex: String,
    /// The validator clock, Unix seconds.
    validator_time: u32,
    denied_cards: Vec<u64>,
    expected_status: String,
    /// The exact messages signed, for an independent implementation.
    issuer_message_hex: String,
    user_message_hex: String,
}

pub(crate) fn seed(hex_seed: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_seed, &mut out).expect("seed hex");
    out
}

fn vector(
    name: &str,
    description: &str,
    code: &[u8],
    validator_time: u32,
    denied: &[u64],
    expected: ScanStatus,
) -> Vector {
    let message = |domain: &[u8], len: usize| {
        if code.len() < len {
            return String::new();
        }
        hex::encode([domain, &code[..len]].concat())
    };
    Vector {
        name: name.into(),
        description: description.into(),
        code_hex: hex::encode(code),
        validator_time,
        denied_cards: denied.to_vec(),
        expected_status: expected.as_str().into(),
        issuer_message_hex: message(CREDENTIAL_DOMAIN, CREDENTIAL_SIGNED_LEN),
        user_message_hex: message(RIDE_CODE_DOMAIN, CODE_SIGNED_LEN),
    }
}

fn build() -> VectorFile {
    let issuer = IssuerSigningKey::from_seed(1, &seed(ISSUER_SEED)).expect("issuer");
    let user = UserKey::from_seed(&seed(USER_SEED)).expect("user");
    let credential = issuer.issue(CARD_ID, user.public_key(), VALID_FROM, VALID_UNTIL);
    let valid = user.make_code(&credential, CREATED_AT, 7).bytes;
    let at = CREATED_AT + 20;
    let flip = |byte: usize| {
        let mut code = valid;
        code[byte] ^= 0x01;
        code
    };
    let rogue = IssuerSigningKey::from_seed(2, &seed(ROGUE_SEED)).expect("rogue");
    let unknown =
        user.make_code(&rogue.issue(CARD_ID, user.public_key(), VALID_FROM, VALID_UNTIL), CREATED_AT, 7).bytes;
    // The identity point is a small-order key; R = identity, S = 0 makes a
    // "signature" that ZIP-215 accepts for any message. The issuer signed
    // the credential, so only the weak-key rule stands in the way.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak_credential = issuer.issue(CARD_ID, identity, VALID_FROM, VALID_UNTIL);
    let mut weak_signature = [0u8; 64];
    weak_signature[..32].copy_from_slice(&identity);
    let weak = RideCode::assemble(&weak_credential, CREATED_AT, 7, weak_signature).bytes;
    let mut version_two = valid;
    version_two[0] = 2;
    let vectors = vec![
        vector(
            "valid",
            "A fresh code under a trusted issuer key, 20 s after it was made.",
            &valid,
            at,
            &[],
            ScanStatus::Accepted,
        ),
        vector(
            "user_signature_flipped",
            "Last byte of the user signature (S) changed.",
            &flip(188),
            at,
            &[],
            ScanStatus::BadSignature,
        ),
        vector(
            "issuer_signature_flipped",
            "First byte of the issuer signature (R) changed.",
            &flip(53),
            at,
            &[],
            ScanStatus::BadSignature,
        ),
        vector("counter_flipped", "Counter changed after signing.", &flip(124), at, &[], ScanStatus::BadSignature),
        vector(
            "unknown_issuer_key",
            "Credential signed by issuer key 2, which the validator does not hold.",
            &unknown,
            at,
            &[],
            ScanStatus::UnknownIssuerKey,
        ),
        vector(
            "expired_credential",
            "The valid code checked after its credential's window and the skew.",
            &valid,
            VALID_UNTIL + 30,
            &[],
            ScanStatus::ExpiredCredential,
        ),
        vector(
            "stale_code",
            "The valid code checked 91 s after it was made (60 s validity + 30 s skew).",
            &valid,
            CREATED_AT + 91,
            &[],
            ScanStatus::StaleCode,
        ),
        vector(
            "from_the_future",
            "The valid code checked 31 s before it was made.",
            &valid,
            CREATED_AT - 31,
            &[],
            ScanStatus::StaleCode,
        ),
        vector(
            "denied",
            "The valid code, but the card is on the deny list.",
            &valid,
            at,
            &[CARD_ID],
            ScanStatus::Denied,
        ),
        vector(
            "weak_user_key",
            "Issuer-signed credential naming a small-order user key.",
            &weak,
            at,
            &[],
            ScanStatus::BadSignature,
        ),
        vector("truncated", "The valid code less its last byte.", &valid[..188], at, &[], ScanStatus::Malformed),
        vector("version_two", "Version byte 0x02.", &version_two, at, &[], ScanStatus::Malformed),
    ];
    VectorFile {
        format: "farestream ride code v1 (docs/ride-code.md)".into(),
        issuer_key_id: 1,
        issuer_seed_hex: ISSUER_SEED.into(),
        issuer_public_key_hex: hex::encode(issuer.public_key()),
        user_seed_hex: USER_SEED.into(),
        user_public_key_hex: hex::encode(user.public_key()),
        code_validity_secs: POLICY.code_validity_secs,
        clock_skew_secs: POLICY.clock_skew_secs,
        vectors,
    }
}

fn trusted(file: &VectorFile) -> IssuerPublicKeys {
    let mut keys = IssuerPublicKeys::new();
    let mut public_key = [0u8; 32];
    hex::decode_to_slice(&file.issuer_public_key_hex, &mut public_key).expect("public key hex");
    keys.insert(file.issuer_key_id, public_key);
    keys
}

fn load() -> VectorFile {
    let expected = serde_json::to_string_pretty(&build()).expect("json") + "\n";
    if std::env::var_os("FARESTREAM_WRITE_VECTORS").is_some() {
        std::fs::write(repo_file(VECTORS), &expected).expect("write vectors");
    }
    let on_disk = std::fs::read_to_string(repo_file(VECTORS)).expect("tests/vectors/ride-code-v1.json");
    // Not assert_eq: the whole file in a failure message helps nobody.
    assert!(
        on_disk == expected,
        "tests/vectors/ride-code-v1.json differs from the format; review, then FARESTREAM_WRITE_VECTORS=1"
    );
    serde_json::from_str(&on_disk).expect("vector file parses")
}

#[test]
fn every_vector_gets_its_expected_status() {
    let file = load();
    let keys = trusted(&file);
    for v in &file.vectors {
        let code = hex::decode(&v.code_hex).expect("code hex");
        let denied: HashSet<u64> = v.denied_cards.iter().copied().collect();
        let status = match check_offline(&code, &keys, &TerminalKeys::new(), &denied, &POLICY, v.validator_time) {
            Ok(_) => ScanStatus::Accepted,
            Err(rejection) => rejection.status(),
        };
        assert_eq!(status.as_str(), v.expected_status, "vector {}", v.name);
    }
}

#[test]
fn ring_agrees_with_every_signature_in_the_vectors() {
    use ring::signature::{ED25519, UnparsedPublicKey};
    let file = load();
    let issuer = UnparsedPublicKey::new(&ED25519, hex::decode(&file.issuer_public_key_hex).expect("hex"));
    for v in file.vectors.iter().filter(|v| v.expected_status != "malformed" && v.name != "unknown_issuer_key") {
        let code = hex::decode(&v.code_hex).expect("code hex");
        let issuer_ok = issuer.verify(&hex::decode(&v.issuer_message_hex).expect("hex"), &code[53..117]).is_ok();
        let user = UnparsedPublicKey::new(&ED25519, &code[13..45]);
        let user_ok = user.verify(&hex::decode(&v.user_message_hex).expect("hex"), &code[125..189]).is_ok();
        let signatures_hold = v.expected_status != "bad_signature";
        if v.name == "weak_user_key" {
            // Refused by policy before any signature question arises.
            assert!(issuer_ok, "the weak-key credential is genuinely issuer-signed");
            continue;
        }
        assert_eq!(issuer_ok && user_ok, signatures_hold, "vector {}: ring issuer={issuer_ok} user={user_ok}", v.name);
    }
}

#[test]
fn every_single_bit_change_to_a_valid_code_is_rejected() {
    let file = load();
    let keys = trusted(&file);
    let valid = &file.vectors[0];
    assert_eq!(valid.name, "valid");
    let code = hex::decode(&valid.code_hex).expect("code hex");
    let mut flipped_codes = Vec::new();
    for bit in 0..code.len() * 8 {
        let mut flipped = code.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let verdict =
            check_offline(&flipped, &keys, &TerminalKeys::new(), &HashSet::new(), &POLICY, valid.validator_time);
        assert!(verdict.is_err(), "bit {bit} flipped was accepted at the gate");
        flipped_codes.push(flipped);
    }
    // And through the server's batched path: not one of them is accepted.
    let pipeline = farestream::ingest::Pipeline::new(
        farestream::config::Config::defaults().pipeline_config().expect("config"),
        keys,
        [1; 32],
    );
    let at_ms = i64::from(valid.validator_time) * 1000;
    let scans = flipped_codes
        .into_iter()
        .enumerate()
        .map(|(i, c)| crate::support::record("gate-1", i as u64, at_ms, farestream::scan::TapKind::Entry, c))
        .collect();
    let outcome = pipeline.process(&crate::support::batch("g", 1, scans), at_ms + 1000).expect("batch");
    assert_eq!(outcome.ack.accepted, 0);
    assert_eq!(outcome.rows.len(), code.len() * 8);
}

#[test]
fn the_valid_vector_decodes_to_its_documented_fields() {
    let file = load();
    let code = RideCode::decode(&hex::decode(&file.vectors[0].code_hex).expect("hex")).expect("decodes");
    let Credential { claims, .. } = code.credential;
    assert_eq!((claims.issuer_key_id, claims.card_id), (1, CARD_ID));
    assert_eq!((claims.valid_from, claims.valid_until), (VALID_FROM, VALID_UNTIL));
    assert_eq!((code.created_at, code.counter), (CREATED_AT, 7));
    assert_eq!(hex::encode(claims.user_public_key), file.user_public_key_hex);
}
