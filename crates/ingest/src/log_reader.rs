//! What the two threads that read the write-ahead log forward (the
//! archiver and the pricer) share: a command channel (flush now, stop), a
//! status the server reads, and the handle that sends the commands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use farestream_core::sync::lock;

/// The lowest log position each reader besides the archiver still needs;
/// segments before it are kept.
#[derive(Debug, Default)]
pub struct LogReaders {
    pricer_lsn: AtomicU64,
}

impl LogReaders {
    /// The pricer starting at `pricer_lsn`.
    pub fn new(pricer_lsn: u64) -> LogReaders {
        LogReaders { pricer_lsn: AtomicU64::new(pricer_lsn) }
    }

    /// Nobody but the archiver reads the log.
    pub fn none() -> Arc<LogReaders> {
        Arc::new(LogReaders::new(u64::MAX))
    }

    /// The lowest position still needed.
    pub fn floor(&self) -> u64 {
        self.pricer_lsn.load(Ordering::Acquire)
    }

    /// The pricer has passed `lsn`.
    pub fn advance(&self, lsn: u64) {
        self.pricer_lsn.store(lsn, Ordering::Release);
    }
}

/// A status that can say why its thread stopped for good.
pub trait ReaderStatus: Clone + Default + Send + 'static {
    fn failure(&self) -> Option<String>;
}

pub enum Command {
    /// Do everything durable now; answer with the position reached.
    Flush(oneshot::Sender<Result<u64, String>>),
    Stop,
}

/// The next command, or `None` when `poll` passed without one; a dropped
/// handle reads as `Stop`.
pub fn next_command(commands: &Receiver<Command>, poll: Duration) -> Option<Command> {
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
    /// Starts `run` on a thread named `name`, with the receiving end of the
    /// commands; it reports through `status`.
    pub fn spawn(
        name: &'static str,
        status: Arc<Mutex<S>>,
        run: impl FnOnce(Receiver<Command>) + Send + 'static,
    ) -> ReaderHandle<S> {
        let (commands, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(receiver))
            .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
        ReaderHandle { name, commands, status, thread }
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

    fn stopped(&self) -> String {
        self.failure().unwrap_or_else(|| format!("the {} has stopped", self.name))
    }
}
