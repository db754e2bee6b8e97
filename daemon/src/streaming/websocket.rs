//! The WebSocket side of the streaming server (reference §2.4, §2.5, §3.7–§3.10): the RFC 6455
//! handshake with Kubernetes' subprotocols, the channel protocol for exec and attach, the
//! legacy two-channels-per-port port-forward, and a plain byte stream over binary messages for
//! SPDY tunnelled in WebSocket (`crictl port-forward -r websocket`).
//!
//! Everything arriving here comes from whoever holds the session's token and is untrusted:
//! message sizes, queues and buffers have the named bounds below; a consumer that does not
//! keep up pushes back on the client (its TCP window) instead of being buffered for; malformed
//! input ends the connection (and the session with it), never more.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::io::StreamReader;
use tokio_util::sync::PollSender;

use super::resize::ResizeParser;
use super::{BoxRead, BoxWrite, Io, Outcome, PortForward, RemoteCommand, TermSize};

#[cfg(test)]
mod tests;

/// Largest message (and frame) accepted from a client. client-go writes stdin, resize and
/// tunnelled SPDY in messages of at most 32 KiB (one per `Write`), kube-rs and python likewise;
/// tungstenite's default (64 MiB) would let one client pin that much memory.
const MAX_MESSAGE: usize = 1 << 20;
/// tungstenite's read buffer, allocated per connection.
const READ_BUFFER: usize = 32 * 1024;
/// Bytes tungstenite gathers before writing to the socket (every batch is flushed anyway).
const WRITE_BUFFER: usize = 64 * 1024;
/// Most bytes tungstenite may hold unwritten; it only grows past [`WRITE_BUFFER`] by one
/// message while the socket blocks, as sends wait for the previous flush.
const MAX_WRITE_BUFFER: usize = 1 << 20;
/// Most payload bytes per message crid sends: the size of Go's `io.Copy` buffer, which is what
/// the reference server's messages carry.
const MAX_CHUNK: usize = 32 * 1024;
/// Messages waiting for the socket (stdout, stderr, port data, status), shared by all writers:
/// a full queue makes them wait, so a slow client slows the container's output down.
const OUTGOING_QUEUE: usize = 16;
/// Most queued messages written before one flush.
const WRITE_BATCH: usize = 16;
/// Client messages waiting for stdin or a pod connection: when full, crid stops reading the
/// socket until the consumer catches up (the reference server blocks on an `io.Pipe` alike).
const INBOUND_QUEUE: usize = 16;
/// Terminal sizes waiting for the session; older sizes are superseded, not queued, beyond it.
const RESIZE_QUEUE: usize = 4;
/// After crid's Close frame, how long the client has to close its side: client-go closes
/// the TCP connection at once; a client that doesn't must not hold the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Ports one legacy port-forward connection may carry: two channels per port, channel ids are
/// one byte, and the base64 variants name a channel with one ASCII character (`'0' + id`, ids
/// 0..=79).
const MAX_PORTS_BINARY: usize = 128;
const MAX_PORTS_BASE64: usize = 40;

/// Channel ids of the remote command protocol (reference §3.7).
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5 only: `[255, ch]` closes the client's channel `ch` (stdin EOF).
const CLOSE_SIGNAL: u8 = 255;

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
const SEC_WEBSOCKET_PROTOCOL: HeaderName = HeaderName::from_static("sec-websocket-protocol");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// The subprotocol chosen for a WebSocket session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `v5.channel.k8s.io`: binary, JSON status, stdin close signal (`crictl -r websocket`).
    V5Channel,
    /// `v4.channel.k8s.io`: binary, JSON status.
    V4Channel,
    /// `v4.base64.channel.k8s.io`: base64 text frames, JSON status.
    V4Base64Channel,
    /// `channel.k8s.io`: binary, plain-text errors.
    Channel,
    /// `base64.channel.k8s.io`: base64 text frames, plain-text errors.
    Base64Channel,
    /// The client offered no subprotocol: binary, plain-text errors (oldest clients).
    Unnamed,
    /// `SPDY/3.1+portforward.k8s.io`: a SPDY byte stream in binary messages; see [`tunnel`].
    SpdyTunnel,
}

