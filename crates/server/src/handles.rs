//! What a server runs with that is not a setting: the clock it reads, the
//! failpoints its durability code checks, and how it tells riders things.
//! Settings (`server::ServerSettings`) are plain data from the config; these
//! are live objects a caller may swap (a test's manual clock and inbox, the
//! demo's compressed day), handed to each job that needs them.

use std::sync::Arc;

use farestream_ingest::clock_source::{Clock, SystemClock};
use farestream_ingest::faults::Faults;
use farestream_money::notify::{LogNotifier, Notifier};

/// The clock, the failpoints and the notifier, shared by every job.
#[derive(Debug, Clone)]
pub struct Handles {
    /// Where every job reads `now`.
    pub clock: Arc<dyn Clock>,
    /// Failpoints; none switched on outside tests.
    pub faults: Arc<Faults>,
    /// How riders are told things (one-time codes, refunds held back).
    pub notifier: Arc<dyn Notifier>,
}

impl Default for Handles {
    /// The wall clock, no failpoints, messages to the log.
    fn default() -> Handles {
        Handles { clock: Arc::new(SystemClock), faults: Arc::default(), notifier: Arc::new(LogNotifier) }
    }
}
