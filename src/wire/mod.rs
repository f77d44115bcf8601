//! The gateway-to-server protocol: ALPN `farestream/1`, one bidirectional
//! QUIC stream per batch, one length-prefixed protobuf frame each way.
//! `docs/protocol.md` is the reference; `proto/farestream.proto` the schema.

pub mod messages;

use prost::Message;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use messages::{AckStatus, BatchAck, RejectedScan, ScanBatch, ScanRecord, WireScanStatus, WireTapKind};

/// The ALPN protocol id both ends must agree on.
pub const ALPN: &[u8] = b"farestream/1";
/// Size of the big-endian length that starts every frame.
pub const FRAME_HEADER_BYTES: usize = 4;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("stream ended inside a frame: {0}")]
    Truncated(std::io::Error),
    #[error("frame is not a valid {message}: {source}")]
    Decode { message: &'static str, source: prost::DecodeError },
}

/// Reads one frame's body. The length is checked against `frame_bytes_max`
/// before anything is allocated, so a hostile length costs nothing.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, frame_bytes_max: u32) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    reader.read_exact(&mut header).await.map_err(FrameError::Truncated)?;
    let len = u32::from_be_bytes(header);
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge { len, max: frame_bytes_max });
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).await.map_err(FrameError::Truncated)?;
    Ok(body)
}

/// Reads and decodes one frame holding a `M`.
pub async fn read_message<M: Message + Default, R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: u32,
    name: &'static str,
) -> Result<M, FrameError> {
    let body = read_frame(reader, frame_bytes_max).await?;
    M::decode(body.as_slice()).map_err(|source| FrameError::Decode { message: name, source })
}

/// Encodes a message as one frame: length, then body.
pub fn encode_frame(message: &impl Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode(&mut frame).expect("a Vec grows to fit");
    frame
}

pub async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, message: &impl Message) -> std::io::Result<()> {
    writer.write_all(&encode_frame(message)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_round_trips() {
        let batch = ScanBatch { gateway_id: "g1".into(), batch_seq: 9, scans: vec![] };
        let frame = encode_frame(&batch);
        let back: ScanBatch = read_message(&mut frame.as_slice(), 1024, "ScanBatch").await.expect("frame");
        assert_eq!(back, batch);
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_body() {
        let frame = 5000u32.to_be_bytes();
        let err = read_frame(&mut frame.as_slice(), 1024).await.expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { len: 5000, max: 1024 }));
    }

    #[tokio::test]
    async fn a_short_body_is_truncated_and_garbage_does_not_decode() {
        let mut frame = 10u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(read_frame(&mut frame.as_slice(), 1024).await, Err(FrameError::Truncated(_))));
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        let result: Result<ScanBatch, _> = read_message(&mut garbage.as_slice(), 1024, "ScanBatch").await;
        assert!(matches!(result, Err(FrameError::Decode { .. })));
    }
}