impl Protocol {
    /// The `Sec-WebSocket-Protocol` value, `None` for [`Protocol::Unnamed`].
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::V5Channel => "v5.channel.k8s.io",
            Self::V4Channel => "v4.channel.k8s.io",
            Self::V4Base64Channel => "v4.base64.channel.k8s.io",
            Self::Channel => "channel.k8s.io",
            Self::Base64Channel => "base64.channel.k8s.io",
            Self::Unnamed => return None,
            Self::SpdyTunnel => "SPDY/3.1+portforward.k8s.io",
        })
    }

    fn base64(self) -> bool {
        matches!(self, Self::V4Base64Channel | Self::Base64Channel)
    }

    /// v4 and v5 report the outcome as a JSON `metav1.Status`, older protocols as text.
    fn json_status(self) -> bool {
        matches!(
            self,
            Self::V5Channel | Self::V4Channel | Self::V4Base64Channel
        )
    }
}

/// What the WebSocket is for, which decides the subprotocols on offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Exec or attach.
    RemoteCommand,
    /// Port-forward.
    PortForward,
}

impl Endpoint {
    /// Subprotocols in crid's order of preference: the first one the client also offers
    /// wins (as axum and the reference server choose), so v5 beats v4 whatever the client's
    /// order.
    fn protocols(self) -> &'static [Protocol] {
        match self {
            Self::RemoteCommand => &[
                Protocol::V5Channel,
                Protocol::V4Channel,
                Protocol::V4Base64Channel,
                Protocol::Channel,
                Protocol::Base64Channel,
            ],
            Self::PortForward => &[
                Protocol::SpdyTunnel,
                Protocol::V4Channel,
                Protocol::V4Base64Channel,
            ],
        }
    }
}

/// The server's half of the RFC 6455 handshake for `endpoint`: the `101` response to send
/// (and, once hyper has upgraded, the protocol to serve), or the error response. A client that
/// offers subprotocols of which crid speaks none gets `403`, as from the reference server
/// (silently upgrading without one would leave the client to guess the framing). The method is
/// not checked: the route accepts GET and POST alike (reference §3.1).
// Once per connection, so the size of the error (a whole response, ready to send) is moot.
#[allow(clippy::result_large_err)]
pub fn accept(
    req: &http::request::Parts,
    endpoint: Endpoint,
) -> Result<(Response<()>, Protocol), Response<String>> {
    let headers = &req.headers;
    if !has_token(headers, &header::CONNECTION, "upgrade")
        || !has_token(headers, &header::UPGRADE, "websocket")
    {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing websocket upgrade headers",
        ));
    }
    let version_13 = headers
        .get_all(SEC_WEBSOCKET_VERSION)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() == b"13");
    if !version_13 {
        // RFC 6455 §4.4: name the version crid speaks.
        let mut response = reject(
            StatusCode::UPGRADE_REQUIRED,
            "unable to upgrade: unsupported websocket version (want 13)",
        );
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(response);
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key.as_bytes().trim_ascii(),
        _ => return Err(bad_key()),
    };
    // RFC 6455 §4.2.1: a random 16-byte nonce, base64-encoded.
    if STANDARD.decode(key).map(|k| k.len()).ok() != Some(16) {
        return Err(bad_key());
    }
    let offered: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = if offered.is_empty() {
        Protocol::Unnamed
    } else {
        endpoint
            .protocols()
            .iter()
            .copied()
            .find(|p| p.name().is_some_and(|name| offered.contains(&name)))
            .ok_or_else(|| {
                reject(
                    StatusCode::FORBIDDEN,
                    &format!("unable to upgrade: no supported subprotocol in {offered:?}"),
                )
            })?
    };
    let accept_key = HeaderValue::from_str(&derive_accept_key(key)).map_err(|_| {
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unable to upgrade: invalid accept key",
        )
    })?;
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept_key);
    if let Some(name) = protocol.name() {
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(name));
    }
    Ok((response, protocol))
}

