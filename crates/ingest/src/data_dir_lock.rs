//! One server per data directory. Two servers over one data directory
//! interleave their log segments, archive files and money store until
//! neither can start again, so a server holds an exclusive lock on the
//! directory's `LOCK` file for as long as it runs, and a second is refused
//! with the holder named.
//!
//! The lock is the kernel's (`flock` through `File::try_lock`): it goes
//! with the process, so a crashed server leaves nothing to clean up and
//! the next start takes the lock at once. The file's text (process id, when
//! it started) only names the holder in the refusal; it is never trusted to
//! decide anything.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// The most of the holder's description a refusal reads and quotes.
const HOLDER_TEXT_BYTES_MAX: u64 = 256;

#[derive(Debug, Error)]
pub enum DataDirLockError {
    #[error(
        "data dir {dir} is in use by another farestream server ({holder}); stop it first, or give this one its own --data-dir"
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock data dir {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
}

/// Held while a server runs over its data directory; dropping it (or the
/// process ending, however it ends) lets the next server in.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the data directory's lock, creating the directory if need be,
    /// and writes who holds it; refuses when another process (or another
    /// server in this one) holds it.
    pub fn acquire(dir: &Path, started_at: &str) -> Result<DataDirLock, DataDirLockError> {
        let io = |source| DataDirLockError::Io { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DataDirLockError::Held { dir: dir.to_path_buf(), holder: holder_of(&mut file) });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        let holder = format!("pid {}, started {started_at}\n", std::process::id());
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(holder.as_bytes()).map_err(io)?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What the holder wrote about itself, at most `HOLDER_TEXT_BYTES_MAX`.
fn holder_of(file: &mut File) -> String {
    let mut text = Vec::new();
    let read = file.seek(SeekFrom::Start(0)).and_then(|_| file.take(HOLDER_TEXT_BYTES_MAX).read_to_end(&mut text));
    let text = String::from_utf8_lossy(&text).trim().to_string();
    match read {
        Ok(_) if !text.is_empty() => text,
        _ => "a holder that has not said who it is yet".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_until_it_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("not-yet-made");
        let first = DataDirLock::acquire(&data, "2026-12-02T10:00:00Z").expect("first");
        let refused = DataDirLock::acquire(&data, "later").expect_err("second");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())) && message.contains("2026-12-02T10:00:00Z"),
            "{message}"
        );
        assert!(matches!(refused, DataDirLockError::Held { .. }));
        drop(first);
        let again = DataDirLock::acquire(&data, "2026-12-02T11:00:00Z").expect("free again once dropped");
        let text = std::fs::read_to_string(again.path()).expect("read");
        assert_eq!(
            text,
            format!("pid {}, started 2026-12-02T11:00:00Z\n", std::process::id()),
            "the old text replaced"
        );
    }

    #[test]
    fn a_holder_that_wrote_nothing_or_garbage_is_still_named_within_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LOCK_FILE);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).expect("open");
        file.try_lock().expect("lock");
        let refused = DataDirLock::acquire(dir.path(), "now").expect_err("held");
        assert!(refused.to_string().contains("not said who it is"), "{refused}");
        file.write_all(&[0xff; 10_000]).expect("garbage");
        let refused = DataDirLock::acquire(dir.path(), "now").expect_err("held").to_string();
        assert!(refused.len() < 256 * 3 + 300, "the quote is bounded: {} bytes", refused.len());
    }
}
