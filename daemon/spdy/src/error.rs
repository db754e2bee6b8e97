//! The crate's error type. Messages are lowercase, without a trailing period, and never repeat
//! their `#[source]`.

use std::io;
use std::time::Duration;

/// Everything that can go wrong while framing, compressing headers or driving a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("unsupported spdy version {0}")]
    UnsupportedVersion(u16),
    #[error("invalid {kind} frame: {reason}")]
    InvalidFrame {
        kind: &'static str,
        reason: &'static str,
    },
    #[error("invalid header block: {0}")]
    InvalidHeaderBlock(&'static str),
    #[error("header block exceeds {max} bytes when decompressed")]
    HeaderBlockTooLarge { max: usize },
    #[error("header block declares {count} headers, more than the limit of {max}")]
    TooManyHeaders { count: u32, max: usize },
    #[error("header compression failed")]
    Compress(#[source] flate2::CompressError),
    #[error("header decompression failed")]
    Decompress(#[source] flate2::DecompressError),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("connection ended in the middle of a frame")]
    Truncated,
    #[error("connection idle for longer than {0:?}")]
    IdleTimeout(Duration),
    #[error("connection i/o failed")]
    Io(#[source] io::Error),
    #[error("stream {id} was reset with status {status}")]
    StreamReset { id: u32, status: u32 },
    #[error("stream {id} is closed for writing")]
    WriteClosed { id: u32 },
    #[error("connection closed")]
    ConnectionClosed,
}

/// `Result` with this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a stream-level error for `AsyncRead`/`AsyncWrite`.
    pub(crate) fn into_io(self, kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, self)
    }
}