/// Whether any line of header `name` lists `token` (comma-separated, case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn bad_key() -> Response<String> {
    reject(
        StatusCode::BAD_REQUEST,
        "unable to upgrade: invalid Sec-WebSocket-Key",
    )
}

fn reject(status: StatusCode, message: &str) -> Response<String> {
    let mut response = Response::new(format!("{message}\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// tungstenite's limits for every connection (see the constants).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Serves an exec or attach session over the upgraded connection `io` with the channel
/// protocol (reference §3.7): streams come into being as the session asked for them, the
/// session runs, and its outcome is the last message before a Close frame (1000). When the
/// client goes away (or is silent both ways for `idle`; zero disables that), the session
/// future is dropped, which ends an exec's process.
pub async fn serve_remote_command<S>(
    io: S,
    protocol: Protocol,
    idle: Duration,
    session: RemoteCommand,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await;
    if protocol == Protocol::SpdyTunnel {
        return refuse(ws, "spdy tunnel on an exec or attach endpoint").await;
    }
    let codec = Codec::of(protocol);
    let (sink, source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
    let activity = Activity::new();

    let (stdin_tx, stdin) = if session.stdin {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(INBOUND_QUEUE);
        let reader: BoxRead = Box::new(StreamReader::new(ReceiverStream::new(rx)));
        (Some(tx), Some(reader))
    } else {
        (None, None)
    };
    // The reader keeps the latest size in a watch and a forwarder moves it to the session:
    // a session slow to apply sizes gets the newest one, never an unbounded backlog.
    let (resize_in, forwarder, resize) = if session.tty {
        let (watch_tx, watch_rx) = watch::channel(None);
        let (tx, rx) = mpsc::channel(RESIZE_QUEUE);
        (
            Some((ResizeParser::default(), watch_tx)),
            Some(forward_sizes(watch_rx, tx)),
            Some(rx),
        )
    } else {
        (None, None, None)
    };
    let writer = |wanted: bool, channel: u8| {
        wanted.then(|| {
            Box::new(ChannelWriter {
                tx: PollSender::new(out_tx.clone()),
                codec,
                channel,
            }) as BoxWrite
        })
    };
    let io = Io {
        stdin,
        stdout: writer(session.stdout, STDOUT),
        stderr: writer(session.stderr, STDERR),
        resize,
    };
    // The reference server's "connected" message: empty, on the lowest channel it writes.
    let first = if session.stdout {
        STDOUT
    } else if session.stderr {
        STDERR
    } else {
        ERROR
    };
    let RemoteCommand { cmd, run, .. } = session;
    let work = async move {
        let _ = out_tx.send(codec.encode(first, &[])).await;
        let forward = async {
            if let Some(forwarder) = forwarder {
                forwarder.await;
            }
        };
        let outcome = alongside(run(io), forward).await;
        // Every stdout/stderr message is queued by now (the writers live in the finished
        // session): the status goes after them, as one message.
        if let Some(status) = status_payload(protocol, &cmd, &outcome) {
            let _ = out_tx.send(codec.encode(ERROR, status.as_bytes())).await;
        }
        let _ = out_tx.send(close_message()).await;
    };
    let inbound = CommandInbound {
        stdin: stdin_tx,
        resize: resize_in,
    };
    drive(
        read_remote_command(source, protocol, inbound, &activity),
        send_queued(sink, out_rx, &activity),
        work,
        &activity,
        idle,
    )
    .await;
}

/// Serves a port-forward with the legacy channel protocol (reference §3.9; kube-rs and
/// python through a kubelet): channels `2i` (data, both ways) and `2i + 1` (errors, to the
/// client) for the `i`-th port of the CRI request, all forwarded at once, each over one
/// connection to the pod that lasts until the pod closes it. The WebSocket closes (1000) once
/// every port is done, or when the client leaves or stays silent for `idle` (zero: never).
pub async fn serve_port_forward_legacy<S>(
    io: S,
    protocol: Protocol,
    idle: Duration,
    session: PortForward,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await;
    if !matches!(
        protocol,
        Protocol::V4Channel | Protocol::V4Base64Channel | Protocol::Unnamed
    ) {
        return refuse(ws, "subprotocol unfit for legacy port-forward").await;
    }
    let codec = Codec::of(protocol);
    let max_ports = if codec.base64 {
        MAX_PORTS_BASE64
    } else {
        MAX_PORTS_BINARY
    };
    if session.ports.len() > max_ports {
        return refuse(ws, "too many ports for one websocket").await;
    }
    let (sink, source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
    let activity = Activity::new();

    let PortForward {
        pod_id,
        ports,
        connect,
    } = session;
    // Data channels 0, 2, 4, …; the zip stops at 128 ports, which the check above allows.
    let channels: Vec<(u16, u8)> = ports
        .iter()
        .copied()
        .zip((0..=u8::MAX).step_by(2))
        .collect();
    let mut to_pods = Vec::with_capacity(channels.len());
    let mut forwards = Vec::with_capacity(channels.len());
    for &(port, data) in &channels {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        to_pods.push(Some(tx));
        forwards.push(forward_port(
            port,
            data,
            &pod_id,
            connect(port),
            rx,
            out_tx.clone(),
            codec,
        ));
    }
    let work = async move {
        // kube-rs checks that each channel starts with its port (little-endian).
        for &(port, data) in &channels {
            let _ = out_tx.send(codec.encode(data, &port.to_le_bytes())).await;
            let _ = out_tx
                .send(codec.encode(data + 1, &port.to_le_bytes()))
                .await;
        }
        futures_util::future::join_all(forwards).await;
        let _ = out_tx.send(close_message()).await;
    };
    drive(
        read_port_forward(source, codec, to_pods, &activity),
        send_queued(sink, out_rx, &activity),
        work,
        &activity,
        idle,
    )
    .await;
}

/// One port of a legacy port-forward: connect, then copy both ways until the pod's side ends.
/// Only a failed connect is reported on the error channel; a reset after that is no error to
/// tell (reference §3.11).
async fn forward_port(
    port: u16,
    data: u8,
    pod_id: &str,
    connecting: futures_util::future::BoxFuture<'static, io::Result<tokio::net::TcpStream>>,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Message>,
    codec: Codec,
) {
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(err) => {
            let text = format!("error forwarding port {port} to pod {pod_id}, uid : {err}");
            let _ = out.send(codec.encode(data + 1, text.as_bytes())).await;
            return;
        }
    };
    let (mut pod_read, mut pod_write) = conn.into_split();
    let to_pod = async move {
        while let Some(chunk) = from_client.recv().await {
            if pod_write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = pod_write.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0; MAX_CHUNK];
        loop {
            match pod_read.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    if out.send(codec.encode(data, &buf[..n])).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    tracing::debug!(port, error = %err, "port-forward: reading from the pod failed");
                    return;
                }
            }
        }
    };
    alongside(from_pod, to_pod).await;
}

/// A binary WebSocket as a byte stream, for the SPDY engine under `SPDY/3.1+portforward.k8s.io`
/// (reference §3.8). Reads return the binary messages' payloads back to back (their
/// boundaries mean nothing: Go's SPDY framer sends a message per `Write`); a Close frame is
/// EOF, a text message an error. Each write goes out as one binary message of at most
/// 32 KiB; `flush` makes sure it left. Pings are answered while reads are
/// polled, so keep reading. `shutdown` sends Close (1000).
pub struct ByteStream<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    eof: bool,
    close_sent: bool,
}

/// Wraps an upgraded connection (after the `101` for [`Protocol::SpdyTunnel`]) as a
/// [`ByteStream`].
pub async fn tunnel<S>(io: S) -> ByteStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Messages go to the socket as they are written, not when a buffer fills.
    let config = config().write_buffer_size(0);
    byte_stream(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await)
}

