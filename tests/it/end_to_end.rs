//! Batches pushed with the gateway client over real QUIC, read back from
//! the Parquet archive.

use std::collections::BTreeMap;

use farestream::archive::read::count_by_status;
use farestream::charges::ChargeOutcome;
use farestream::config::Config;
use farestream::fleet::GatewayScope;
use farestream::ridecode::{IssuerSigningKey, RideCode, TerminalKey, TerminalKeys, seal};
use farestream::scan::{ScanStatus, TapKind};

use crate::support::{Harness, T0_MS, batch, record, secs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_status_lands_in_the_archive_with_the_right_count() {
    // Version 1 is retired from the service day of the scans: every code
    // is sealed but the one that shows what an unsealed code now gets.
    let mut config = Config::defaults();
    let service_date = config.service_day_policy().expect("policy").service_date(T0_MS).expect("date");
    config.ride_code.version_1_refused_from_date = Some(service_date.format("%Y-%m-%d").to_string());
    let h = Harness::start_with(config).await;
    let terminal_key = |id: u16| TerminalKey::from_secret(id, &[id as u8; 32]);
    let mut held = TerminalKeys::new();
    held.extend([terminal_key(4), terminal_key(5)]);
    h.server.pipeline().set_terminal_keys(held);
    let sealed_under =
        |id: u16, code: Vec<u8>| seal(&RideCode::decode(&code).expect("code"), &terminal_key(id)).to_vec();
    let sealed = |code: Vec<u8>| sealed_under(5, code);
    h.server.pipeline().set_denied(66, true);
    // The batch arrives after the last scan in it (an exit 15 minutes in).
    h.clock.set(T0_MS + 3_600_000);
    let (alice, bob, denied) = (h.rider(1), h.rider(2), h.rider(66));
    let at = T0_MS;
    let alice_code = sealed(alice.code_at(at, 1));
    let mut forged = bob.code_at(at, 1);
    forged[150] ^= 0x10;
    let forged = sealed(forged);
    let mut altered = sealed(bob.code_at(at, 10));
    altered[100] ^= 0x10;
    let rogue = IssuerSigningKey::from_seed(42, &[42; 32]).expect("rogue");
    let rogue_credential = rogue.issue(2, bob.key.public_key(), secs(at - 1000), secs(at + 86_400_000));
    let unknown_issuer = sealed(bob.key.make_code(&rogue_credential, secs(at), 2).bytes.to_vec());
    let old_credential = h.issuer.issue(2, bob.key.public_key(), secs(at - 200_000_000), secs(at - 100_000_000));
    let expired = sealed(bob.key.make_code(&old_credential, secs(at), 3).bytes.to_vec());
    let stale = sealed(bob.key.make_code(&bob.credential, secs(at - 600_000), 4).bytes.to_vec());
    let lateness_ms = i64::from(h.config.ingest.accepted_lateness_secs) * 1000;
    let read_long_ago = T0_MS + 3_600_000 - lateness_ms - 60_000;
    // A credential valid when the late scan was read: the window is
    // checked before the arrival, so only the arrival fails.
    let then =
        h.issuer.issue(2, bob.key.public_key(), secs(read_long_ago - 3_600_000), secs(read_long_ago + 3_600_000));
    let late = sealed(bob.key.make_code(&then, secs(read_long_ago - 5_000), 7).bytes.to_vec());
    let scans = vec![
        record("gate-1", 1, at, TapKind::Entry, alice_code.clone()),
        record("gate-1", 2, at, TapKind::Entry, sealed(bob.code_at(at, 5))),
        record("gate-1", 3, at + 900_000, TapKind::Exit, sealed(bob.code_at(at + 900_000, 6))),
        record("gate-2", 1, at + 10_000, TapKind::Entry, alice_code),
        record("gate-2", 2, at, TapKind::Entry, forged),
        record("gate-2", 3, at, TapKind::Entry, expired),
        record("gate-2", 4, at, TapKind::Entry, stale),
        record("gate-2", 5, at, TapKind::Entry, sealed(denied.code_at(at, 1))),
        record("gate-2", 6, at, TapKind::Entry, unknown_issuer),
        record("gate-2", 7, at, TapKind::Entry, vec![1, 2, 3]),
        record("gate-3", 1, read_long_ago, TapKind::Entry, late),
        record("elsewhere-1", 1, at, TapKind::Entry, sealed(bob.code_at(at, 8))),
        record("gate-2", 8, at, TapKind::Entry, altered),
        record("gate-2", 9, at, TapKind::Entry, sealed_under(6, bob.code_at(at, 11))),
        record("gate-2", 10, at, TapKind::Entry, sealed_under(3, bob.code_at(at, 12))),
        record("gate-2", 11, at, TapKind::Entry, bob.code_at(at, 13)),
    ];
    let scope = GatewayScope::new("station-01", vec!["gate-".into()]).expect("scope");
    let ack = h.client_for(&scope).push(&batch("station-01", 1, scans)).await.expect("ack");
    assert_eq!((ack.accepted, ack.rejected, ack.redelivered), (3, 13, 0));
    let acked: BTreeMap<ScanStatus, usize> = ack.rejections.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.scan_status().expect("known status")).or_default() += 1;
        m
    });
    let rows = h.archive_rows().await;
    let counts = count_by_status(&rows);
    let expected: BTreeMap<ScanStatus, u64> =
        ScanStatus::ALL.into_iter().map(|s| (s, if s == ScanStatus::Accepted { 3 } else { 1 })).collect();
    assert_eq!(counts, expected);
    assert_eq!(acked.len(), ScanStatus::ALL.len() - 1, "one rejection of each kind in the ack: {acked:?}");
    let malformed = rows.iter().find(|r| r.status == ScanStatus::Malformed).expect("malformed row");
    assert_eq!(malformed.card_id, None);
    assert!(malformed.reason.as_deref().unwrap_or("").contains("3 bytes"), "{malformed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_are_acked_but_create_no_rows() {
    let h = Harness::start().await;
    let rider = h.rider(7);
    let scans: Vec<_> =
        (0..5).map(|i| record("bus-1", i, T0_MS + i as i64, TapKind::Single, rider.code_at(T0_MS, i as u32))).collect();
    let client = h.client_as("depot-01");
    let first = client.push(&batch("depot-01", 1, scans.clone())).await.expect("first");
    let again = client.push(&batch("depot-01", 1, scans.clone())).await.expect("again");
    // The same scans through another gateway are still re-deliveries.
    let elsewhere = h.client_as("depot-02").push(&batch("depot-02", 9, scans)).await.expect("elsewhere");
    assert_eq!((first.accepted, first.redelivered), (5, 0));
    assert_eq!((again.accepted, again.redelivered), (0, 5));
    assert_eq!((elsewhere.accepted, elsewhere.redelivered), (0, 5));
    let rows = h.archive_rows().await;
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.status == ScanStatus::Accepted && &*r.gateway_id == "depot-01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_at_another_validator_is_archived_as_replay() {
    let h = Harness::start().await;
    let rider = h.rider(9);
    let code = rider.code_at(T0_MS, 1);
    h.client_as("station-01")
        .push(&batch("station-01", 1, vec![record("gate-a", 1, T0_MS, TapKind::Entry, code.clone())]))
        .await
        .expect("first use");
    let ack = h
        .client_as("station-02")
        .push(&batch("station-02", 1, vec![record("gate-b", 1, T0_MS + 20_000, TapKind::Entry, code)]))
        .await
        .expect("replay");
    assert_eq!((ack.accepted, ack.rejected), (0, 1));
    let rows = h.archive_rows().await;
    let by_validator: BTreeMap<&str, ScanStatus> = rows.iter().map(|r| (r.validator_id.as_str(), r.status)).collect();
    assert_eq!(by_validator, BTreeMap::from([("gate-a", ScanStatus::Accepted), ("gate-b", ScanStatus::Replay)]));
    let replay = rows.iter().find(|r| r.status == ScanStatus::Replay).expect("replay row");
    assert_eq!(replay.card_id, Some(9));
    assert!(replay.reason.as_deref().unwrap_or("").contains("already used"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_rows_carry_the_scan_fields_and_service_date() {
    let h = Harness::start().await;
    let rider = h.rider(5);
    // 01:30 local on Friday belongs to Thursday's service day.
    let late_night = T0_MS + 15 * 3_600_000 + 1_800_000;
    h.clock.set(late_night + 60_000);
    let code = rider.code_at(late_night, 3);
    h.client_as("depot-01")
        .push(&batch("depot-01", 1, vec![record("bus-9", 44, late_night, TapKind::Single, code)]))
        .await
        .expect("ack");
    let rows = h.archive_rows().await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.service_date.to_string(), "2025-11-20");
    assert_eq!((row.validator_id.as_str(), row.validator_seq, row.tap_kind), ("bus-9", 44, Some(TapKind::Single)));
    assert_eq!((row.card_id, row.issuer_key_id, row.code_counter), (Some(5), Some(1), Some(3)));
    assert_eq!(row.code_created_at, Some(i64::from(secs(late_night - 5_000)) * 1000));
    assert_eq!((row.scanned_at, row.received_at), (late_night, late_night + 60_000));
    assert_eq!(row.scan_id.len(), 16);
    let file = farestream::archive::read::archive_files(&farestream::archive::scans_root(h.dir.path())).expect("files");
    assert!(file[0].to_string_lossy().contains("service_date=2025-11-20"), "{file:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_summary_matches_the_parquet_rows() {
    demo_summary_matches_the_parquet_rows(farestream::config::Config::defaults()).await;
}

/// The demo's small city on `config`: its summary agrees with the rows
/// read back and with the gateway's ledger, every ride priced.
pub(crate) async fn demo_summary_matches_the_parquet_rows(config: farestream::config::Config) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = farestream::demo::DemoOptions {
        data_dir: dir.path().to_path_buf(),
        config,
        city: farestream::sim::CitySpec {
            riders: 300,
            gateways: 4,
            validators_per_gateway: 3,
            trips_per_rider: 2.0,
            denied_riders_percent: 3.0,
            redelivery_percent: 10.0,
            seed: 11,
        },
        day_secs: 3.0,
        show_progress: false,
    };
    let summary = farestream::demo::run_demo(options).await.expect("demo");
    assert!(summary.is_consistent(), "{}", summary.render());
    let rows = farestream::archive::read::read_all(&summary.archive_root).expect("rows");
    assert_eq!(rows.len() as u64, summary.fleet.planned_total());
    assert_eq!(count_by_status(&rows), summary.archived);
    assert!(summary.fleet.redelivered_acked > 0, "the run exercised re-delivery");
    assert!(summary.archived.get(&ScanStatus::Replay).copied().unwrap_or(0) > 0, "the run had replays");
    let money = &summary.money;
    assert_eq!(money.rides, money.rides_priced, "every ride priced");
    assert!(
        money.amount(ChargeOutcome::Succeeded).is_positive() && money.amount(ChargeOutcome::Declined).is_positive(),
        "{money:?}"
    );
    let after = &money.after_day;
    assert!(after.keys_refused_in_arrears > 0 && after.arrears_paid > 0, "{after:?}");
    assert_eq!((after.keys_issued_in_arrears, after.keys_after_paying), (0, after.arrears_paid));
    assert!(
        after.refunds_closed > 1 && after.refunds_net_of_arrears == 1,
        "the owing leaver's arrears came out of the deposit: {after:?}"
    );
    assert_eq!((after.refunds_held_owing, after.refunds_failed), (0, 0), "{after:?}");
}

/// Issue 17 item 16: the gateway side sized batches by scan count alone,
/// and at 1 KiB frames the server refused most of them (9 of 702 acked).
/// Batches are now cut to fit the frame as well: every scan arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_fits_its_batches_to_the_smallest_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = farestream::config::Config::defaults();
    config.wire.frame_bytes_max = 1_024;
    let options = farestream::demo::DemoOptions {
        data_dir: dir.path().to_path_buf(),
        config,
        city: farestream::sim::CitySpec {
            riders: 300,
            gateways: 2,
            validators_per_gateway: 2,
            trips_per_rider: 2.0,
            denied_riders_percent: 0.0,
            redelivery_percent: 0.0,
            seed: 5,
        },
        // A short day: each upload holds many scans, many kilobytes.
        day_secs: 1.0,
        show_progress: false,
    };
    let summary = farestream::demo::run_demo(options).await.expect("demo");
    assert!(summary.fleet.errors.is_empty(), "{:?}", summary.fleet.errors);
    assert!(summary.is_consistent(), "{}", summary.render());
    let rows = farestream::archive::read::read_all(&summary.archive_root).expect("rows");
    assert_eq!(rows.len() as u64, summary.fleet.planned_total());
    assert!(
        summary.fleet.batches_sent > rows.len() as u64 / 5,
        "small frames, many batches: {}",
        summary.fleet.batches_sent
    );
}
