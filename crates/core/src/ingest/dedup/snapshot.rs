//! The dedup indexes on disk, so a restart reads one file and the log's
//! tail instead of days of Parquet. The shell decides when and where to
//! write one and when it may stand (see `crates/server/src/dedup_snapshot.rs`);
//! this is what one holds and how it is checked.
//!
//! Layout, little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `FSDEDUP\0` |
//! | 4 | version, 1 |
//! | 8 | the log position to replay from |
//! | 8 | when it was written (Unix ms) |
//! | 24 | the time windows its expiries were computed under (lateness, skew, code validity; ms) |
//! | 16 | the key mix's seed (its keys are mixed with it) |
//! | 8 + 20 n | the re-delivery index: a count, then each key and expiry, in key order |
//! | 8 + 21 n | the replay index: the same, each with its uses |
//! | 4 | CRC-32C of every byte before it |
//!
//! A hot tier is frozen before it is written, so only cold tiers are.
//! The verified-credential cache is not kept: a restart checks each
//! credential's signature once more.

use std::io::{Read, Write};

use thiserror::Error;

use crate::clock::UnixMillis;
use crate::ingest::Horizons;
use crate::sync::lock;

use super::DedupIndex;

const MAGIC: [u8; 8] = *b"FSDEDUP\0";
/// The layout this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// What a snapshot says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Every log record before this position is in the snapshot; replay
    /// the log from here onto it (replaying more is harmless).
    pub replay_from_lsn: u64,
    /// When it was written.
    pub written_at: UnixMillis,
}

/// Entries a snapshot holds (written), or that were still live when it
/// was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotCounts {
    /// Keys in the re-delivery index.
    pub deliveries: u64,
    /// Keys in the replay index.
    pub rides: u64,
}

/// Why a snapshot cannot be used; the shell then restores from the
/// archive, as without one.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// It could not be read, or ended early.
    #[error("reading the snapshot: {0}")]
    Io(#[from] std::io::Error),
    /// It does not start with the magic.
    #[error("not a dedup snapshot (no magic)")]
    NotASnapshot,
    /// A layout this build does not read.
    #[error("snapshot version {0}, this build reads {SNAPSHOT_VERSION}")]
    UnknownVersion(u32),
    /// Written under other time windows: its expiries would be wrong.
    #[error("the snapshot's expiries were computed under other time windows (the config changed)")]
    OtherWindows,
    /// Keys not in strictly ascending order.
    #[error("the snapshot's entries are not in key order")]
    OutOfOrder,
    /// An entry whose bytes no claim could have made.
    #[error("the snapshot holds an entry no claim could make")]
    BadEntry,
    /// The checksum does not match the bytes.
    #[error("the snapshot's checksum does not match: it is damaged")]
    Checksum,
    /// Bytes after the checksum.
    #[error("the snapshot has bytes after its checksum")]
    TrailingBytes,
    /// The caller refused its header (say, the log no longer holds where
    /// it replays from).
    #[error("{0}")]
    Refused(String),
    /// The indexes it was to be loaded into hold entries already.
    #[error("the indexes already hold entries; a snapshot is loaded only into empty ones")]
    NotEmpty,
}

/// Passes bytes through, keeping their CRC-32C.
struct Checksummed<T> {
    inner: T,
    crc: u32,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Checksummed<R> {
    fn read(&mut self, bytes: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..read]);
        Ok(read)
    }
}