/// A [`ByteStream`] over an established server-side WebSocket.
pub fn byte_stream<S>(ws: WebSocketStream<S>) -> ByteStream<S> {
    ByteStream {
        ws,
        pending: Bytes::new(),
        eof: false,
        close_sent: false,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ByteStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.ws.poll_next_unpin(cx)) {
                // Empty messages are skipped: an empty read would mean EOF.
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message in a binary websocket tunnel",
                    )))
                }
                Some(Ok(Message::Close(_)))
                | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))
                | None => this.eof = true,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(err)) => return Poll::Ready(Err(ws_to_io(err))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ByteStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.ws.poll_ready_unpin(cx)).map_err(ws_to_io)?;
        let n = buf.len().min(MAX_CHUNK);
        this.ws
            .start_send_unpin(Message::binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(ws_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws.poll_flush_unpin(cx).map_err(ws_to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.ws.poll_ready_unpin(cx)).map_err(ws_to_io)?;
            match this.ws.start_send_unpin(close_message()) {
                // The client closed first: tungstenite answers it by itself.
                Ok(())
                | Err(WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Protocol(_)) => {
                }
                Err(err) => return Poll::Ready(Err(ws_to_io(err))),
            }
            this.close_sent = true;
        }
        this.ws.poll_flush_unpin(cx).map_err(ws_to_io)
    }
}

