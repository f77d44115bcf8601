//! What the two threads that read the write-ahead log forward (the
//! archiver and the pricer) share: one loop ([`ReaderHandle::spawn`] runs a
//! [`LogStep`] in it: poll, step, answer a flush, rewind and retry after a
//! passing failure, stop for good on a fatal one), a command channel
//! (flush now, stop, halt), a status the server reads, and the handle that sends
//! the commands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use farestream_core::sync::lock;

/// The lowest log position each reader besides the archiver still needs;
/// segments before it are kept.
#[derive(Debug)]
pub struct LogReaders {
    pricer_lsn: AtomicU64,
    /// Where a restart from the dedup snapshot in place replays from.
    snapshot_lsn: AtomicU64,
    /// Where the dedup snapshot being written will replay from (0 until
    /// it knows).
    snapshot_writing_lsn: AtomicU64,
}

impl LogReaders {
    /// The pricer starting at `pricer_lsn`, no dedup snapshot yet.
    pub fn new(pricer_lsn: u64) -> LogReaders {
        LogReaders {
            pricer_lsn: AtomicU64::new(pricer_lsn),
            snapshot_lsn: AtomicU64::new(u64::MAX),
            snapshot_writing_lsn: AtomicU64::new(u64::MAX),
        }
    }

    /// Nobody but the archiver reads the log.
    pub fn none() -> Arc<LogReaders> {
        Arc::new(LogReaders::new(u64::MAX))
    }

    /// The lowest position still needed.
    pub fn floor(&self) -> u64 {
        let snapshots =
            self.snapshot_lsn.load(Ordering::Acquire).min(self.snapshot_writing_lsn.load(Ordering::Acquire));
        self.pricer_lsn.load(Ordering::Acquire).min(snapshots)
    }

    /// A dedup snapshot is about to be written: keep every segment until
    /// it knows where it replays from. Called before that position is
    /// read, so a segment it needs cannot go in between (a cut that read
    /// the floor before this only deletes below what was durable then).
    pub fn snapshot_starting(&self) {
        self.snapshot_writing_lsn.store(0, Ordering::Release);
    }

    /// The snapshot being written replays from `lsn`.
    pub fn snapshot_writing_from(&self, lsn: u64) {
        self.snapshot_writing_lsn.store(lsn, Ordering::Release);
    }

    /// The dedup snapshot in place replays from `lsn`: the segments from
    /// there on are kept for a restart.
    pub fn snapshot_in_place(&self, lsn: u64) {
        self.snapshot_lsn.store(lsn, Ordering::Release);
        self.snapshot_writing_lsn.store(u64::MAX, Ordering::Release);
    }

    /// A snapshot could not be written: keep no segment for any, so a
    /// run of failures cannot fill the disk with log. The one in place
    /// may then go stale; a restart refuses it and reads the archive.
    pub fn snapshot_failed(&self) {
        self.snapshot_lsn.store(u64::MAX, Ordering::Release);
        self.snapshot_writing_lsn.store(u64::MAX, Ordering::Release);
    }

    /// The pricer has passed `lsn` (called by the pricer alone, in the
    /// money crate: segments before it may go).
    pub fn advance(&self, lsn: u64) {
        self.pricer_lsn.store(lsn, Ordering::Release);
    }
}

/// A status that can say why its thread stopped for good.
pub trait ReaderStatus: Clone + Default + Send + 'static {
    fn failure(&self) -> Option<String>;
    /// The thread stopped for good, for `reason`.
    fn set_failure(&mut self, reason: String);
}

/// How one round of a reader went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepFailure {
    /// Something that may pass (a full disk, a busy store): the reader
    /// rewinds to its last durable position and tries again; the log
    /// still holds every record.
    Retry(String),
    /// The log is damaged, or an fsync or rename failed: the reader stops
    /// for good, and the server with it.
    Fatal(String),
}

/// One reader's work: what the shared loop calls each round.
pub trait LogStep: Send + 'static {
    /// What the thread is called in logs ("archiver", "pricer").
    const NAME: &'static str;
    /// Reads what is durable and does the reader's work; `asked` when a
    /// flush or a stop wants everything done now. The position reached.
    fn step(&mut self, asked: bool) -> Result<u64, StepFailure>;
    /// Back to the last durable position after a [`StepFailure::Retry`];
    /// a failure here is fatal.
    fn rewind(&mut self) -> Result<(), String>;
    /// Counts a retried round (the reader's own metric).
    fn count_retry(&self);
    /// Counts the fatal failure (the reader's own metric).
    fn count_failure(&self) {}
    /// Runs once on the reader's own thread before its first round.
    fn started(&mut self) {}
}