fn read_array<const N: usize>(input: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

impl DedupIndex {
    /// Freezes both indexes (dropping what expired by `header.written_at`),
    /// then writes them to `out` under `header` and `horizons`. Holds the
    /// freeze lock throughout, so entries do not move between tiers while
    /// they are written (sweeps meanwhile skip their freeze). Keys claimed after the freeze stay hot and
    /// unwritten: the caller takes `header.replay_from_lsn` before calling,
    /// so their log records come after it.
    pub fn write_snapshot(
        &self,
        header: SnapshotHeader,
        horizons: Horizons,
        out: impl Write,
    ) -> std::io::Result<SnapshotCounts> {
        let mut last_freeze = lock(&self.last_freeze);
        self.freeze(&mut last_freeze, header.written_at);
        let mut out = Checksummed { inner: out, crc: 0 };
        out.write_all(&MAGIC)?;
        out.write_all(&SNAPSHOT_VERSION.to_le_bytes())?;
        out.write_all(&header.replay_from_lsn.to_le_bytes())?;
        out.write_all(&header.written_at.to_le_bytes())?;
        for part in horizons.parts() {
            out.write_all(&part.to_le_bytes())?;
        }
        out.write_all(&self.mix.seed().to_le_bytes())?;
        let deliveries = self.deliveries.cold().write_entries(&mut out)?;
        let rides = self.rides.cold().write_entries(&mut out)?;
        let crc = out.crc;
        out.inner.write_all(&crc.to_le_bytes())?;
        out.inner.flush()?;
        Ok(SnapshotCounts { deliveries, rides })
    }

    /// Loads a snapshot written under `horizons` into these empty
    /// indexes (their key mix takes the snapshot's seed), dropping the
    /// entries expired at `now`, once `accept` has passed its header
    /// (before any entry is read). On an error they are left empty, with
    /// their own seed.
    pub fn load_snapshot(
        &self,
        horizons: Horizons,
        now: UnixMillis,
        input: impl Read,
        accept: impl FnOnce(&SnapshotHeader) -> Result<(), String>,
    ) -> Result<(SnapshotHeader, SnapshotCounts), SnapshotError> {
        let sizes = self.sizes();
        if sizes.deliveries + sizes.rides != 0 {
            return Err(SnapshotError::NotEmpty);
        }
        let mut input = Checksummed { inner: input, crc: 0 };
        let (header, seed) = read_header(&mut input, horizons)?;
        accept(&header).map_err(SnapshotError::Refused)?;
        let own_seed = self.mix.seed();
        self.mix.set_seed(seed);
        let loaded = self.load_entries(&mut input, now);
        if loaded.is_err() {
            self.deliveries.clear();
            self.rides.clear();
            self.mix.set_seed(own_seed);
        }
        Ok((header, loaded?))
    }

    /// Both indexes' entries, then the checksum over everything read and
    /// nothing after it.
    fn load_entries<R: Read>(
        &self,
        input: &mut Checksummed<R>,
        now: UnixMillis,
    ) -> Result<SnapshotCounts, SnapshotError> {
        let deliveries = self.deliveries.cold().load_entries(input, now)?;
        let rides = self.rides.cold().load_entries(input, now)?;
        let computed = input.crc;
        let stated = u32::from_le_bytes(read_array(&mut input.inner)?);
        if computed != stated {
            return Err(SnapshotError::Checksum);
        }
        if input.inner.read(&mut [0u8; 1])? != 0 {
            return Err(SnapshotError::TrailingBytes);
        }
        Ok(SnapshotCounts { deliveries, rides })
    }
}

/// The header and the key mix's seed, checked against this build and
/// `horizons`.
fn read_header(input: &mut impl Read, horizons: Horizons) -> Result<(SnapshotHeader, u128), SnapshotError> {
    if read_array::<8>(input)? != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let version = u32::from_le_bytes(read_array(input)?);
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnknownVersion(version));
    }
    let replay_from_lsn = u64::from_le_bytes(read_array(input)?);
    let written_at = i64::from_le_bytes(read_array(input)?);
    let mut parts = [0i64; 3];
    for part in &mut parts {
        *part = i64::from_le_bytes(read_array(input)?);
    }
    if parts != horizons.parts() {
        return Err(SnapshotError::OtherWindows);
    }
    let seed = u128::from_le_bytes(read_array(input)?);
    Ok((SnapshotHeader { replay_from_lsn, written_at }, seed))
}

#[cfg(test)]
mod tests;