fn ws_to_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(err) => err,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

fn close_message() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Closes a connection crid won't serve with a policy-violation Close frame (the handshake
/// already succeeded, so there is no status code left to answer with).
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>, why: &'static str) {
    tracing::warn!(reason = why, "refusing websocket session");
    let frame = CloseFrame {
        code: CloseCode::Policy,
        reason: why.into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(Some(frame))).await;
}

/// Encodes and decodes channel messages: `[channel][payload]` in binary messages, or `'0' +
/// channel` then standard base64 (with padding) in text messages for the base64 variants.
#[derive(Debug, Clone, Copy)]
struct Codec {
    base64: bool,
}

/// A client message as the channel protocol sees it.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    Data(u8, Bytes),
    Closed,
    /// Control frames, empty messages, and messages in the other framing (the reference
    /// server ignores text on binary protocols).
    Skip,
    Invalid(&'static str),
}

impl Codec {
    fn of(protocol: Protocol) -> Self {
        Self {
            base64: protocol.base64(),
        }
    }

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            text.push(char::from(b'0'.wrapping_add(channel)));
            STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut bytes = Vec::with_capacity(1 + data.len());
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        }
    }

    fn decode(self, message: Message) -> Inbound {
        match message {
            Message::Binary(data) if !self.base64 => match data.first() {
                Some(&channel) => Inbound::Data(channel, data.slice(1..)),
                None => Inbound::Skip,
            },
            Message::Text(text) if self.base64 => match text.as_bytes().split_first() {
                Some((&c, payload)) => match STANDARD.decode(payload) {
                    Ok(data) => Inbound::Data(c.wrapping_sub(b'0'), Bytes::from(data)),
                    Err(_) => Inbound::Invalid("invalid base64 in a message"),
                },
                None => Inbound::Skip,
            },
            Message::Close(_) => Inbound::Closed,
            _ => Inbound::Skip,
        }
    }
}

