//! The archive checkpoint: the LSN up to which every log record is in a
//! closed, renamed, fsynced Parquet file. Written after each cut (temporary
//! file, fsync, rename, directory fsync). On start, anything the checkpoint
//! does not cover is cleaned away and archived again from the log.

use std::fs;
use std::path::{Path, PathBuf};

use super::parquet_writer::{ArchiveError, file_lsn_range, sync_dir};
use super::read::archive_files;
use crate::faults::Faults;

const KEY: &str = "archived_lsn = ";

pub fn checkpoint_path(data_dir: &Path) -> PathBuf {
    data_dir.join("archive").join("checkpoint")
}

/// The archived LSN; 0 when there is no checkpoint yet.
pub fn read_checkpoint(path: &Path) -> Result<u64, ArchiveError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(ArchiveError::Io { path: path.to_path_buf(), source }),
    };
    text.trim().strip_prefix(KEY).and_then(|n| n.parse().ok()).ok_or_else(|| ArchiveError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("checkpoint is not `{KEY}N`: {text:?}")),
    })
}

pub fn write_checkpoint(path: &Path, archived_lsn: u64, faults: &Faults) -> Result<(), ArchiveError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| ArchiveError::Io { path: dir.to_path_buf(), source })?;
    replace_durably(path, dir, format!("{KEY}{archived_lsn}\n").as_bytes(), faults)
}

/// Puts `bytes` at `path` so that a crash leaves the old file or the new
/// one, never a part: a hidden temporary in `tmp_dir` (on the same file
/// system; for a marker, outside its partition), fsync, rename, directory
/// fsync. The checkpoint and the `_SUCCESS` markers use it.
pub fn replace_durably(path: &Path, tmp_dir: &Path, bytes: &[u8], faults: &Faults) -> Result<(), ArchiveError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    fs::create_dir_all(tmp_dir).map_err(|source| ArchiveError::Io { path: tmp_dir.to_path_buf(), source })?;
    let tmp = tmp_dir.join(format!(".{name}.tmp"));
    let io = |source| ArchiveError::Io { path: tmp.clone(), source };
    faults.before_write().map_err(io)?;
    fs::write(&tmp, bytes).map_err(io)?;
    let fsync = |source| ArchiveError::Fsync { path: tmp.clone(), source };
    fs::File::open(&tmp).and_then(|f| crate::files::fsync(&f, faults)).map_err(fsync)?;
    rename_durably(&tmp, path, faults)
}

/// Renames `tmp`, already fsynced, to `path`, then fsyncs `path`'s folder
/// so the rename survives a crash.
pub fn rename_durably(tmp: &Path, path: &Path, faults: &Faults) -> Result<(), ArchiveError> {
    let rename = |source| ArchiveError::Rename { path: tmp.to_path_buf(), source };
    faults.before_rename().map_err(rename)?;
    fs::rename(tmp, path).map_err(rename)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")), faults)
}

/// What cleaning after a crash removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Files still being written when the process stopped.
    pub unfinished: usize,
    /// Files renamed into place by a cut whose checkpoint never landed.
    pub uncheckpointed: usize,
}

/// Removes every archive file the checkpoint does not cover, so the log
/// can be archived again from `archived_lsn` with nothing counted twice.
pub fn clean_after_crash(root: &Path, archived_lsn: u64, faults: &Faults) -> Result<Cleanup, ArchiveError> {
    let mut cleanup = Cleanup::default();
    if !root.exists() {
        return Ok(cleanup);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { path, source }
    };
    for partition in fs::read_dir(root).map_err(io(root))? {
        let partition = partition.map_err(io(root))?.path();
        if !partition.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&partition).map_err(io(&partition))? {
            let path = entry.map_err(io(&partition))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(".open-") {
                fs::remove_file(&path).map_err(io(&path))?;
                cleanup.unfinished += 1;
            }
        }
    }
    for path in archive_files(root)? {
        if file_lsn_range(&path).is_some_and(|(from, _)| from >= archived_lsn) {
            fs::remove_file(&path).map_err(io(&path))?;
            cleanup.uncheckpointed += 1;
        }
    }
    if cleanup != Cleanup::default() {
        sync_dir(root, faults)?;
    }
    Ok(cleanup)
}
