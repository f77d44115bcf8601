//! Terminal keys whose trust ended, at the pipeline, from two outside
//! reviews of issue 23's keys kept `2L + 2S` past their end. Each node's
//! terminal keys are built from the key schedule at that node's clock,
//! exactly as `IssuerKeysNow::at` + `terminal_trusted` build them (held
//! keys with their ends, then `ran_out_within(now, kept)` with theirs).
//! The first two failed on 7bdc44a (fixed since); the rest record attacks
//! that did not get through. The order the first review showed losing a
//! ride (expired at one node, accepted at another) is
//! `a_code_under_a_key_whose_trust_ended_gets_one_verdict_and_one_partition_at_every_node`.

use super::tests::{AT_MS, Fixture, batch, code, config_in, fixture, fixture_with, scan};
use super::*;
use crate::cluster::partition_of_row;
use crate::ridecode::terminal_schedule::TERMINAL_KEYS_KEPT_MAX;
use crate::ridecode::{HeldTerminalKey, TerminalKey, TerminalKeySchedule, TerminalKeys, UserKey, seal};

/// As [`config_in`]'s.
const SKEW: u32 = 30;
const VALIDITY: u32 = 60;
const CREDENTIAL: u32 = 93_600;
const PARTITIONS: u16 = 64;
const DAY: i64 = 86_400;
/// Day 0's start, Unix seconds.
const BASE: i64 = 1_700_000_000;

/// A pipeline with the shipped defaults but for the accepted lateness.
fn node(lateness: u32) -> Fixture {
    fixture_with(PipelineConfig { accepted_lateness_secs: lateness, ..config_in(chrono_tz::Asia::Shanghai) })
}

/// Card `card`'s code made at `created_secs`, its credential valid over
/// the hour before and 25 h after (within the 26 h allowed).
fn code_made_at(n: &Fixture, card: u64, created_secs: i64) -> RideCode {
    let user = UserKey::from_seed(&[card as u8; 32]).expect("user");
    let at = u32::try_from(created_secs).expect("u32 secs");
    let credential = n.issuer.issue(card, user.public_key(), at - 3_600, at + 90_000);
    RideCode::decode(&user.make_code(&credential, at, 1).bytes).expect("code")
}

fn held(key_id: u16, from: i64) -> HeldTerminalKey {
    HeldTerminalKey {
        key_id,
        secret: [key_id as u8; 32].into(),
        service_date: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"),
        handed_out_from_secs: from,
        trusted_until_secs: None,
    }
}

/// The terminal keys a server holds at `now_secs`: what
/// `IssuerKeysNow::at(..).terminal_trusted()` builds from the schedule.
fn keys_at(schedule: &TerminalKeySchedule, now_secs: i64, kept_secs: i64) -> TerminalKeys {
    let mut keys = TerminalKeys::new();
    for k in schedule.held_at(now_secs) {
        keys.insert_ending(k.key(), k.trusted_until_secs);
    }
    let kept = schedule.ran_out_within(now_secs, kept_secs);
    keys.with_ran_out(kept.iter().filter_map(|k| Some((k.key(), k.trusted_until_secs?))))
}

/// The row a cluster ingest node makes of `sent` at `now_ms`, its keys
/// those of the schedule at that moment.
fn row_at(n: &Fixture, schedule: &TerminalKeySchedule, sent: &ScanBatch, now_ms: UnixMillis) -> ArchivedScan {
    let kept = n.pipeline.horizons.terminal_key_kept_secs();
    n.pipeline.set_terminal_keys(keys_at(schedule, now_ms.div_euclid(1000), kept));
    let verified = n.pipeline.verify(sent).expect("batch");
    n.pipeline.commit_unclaimed(sent, verified, now_ms).rows.remove(0)
}