/// Why the client's side ended.
enum ReadEnd {
    /// Close frame, or the end of the connection after one.
    Closed,
    /// The connection ended without a Close frame (what client-go does after crid's).
    Eof,
    Failed(WsError),
    Invalid(&'static str),
}

impl std::fmt::Display for ReadEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed"),
            Self::Eof => f.write_str("connection ended"),
            Self::Failed(err) => write!(f, "read failed: {err}"),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

/// The next channel message from the client, or why there is none.
async fn next_data<S>(
    source: &mut SplitStream<WebSocketStream<S>>,
    codec: Codec,
    activity: &Activity,
) -> Result<(u8, Bytes), ReadEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = match source.next().await {
            None => return Err(ReadEnd::Eof),
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                return Err(ReadEnd::Closed)
            }
            Some(Err(err)) => return Err(ReadEnd::Failed(err)),
            Some(Ok(message)) => message,
        };
        activity.touch();
        match codec.decode(message) {
            Inbound::Data(channel, data) => return Ok((channel, data)),
            Inbound::Skip => {}
            Inbound::Closed => return Err(ReadEnd::Closed),
            Inbound::Invalid(why) => return Err(ReadEnd::Invalid(why)),
        }
    }
}

/// Where the client's exec/attach channels go: absent ones are ignored.
struct CommandInbound {
    stdin: Option<mpsc::Sender<io::Result<Bytes>>>,
    resize: Option<(ResizeParser, watch::Sender<Option<TermSize>>)>,
}

/// Reads the client's channels for exec/attach until the client goes away. Dropping a
/// sender ends that stream for the session (stdin EOF, resize closed).
async fn read_remote_command<S>(
    mut source: SplitStream<WebSocketStream<S>>,
    protocol: Protocol,
    mut inbound: CommandInbound,
    activity: &Activity,
) -> ReadEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let codec = Codec::of(protocol);
    loop {
        let (channel, data) = match next_data(&mut source, codec, activity).await {
            Ok(message) => message,
            Err(end) => return end,
        };
        match channel {
            STDIN => {
                if let Some(tx) = &inbound.stdin {
                    // Backpressure: wait for the session to take it. A session that stopped
                    // reading (it ended) drops the receiver, and stdin is ignored from then on.
                    if !data.is_empty() && tx.send(Ok(data)).await.is_err() {
                        inbound.stdin = None;
                    }
                }
            }
            RESIZE => {
                if let Some((parser, sizes)) = &mut inbound.resize {
                    match parser.feed(&data) {
                        Ok(parsed) => {
                            for size in parsed {
                                sizes.send_replace(Some(size));
                            }
                        }
                        Err(why) => {
                            // As the reference server: a bad resize stream ends resizing.
                            tracing::debug!(
                                reason = why,
                                "ignoring the resize channel from now on"
                            );
                            inbound.resize = None;
                        }
                    }
                }
            }
            CLOSE_SIGNAL if protocol == Protocol::V5Channel => match data[..] {
                [STDIN] => inbound.stdin = None,
                [RESIZE] => inbound.resize = None,
                [STDOUT | STDERR | ERROR] => {}
                _ => return ReadEnd::Invalid("malformed stream close signal"),
            },
            _ => {}
        }
    }
}

/// Reads the client's data channels for a legacy port-forward until the client goes away.
async fn read_port_forward<S>(
    mut source: SplitStream<WebSocketStream<S>>,
    codec: Codec,
    mut to_pods: Vec<Option<mpsc::Sender<Bytes>>>,
    activity: &Activity,
) -> ReadEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let (channel, data) = match next_data(&mut source, codec, activity).await {
            Ok(message) => message,
            Err(end) => return end,
        };
        // Odd channels (errors) are crid's to write; unknown channels are ignored.
        if channel % 2 != 0 || data.is_empty() {
            continue;
        }
        if let Some(slot) = to_pods.get_mut(usize::from(channel / 2)) {
            if let Some(tx) = slot {
                // A port that is done (or never connected) takes nothing more.
                if tx.send(data).await.is_err() {
                    *slot = None;
                }
            }
        }
    }
}

