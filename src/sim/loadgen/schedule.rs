//! When each batch of an open-loop run is due. The generator sends at a
//! fixed rate whatever the server does, and measures each ack from the
//! moment its batch was due, not from when it was sent: a server that
//! stalls makes the batches behind the stall late, and their wait counts
//! (no coordinated omission flattering p99).

use std::time::Duration;

/// How the batches are offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Open loop: `scans_per_sec`, spread evenly over the run.
    Rate { scans_per_sec: f64 },
    /// Closed loop: each connection sends as fast as its acks (and its
    /// in-flight limit) allow; latency is then the round trip alone.
    AsFastAsAcks,
}

/// Each batch's offset from the start of the run, given the scans in each
/// (in sending order): batch `i` is due once the scans before it have had
/// their time at the rate. `None` for a closed loop.
pub fn due_offsets(scans_per_batch: &[usize], pace: Pace) -> Option<Vec<Duration>> {
    let Pace::Rate { scans_per_sec } = pace else { return None };
    let rate = scans_per_sec.max(f64::MIN_POSITIVE);
    let mut before = 0u64;
    let offsets = scans_per_batch
        .iter()
        .map(|scans| {
            let due = Duration::try_from_secs_f64(before as f64 / rate).unwrap_or(Duration::MAX);
            before += *scans as u64;
            due
        })
        .collect();
    Some(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_due_as_the_scans_before_them_allow_at_the_rate() {
        let due = due_offsets(&[100, 50, 0, 250], Pace::Rate { scans_per_sec: 1_000.0 }).expect("open loop");
        let ms: Vec<u128> = due.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 100, 150, 150]);
        assert_eq!(due_offsets(&[], Pace::Rate { scans_per_sec: 1.0 }), Some(vec![]));
        assert_eq!(due_offsets(&[5], Pace::AsFastAsAcks), None);
        let crawl = due_offsets(&[1, 1], Pace::Rate { scans_per_sec: 0.0 }).expect("a rate of 0");
        assert_eq!(crawl[1], Duration::MAX, "never due, not a panic");
    }
}
