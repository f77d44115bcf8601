//! A terminal key kept since its trust ended, at the pipeline: a code
//! read after the end is never a ride, however it arrives. From an
//! outside review of the keys kept (issue 23); the order it showed losing
//! a ride (expired at one node, accepted at another) is
//! `a_code_under_a_key_whose_trust_ended_gets_one_verdict_and_one_partition_at_every_node`.

use super::*;
use crate::ridecode::{IssuerSigningKey, TerminalKey, TerminalKeys, UserKey, seal};
use crate::wire::WireTapKind;

const AT_MS: UnixMillis = 1_763_604_000_000;

struct Node {
    pipeline: Pipeline,
    issuer: IssuerSigningKey,
}

/// The shipped defaults, as pipeline.rs's own tests have them.
fn node() -> Node {
    let config = PipelineConfig {
        freshness: FreshnessPolicy {
            code_validity_secs: 60,
            clock_skew_secs: 30,
            credential_validity_secs: 93_600,
            unsealed_refused_from_secs: None,
        },
        accepted_lateness_secs: 259_200,
        verify_chunk_signatures: 64,
        batch_scans_max: 10_000,
        id_bytes_max: 128,
        service_day: ServiceDayPolicy { time_zone: chrono_tz::Asia::Shanghai, start_hour: 4 },
        dedup: DedupLimits::DEFAULT,
    };
    let issuer = IssuerSigningKey::from_seed(1, &[3; 32]).expect("issuer");
    let mut keys = IssuerPublicKeys::new();
    keys.insert(1, issuer.public_key());
    Node { pipeline: Pipeline::new(config, keys, [5; 32]), issuer }
}

/// A validly signed code of `card`, made 5 s before [`AT_MS`].
fn code(n: &Node, card: u64, counter: u32) -> RideCode {
    let user = UserKey::from_seed(&[card as u8; 32]).expect("user");
    let at = unix_secs_u32(AT_MS);
    let credential = n.issuer.issue(card, user.public_key(), at - 3_600, at + 90_000);
    RideCode::decode(&user.make_code(&credential, at - 5, counter).bytes).expect("code")
}

fn scan(seq: u64, code: Vec<u8>) -> ScanRecord {
    ScanRecord {
        validator_id: "gate-1".into(),
        validator_seq: seq,
        validator_time_ms: AT_MS,
        route_id: "metro-1".into(),
        stop_id: "station-01".into(),
        tap_kind: WireTapKind::Entry as i32,
        ride_code: code,
        ..Default::default()
    }
}

fn batch(scans: Vec<ScanRecord>) -> ScanBatch {
    ScanBatch { gateway_id: "g".into(), batch_seq: 1, scans }
}

/// When key 9's trust ended: at the second every scan here is read.
const ENDED_SECS: i64 = AT_MS / 1000;

fn key(id: u16) -> TerminalKey {
    TerminalKey::from_secret(id, &[id as u8; 32])
}

/// A code read after its key's end is never accepted, whatever the path:
/// a single node's commit, its re-delivery (no second signature check), a cluster node's unclaimed commit, a gate
/// that says it opened; and no ride key is claimed, so the same code
/// sealed afterwards under a trusted key is still accepted, not a replay.
#[test]
fn a_code_read_after_its_keys_end_never_accepts_nor_claims_a_ride_key() {
    let n = node();
    n.pipeline.set_terminal_keys(TerminalKeys::from_iter([key(10)]).with_ran_out([(key(9), ENDED_SECS)]));
    let inner = code(&n, 41, 1);
    let mut opened = scan(1, seal(&inner, &key(9)).to_vec());
    opened.gate = crate::wire::GateDecision::Opened as i32;
    for _ in 0..2 {
        let out = n.pipeline.process(&batch(vec![opened.clone()]), AT_MS).expect("batch");
        assert_eq!(out.ack.accepted, 0);
        for row in &out.rows {
            assert_eq!((row.status, row.card_id), (ScanStatus::ExpiredTerminalKey, None), "no card: by its scan id");
            assert!(!crate::fares::is_ride(row), "pricing and the settlement (RIDE_SQL) skip it");
        }
    }
    let verified = n.pipeline.verify(&batch(vec![opened.clone()])).expect("batch");
    assert!(!verified.met_unknown_terminal_key());
    let out = n.pipeline.commit_unclaimed(&batch(vec![opened]), verified, AT_MS);
    assert_eq!(out.rows[0].status, ScanStatus::ExpiredTerminalKey);
    let resealed = n.pipeline.process(&batch(vec![scan(2, seal(&inner, &key(10)).to_vec())]), AT_MS).expect("batch");
    assert_eq!(resealed.rows[0].status, ScanStatus::Accepted, "the expired copy claimed no ride key");
}

/// After a restart, an expired row restores its delivery (its resend is
/// dropped) and no ride key.
#[test]
fn a_restored_expired_row_restores_its_delivery_and_no_ride_key() {
    let n = node();
    n.pipeline.set_terminal_keys(TerminalKeys::from_iter([key(10)]).with_ran_out([(key(9), ENDED_SECS)]));
    let inner = code(&n, 42, 1);
    let expired = scan(1, seal(&inner, &key(9)).to_vec());
    let rows = n.pipeline.process(&batch(vec![expired.clone()]), AT_MS).expect("batch").rows;
    assert_eq!(rows[0].status, ScanStatus::ExpiredTerminalKey);
    let restarted = node();
    restarted.pipeline.set_terminal_keys(TerminalKeys::from_iter([key(10)]).with_ran_out([(key(9), ENDED_SECS)]));
    restarted.pipeline.restore(&rows, AT_MS);
    let again = restarted.pipeline.process(&batch(vec![expired]), AT_MS).expect("batch");
    assert_eq!(again.ack.redelivered, 1);
    let resealed = restarted.pipeline.process(&batch(vec![scan(2, seal(&inner, &key(10)).to_vec())]), AT_MS);
    assert_eq!(resealed.expect("batch").rows[0].status, ScanStatus::Accepted);
}