/// The loop every log reader runs until stopped or failed for good.
fn run_reader<R: LogStep, S: ReaderStatus>(
    mut reader: R,
    commands: &Receiver<Command>,
    status: &Mutex<S>,
    (poll, retry_after): (Duration, Duration),
) {
    reader.started();
    loop {
        let (reply, stop) = match next_command(commands, poll) {
            Some(Command::Flush(reply)) => (Some(reply), false),
            Some(Command::Stop) => (None, true),
            Some(Command::Halt(halted)) => {
                // Dropped before the answer: whatever it held open stays
                // as it is, and nothing of it runs after `halt` returns.
                drop(reader);
                let _ = halted.send(());
                return;
            }
            None => (None, false),
        };
        let result = match reader.step(reply.is_some() || stop) {
            Err(StepFailure::Retry(error)) => {
                tracing::warn!(reader = R::NAME, %error, "a round failed; rewinding and trying again");
                reader.count_retry();
                match reader.rewind() {
                    Ok(()) => Err(StepFailure::Retry(error)),
                    Err(cleanup) => Err(StepFailure::Fatal(format!("{error}, then rewinding after it: {cleanup}"))),
                }
            }
            other => other,
        };
        if let Err(StepFailure::Fatal(reason)) = &result {
            tracing::error!(reader = R::NAME, %reason, "a log reader failed; the server stops");
            reader.count_failure();
            lock(status).set_failure(reason.clone());
            if let Some(reply) = reply {
                let _ = reply.send(Err(reason.clone()));
            }
            return;
        }
        let failed = result.is_err();
        if let Some(reply) = reply {
            let _ = reply.send(result.map_err(|e| match e {
                StepFailure::Retry(reason) | StepFailure::Fatal(reason) => reason,
            }));
        }
        if stop {
            return;
        }
        if failed {
            std::thread::sleep(retry_after);
        }
    }
}

enum Command {
    /// Do everything durable now; answer with the position reached.
    Flush(oneshot::Sender<Result<u64, String>>),
    Stop,
    /// End now, between two rounds, without doing anything more (what a
    /// process death does); answered once the reader is gone.
    Halt(oneshot::Sender<()>),
}

/// The next command, or `None` when `poll` passed without one; a dropped
/// handle reads as `Stop`.
fn next_command(commands: &Receiver<Command>, poll: Duration) -> Option<Command> {
    match commands.recv_timeout(poll) {
        Ok(command) => Some(command),
        Err(RecvTimeoutError::Timeout) => None,
        Err(RecvTimeoutError::Disconnected) => Some(Command::Stop),
    }
}

/// A running log reader thread.
pub struct ReaderHandle<S: ReaderStatus> {
    name: &'static str,
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<S>>,
    thread: JoinHandle<()>,
}

impl<S: ReaderStatus> ReaderHandle<S> {
    /// Runs `reader` in the shared loop on a thread of its own: a round
    /// every `poll` or at a command, `retry_after` after a failed one. It
    /// reports through `status`.
    pub fn spawn<R: LogStep>(
        reader: R,
        status: Arc<Mutex<S>>,
        poll: Duration,
        retry_after: Duration,
    ) -> ReaderHandle<S> {
        let (commands, receiver) = mpsc::channel();
        let shared = Arc::clone(&status);
        let thread = std::thread::Builder::new()
            .name(R::NAME.into())
            .spawn(move || run_reader(reader, &receiver, &shared, (poll, retry_after)))
            .unwrap_or_else(|e| panic!("spawning the {} thread: {e}", R::NAME));
        ReaderHandle { name: R::NAME, commands, status, thread }
    }

    pub fn status(&self) -> S {
        lock(&self.status).clone()
    }

    /// Why the thread stopped for good, if it did.
    pub fn failure(&self) -> Option<String> {
        lock(&self.status).failure()
    }