/// From an outside review (the kept horizon's edge; seen failing). A code read after its key's end (a
/// phone that has not fetched keys for a week still seals under it; the
/// gate refuses it and the gateway uploads the scan) arrives at node a
/// 15 s before a's copy of the key is dropped (`2L + 2S` past the end):
/// expired, card read, to the card's partition. Its ack is lost and the
/// gateway resends it 20 s later to node b, whose copy has just been
/// dropped: expired, no card, to the scan id's partition. The resend is
/// well inside the first copy's re-delivery window (a single node drops
/// it), yet two owners each keep one copy: archived twice. With the
/// verdict now the same at every node (read time against the end),
/// routing by the card gains nothing for an expired row; any finite
/// horizon for reading cards has this edge.
#[test]
fn an_expired_scan_resent_as_its_key_stops_being_kept_lands_in_one_partition() {
    let lateness = 259_200;
    let (a, b, single) = (node(lateness), node(lateness), node(lateness));
    let kept = a.pipeline.horizons.terminal_key_kept_secs();
    // Key 9 handed out on day 0, key 10 on day 1: key 9's trust ends a
    // tail (here 4.1 days, as shipped) after day 1 starts.
    let tail = i64::from(CREDENTIAL + VALIDITY + 2 * SKEW + lateness) + 1;
    let schedule = TerminalKeySchedule::new([held(9, BASE), held(10, BASE + DAY)], tail);
    let end = BASE + DAY + tail;
    let read_ms = (end + kept - 40) * 1000;
    let code = code_made_at(&a, 40, read_ms / 1000 - 5);
    let sent =
        batch(vec![scan(1, read_ms, seal(&code, &crate::ridecode::TerminalKey::from_secret(9, &[9; 32])).to_vec())]);
    let first = row_at(&a, &schedule, &sent, read_ms + 25_000);
    let resend_ms = read_ms + 45_000;
    let resent = row_at(&b, &schedule, &sent, resend_ms);
    assert_eq!(first.status, ScanStatus::ExpiredTerminalKey);
    assert_eq!(resent.status, ScanStatus::ExpiredTerminalKey);
    // The resend is within the first copy's re-delivery window: one node
    // that saw both would drop it.
    assert!(resend_ms < a.pipeline.horizons.delivery_expiry(first.scanned_at, first.received_at));
    single.pipeline.set_terminal_keys(keys_at(&schedule, (read_ms + 25_000) / 1000, kept));
    assert_eq!(single.pipeline.process(&sent, read_ms + 25_000).expect("batch").ack.rejected, 1);
    assert_eq!(single.pipeline.process(&sent, resend_ms).expect("batch").ack.redelivered, 1, "one node drops it");
    // In a cluster each copy goes to the owner of its row's partition.
    let (owner_first, owner_resent) = (node(lateness), node(lateness));
    let kept_first = owner_first.pipeline.claim_rows(vec![first.clone()]).rows.len();
    let kept_resent = owner_resent.pipeline.claim_rows(vec![resent.clone()]).rows.len();
    assert_eq!(
        (first.card_id, partition_of_row(&first, PARTITIONS)),
        (resent.card_id, partition_of_row(&resent, PARTITIONS)),
        "one scan, two partitions: archived {} times",
        kept_first + kept_resent
    );
}

