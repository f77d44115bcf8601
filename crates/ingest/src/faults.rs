//! Failpoints for the durability code: fsync, rename and "disk full" can be
//! made to fail on demand, so tests show what the server does when the
//! kernel says no. Production code holds a `Faults` with nothing switched on;
//! the checks cost one relaxed atomic load each.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Linux's ENOSPC, so an injected "disk full" looks exactly like a real one.
const ENOSPC: i32 = 28;

#[derive(Debug, Default)]
pub struct Faults {
    fsync_fails: AtomicBool,
    rename_fails: AtomicBool,
    disk_full: AtomicBool,
    /// Every pricing pass fails while on, as a money store that cannot be
    /// written would make it: the pricer falls behind the log.
    pricing_stalled: AtomicBool,
    /// Milliseconds the next commit holds the commit gate before it
    /// panics; 0 when off.
    commit_panic_hold_ms: AtomicU64,
    /// The named step after which the next `crash_point` stops the work.
    crash_after: Mutex<Option<&'static str>>,
    /// The named place where the next `panic_point` panics.
    panic_at: Mutex<Option<&'static str>>,
}

impl Faults {
    pub fn set_fsync_fails(&self, on: bool) {
        self.fsync_fails.store(on, Ordering::Relaxed);
    }

    pub fn set_rename_fails(&self, on: bool) {
        self.rename_fails.store(on, Ordering::Relaxed);
    }

    pub fn set_disk_full(&self, on: bool) {
        self.disk_full.store(on, Ordering::Relaxed);
    }

    pub fn set_pricing_stalled(&self, on: bool) {
        self.pricing_stalled.store(on, Ordering::Relaxed);
    }

    /// Call before each pricing pass.
    pub fn before_pricing(&self) -> io::Result<()> {
        if self.pricing_stalled.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected: pricing stalled"));
        }
        Ok(())
    }

    /// The next batch to commit holds the commit gate for `hold`, then
    /// panics (once): a bug that strikes after its claims are made.
    pub fn panic_in_next_commit(&self, hold: Duration) {
        let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        self.commit_panic_hold_ms.store(ms, Ordering::Relaxed);
    }

    /// Call inside the commit, after the claims.
    pub fn during_commit(&self) {
        let hold_ms = self.commit_panic_hold_ms.swap(0, Ordering::Relaxed);
        if hold_ms > 0 {
            std::thread::sleep(Duration::from_millis(hold_ms));
            panic!("injected panic while committing");
        }
    }

    /// The work stops right after `step`, as if the process died there:
    /// once, with an error, leaving the disk as that step left it.
    pub fn crash_after(&self, step: &'static str) {
        *farestream_core::sync::lock(&self.crash_after) = Some(step);
    }

    /// Call after each named step of a multi-step change.
    pub fn crash_point(&self, step: &'static str) -> io::Result<()> {
        let mut armed = farestream_core::sync::lock(&self.crash_after);
        if *armed == Some(step) {
            *armed = None;
            return Err(io::Error::other(format!("injected crash after {step}")));
        }
        Ok(())
    }

    /// The next `panic_point(step)` panics (once): a bug in a task.
    pub fn panic_at(&self, step: &'static str) {
        *farestream_core::sync::lock(&self.panic_at) = Some(step);
    }

    /// Call where a test may need a task to panic.
    pub fn panic_point(&self, step: &'static str) {
        let mut armed = farestream_core::sync::lock(&self.panic_at);
        if *armed == Some(step) {
            *armed = None;
            drop(armed);
            panic!("injected panic at {step}");
        }
    }

    /// Call before every fsync.
    pub fn before_fsync(&self) -> io::Result<()> {
        if self.fsync_fails.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }

    /// Call before every rename.
    pub fn before_rename(&self) -> io::Result<()> {
        if self.rename_fails.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected rename failure"));
        }
        Ok(())
    }

    /// Call before every write that makes a file longer.
    pub fn before_write(&self) -> io::Result<()> {
        if self.disk_full.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }
}

/// True for the error a full disk gives: worth waiting out, not fatal.
pub fn is_disk_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull || error.raw_os_error() == Some(ENOSPC)
}
