//! A hostile gateway: pushes batches built to cost the server as much CPU
//! per wire byte as it can, as fast as its streams allow, for a bounded
//! time. `farestream flood` runs it beside `simulate` to measure what an
//! honest gateway's acks suffer (`scripts/hostile-load.sh`).
//!
//! Every batch is new to the server (its validator sequence numbers move
//! on), so none is dropped as a re-delivery; the ride codes are reused,
//! which costs the flooder nothing and the server the same verification.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::gateway::GatewayClient;
use crate::ridecode::format::{CODE_SIGNED_LEN, RIDE_CODE_LEN};
use crate::ridecode::{IssuerSigningKey, KeyError, UserKey};
use crate::wire::{ScanBatch, ScanRecord, WireTapKind};
use farestream_core::clock::{UnixMillis, unix_secs_u32};

/// What the hostile batches hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodKind {
    /// Codes under the real issuer key, every 64th with a wrong user
    /// signature: each batch-verification chunk fails once.
    #[value(name = "one-bad-per-64")]
    OneBadPer64,
    /// Credentials and codes whose issuer and user signatures are both
    /// wrong but valid curve points: two failed signatures per scan.
    BadIssuerAndUser,
}

#[derive(Debug, Clone)]
pub struct FloodSettings {
    pub kind: FloodKind,
    pub batch_scans: usize,
    /// Pushes in flight at once (streams on the one connection).
    pub streams: usize,
    pub duration: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    pub batches_acked: u64,
    pub scans_acked: u64,
    pub errors: u64,
    pub wire_bytes: u64,
}

/// The ride codes every batch reuses: one per scan slot.
pub fn hostile_codes(
    kind: FloodKind,
    issuer: &IssuerSigningKey,
    scans: usize,
    now: UnixMillis,
) -> Result<Vec<Vec<u8>>, KeyError> {
    let at = unix_secs_u32(now);
    let forger = IssuerSigningKey::from_seed(issuer.key_id(), &[0xf0; 32])?;
    let signer = if kind == FloodKind::BadIssuerAndUser { &forger } else { issuer };
    let mut codes = Vec::with_capacity(scans);
    let mut previous_signature = [0u8; 64];
    for i in 0..scans {
        let mut seed = [0xa5u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let user = UserKey::from_seed(&seed)?;
        let credential = signer.issue(9_000_000 + i as u64, user.public_key(), at - 3_600, at + 80_000);
        let mut code = user.make_code(&credential, at, 1).bytes.to_vec();
        let forge_user = kind == FloodKind::BadIssuerAndUser || i % 64 == 0;
        let own_signature: [u8; 64] = code[CODE_SIGNED_LEN..RIDE_CODE_LEN].try_into().unwrap_or([0; 64]);
        if forge_user && i > 0 {
            // Another code's signature: a valid encoding over other bytes.
            code[CODE_SIGNED_LEN..RIDE_CODE_LEN].copy_from_slice(&previous_signature);
        }
        previous_signature = own_signature;
        codes.push(code);
    }
    Ok(codes)
}

/// Pushes hostile batches until `settings.duration` has passed.
pub async fn run_flood(client: GatewayClient, codes: Arc<Vec<Vec<u8>>>, settings: FloodSettings) -> FloodReport {
    let started = Instant::now();
    let next_batch = Arc::new(AtomicU64::new(0));
    let report = Arc::new(std::sync::Mutex::new(FloodReport::default()));
    let streams: Vec<_> = (0..settings.streams.max(1))
        .map(|_| {
            let (client, codes, next_batch, report, settings) =
                (client.clone(), Arc::clone(&codes), Arc::clone(&next_batch), Arc::clone(&report), settings.clone());
            tokio::spawn(async move {
                while started.elapsed() < settings.duration {
                    let seq = next_batch.fetch_add(1, Ordering::Relaxed);
                    let batch = hostile_batch(
                        &codes,
                        seq,
                        crate::clock_source::Clock::now_ms(&crate::clock_source::SystemClock),
                    );
                    let bytes = crate::wire::encode_frame(&batch).len() as u64;
                    let answer = client.push(&batch).await;
                    let mut report = crate::sync::lock(&report);
                    report.wire_bytes += bytes;
                    match answer {
                        Ok(ack) => {
                            report.batches_acked += 1;
                            report.scans_acked += u64::from(ack.accepted + ack.rejected + ack.redelivered);
                        }
                        Err(_) => report.errors += 1,
                    }
                }
            })
        })
        .collect();
    for stream in streams {
        let _ = stream.await;
    }
    client.close().await;
    crate::sync::lock(&report).clone()
}

/// The gateway a flood pushes as (its validators are `flood/…`): an
/// enrolled one, since a peer with no certificate cannot push at all.
pub const FLOOD_GATEWAY: &str = "flood";

fn hostile_batch(codes: &[Vec<u8>], seq: u64, now: UnixMillis) -> ScanBatch {
    let scans = codes
        .iter()
        .enumerate()
        .map(|(i, code)| ScanRecord {
            validator_id: format!("{FLOOD_GATEWAY}/{:03}", i % 64),
            validator_seq: seq * codes.len() as u64 + i as u64,
            validator_time_ms: now,
            route_id: "flood".into(),
            stop_id: "flood".into(),
            tap_kind: WireTapKind::Single as i32,
            ride_code: code.clone(),
            ..Default::default()
        })
        .collect();
    ScanBatch { gateway_id: FLOOD_GATEWAY.into(), batch_seq: seq, scans }
}
