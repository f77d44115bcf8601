//! The gateway-to-server protocol, sans I/O: ALPN `farestream/1`, one
//! bidirectional QUIC stream per batch, one length-prefixed protobuf frame
//! each way. The messages, the frame's length check, encoding and decoding,
//! and counting a repeated field before decoding; the shells do the reads.
//! `docs/protocol.md` is the reference; `proto/farestream.proto` the schema.

pub mod batching;
pub mod messages;

use prost::Message;
use thiserror::Error;

pub use messages::{
    AckStatus, BatchAck, DenyListUpdate, DenyListUpdateKind, GateDecision, IssuerKeySet, IssuerPublicKey, KeySetError,
    RejectedScan, ScanBatch, ScanRecord, ServerPush, TerminalKeySet, WireScanStatus, WireTapKind, WireTerminalKey,
    server_push,
};

/// The ALPN protocol id of this protocol: the push stream carries
/// [`ServerPush`] messages (issuer keys, terminal keys and the deny list).
pub const ALPN: &[u8] = b"farestream/2";
/// The first version, still served to gateways that offer only it: the
/// push stream carries bare [`DenyListUpdate`] messages and no keys.
pub const ALPN_V1: &[u8] = b"farestream/1";
/// Size of the big-endian length that starts every frame.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Why a frame could not be read or decoded, at either end of a stream.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit; nothing was allocated for it.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The length the prefix announces, in bytes.
        len: u32,
        /// The limit, `frame_bytes_max`, in bytes.
        max: u32,
    },
    /// The stream ended before the frame was complete.
    #[error("stream ended inside a frame: {0}")]
    Truncated(std::io::Error),
    /// The body is not a valid protobuf encoding of the expected message.
    #[error("frame is not a valid {message}: {source}")]
    Decode {
        /// The expected message's name, e.g. `ScanBatch`.
        message: &'static str,
        /// What prost found wrong.
        source: prost::DecodeError,
    },
    /// The body's fields could not be walked (to count them) before decoding.
    #[error("frame is not a valid {message}: {reason}")]
    Fields {
        /// The expected message's name, e.g. `ScanBatch`.
        message: &'static str,
        /// What is wrong with the fields.
        reason: String,
    },
}

/// The body length a frame header announces, checked against
/// `frame_bytes_max` before anything is allocated, so a hostile length
/// costs nothing.
pub fn frame_len(header: [u8; FRAME_HEADER_BYTES], frame_bytes_max: u32) -> Result<u32, FrameError> {
    let len = u32::from_be_bytes(header);
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge { len, max: frame_bytes_max });
    }
    Ok(len)
}

/// Decodes a frame body holding a `M`, named `name` in errors.
pub fn decode_message<M: Message + Default>(body: &[u8], name: &'static str) -> Result<M, FrameError> {
    M::decode(body).map_err(|source| FrameError::Decode { message: name, source })
}

/// Counts the top-level occurrences of field `field_number` in an encoded
/// message without decoding it, so a repeated field's length can be checked
/// before decoding allocates a struct per entry (an empty `ScanRecord` is
/// two bytes on the wire and over a hundred in memory).
pub fn count_field(mut body: &[u8], field_number: u32, message: &'static str) -> Result<usize, FrameError> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let invalid = |reason: String| FrameError::Fields { message, reason };
    let mut count = 0;
    while !body.is_empty() {
        let (number, wire_type) = decode_key(&mut body).map_err(|e| invalid(e.to_string()))?;
        if number == field_number {
            count += 1;
        }
        let skip = match wire_type {
            WireType::Varint => {
                decode_varint(&mut body).map_err(|e| invalid(e.to_string()))?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                usize::try_from(decode_varint(&mut body).map_err(|e| invalid(e.to_string()))?).unwrap_or(usize::MAX)
            }
            WireType::StartGroup | WireType::EndGroup => return Err(invalid("groups are not used".into())),
        };
        body = body.get(skip..).ok_or_else(|| invalid("a field runs past the end of the frame".into()))?;
    }
    Ok(count)
}

/// Encodes a message as one frame: length, then body.
pub fn encode_frame(message: &impl Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode(&mut frame).expect("a Vec grows to fit");
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_an_oversized_length_is_refused() {
        let batch = ScanBatch { gateway_id: "g1".into(), batch_seq: 9, scans: vec![] };
        let frame = encode_frame(&batch);
        let (header, body) = frame.split_at(FRAME_HEADER_BYTES);
        let header: [u8; FRAME_HEADER_BYTES] = header.try_into().expect("four bytes");
        assert_eq!(frame_len(header, 1024).expect("fits") as usize, body.len());
        assert_eq!(decode_message::<ScanBatch>(body, "ScanBatch").expect("decodes"), batch);
        assert!(matches!(frame_len(5000u32.to_be_bytes(), 1024), Err(FrameError::TooLarge { len: 5000, max: 1024 })));
        assert!(matches!(decode_message::<ScanBatch>(&[0xff; 3], "ScanBatch"), Err(FrameError::Decode { .. })));
    }

    #[test]
    fn repeated_fields_are_counted_without_decoding() {
        let record = ScanRecord { validator_id: "v".into(), ride_code: vec![1; 300], ..ScanRecord::default() };
        let batch = ScanBatch { gateway_id: "g".into(), batch_seq: u64::MAX, scans: vec![record; 5] };
        let body = &encode_frame(&batch)[FRAME_HEADER_BYTES..];
        assert_eq!(count_field(body, 3, "ScanBatch").expect("count"), 5);
        assert_eq!(count_field(body, 1, "ScanBatch").expect("count"), 1);
        assert_eq!(count_field(&[], 3, "ScanBatch").expect("empty"), 0);
        assert!(count_field(&body[..body.len() - 1], 3, "ScanBatch").is_err(), "a truncated field is an error");
        // A length prefix of 2^64 - 1 is refused, not added to a pointer.
        assert!(
            count_field(&[0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 3, "ScanBatch").is_err()
        );
        assert!(count_field(&[0x0b], 1, "ScanBatch").is_err(), "groups are refused");
    }
}
