//! The archive writer thread. Parquet encoding and fsync block, so they run
//! on a thread of their own, fed through a bounded queue
//! (`archive.queue_batches_max`): when the disk falls behind, the queue
//! fills and the server's acks wait, which slows the gateways instead of
//! growing memory.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::writer::{ArchiveWriter, ClosedFile};
use crate::scan::ArchivedScan;
use crate::telemetry;

enum Command {
    Append(Vec<ArchivedScan>),
    /// Close files that are too old; sent by a timer.
    RollAged,
    /// Close every open file and report what was closed.
    Flush(oneshot::Sender<Vec<ClosedFile>>),
    /// Close every open file and end the thread.
    Stop,
}

#[derive(Debug, Clone, Error)]
#[error("archive writer stopped: {0}")]
pub struct ArchiveUnavailable(pub String);

/// The server's end of the queue. Cheap to clone.
#[derive(Clone)]
pub struct ArchiveHandle {
    commands: mpsc::Sender<Command>,
    failure: Arc<OnceLock<String>>,
}

/// Owns the writer thread; [`ArchiveService::close`] flushes and joins it.
pub struct ArchiveService {
    handle: ArchiveHandle,
    thread: JoinHandle<()>,
}

impl ArchiveService {
    pub fn spawn(writer: ArchiveWriter, queue_batches_max: usize) -> ArchiveService {
        let (commands, receiver) = mpsc::channel(queue_batches_max);
        let failure = Arc::new(OnceLock::new());
        let thread_failure = Arc::clone(&failure);
        let thread = std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || run(writer, receiver, thread_failure))
            .expect("spawning the archive writer thread");
        ArchiveService { handle: ArchiveHandle { commands, failure }, thread }
    }

    pub fn handle(&self) -> ArchiveHandle {
        self.handle.clone()
    }

    /// Closes all files and waits for the thread to end.
    pub fn close(self) -> Result<(), ArchiveUnavailable> {
        let ArchiveService { handle, thread } = self;
        // Queued behind every append already sent, so nothing queued is lost.
        let _ = handle.commands.blocking_send(Command::Stop);
        let _ = thread.join();
        let failure = handle.failure;
        match failure.get() {
            Some(reason) => Err(ArchiveUnavailable(reason.clone())),
            None => Ok(()),
        }
    }
}

impl ArchiveHandle {
    /// Queues rows; waits while the queue is full.
    pub async fn append(&self, rows: Vec<ArchivedScan>) -> Result<(), ArchiveUnavailable> {
        self.commands.send(Command::Append(rows)).await.map_err(|_| self.unavailable())
    }

    /// Closes every open file so that all rows queued so far are readable.
    pub async fn flush(&self) -> Result<Vec<ClosedFile>, ArchiveUnavailable> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Flush(reply)).await.map_err(|_| self.unavailable())?;
        answer.await.map_err(|_| self.unavailable())
    }

    /// Asks the thread to close aged files; skipped when the queue is full,
    /// since the next append will get there anyway.
    pub fn roll_aged(&self) {
        let _ = self.commands.try_send(Command::RollAged);
    }

    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.get().cloned()
    }

    fn unavailable(&self) -> ArchiveUnavailable {
        ArchiveUnavailable(self.failure().unwrap_or_else(|| "archive writer has shut down".into()))
    }
}

fn run(mut writer: ArchiveWriter, mut commands: mpsc::Receiver<Command>, failure: Arc<OnceLock<String>>) {
    while let Some(command) = commands.blocking_recv() {
        let result = match command {
            Command::Append(rows) => writer.append(&rows, Instant::now()).map(|closed| {
                telemetry::archive_rows_written(rows.len());
                closed
            }),
            Command::RollAged => writer.roll_aged(Instant::now()),
            Command::Flush(reply) => writer.close_all().map(|closed| {
                let _ = reply.send(closed.clone());
                closed
            }),
            Command::Stop => break,
        };
        match result {
            Ok(closed) => telemetry::archive_files_closed(&closed),
            Err(error) => {
                // An I/O failure may have lost data the kernel held; the
                // writer stops rather than carry on with a hole.
                tracing::error!(%error, "archive writer failed; no more scans will be acknowledged");
                telemetry::archive_failed();
                let _ = failure.set(error.to_string());
                return;
            }
        }
    }
    match writer.close_all() {
        Ok(closed) => telemetry::archive_files_closed(&closed),
        Err(error) => {
            tracing::error!(%error, "archive writer failed while closing files");
            let _ = failure.set(error.to_string());
        }
    }
}
