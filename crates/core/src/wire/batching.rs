//! Cutting a gateway's scans into batches the server takes: at most
//! `batch_scans_max` scans each, and each batch's frame body within
//! `frame_bytes_max`, so a gateway never builds a batch the server must
//! refuse whole (before, batches were sized by count alone, and at 1 KiB
//! frames 9 of 702 were acked).

use std::ops::Range;

use prost::Message;

use super::{ScanBatch, ScanRecord};

/// `ScanBatch.scans`'s field number in `proto/farestream.proto`.
const SCANS_FIELD: u32 = 3;

/// The runs of `scans`, in order, that make batches within both limits:
/// each run as long as both allow. A scan too large for any frame is a
/// run of its own (the server answers that batch `MALFORMED`, naming the
/// size), so the scans around it still go.
pub fn batch_runs(
    gateway_id: &str,
    scans: &[ScanRecord],
    frame_bytes_max: u32,
    batch_scans_max: usize,
) -> Vec<Range<usize>> {
    // The envelope at the largest sequence number a batch can carry.
    let envelope =
        ScanBatch { gateway_id: gateway_id.to_string(), batch_seq: u64::MAX, scans: Vec::new() }.encoded_len();
    let limit = usize::try_from(frame_bytes_max).unwrap_or(usize::MAX);
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, envelope);
    for (i, scan) in scans.iter().enumerate() {
        let size = prost::encoding::message::encoded_len(SCANS_FIELD, scan);
        let full = i - start >= batch_scans_max.max(1) || bytes.saturating_add(size) > limit;
        if i > start && full {
            runs.push(start..i);
            (start, bytes) = (i, envelope);
        }
        bytes = bytes.saturating_add(size);
    }
    if start < scans.len() {
        runs.push(start..scans.len());
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(code_bytes: usize) -> ScanRecord {
        ScanRecord {
            validator_id: "gate-1".into(),
            validator_seq: 7,
            ride_code: vec![0xab; code_bytes],
            ..Default::default()
        }
    }

    fn body_len(gateway_id: &str, scans: &[ScanRecord]) -> usize {
        ScanBatch { gateway_id: gateway_id.into(), batch_seq: u64::MAX, scans: scans.to_vec() }.encoded_len()
    }

    #[test]
    fn every_batch_fits_its_frame_and_its_count_and_nothing_is_left_out() {
        let scans: Vec<ScanRecord> = (0..700).map(|i| scan(150 + i % 60)).collect();
        for (frame, count) in [(1_024, 500), (4_096, 10), (16 << 20, 500), (300, 500)] {
            let runs = batch_runs("depot-1", &scans, frame, count);
            let covered: usize = runs.iter().map(|r| r.len()).sum();
            assert_eq!(covered, scans.len(), "frame {frame}");
            assert!(runs.windows(2).all(|w| w[0].end == w[1].start), "in order, no gap");
            for run in &runs {
                assert!(run.len() <= count && !run.is_empty());
                let fits = body_len("depot-1", &scans[run.clone()]) <= frame as usize;
                assert!(
                    fits || run.len() == 1,
                    "frame {frame}: {run:?} is {} bytes",
                    body_len("depot-1", &scans[run.clone()])
                );
            }
        }
    }

    #[test]
    fn at_its_extremes_it_never_panics() {
        assert!(batch_runs("", &[], 0, 0).is_empty());
        assert_eq!(batch_runs("", &[scan(10)], 0, 0), vec![0..1], "too large alone: a batch of its own");
        assert_eq!(batch_runs("", &[scan(10), scan(10)], u32::MAX, 0), [0..1, 1..2], "a count of 0 is 1");
        let huge = [scan(2_000), scan(10), scan(10)];
        assert_eq!(batch_runs("g", &huge, 1_024, 500), [0..1, 1..3]);
    }
}