    /// Does everything durable so far; the position reached.
    pub async fn flush(&self) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Flush(reply)).map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Does everything durable and ends the thread. Call after the log's
    /// commit thread has closed.
    pub fn close(self) -> S {
        let _ = self.commands.send(Command::Stop);
        let _ = self.thread.join();
        lock(&self.status).clone()
    }

    /// Ends the thread between two rounds without a last one: nothing
    /// more is written, flushed or closed, as when the process dies. For
    /// tests that kill a server inside one process: a thread left running
    /// would write into the data dir a new server has recovered.
    pub async fn halt(&self) {
        let (halted, answer) = oneshot::channel();
        if self.commands.send(Command::Halt(halted)).is_ok() {
            // An error: the thread had already ended.
            let _ = answer.await;
        }
    }

    fn stopped(&self) -> String {
        self.failure().unwrap_or_else(|| format!("the {} has stopped", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor follows the pricer and the dedup snapshots: everything
    /// while one starts, its position while it is written and once in
    /// place, nothing for snapshots after one failed.
    #[test]
    fn the_floor_keeps_what_the_pricer_and_the_snapshots_need() {
        let readers = LogReaders::new(500);
        assert_eq!(readers.floor(), 500);
        readers.snapshot_starting();
        assert_eq!(readers.floor(), 0);
        readers.snapshot_writing_from(300);
        assert_eq!(readers.floor(), 300);
        readers.snapshot_in_place(300);
        readers.advance(900);
        assert_eq!(readers.floor(), 300);
        readers.snapshot_starting();
        readers.snapshot_writing_from(800);
        assert_eq!(readers.floor(), 300, "the one in place is still kept");
        readers.snapshot_failed();
        assert_eq!(readers.floor(), 900);
    }

    /// A reader whose rounds go as scripted: each `Err` is one round's failure.
    struct Scripted {
        rounds: std::vec::IntoIter<Result<u64, StepFailure>>,
        rewinds: Arc<AtomicU64>,
        rewind_fails: bool,
    }

    impl LogStep for Scripted {
        const NAME: &'static str = "scripted";

        fn step(&mut self, _asked: bool) -> Result<u64, StepFailure> {
            self.rounds.next().unwrap_or(Ok(99))
        }

        fn rewind(&mut self) -> Result<(), String> {
            self.rewinds.fetch_add(1, Ordering::Relaxed);
            if self.rewind_fails { Err("the checkpoint is gone".into()) } else { Ok(()) }
        }

        fn count_retry(&self) {}
    }

    #[derive(Debug, Clone, Default)]
    struct Status(Option<String>);

    impl ReaderStatus for Status {
        fn failure(&self) -> Option<String> {
            self.0.clone()
        }

        fn set_failure(&mut self, reason: String) {
            self.0 = Some(reason);
        }
    }

    fn spawn(rounds: Vec<Result<u64, StepFailure>>, rewind_fails: bool) -> (ReaderHandle<Status>, Arc<AtomicU64>) {
        let rewinds = Arc::new(AtomicU64::new(0));
        let reader = Scripted { rounds: rounds.into_iter(), rewinds: Arc::clone(&rewinds), rewind_fails };
        let hour = Duration::from_secs(3600);
        (ReaderHandle::spawn(reader, Arc::default(), hour, Duration::ZERO), rewinds)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime")
    }

    #[test]
    fn a_passing_failure_is_answered_rewound_and_the_next_flush_goes_on() {
        let (handle, rewinds) = spawn(vec![Err(StepFailure::Retry("disk full".into())), Ok(7)], false);
        let rt = runtime();
        assert_eq!(rt.block_on(handle.flush()), Err("disk full".into()));
        assert_eq!(rewinds.load(Ordering::Relaxed), 1);
        assert_eq!(rt.block_on(handle.flush()), Ok(7));
        assert_eq!(handle.close().0, None, "a passing failure is not a failure for good");
    }

    /// A reader that counts its rounds and its drop.
    struct Counted {
        rounds: Arc<AtomicU64>,
        dropped: Arc<AtomicU64>,
    }

    impl LogStep for Counted {
        const NAME: &'static str = "counted";

        fn step(&mut self, _asked: bool) -> Result<u64, StepFailure> {
            Ok(self.rounds.fetch_add(1, Ordering::SeqCst))
        }

        fn rewind(&mut self) -> Result<(), String> {
            Ok(())
        }

        fn count_retry(&self) {}
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Halted, a reader runs no last round (a stop flushes), is gone once
    /// `halt` returns, and a second halt or a flush after it only answers.
    #[test]
    fn a_halted_reader_runs_no_round_more_and_is_gone_when_halt_returns() {
        let (rounds, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let reader = Counted { rounds: Arc::clone(&rounds), dropped: Arc::clone(&dropped) };
        let handle: ReaderHandle<Status> =
            ReaderHandle::spawn(reader, Arc::default(), Duration::from_millis(1), Duration::ZERO);
        let rt = runtime();
        while rounds.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        rt.block_on(handle.halt());
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the reader is gone when halt returns");
        let after_halt = rounds.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rounds.load(Ordering::SeqCst), after_halt, "no round after the halt");
        rt.block_on(handle.halt());
        assert!(rt.block_on(handle.flush()).is_err(), "a halted reader answers that it has stopped");
        handle.close();
        assert_eq!(rounds.load(Ordering::SeqCst), after_halt, "closing a halted reader runs no last round");
    }

    #[test]
    fn a_fatal_failure_or_a_failed_rewind_stops_the_reader_for_good() {
        let rt = runtime();
        let (handle, rewinds) = spawn(vec![Err(StepFailure::Fatal("torn record".into()))], false);
        assert_eq!(rt.block_on(handle.flush()), Err("torn record".into()));
        assert_eq!(rewinds.load(Ordering::Relaxed), 0, "nothing to rewind to after damage");
        assert_eq!(rt.block_on(handle.flush()), Err("torn record".into()), "stopped: its failure answers");
        assert_eq!(handle.close().0.as_deref(), Some("torn record"));

        let (handle, _) = spawn(vec![Err(StepFailure::Retry("disk full".into()))], true);
        let reason = rt.block_on(handle.flush()).expect_err("the rewind failed");
        assert_eq!(reason, "disk full, then rewinding after it: the checkpoint is gone");
        assert_eq!(handle.failure(), Some(reason));
    }
}
