//! Where the shell gets `now`. The core never reads a clock; the shell reads
//! one of these and passes the time in, so tests and the demo can run a
//! service day faster than real time.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use farestream_core::clock::UnixMillis;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> UnixMillis;
}

/// A span in whole milliseconds as the core counts time; one too long for
/// an `i64` (about 292 million years) saturates.
pub fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        duration_ms(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
    }
}

/// A clock that starts at `start_ms` and runs `speedup` times faster than
/// the wall clock: the demo's compressed service day. It may be made held
/// at `start_ms` until [`ScaledClock::run`] (the demo's riders fetch their
/// keys before the day begins).
#[derive(Debug, Clone)]
pub struct ScaledClock {
    start_ms: UnixMillis,
    wall_start: std::sync::OnceLock<Instant>,
    speedup: f64,
}

impl ScaledClock {
    /// Running from now.
    pub fn new(start_ms: UnixMillis, speedup: f64) -> ScaledClock {
        let clock = ScaledClock::held(start_ms, speedup);
        clock.run();
        clock
    }

    /// Held at `start_ms` until `run`.
    pub fn held(start_ms: UnixMillis, speedup: f64) -> ScaledClock {
        ScaledClock { start_ms, wall_start: std::sync::OnceLock::new(), speedup }
    }

    /// Starts the clock; a second call changes nothing.
    pub fn run(&self) {
        let _ = self.wall_start.set(Instant::now());
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> UnixMillis {
        let Some(wall_start) = self.wall_start.get() else { return self.start_ms };
        let elapsed_ms = wall_start.elapsed().as_secs_f64() * 1000.0 * self.speedup;
        self.start_ms + elapsed_ms as i64
    }
}

/// A clock that only moves when told to: tests and benches.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: std::sync::atomic::AtomicI64,
}

impl ManualClock {
    pub fn new(now_ms: UnixMillis) -> ManualClock {
        ManualClock { now_ms: std::sync::atomic::AtomicI64::new(now_ms) }
    }

    pub fn set(&self, now_ms: UnixMillis) {
        self.now_ms.store(now_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.now_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}
