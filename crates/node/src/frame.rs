//! Framing of gossip stream messages (push-pull) over TCP.
//!
//! A connection carries exactly one frame and is then closed:
//! a 4-byte big-endian body length, then the body (an encrypted packet, or a
//! plain protobuf packet in plaintext mode).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Why a frame was not read. The connection is dropped and the reason counted.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header announces a body over the cap; nothing of the body was read.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced body length.
        len: u64,
        /// The cap.
        limit: usize,
    },
    /// The peer closed the connection before the whole frame arrived.
    #[error("connection closed after {got} of {want} bytes")]
    Truncated {
        /// Bytes received (header included).
        got: usize,
        /// Bytes announced (header included).
        want: usize,
    },
    /// A socket error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Prepends the header to `body`, giving the bytes to write on a connection.
/// Returns `None` when the body does not fit a `u32` length.
pub fn encode(body: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(body.len()).ok()?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Some(out)
}

/// Reads one frame's body of at most `limit` bytes. The buffer grows as bytes
/// arrive rather than by the announced length, so a peer that announces a
/// large frame and sends nothing costs no memory.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Vec<u8>, FrameError> {
    let len = read_header(r, limit).await?;
    read_body(r, len).await
}

/// Reads a frame's header: the body length, at most `limit`.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<usize, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { got, want: HEADER_LEN });
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len: len as u64, limit });
    }
    Ok(len)
}

/// Reads a body of `len` bytes, after its header.
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    r.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(FrameError::Truncated {
            got: HEADER_LEN + body.len(),
            want: HEADER_LEN + len,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_encoded_frame_reads_back() {
        let bytes = encode(b"state exchange").unwrap();
        assert_eq!(&bytes[..4], &[0, 0, 0, 14]);
        let body = read(&mut &bytes[..], 1024).await.unwrap();
        assert_eq!(body, b"state exchange");
        let empty = encode(b"").unwrap();
        assert!(read(&mut &empty[..], 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_its_body() {
        let bytes = encode(&[0u8; 100]).unwrap();
        let err = read(&mut &bytes[..4], 99).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 100, limit: 99 }), "{err:?}");
    }

    #[tokio::test]
    async fn a_cut_frame_is_reported_as_truncated() {
        let bytes = encode(b"0123456789").unwrap();
        for cut in 0..bytes.len() {
            let err = read(&mut &bytes[..cut], 1024).await.unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { got, .. } if got == cut),
                "{cut}: {err:?}"
            );
        }
    }
}
