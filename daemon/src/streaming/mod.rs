//! Streaming sessions (exec, attach, port-forward) behind the streaming server's URLs: what
//! each session does with the container, independent of the wire protocol (SPDY or
//! WebSocket) that carries the client's streams.

pub mod attach;
pub mod exec;
pub mod port_forward;
mod pty;
pub mod server;
mod spdy;
mod sys;
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

/// The `metav1.Status` a client-go client reads on the error stream of a v4/v5 session
/// (reference §3.10): Success, NonZeroExitCode with the `ExitCode` cause, or InternalError.
pub fn status_json(outcome: &Outcome, cmd: &[String]) -> Vec<u8> {
    let value = match outcome {
        Outcome::Exited(0) | Outcome::Done => {
            serde_json::json!({"metadata": {}, "status": "Success"})
        }
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                cmd.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(message) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {message}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// What a v1–v3 client reads on the error stream: nothing on success, the message on
/// failure.
pub fn status_text(outcome: &Outcome, cmd: &[String]) -> Vec<u8> {
    match outcome {
        Outcome::Exited(0) | Outcome::Done => Vec::new(),
        Outcome::Exited(code) => format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            cmd.join(" ")
        )
        .into_bytes(),
        Outcome::Failed(message) => message.clone().into_bytes(),
    }
}

/// Parses the resize stream: JSON values `{"Width":w,"Height":h}` one after another (field
/// names in any case, as Go matches them), split across reads at any byte. Sizes with a zero
/// side are ignored; a value that does not parse ends the stream.
pub async fn read_resizes(mut from: impl AsyncRead + Unpin, to: mpsc::Sender<TermSize>) {
    use tokio::io::AsyncReadExt;
    /// Most bytes held of one resize value.
    const MAX_RESIZE_MESSAGE: usize = 4096;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let mut values =
                serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    buf.drain(..used);
                    let field = |name: &str| {
                        value.as_object().and_then(|o| {
                            o.iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                .and_then(|(_, v)| v.as_u64())
                        })
                    };
                    let (Some(width), Some(height)) = (field("width"), field("height")) else {
                        continue;
                    };
                    let (Ok(width), Ok(height)) = (u16::try_from(width), u16::try_from(height))
                    else {
                        continue;
                    };
                    if width > 0 && height > 0 && to.send(TermSize { width, height }).await.is_err()
                    {
                        return;
                    }
                }
                Some(Err(err)) if err.is_eof() => break,
                None => {
                    buf.clear();
                    break;
                }
                Some(Err(_)) => return,
            }
        }
        if buf.len() > MAX_RESIZE_MESSAGE {
            return;
        }
    }
}