/// From an outside review (the cap on keys kept; seen failing). With the accepted lateness at its
/// allowed maximum (30 days), keys are kept `2L + 2S`, 60 days: 60 day
/// keys, and five emergency rotations in those weeks make 65 ends, over
/// `TERMINAL_KEYS_KEPT_MAX`, and `ran_out_within` dropped the oldest (the cap was then 64).
/// A code read a second before day 30's key's end, uploaded within `L`
/// (accepted, card partition), and resent within its re-delivery window,
/// finds that key dropped: the resend is refused as expired, with no card,
/// in the scan id's partition (with four rotations, 64 ends, the key is
/// kept and the resend lands in the card's partition: this test passes). Before 7bdc44a keys were kept `L + 2S`,
/// 30 days, and the cap was out of reach.
#[test]
fn with_the_largest_lateness_the_key_a_resend_needs_is_still_kept() {
    let lateness = 2_592_000;
    let (a, b) = (node(lateness), node(lateness));
    let kept = a.pipeline.horizons.terminal_key_kept_secs();
    let tail = i64::from(CREDENTIAL + VALIDITY + 2 * SKEW + lateness) + 1;
    // Ids in the order the key store makes them: day d's key a day
    // ahead; a rotation on days 31 to 35 at noon.
    let mut made: Vec<(i64, i64)> = (1..=120).map(|d| ((d - 1) * DAY, d * DAY)).collect();
    made.extend((31..=35).map(|d| (d * DAY + DAY / 2, d * DAY + DAY / 2)));
    made.sort();
    let keys: Vec<HeldTerminalKey> =
        made.iter().enumerate().map(|(i, (_, from))| held(i as u16 + 1, BASE + from)).collect();
    let day_30 = keys.iter().find(|k| k.handed_out_from_secs == BASE + 30 * DAY).expect("day 30's key").clone();
    let schedule = TerminalKeySchedule::new(keys, tail);
    let end = BASE + 31 * DAY + tail;
    let read_ms = end * 1000 - 1_000;
    let code = code_made_at(&a, 41, end - 6);
    let sent = batch(vec![scan(1, read_ms, seal(&code, &day_30.key()).to_vec())]);
    let arrival_ms = read_ms + i64::from(lateness) * 1000 - 10_000;
    let first = row_at(&a, &schedule, &sent, arrival_ms);
    assert_eq!((first.status, first.card_id), (ScanStatus::Accepted, Some(41)), "uploaded late, read before the end");
    let resend_ms = arrival_ms + i64::from(lateness) * 1000;
    assert!(resend_ms < a.pipeline.horizons.delivery_expiry(first.scanned_at, first.received_at));
    assert!(resend_ms / 1000 < end + kept, "within the 2L + 2S the key is to be kept");
    let kept_then = schedule.ran_out_within(resend_ms / 1000, kept);
    let resent = row_at(&b, &schedule, &sent, resend_ms);
    // Its verdict may differ (it arrives later than `L` after its read:
    // `late_upload`, a difference docs/scale-out.md accepts); its
    // partition must not, or two owners keep a copy each.
    assert_eq!(
        (resent.card_id, partition_of_row(&resent, PARTITIONS)),
        (first.card_id, partition_of_row(&first, PARTITIONS)),
        "resent {:?}, first {:?}; keys kept at the resend: {} (the cap {TERMINAL_KEYS_KEPT_MAX}); day 30's key {} among them: {}",
        resent.status,
        first.status,
        kept_then.len(),
        day_30.key_id,
        kept_then.iter().any(|k| k.key_id == day_30.key_id),
    );
}

/// From an outside review, held up (a gateway choosing the scan's time). A code sealed under a
/// key whose trust ended at `E` is accepted, whatever time the gateway
/// claims, only when it was made before `E + S` (freshness against the
/// claimed time, which must be before `E`) and arrives within `L` of a
/// claimed time before `E`. So the widest window is: made before `E + S`,
/// arriving up to `E - 1 ms + L`. Before 7bdc44a (the server's clock at
/// arrival decided) it was: arriving before `E`. Arrival is `L` wider,
/// but no code a rider could have made from a credential fetched while
/// the key was handed out is in it: such a credential ends by the next
/// key's hand-out plus `credential_validity` (+ a reread), and the tail
/// is that plus `V + 2S + L`, so its codes pass no credential check at
/// any claimed time after `E - L - V - S`. Signatures are still checked
/// for every code read before the end: a key's secret forges nothing.
#[test]
fn a_backdated_scan_time_opens_only_codes_made_before_the_end_plus_the_skew() {
    let lateness = 259_200;
    let n = node(lateness);
    let end = BASE + 10 * DAY;
    let key = crate::ridecode::TerminalKey::from_secret(9, &[9; 32]);
    n.pipeline.set_terminal_keys(
        TerminalKeys::from_iter([crate::ridecode::TerminalKey::from_secret(10, &[10; 32])])
            .with_ran_out([(crate::ridecode::TerminalKey::from_secret(9, &[9; 32]), end)]),
    );
    let claimed_ms = end * 1000 - 1; // the latest claim before the end
    let verdict = |card: u64, made: i64, arrival_ms: i64| {
        let code = code_made_at(&n, card, made);
        let sent = batch(vec![scan(1, claimed_ms, seal(&code, &key).to_vec())]);
        n.pipeline.process(&sent, arrival_ms).expect("batch").rows[0].status
    };
    let latest_arrival = claimed_ms + i64::from(lateness) * 1000;
    assert_eq!(verdict(50, end + i64::from(SKEW) - 1, latest_arrival), ScanStatus::Accepted);
    assert_eq!(verdict(51, end + i64::from(SKEW), latest_arrival - 1), ScanStatus::StaleCode);
    assert_eq!(verdict(52, end - 1, latest_arrival + 1), ScanStatus::LateUpload);
    // A forged code (a bit of its user signature changed before sealing)
    // under the kept key is refused: the key opens, it does not vouch.
    let mut forged = code_made_at(&n, 53, end - 1);
    let last = forged.bytes.len() - 1;
    forged.bytes[last] ^= 1;
    let forged = RideCode::decode(&forged.bytes).expect("decodes");
    assert_ne!(forged, code_made_at(&n, 53, end - 1));
    let sent = batch(vec![scan(1, claimed_ms, seal(&forged, &key).to_vec())]);
    assert_eq!(n.pipeline.process(&sent, claimed_ms).expect("batch").rows[0].status, ScanStatus::BadSignature);
}

