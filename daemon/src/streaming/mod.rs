//! Streaming sessions (exec, attach, port-forward) behind the streaming server's URLs: what
//! each session does with the container, independent of the wire protocol (SPDY or
//! WebSocket) that carries the client's streams.

pub mod attach;
pub mod exec;
pub mod port_forward;
mod pty;
mod sys;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// A client stream crid reads (stdin).
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A client stream crid writes (stdout, stderr).
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A terminal size from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// The client's side of a session; absent streams were not asked for.
pub struct Io {
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
}
