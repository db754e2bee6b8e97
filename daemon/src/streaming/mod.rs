//! Streaming sessions (exec, attach, port-forward) behind the streaming server's URLs: what
//! each session does with the container, independent of the wire protocol (SPDY or
//! WebSocket) that carries the client's streams.

pub mod attach;
mod drain;
pub mod exec;
pub mod port_forward;
mod pty;
mod resize;
pub mod server;
mod spdy;
mod status;
mod tls;
mod tokens;
pub mod websocket;

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

/// How a session ended, as the client is told on its error channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exec: the command exited with this code (0 is success).
    Exited(i32),
    /// Attach ended (the container exited or the client left).
    Done,
    /// The session could not run: the message says why.
    Failed(String),
}

/// Runs an exec or attach session once the client's streams exist.
pub type RunSession =
    Box<dyn FnOnce(Io) -> futures_util::future::BoxFuture<'static, Outcome> + Send>;

/// An exec or attach session waiting for its client: which streams the CRI request asked
/// for, and what to run with them.
pub struct RemoteCommand {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// The command, for the status message of a non-zero exit (empty for attach).
    pub cmd: Vec<String>,
    pub run: RunSession,
}

/// Opens a connection to a port of the pod.
pub type ConnectPort = std::sync::Arc<
    dyn Fn(u16) -> futures_util::future::BoxFuture<'static, std::io::Result<tokio::net::TcpStream>>
        + Send
        + Sync,
>;

/// A port-forward session waiting for its client.
pub struct PortForward {
    pub pod_id: String,
    /// Ports from the CRI request (only the legacy WebSocket protocol uses them; SPDY clients
    /// name a port per stream).
    pub ports: Vec<u16>,
    pub connect: ConnectPort,
}