/// From an outside review, held up (edges of `TerminalKeys`). Key ids 1 and `u16::MAX`, ends at
/// `i64::MIN` and `i64::MAX`, read times 0 and the largest a code holds;
/// a kept key inserted again as held takes the end it is given; a key
/// kept and held keeps the held end.
#[test]
fn terminal_keys_at_their_edges() {
    use crate::ridecode::TerminalKey;
    use crate::ridecode::sealed::check_key_in_force;
    let k = |id: u16| TerminalKey::from_secret(id, &[id as u8; 32]);
    let code = code_made_at(&node(60), 7, BASE);
    let keys = TerminalKeys::from_iter([k(5)]).with_ran_out([(k(u16::MAX), i64::MAX), (k(1), i64::MIN), (k(5), 0)]);
    let read_max = i64::from(u32::MAX);
    let sealed_max = seal(&code, &k(u16::MAX));
    assert_eq!(crate::ridecode::sealed::open(&sealed_max, &keys), Ok(code));
    assert_eq!(check_key_in_force(&sealed_max, &keys, read_max), Ok(()));
    let sealed_1 = seal(&code, &k(1));
    assert!(check_key_in_force(&sealed_1, &keys, 0).is_err(), "an end at i64::MIN refuses every read");
    assert_eq!(check_key_in_force(&seal(&code, &k(5)), &keys, read_max), Ok(()), "held, no end: kept end ignored");
    let mut again = keys.clone();
    again.insert_ending(k(1), Some(100));
    assert_eq!((again.trusted_until(1), again.ran_out(1).is_some()), (Some(100), false));
    assert!(again.is_past(u16::MAX) && !again.is_past(0));
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
    let n = fixture();
    n.pipeline.set_terminal_keys(TerminalKeys::from_iter([key(10)]).with_ran_out([(key(9), ENDED_SECS)]));
    let inner = RideCode::decode(&code(&n, 41, 1)).expect("code");
    let mut opened = scan(1, AT_MS, seal(&inner, &key(9)).to_vec());
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
    let resealed =
        n.pipeline.process(&batch(vec![scan(2, AT_MS, seal(&inner, &key(10)).to_vec())]), AT_MS).expect("batch");
    assert_eq!(resealed.rows[0].status, ScanStatus::Accepted, "the expired copy claimed no ride key");
}

/// After a restart, an expired row restores its delivery (its resend is
/// dropped) and no ride key.
#[test]
fn a_restored_expired_row_restores_its_delivery_and_no_ride_key() {
    let n = fixture();
    n.pipeline.set_terminal_keys(TerminalKeys::from_iter([key(10)]).with_ran_out([(key(9), ENDED_SECS)]));
    let inner = RideCode::decode(&code(&n, 42, 1)).expect("code");
    let expired = scan(1, AT_MS, seal(&inner, &key(9)).to_vec());
    let rows = n.pipeline.process(&batch(vec![expired.clone()]), AT_MS).expect("batch").rows;
    assert_eq!(rows[0].status, ScanStatus::ExpiredTerminalKey);
    let restarted = fixture();
    restarted.pipeline.set_terminal_keys(TerminalKeys::from_iter([key(10)]).with_ran_out([(key(9), ENDED_SECS)]));
    restarted.pipeline.restore(&rows, AT_MS);
    let again = restarted.pipeline.process(&batch(vec![expired]), AT_MS).expect("batch");
    assert_eq!(again.ack.redelivered, 1);
    let resealed = restarted.pipeline.process(&batch(vec![scan(2, AT_MS, seal(&inner, &key(10)).to_vec())]), AT_MS);
    assert_eq!(resealed.expect("batch").rows[0].status, ScanStatus::Accepted);
}
