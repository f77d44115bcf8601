//! Outside review of 7bdc44a ("a sealed code is judged by when it was
//! read, so every node gives every copy one verdict"), on two nodes and
//! NATS, with the rig of `cluster_keys.rs` (copied here: its own is
//! private). Both failed on 7bdc44a: the end of a key put by each node's
//! reread interval, and expired rows routed by a card read only while the
//! key was kept.

use std::time::Duration;

use farestream::config::Config;
use farestream::ridecode::{HeldTerminalKey, RideCode, seal};
use farestream::scan::{ScanStatus, TapKind};
use farestream::wire::ScanBatch;
use farestream_cluster::test_nats::NatsCluster;

use crate::cluster::{cluster_config, looked_at_until, quick_leases, stream_rows};
use crate::key_rotation::{copy_following_the_key_store_on, following_the_key_store, key_store, scan_under};
use crate::support::{GATEWAY, Harness, batch, record, secs};

const CARD: u64 = 77;

/// Two nodes on one key store (short windows: V 60 s, S 10 s, L 60 s,
/// credentials 60 s), the day's key `leaked` replaced by an emergency
/// rotation a second from now; `b` rereads the store every
/// `b_reload_interval_ms` (a every 20 ms).
struct Rig {
    nats: NatsCluster,
    config: Config,
    a: Harness,
    b: Harness,
    b_clock: std::sync::Arc<farestream::clock_source::ManualClock>,
    leaked: HeldTerminalKey,
    rotated: u16,
}

impl Rig {
    async fn start(b_reload_interval_ms: Option<u64>) -> Option<Rig> {
        use farestream::clock_source::Clock;
        let nats = NatsCluster::start().await?;
        let mut config = cluster_config(&nats).await?;
        config.ride_code.credential_validity_secs = 60;
        config.ride_code.code_validity_secs = 60;
        config.ride_code.clock_skew_secs = 10;
        config.ingest.accepted_lateness_secs = 60;
        let a = following_the_key_store(quick_leases(config.clone(), "node-a")).await;
        let b_clock = std::sync::Arc::new(farestream::clock_source::ManualClock::new(a.clock.now_ms()));
        let mut b_config = quick_leases(config.clone(), "node-b");
        b_config.keys.reload_interval_ms = b_reload_interval_ms.unwrap_or(b_config.keys.reload_interval_ms);
        let b = copy_following_the_key_store_on(&a, b_config, b_clock.clone()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        let now_ms = a.clock.now_ms();
        let leaked = a.server.issuer_keys().now().terminal_handed_out(now_ms / 1000).expect("today's key");
        let policy = a.config.service_day_policy().expect("policy");
        let rotated = key_store(&a.config, a.dir.path()).rotate_terminal(&policy, now_ms, now_ms / 1000 + 1);
        let rotated = rotated.expect("rotated in the shared store");
        Some(Rig { nats, config, a, b, b_clock, leaked, rotated })
    }

    /// `leaked`'s end as `h` holds it (held or kept), once `h` has read
    /// the rotation.
    async fn end_at(&self, h: &Harness) -> Option<i64> {
        let look = async || {
            let now = h.server.issuer_keys().now();
            let read = now.terminal.iter().any(|k| k.key_id == self.rotated);
            let all = || now.terminal.iter().chain(&now.terminal_ran_out);
            all().find(|k| k.key_id == self.leaked.key_id && read).and_then(|k| k.trusted_until_secs)
        };
        looked_at_until(look, Option::is_some).await
    }

    fn tap(&self, seq: u64, read_ms: i64) -> ScanBatch {
        let window = (secs(read_ms) - 30, secs(read_ms) + 30);
        let code = RideCode::decode(&scan_under(&self.a.issuer, CARD, window, read_ms)).expect("code");
        let sealed = seal(&code, &self.leaked.key()).to_vec();
        batch(GATEWAY, seq, vec![record("gate-1", seq, read_ms, TapKind::Single, sealed)])
    }

    async fn rows(&self) -> Vec<(Option<u64>, u64, ScanStatus)> {
        let rows = stream_rows(&self.nats, &self.config).await;
        rows.iter().map(|r| (r.card_id, r.validator_seq, r.status)).collect()
    }
}

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
    let Some(rig) = Rig::start(Some(10_000)).await else { return };
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
    let Some(rig) = Rig::start(None).await else { return };
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
