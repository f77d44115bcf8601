//! Outside review of 7bdc44a ("a sealed code is judged by when it was
//! read, so every node gives every copy one verdict"), on two nodes and
//! NATS, with the rig of `cluster_keys.rs`. Both failed on 7bdc44a:
//! the end of a key put by each node's reread interval, and expired rows
//! routed by a card read only while the key was kept.

use std::time::Duration;

use farestream::scan::ScanStatus;
use farestream::wire::ScanBatch;

use crate::cluster::looked_at_until;
use crate::cluster_keys::{CARD, KeyEnding};
use crate::support::Harness;

/// From an outside review (seen failing). A key's end is the next key's hand-out plus the trust tail, and
/// the tail is each node's own (`Config::issuer_key_trust_tail_secs`
/// adds the node's `keys.reload_interval_ms`, rounded up to a second; L,
/// S, V and the credential validity are each node's too): nodes whose
/// settings differ (here a rereads every 20 ms, b every 10 s, both
/// allowed) put the same key's end at different moments, both having
/// read the rotation. A code read between the two ends is refused at a
/// and accepted at b: its first send reaches a (refused, the ack lost),
/// its resend b (acked `accepted`); the stream keeps a's copy, so a ride
/// acked accepted goes unpriced, the very fault 7bdc44a set out to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_reread_intervals_differ_put_a_keys_end_at_one_moment_and_a_ride_acked_accepted_is_kept() {
    let Some(rig) = KeyEnding::start(Some(10_000)).await else { return };
    let a_end = rig.end_at(&rig.a).await.expect("a read the rotation");
    let b_end = rig.end_at(&rig.b).await.expect("b read the rotation");
    let (early, late) = (a_end.min(b_end), a_end.max(b_end));
    let now_ms = early * 1000 + 5_000;
    rig.a.clock.set(now_ms);
    rig.b_clock.set(now_ms);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let tap = rig.tap(1, early * 1000 + 2_000);
    let first = rig.a.client().push(&tap).await.expect("acked at a (the ack is then lost)");
    let resent = rig.b.client().push(&tap).await.expect("the resend acked at b");
    let rows = rig.rows().await;
    assert_eq!(
        (first.accepted, first.rejected),
        (resent.accepted, resent.rejected),
        "one scan, two verdicts: a's end {a_end}, b's {b_end} (read at {}, between {early} and {late}); stream {rows:?}",
        early + 2
    );
    // Whatever the verdict, the copy the stream kept is the one each ack told.
    let kept = rows.iter().map(|(_, _, status)| u32::from(*status == ScanStatus::Accepted)).collect::<Vec<_>>();
    assert_eq!(kept, vec![resent.accepted], "the stream's one copy, as b acked it: {rows:?}");
}

/// From an outside review (seen failing). The edge of the `2L + 2S` a node keeps a key (here 140 s): a
/// code read after its key's end (a phone that kept sealing under it)
/// reaches a 15 s before a stops keeping the key (refused, its card read,
/// its card's partition); its resend 15 s later reaches b, which has
/// just stopped keeping it (refused, no card, the scan id's partition).
/// One verdict, but two partitions and two owners, and the resend is
/// within the first copy's re-delivery window (`L + S` after arrival):
/// the stream holds the scan twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_scan_resent_as_its_key_stops_being_kept_is_in_the_stream_once() {
    let Some(rig) = KeyEnding::start(None).await else { return };
    let end_secs = rig.end_at(&rig.a).await.expect("a read the rotation");
    assert_eq!(rig.end_at(&rig.b).await, Some(end_secs), "the same end at b (same settings)");
    let kept_ms = 2 * (60 + 10) * 1000;
    let end_ms = end_secs * 1000;
    rig.a.clock.set(end_ms + kept_ms - 10_000);
    rig.b_clock.set(end_ms + kept_ms + 5_000);
    let id = rig.leaked.key_id;
    // What each node's pipeline opens codes with (b's reread, every
    // 250 ms, must have followed its clock too).
    let opens_with = |h: &Harness| h.server.pipeline().terminal_keys().held_or_kept(id).is_some();
    let kept_at_a = async || rig.a.server.pipeline().terminal_keys().ran_out(id).is_some();
    assert!(looked_at_until(kept_at_a, |kept| *kept).await, "a keeps the key");
    assert!(!looked_at_until(async || opens_with(&rig.b), |opens| !*opens).await, "b no longer keeps it");

    // A scan whose id's partition is not its card's (with 8 partitions,
    // 1 in 8 share one, and JetStream then drops the second as the same
    // record, hiding the fault).
    let partitions = rig.config.cluster.partitions;
    let by_card = farestream_core::cluster::partition_of_card(CARD, partitions);
    let by_scan_id = |tap: &ScanBatch| {
        let id = farestream_core::ingest::pipeline::fingerprint(&tap.scans[0]);
        farestream_core::cluster::partition_of_card(u64::from_be_bytes(id[..8].try_into().expect("8")), partitions)
    };
    let seq = (1..100).find(|seq| by_scan_id(&rig.tap(*seq, end_ms + kept_ms - 25_000)) != by_card).expect("a seq");
    let tap = rig.tap(seq, end_ms + kept_ms - 25_000);
    let first = rig.a.client().push(&tap).await.expect("acked at a (the ack is then lost)");
    let resent = rig.b.client().push(&tap).await.expect("the resend acked at b");
    assert_eq!((first.rejected, resent.rejected), (1, 1), "read after the end: refused at both");
    let rows = rig.rows().await;
    let scans: Vec<(u64, ScanStatus)> = rows.iter().map(|(_, seq, status)| (*seq, *status)).collect();
    assert_eq!(scans, vec![(seq, ScanStatus::ExpiredTerminalKey)], "the scan once: {rows:?}");
}