/// Writes queued messages in batches, one flush per batch, until it has sent a Close frame.
async fn send_queued<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut queue: mpsc::Receiver<Message>,
    activity: &Activity,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(first) = queue.recv().await {
        let mut closing = first.is_close();
        sink.feed(first).await?;
        let mut batch = 1;
        while !closing && batch < WRITE_BATCH {
            let Ok(next) = queue.try_recv() else { break };
            closing = next.is_close();
            sink.feed(next).await?;
            batch += 1;
        }
        sink.flush().await?;
        activity.touch();
        if closing {
            return Ok(());
        }
    }
    Ok(())
}

/// Runs a session's three parts together: the reader (ends when the client goes away), the
/// writer (ends after crid's Close frame) and the work (the session, which queues that Close
/// last). The client leaving, a write failing or the idle timeout drops everything at once;
/// after crid's Close the client gets [`CLOSE_WAIT`] to close its side while the reader keeps
/// draining (closing a socket with unread input resets it, which can cut off the output still
/// in flight).
async fn drive<R, W, F>(reader: R, writer: W, work: F, activity: &Activity, idle: Duration)
where
    R: Future<Output = ReadEnd>,
    W: Future<Output = Result<(), WsError>>,
    F: Future<Output = ()>,
{
    tokio::pin!(reader);
    tokio::select! {
        end = &mut reader => {
            tracing::debug!(end = %end, "websocket client went away");
            return;
        }
        written = alongside(writer, work) => {
            if let Err(err) = written {
                tracing::debug!(error = %err, "websocket write failed");
                return;
            }
        }
        () = activity.idle_timeout(idle) => {
            tracing::debug!(?idle, "websocket session idle, closing");
            return;
        }
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, reader).await;
}

/// Polls `side` while `main` runs; returns `main`'s output (`side` is dropped then).
async fn alongside<T>(main: impl Future<Output = T>, side: impl Future<Output = ()>) -> T {
    tokio::pin!(main);
    tokio::pin!(side);
    let mut side_done = false;
    loop {
        tokio::select! {
            out = &mut main => return out,
            () = &mut side, if !side_done => side_done = true,
        }
    }
}

/// When the connection last carried a message, either way, for the idle timeout. Atomic so
/// the futures that share it keep the session future `Send`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing happened for `idle`; never for a zero `idle`.
    async fn idle_timeout(&self, idle: Duration) {
        if idle.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let Some(deadline) = self
                .start
                .checked_add(last)
                .and_then(|last| last.checked_add(idle))
            else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The session's stdout or stderr: each write becomes one message on `channel`, queued for
/// the writer; a full queue makes the session wait.
struct ChannelWriter {
    tx: PollSender<Message>,
    codec: Codec,
    channel: u8,
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.tx.poll_reserve(cx)).map_err(|_| client_gone())?;
        let n = buf.len().min(MAX_CHUNK);
        let message = this.codec.encode(this.channel, &buf[..n]);
        this.tx.send_item(message).map_err(|_| client_gone())?;
        Poll::Ready(Ok(n))
    }

    /// Queued is as far as a write goes: the status, queued after the session ends, can't
    /// overtake it.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Nothing to send: clients see the end of output when the connection closes (client-go
    /// ignores per-channel close signals from the server).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn client_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "websocket client went away")
}

/// Moves the latest terminal size to the session as it can take it.
async fn forward_sizes(mut latest: watch::Receiver<Option<TermSize>>, to: mpsc::Sender<TermSize>) {
    while latest.changed().await.is_ok() {
        let size = *latest.borrow_and_update();
        if let Some(size) = size {
            if to.send(size).await.is_err() {
                return;
            }
        }
    }
}

/// What goes on the error channel for `protocol` (see [`super::status::payload`]).
fn status_payload(protocol: Protocol, cmd: &[String], outcome: &Outcome) -> Option<String> {
    super::status::payload(protocol.json_status(), cmd, outcome)
}
