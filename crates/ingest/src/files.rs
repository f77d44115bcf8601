//! File operations shared by the key store, TLS and the durability code.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::faults::Faults;

/// Writes a secret (a private key) readable by its owner only, and syncs
/// it. Never overwrites: an existing file is an error, not a lost key.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_new(path, bytes, 0o600)
}

/// Writes a file anyone may read (a certificate), and syncs it. Never
/// overwrites.
pub fn write_public(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_new(path, bytes, 0o644)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// fsyncs a whole file, through the fsync failpoint.
pub fn fsync(file: &File, faults: &Faults) -> io::Result<()> {
    faults.before_fsync()?;
    file.sync_all()
}

/// fsyncs a directory, so a rename, a new file or a deletion in it is
/// durable: the directory entry is data too.
pub fn fsync_dir(dir: &Path, faults: &Faults) -> io::Result<()> {
    faults.before_fsync()?;
    File::open(dir)?.sync_all()
}
