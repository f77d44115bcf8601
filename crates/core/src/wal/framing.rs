//! Byte layout of segments and records. Pure functions; see the module doc
//! of [`crate::wal`] for the format in prose.

use thiserror::Error;

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"FARESWAL";
/// The only segment format version this build reads and writes.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// magic (8) + version (4) + start LSN (8) + CRC32C of the first 20 bytes (4).
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// payload length (4) + CRC32C of length and payload (4).
pub const RECORD_HEADER_BYTES: usize = 8;

/// Why a segment header is refused; the server's recovery reports the segment as corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// The file is shorter than a header (its length in bytes).
    #[error("segment header is {0} bytes, needs {SEGMENT_HEADER_BYTES}")]
    Short(usize),
    /// The file does not start with `FARESWAL`: not a segment of this log.
    #[error("segment magic is wrong")]
    Magic,
    /// The header's CRC32C does not match: the header is damaged.
    #[error("segment header checksum does not match")]
    Checksum,
    /// A segment format version this build does not read, e.g. from a newer build.
    #[error("segment format version {0} is not supported")]
    Version(u32),
}

/// The header of a segment whose first record is at `start_lsn`.
pub fn encode_segment_header(start_lsn: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_VERSION.to_be_bytes());
    out[12..20].copy_from_slice(&start_lsn.to_be_bytes());
    let crc = crc32c::crc32c(&out[..20]);
    out[20..24].copy_from_slice(&crc.to_be_bytes());
    out
}

/// The start LSN a valid header names.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, HeaderError> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderError::Short(bytes.len()));
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Magic);
    }
    if crc32c::crc32c(&bytes[..20]) != u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes")) {
        return Err(HeaderError::Checksum);
    }
    let version = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_VERSION {
        return Err(HeaderError::Version(version));
    }
    Ok(u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes")))
}

/// Appends one record frame for `payload` to `out`.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_be_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Bytes a record of `payload_len` takes on disk.
pub fn record_bytes(payload_len: usize) -> u64 {
    (RECORD_HEADER_BYTES + payload_len) as u64
}

/// What is at the start of `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole record whose checksum matches.
    Valid {
        /// The record's payload, borrowed from `bytes`.
        payload: &'a [u8],
    },
    /// Not a valid record: too short, too long, or a checksum mismatch.
    Invalid,
}

/// Reads the record at the start of `bytes`; one longer than `record_bytes_max` is invalid.
pub fn decode_record(bytes: &[u8], record_bytes_max: u32) -> Frame<'_> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Frame::Invalid;
    }
    let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
    if len > record_bytes_max || bytes.len() - RECORD_HEADER_BYTES < len as usize {
        return Frame::Invalid;
    }
    let stored = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let payload = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len as usize];
    if crc32c::crc32c_append(crc32c::crc32c(&bytes[..4]), payload) != stored {
        return Frame::Invalid;
    }
    Frame::Valid { payload }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let header = encode_segment_header(4096);
        assert_eq!(decode_segment_header(&header), Ok(4096));
        let mut damaged = header;
        damaged[13] ^= 1;
        assert_eq!(decode_segment_header(&damaged), Err(HeaderError::Checksum));
        assert_eq!(decode_segment_header(&header[..10]), Err(HeaderError::Short(10)));
    }

    #[test]
    fn records_round_trip_and_any_flipped_bit_is_caught() {
        let mut frame = Vec::new();
        encode_record(b"twelve bytes", &mut frame);
        assert_eq!(decode_record(&frame, 1024), Frame::Valid { payload: b"twelve bytes" });
        for bit in 0..frame.len() * 8 {
            let mut flipped = frame.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_record(&flipped, 1024), Frame::Invalid, "bit {bit}");
        }
        assert_eq!(decode_record(&frame[..frame.len() - 1], 1024), Frame::Invalid);
        assert_eq!(decode_record(&frame, 4), Frame::Invalid, "over the record limit");
    }
}
