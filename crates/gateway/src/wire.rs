//! The wire protocol's reads and writes on QUIC streams; everything else
//! about it (messages, frames, limits) is in the core's [`farestream_core::wire`],
//! re-exported here.

pub use farestream_core::wire::*;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one frame's body. The length is checked against `frame_bytes_max`
/// before anything is allocated, so a hostile length costs nothing.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, frame_bytes_max: u32) -> Result<Vec<u8>, FrameError> {
    let len = read_frame_len(reader, frame_bytes_max).await?;
    read_frame_body(reader, len).await
}

/// Reads a frame's length prefix and checks it against `frame_bytes_max`.
pub async fn read_frame_len<R: AsyncRead + Unpin>(reader: &mut R, frame_bytes_max: u32) -> Result<u32, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    reader.read_exact(&mut header).await.map_err(FrameError::Truncated)?;
    frame_len(header, frame_bytes_max)
}

/// Reads a frame body of `len` bytes (already checked against the limit).
pub async fn read_frame_body<R: AsyncRead + Unpin>(reader: &mut R, len: u32) -> Result<Vec<u8>, FrameError> {
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
    decode_message(&body, name)
}

pub async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, message: &impl Message) -> std::io::Result<()> {
    writer.write_all(&encode_frame(message)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_round_trips_over_a_reader() {
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

/// QUIC application error codes a server closes a gateway's connection
/// with (docs/protocol.md, "Closing codes"). A gateway that sees one of the
/// first two must not reconnect with the same certificate.
pub mod close_code {
    /// The gateway's certificate was revoked while it was connected.
    pub const REVOKED: u32 = 3;
    /// The certificate is from the fleet CA but does not name a gateway
    /// (no single common name, or a name enrolment would refuse).
    pub const NOT_A_GATEWAY: u32 = 4;
    /// No batch for `server.batch_idle_timeout_ms`: reconnect to push again.
    pub const IDLE: u32 = 5;
    /// A newer connection of the same gateway took this one's place
    /// (`server.connections_per_gateway_max`).
    pub const TOO_MANY_CONNECTIONS: u32 = 6;
    /// The gateway's certificate ran out while it was connected.
    pub const CERTIFICATE_EXPIRED: u32 = 7;
}
