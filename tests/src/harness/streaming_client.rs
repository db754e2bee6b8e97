//! An independent client for the CRI streaming endpoints (`/exec`, `/attach`, `/portforward`)
//! that speaks the wire protocols the way client-go (crictl, critest, the kubelet) does:
//!
//! - SPDY/3.1 after an HTTP/1.1 `POST` upgrade: remotecommand `v4.channel.k8s.io` down to
//!   `channel.k8s.io` (one stream per `streamtype`, exit codes as `metav1.Status` JSON on the
//!   `error` stream) and `portforward.k8s.io` (an error + data stream pair per connection);
//! - WebSocket: the channel protocols `v5`/`v4`/legacy and their base64 variants for exec and
//!   attach, SPDY tunnelled in binary messages (`SPDY/3.1+portforward.k8s.io`) and the legacy
//!   two-channels-per-port port-forward.
//!
//! It is written from the protocol reference (`shared/reference/streaming-protocol.md`) alone,
//! never from crid's server code, so that tests using it check crid against the protocol and
//! not against itself; and it follows client-go closely enough to run against the kubelet
//! library's server too (containerd, CRI-O), which `crid-bench` relies on.
//!
//! Only plain `http://` URLs are supported: crid and containerd serve on loopback without TLS
//! by default.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::Engine as _;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// What client-go's SPDY executor offers for exec and attach, in its order (one
/// `X-Stream-Protocol-Version` header line each).
pub const REMOTECOMMAND_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The only protocol of port-forward over SPDY (exactly this string, no `/v1`).
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of SPDY tunnelled in WebSocket (`crictl port-forward -r websocket`).
pub const PORT_FORWARD_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The WebSocket subprotocol `crictl exec/attach -r websocket` offers (and the only one).
pub const WEBSOCKET_V5: &str = "v5.channel.k8s.io";

/// How long client-go waits for the `SYN_REPLY` of each stream it creates.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// DATA frames are sent in chunks of at most this size (the reference's advice).
const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Bound on an HTTP response head or refusal body: a misbehaving server cannot make us buffer
/// without limit.
const MAX_HTTP_HEAD: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// URLs and HTTP
// ---------------------------------------------------------------------------------------------

/// The parts of a streaming URL the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl StreamUrl {
    /// Parses `http://host:port/path` (or `ws://`); `https`/`wss` are refused because this
    /// client does no TLS.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| anyhow!("unsupported URL {url:?}: only http:// and ws:// (no TLS)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("bad IPv6 authority in {url:?}"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse()
                .with_context(|| format!("bad port {p:?} in {url:?}"))?,
            None => 80,
        };
        ensure!(!host.is_empty(), "no host in {url:?}");
        Ok(StreamUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// `host:port` as it goes in a `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same endpoint as a `ws://` URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.authority(), self.path)
    }

    async fn connect(&self) -> Result<TcpStream> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connect to {}", self.authority()))?;
        // Go sets TCP_NODELAY by default; interactive sessions and latency measurements
        // need it.
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(tcp)
    }
}

/// A non-101 answer to an upgrade request: 404 for a used, expired or unknown token, 403 when
/// no offered protocol is supported, 400 for a malformed upgrade. Returned inside
/// [`anyhow::Error`]; get it back with `err.downcast_ref::<HttpRefused>()`.
#[derive(Debug, Clone)]
pub struct HttpRefused {
    pub status: u16,
    /// Response headers, names lowercased, in order (repeated names repeated).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpRefused {
    /// Every value of header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
}

impl fmt::Display for HttpRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upgrade refused with HTTP {}: {}",
            self.status,
            self.body.trim()
        )
    }
}

impl std::error::Error for HttpRefused {}

/// The HTTP status of an upgrade refusal inside `err`, if that is what it is.
pub fn refused_status(err: &anyhow::Error) -> Option<u16> {
    err.downcast_ref::<HttpRefused>().map(|r| r.status)
}

fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
    /// Bytes read past the head: for a 101 the first bytes of the upgraded protocol, which
    /// must not be lost (the reference warns the Go client loses them; we don't).
    leftover: Vec<u8>,
}

async fn read_response_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<ResponseHead> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        ensure!(
            buf.len() < MAX_HTTP_HEAD,
            "HTTP response head over {MAX_HTTP_HEAD} bytes"
        );
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.context("read HTTP response")?;
        ensure!(
            n > 0,
            "connection closed before a complete HTTP response head ({} bytes: {:?})",
            buf.len(),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let leftover = buf[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 response: {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(ResponseHead {
        status,
        headers,
        leftover,
    })
}

/// Reads a refusal's body (Content-Length, else to EOF), bounded in size and time.
async fn read_refusal_body<S: AsyncRead + Unpin>(io: &mut S, head: &ResponseHead) -> String {
    let mut body = head.leftover.clone();
    let want = header_values(&head.headers, "content-length")
        .first()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| n.min(MAX_HTTP_HEAD));
    let read = async {
        let mut chunk = [0u8; 4096];
        while want.is_none_or(|n| body.len() < n) && body.len() < MAX_HTTP_HEAD {
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// A stream that first yields bytes already read (those that arrived with the 101), then the
/// inner stream's.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The HTTP/1.1 upgrade to SPDY/3.1 as client-go's round tripper writes it: `POST`,
/// `Content-Length: 0`, `Connection: Upgrade`, `Upgrade: SPDY/3.1` and one
/// `X-Stream-Protocol-Version` line per protocol. Returns the negotiated protocol (empty when
/// the server names none: client-go then falls back to protocol v1) and the upgraded stream.
pub async fn spdy_upgrade(url: &str, protocols: &[&str]) -> Result<(String, Prefixed<TcpStream>)> {
    let url = StreamUrl::parse(url)?;
    let mut tcp = url.connect().await?;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: crid-tests-streaming-client\r\n\
         Content-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
        url.path,
        url.authority()
    );
    for protocol in protocols {
        request.push_str(&format!("X-Stream-Protocol-Version: {protocol}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .context("send the upgrade request")?;
    let head = read_response_head(&mut tcp).await?;
    if head.status != 101 {
        let body = read_refusal_body(&mut tcp, &head).await;
        return Err(HttpRefused {
            status: head.status,
            headers: head.headers,
            body,
        }
        .into());
    }
    let connection = header_values(&head.headers, "connection").join(",");
    let upgrade = header_values(&head.headers, "upgrade").join(",");
    ensure!(
        connection.to_ascii_lowercase().contains("upgrade")
            && upgrade.to_ascii_lowercase().contains("spdy/3.1"),
        "101 without Connection: upgrade / Upgrade: SPDY/3.1 (Connection {connection:?}, \
         Upgrade {upgrade:?})"
    );
    let protocol = header_values(&head.headers, "x-stream-protocol-version")
        .first()
        .map(|v| (*v).to_owned())
        .unwrap_or_default();
    Ok((protocol, Prefixed::new(head.leftover, tcp)))
}

// ---------------------------------------------------------------------------------------------
// SPDY/3 header compression
// ---------------------------------------------------------------------------------------------

/// Adler-32 of the SPDY/3 dictionary: the DICTID in the first compressed header block.
pub const SPDY3_DICTIONARY_ADLER32: u32 = 0xE3C6_A7C2;
/// Length of the SPDY/3 dictionary.
pub const SPDY3_DICTIONARY_LEN: usize = 1423;

/// The SPDY/3 header-compression dictionary (SPDY/3 draft §2.6.10.1), built from its
/// structure: length-prefixed header names and common values, then a run of status codes,
/// reason phrases, dates and media types. Checked against its length and Adler-32 on first use,
/// so a typo cannot silently make every header block undecodable for the peer.
static SPDY3_DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414\
        415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently\
        400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error\
        501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct \
        Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,\
        image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,\
        publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
    let mut dict = Vec::with_capacity(SPDY3_DICTIONARY_LEN);
    for word in WORDS {
        let len = u32::try_from(word.len()).expect("dictionary word length fits u32");
        dict.extend_from_slice(&len.to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(TAIL.as_bytes());
    assert_eq!(
        (dict.len(), adler32(&dict)),
        (SPDY3_DICTIONARY_LEN, SPDY3_DICTIONARY_ADLER32),
        "the SPDY/3 dictionary is wrong"
    );
    dict
});

/// The SPDY/3 header-compression dictionary (1423 bytes, Adler-32 0xE3C6A7C2).
pub fn spdy3_dictionary() -> &'static [u8] {
    &SPDY3_DICTIONARY
}

/// Adler-32 (RFC 1950), to check the dictionary independently of zlib.
pub fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// The sending side's zlib stream: one per connection, shared by every header block, each
/// block ended with a sync flush; the dictionary is set once, so only the first block carries
/// the zlib header with its DICTID.
pub struct HeaderCompressor {
    z: Compress,
}

impl HeaderCompressor {
    pub fn new() -> Result<Self> {
        // Best compression, like Go's spdystream; any valid zlib continuation decodes.
        let mut z = Compress::new(Compression::best(), true);
        let adler = z
            .set_dictionary(spdy3_dictionary())
            .context("set the SPDY dictionary on the compressor")?;
        ensure!(
            adler == SPDY3_DICTIONARY_ADLER32,
            "compressor dictionary Adler-32 {adler:#x}"
        );
        Ok(HeaderCompressor { z })
    }

    /// Compresses one header block, ending it with a sync flush.
    pub fn compress(&mut self, block: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() + 64);
        let start = self.z.total_in();
        loop {
            let consumed = usize::try_from(self.z.total_in() - start).context("total_in")?;
            self.z
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .context("deflate a header block")?;
            let consumed = usize::try_from(self.z.total_in() - start).context("total_in")?;
            // A sync flush that left room in the buffer is complete.
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(256));
        }
    }
}

/// The receiving side's zlib stream (the peer's one per-connection stream).
pub struct HeaderDecompressor {
    z: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        HeaderDecompressor {
            z: Decompress::new(true),
        }
    }
}

impl HeaderDecompressor {
    /// Inflates one header block: exactly the frame's compressed bytes, which must all be
    /// consumed (Go's reader checks that too). The first block asks for the dictionary.
    pub fn decompress(&mut self, input: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let start = self.z.total_in();
        let mut dictionary_set = false;
        loop {
            let consumed = usize::try_from(self.z.total_in() - start).context("total_in")?;
            let out_before = out.len();
            match self
                .z
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(id) if !dictionary_set => {
                        ensure!(
                            id == SPDY3_DICTIONARY_ADLER32,
                            "peer's header block asks for dictionary {id:#x}, not SPDY/3's"
                        );
                        self.z
                            .set_dictionary(spdy3_dictionary())
                            .context("set the SPDY dictionary on the decompressor")?;
                        dictionary_set = true;
                        continue;
                    }
                    _ => return Err(e).context("inflate a header block"),
                },
            }
            let now = usize::try_from(self.z.total_in() - start).context("total_in")?;
            if now == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
                continue;
            }
            ensure!(
                now > consumed || out.len() > out_before,
                "header block does not inflate completely ({now} of {} bytes)",
                input.len()
            );
        }
    }
}

/// Encodes an uncompressed SPDY/3 header block: `u32 count`, then `u32 len, name, u32 len,
/// value` per pair; names lowercased as Go writes them; repeated names joined with NUL.
pub fn encode_header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut merged: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => merged.push((name, vec![value])),
        }
    }
    let mut block = Vec::new();
    block.extend_from_slice(&(merged.len() as u32).to_be_bytes());
    for (name, values) in merged {
        let value = values.join("\0");
        block.extend_from_slice(&(name.len() as u32).to_be_bytes());
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(&(value.len() as u32).to_be_bytes());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// Decodes an uncompressed header block; NUL-joined values become repeated pairs.
pub fn decode_header_block(block: &[u8]) -> Result<Vec<(String, String)>> {
    fn take<'a>(block: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8]> {
        let end = at
            .checked_add(n)
            .filter(|e| *e <= block.len())
            .ok_or_else(|| anyhow!("header block truncated"))?;
        let slice = &block[*at..end];
        *at = end;
        Ok(slice)
    }
    fn take_u32(block: &[u8], at: &mut usize) -> Result<usize> {
        let b = take(block, at, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut at = 0;
    let count = take_u32(block, &mut at)?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let n = take_u32(block, &mut at)?;
        let name = String::from_utf8_lossy(take(block, &mut at, n)?).into_owned();
        let n = take_u32(block, &mut at)?;
        let value = String::from_utf8_lossy(take(block, &mut at, n)?).into_owned();
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    ensure!(at == block.len(), "trailing bytes after the header block");
    Ok(headers)
}

// ---------------------------------------------------------------------------------------------
// SPDY/3 framing
// ---------------------------------------------------------------------------------------------

/// SPDY/3 control frame types.
pub mod frame_type {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes the client sends or names.
pub mod rst_status {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
}

const FLAG_FIN: u8 = 0x01;

/// One SPDY/3 frame as read off the wire.
#[derive(Debug)]
enum Frame {
    Data {
        stream: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    Control {
        kind: u16,
        flags: u8,
        payload: Vec<u8>,
    },
}

/// Reads one frame; `None` at a clean EOF between frames.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection ended inside a SPDY frame header",
            ));
        }
        got += n;
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != 3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("SPDY control frame of version {version}"),
            ));
        }
        Ok(Some(Frame::Control {
            kind: u16::from_be_bytes([head[2], head[3]]),
            flags,
            payload,
        }))
    } else {
        Ok(Some(Frame::Data {
            stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff,
            flags,
            payload,
        }))
    }
}

fn frame_length(payload: &[u8]) -> [u8; 3] {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= 0x00ff_ffff)
        .expect("SPDY frame payload fits 24 bits");
    let b = len.to_be_bytes();
    [b[1], b[2], b[3]]
}

/// Encodes a control frame (version 3).
pub fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&[0x80, 0x03]);
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&frame_length(payload));
    f.extend_from_slice(payload);
    f
}

/// Encodes a DATA frame.
pub fn data_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&frame_length(payload));
    f.extend_from_slice(payload);
    f
}

fn two_u32(payload: &[u8]) -> Option<(u32, u32)> {
    if payload.len() < 8 {
        return None;
    }
    Some((
        u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
    ))
}

// ---------------------------------------------------------------------------------------------
// SPDY/3.1 session
// ---------------------------------------------------------------------------------------------

/// How a stream's incoming side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server half-closed it (DATA or SYN_REPLY with FIN).
    Fin,
    /// The server reset it (RST_STREAM with this status).
    Reset(u32),
    /// The connection ended (EOF, error, GOAWAY before it was processed) first.
    ConnectionLost(String),
}

enum Incoming {
    Data(Vec<u8>),
    End(StreamEnd),
}

enum Outgoing {
    Frame(Vec<u8>),
    /// Flush, shut down the write side, and report.
    Shutdown(oneshot::Sender<()>),
}

/// What a stream opener learns: the SYN_REPLY's headers, or how the stream ended instead.
type ReplyOutcome = std::result::Result<Vec<(String, String)>, StreamEnd>;

struct StreamSlot {
    tx: mpsc::UnboundedSender<Incoming>,
    reply: Option<oneshot::Sender<ReplyOutcome>>,
    local_done: bool,
    remote_done: bool,
}

struct SessionState {
    next_stream: u32,
    next_ping: u32,
    compressor: HeaderCompressor,
    streams: HashMap<u32, StreamSlot>,
    pings: HashMap<u32, oneshot::Sender<()>>,
    goaway: Option<(u32, u32)>,
    closed: Option<String>,
    /// Streams the server reset or refused, for diagnostics.
    server_resets: Vec<(u32, u32)>,
}

struct Shared {
    state: Mutex<SessionState>,
    out: mpsc::UnboundedSender<Outgoing>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, frame: Vec<u8>) -> Result<()> {
        self.out
            .send(Outgoing::Frame(frame))
            .map_err(|_| anyhow!("SPDY connection closed"))
    }
}

/// A SPDY/3.1 client session over any byte stream (TCP after the upgrade, or a WebSocket
/// tunnel). Streams are opened by the client only (odd ids 1, 3, 5, …, strictly increasing on
/// the wire); server-initiated streams are refused. No flow control is sent or honoured, as
/// the Go peer (moby/spdystream) does neither. Dropping it drops the connection abruptly; use
/// [`SpdyClient::close`] to say goodbye like client-go.
pub struct SpdyClient {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// A task carrying the byte stream (the WebSocket tunnel pump), ended with the session.
    carrier: Option<JoinHandle<()>>,
}

impl SpdyClient {
    /// Upgrades `url` to SPDY/3.1 offering `protocols`; returns the negotiated protocol
    /// (empty if the server named none) and the session.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<(String, SpdyClient)> {
        let (protocol, io) =
            tokio::time::timeout(STREAM_CREATION_TIMEOUT, spdy_upgrade(url, protocols))
                .await
                .map_err(|_| anyhow!("SPDY upgrade of {url} timed out"))??;
        Ok((protocol, SpdyClient::over(io)?))
    }

    /// Runs a session over an already upgraded byte stream.
    pub fn over<S>(io: S) -> Result<SpdyClient>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        let (out, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(SessionState {
                next_stream: 1,
                next_ping: 1,
                compressor: HeaderCompressor::new()?,
                streams: HashMap::new(),
                pings: HashMap::new(),
                goaway: None,
                closed: None,
                server_resets: Vec::new(),
            }),
            out,
        });
        let reader = tokio::spawn(read_loop(
            tokio::io::BufReader::with_capacity(64 * 1024, read_half),
            shared.clone(),
        ));
        let writer = tokio::spawn(write_loop(write_half, out_rx));
        Ok(SpdyClient {
            shared,
            reader,
            writer,
            carrier: None,
        })
    }

    /// Opens a stream with `headers` (SYN_STREAM) and waits for the server's SYN_REPLY, as
    /// client-go's `CreateStream` does (30 s limit). A RST_STREAM instead is an error.
    pub async fn open_stream(&self, headers: &[(&str, &str)]) -> Result<SpdyStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.state();
            if let Some(reason) = &st.closed {
                bail!("SPDY connection closed: {reason}");
            }
            if let Some((last, status)) = st.goaway {
                bail!("server sent GOAWAY (last stream {last}, status {status})");
            }
            let id = st.next_stream;
            st.next_stream += 2;
            let block = st.compressor.compress(&encode_header_block(headers))?;
            let mut payload = Vec::with_capacity(10 + block.len());
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&0u32.to_be_bytes()); // associated stream
            payload.extend_from_slice(&[0, 0]); // priority 0, slot 0
            payload.extend_from_slice(&block);
            st.streams.insert(
                id,
                StreamSlot {
                    tx,
                    reply: Some(reply_tx),
                    local_done: false,
                    remote_done: false,
                },
            );
            // Sent under the lock: ids and compressed blocks reach the wire in order.
            self.shared
                .send(control_frame(frame_type::SYN_STREAM, 0, &payload))?;
            id
        };
        let reply = tokio::time::timeout(STREAM_CREATION_TIMEOUT, reply_rx)
            .await
            .map_err(|_| anyhow!("no SYN_REPLY for stream {id} ({headers:?}) within 30 s"))?
            .map_err(|_| anyhow!("SPDY session ended while opening stream {id}"))?;
        let reply_headers = match reply {
            Ok(h) => h,
            Err(StreamEnd::Reset(status)) => {
                bail!("server reset stream {id} ({headers:?}) with status {status}")
            }
            Err(end) => bail!("stream {id} ({headers:?}) not opened: {end:?}"),
        };
        Ok(SpdyStream {
            reply_headers,
            writer: StreamWriter {
                id,
                shared: self.shared.clone(),
            },
            reader: StreamReader { id, rx, end: None },
        })
    }

    /// Sends a PING (odd id) and waits for the server's echo; returns the round trip.
    pub async fn ping(&self) -> Result<Duration> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.state();
            if let Some(reason) = &st.closed {
                bail!("SPDY connection closed: {reason}");
            }
            let id = st.next_ping;
            st.next_ping += 2;
            st.pings.insert(id, tx);
            id
        };
        let start = Instant::now();
        self.shared
            .send(control_frame(frame_type::PING, 0, &id.to_be_bytes()))?;
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .map_err(|_| anyhow!("no PING reply within 10 s"))?
            .map_err(|_| anyhow!("SPDY session ended before the PING reply"))?;
        Ok(start.elapsed())
    }

    /// The GOAWAY the server sent, if any: (last good stream id, status).
    pub fn goaway(&self) -> Option<(u32, u32)> {
        self.shared.state().goaway
    }

    /// Why the connection ended, once it has (from the reader's point of view).
    pub fn closed(&self) -> Option<String> {
        self.shared.state().closed.clone()
    }

    /// Streams the server reset: (stream id, status).
    pub fn server_resets(&self) -> Vec<(u32, u32)> {
        self.shared.state().server_resets.clone()
    }

    /// Ends the session like client-go's `Connection.Close`: RST_STREAM(CANCEL) for every
    /// stream not finished in both directions, GOAWAY, then a TCP half-close; then waits
    /// (briefly) for the server to close its side.
    pub async fn close(mut self) {
        {
            let st = self.shared.state();
            if st.closed.is_none() {
                let mut ids: Vec<u32> = st
                    .streams
                    .iter()
                    .filter(|(_, s)| !(s.local_done && s.remote_done))
                    .map(|(id, _)| *id)
                    .collect();
                ids.sort_unstable();
                for id in ids {
                    let mut payload = id.to_be_bytes().to_vec();
                    payload.extend_from_slice(&rst_status::CANCEL.to_be_bytes());
                    let _ = self
                        .shared
                        .send(control_frame(frame_type::RST_STREAM, 0, &payload));
                }
            }
        }
        let mut goaway = 0u32.to_be_bytes().to_vec(); // no server streams accepted
        goaway.extend_from_slice(&0u32.to_be_bytes());
        let _ = self
            .shared
            .send(control_frame(frame_type::GOAWAY, 0, &goaway));
        let (done_tx, done_rx) = oneshot::channel();
        if self.shared.out.send(Outgoing::Shutdown(done_tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        }
        // The server closes after our GOAWAY; don't wait long for it.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.reader).await;
        if let Some(carrier) = self.carrier.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), carrier).await;
        }
    }

    /// Drops the connection without any goodbye (no RST_STREAM, no GOAWAY): what a killed
    /// client or a broken network looks like to the server.
    pub fn abort(self) {
        drop(self);
    }
}

impl Drop for SpdyClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        if let Some(carrier) = &self.carrier {
            carrier.abort();
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(item) = rx.recv().await {
        match item {
            Outgoing::Frame(frame) => {
                // Coalesce what is already queued into one write.
                batch.clear();
                batch.extend_from_slice(&frame);
                let mut shutdown = None;
                while batch.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(Outgoing::Frame(more)) => batch.extend_from_slice(&more),
                        Ok(Outgoing::Shutdown(done)) => {
                            shutdown = Some(done);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if w.write_all(&batch).await.is_err() || w.flush().await.is_err() {
                    return;
                }
                if let Some(done) = shutdown {
                    let _ = w.shutdown().await;
                    let _ = done.send(());
                    return;
                }
            }
            Outgoing::Shutdown(done) => {
                let _ = w.flush().await;
                let _ = w.shutdown().await;
                let _ = done.send(());
                return;
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut r: R, shared: Arc<Shared>) {
    let mut decompressor = HeaderDecompressor::default();
    let reason = loop {
        match read_frame(&mut r).await {
            Ok(None) => break "the server closed the connection".to_owned(),
            Err(e) => break format!("read error: {e}"),
            Ok(Some(frame)) => {
                if let Err(e) = handle_frame(frame, &shared, &mut decompressor) {
                    break format!("protocol error: {e:#}");
                }
            }
        }
    };
    let mut st = shared.state();
    st.closed = Some(reason.clone());
    for (_, mut slot) in st.streams.drain() {
        let end = StreamEnd::ConnectionLost(reason.clone());
        if let Some(reply) = slot.reply.take() {
            let _ = reply.send(Err(end.clone()));
        }
        let _ = slot.tx.send(Incoming::End(end));
    }
    st.pings.clear();
}

fn handle_frame(
    frame: Frame,
    shared: &Shared,
    decompressor: &mut HeaderDecompressor,
) -> Result<()> {
    match frame {
        Frame::Data {
            stream,
            flags,
            payload,
        } => {
            let mut st = shared.state();
            let Some(slot) = st.streams.get_mut(&stream) else {
                // Data for a stream we reset or never opened: dropped, as spdystream does.
                return Ok(());
            };
            if !payload.is_empty() {
                let _ = slot.tx.send(Incoming::Data(payload));
            }
            if flags & FLAG_FIN != 0 {
                let _ = slot.tx.send(Incoming::End(StreamEnd::Fin));
                slot.remote_done = true;
                if slot.local_done {
                    st.streams.remove(&stream);
                }
            }
        }
        Frame::Control {
            kind,
            flags,
            payload,
        } => match kind {
            frame_type::SYN_REPLY => {
                ensure!(payload.len() >= 4, "short SYN_REPLY");
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                // Always inflate: the zlib stream is shared by every header block.
                let headers = decode_header_block(&decompressor.decompress(&payload[4..])?)
                    .with_context(|| format!("SYN_REPLY {id} header block"))?;
                let mut st = shared.state();
                if let Some(slot) = st.streams.get_mut(&id) {
                    if let Some(reply) = slot.reply.take() {
                        let _ = reply.send(Ok(headers));
                    }
                    if flags & FLAG_FIN != 0 {
                        let _ = slot.tx.send(Incoming::End(StreamEnd::Fin));
                        slot.remote_done = true;
                    }
                }
            }
            frame_type::RST_STREAM => {
                let (id, status) = two_u32(&payload).ok_or_else(|| anyhow!("short RST_STREAM"))?;
                let mut st = shared.state();
                st.server_resets.push((id, status));
                if let Some(mut slot) = st.streams.remove(&id) {
                    if let Some(reply) = slot.reply.take() {
                        let _ = reply.send(Err(StreamEnd::Reset(status)));
                    }
                    let _ = slot.tx.send(Incoming::End(StreamEnd::Reset(status)));
                }
            }
            frame_type::SYN_STREAM => {
                ensure!(payload.len() >= 10, "short SYN_STREAM");
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                decompressor.decompress(&payload[10..])?;
                let mut rst = id.to_be_bytes().to_vec();
                rst.extend_from_slice(&rst_status::REFUSED_STREAM.to_be_bytes());
                let _ = shared.send(control_frame(frame_type::RST_STREAM, 0, &rst));
            }
            frame_type::HEADERS => {
                ensure!(payload.len() >= 4, "short HEADERS");
                decompressor.decompress(&payload[4..])?;
            }
            frame_type::PING => {
                ensure!(payload.len() == 4, "PING of {} bytes", payload.len());
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if id % 2 == 1 {
                    if let Some(waiter) = shared.state().pings.remove(&id) {
                        let _ = waiter.send(());
                    }
                } else {
                    let _ = shared.send(control_frame(frame_type::PING, 0, &payload));
                }
            }
            frame_type::GOAWAY => {
                let (last, status) = two_u32(&payload).ok_or_else(|| anyhow!("short GOAWAY"))?;
                let mut st = shared.state();
                st.goaway = Some((last, status));
                // Streams above `last` were never processed by the server.
                let unprocessed: Vec<u32> =
                    st.streams.keys().copied().filter(|id| *id > last).collect();
                for id in unprocessed {
                    if let Some(mut slot) = st.streams.remove(&id) {
                        let end = StreamEnd::ConnectionLost(format!(
                            "GOAWAY (last stream {last}) before stream {id} was processed"
                        ));
                        if let Some(reply) = slot.reply.take() {
                            let _ = reply.send(Err(end.clone()));
                        }
                        let _ = slot.tx.send(Incoming::End(end));
                    }
                }
            }
            // No flow control (see the type's doc); NOOP and unknown types are ignored.
            _ => {}
        },
    }
    Ok(())
}

/// One SPDY stream: the reply headers, a writer (cloneable) and a reader.
pub struct SpdyStream {
    pub reply_headers: Vec<(String, String)>,
    pub writer: StreamWriter,
    pub reader: StreamReader,
}

impl SpdyStream {
    pub fn id(&self) -> u32 {
        self.writer.id
    }

    pub fn write(&self, data: &[u8]) -> Result<()> {
        self.writer.write(data)
    }

    pub fn close_write(&self) -> Result<()> {
        self.writer.close_write()
    }

    pub fn reset(&self) -> Result<()> {
        self.writer.reset()
    }

    pub async fn read(&mut self) -> Option<Vec<u8>> {
        self.reader.read().await
    }

    pub async fn read_to_end(&mut self) -> Vec<u8> {
        self.reader.read_to_end().await
    }

    pub fn into_split(self) -> (StreamWriter, StreamReader) {
        (self.writer, self.reader)
    }
}

/// The sending side of a stream. Writes are queued without limit (the tests' inputs are
/// bounded) and never wait for a window.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Queues `data` as DATA frames of at most 32 KiB.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        {
            let st = self.shared.state();
            if let Some(reason) = &st.closed {
                bail!("SPDY connection closed: {reason}");
            }
            match st.streams.get(&self.id) {
                Some(slot) if slot.local_done => bail!("stream {} already half-closed", self.id),
                Some(_) => {}
                None => bail!("stream {} was reset or has ended", self.id),
            }
        }
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.shared.send(data_frame(self.id, 0, chunk))?;
        }
        Ok(())
    }

    /// Half-closes the stream: an empty DATA frame with FIN (spdystream's `Stream.Close`).
    pub fn close_write(&self) -> Result<()> {
        let mut st = self.shared.state();
        if let Some(slot) = st.streams.get_mut(&self.id) {
            if slot.local_done {
                return Ok(());
            }
            slot.local_done = true;
            if slot.remote_done {
                st.streams.remove(&self.id);
            }
        }
        self.shared.send(data_frame(self.id, FLAG_FIN, &[]))
    }

    /// Abandons the stream: RST_STREAM(CANCEL).
    pub fn reset(&self) -> Result<()> {
        if let Some(slot) = self.shared.state().streams.remove(&self.id) {
            let _ = slot
                .tx
                .send(Incoming::End(StreamEnd::Reset(rst_status::CANCEL)));
        }
        let mut payload = self.id.to_be_bytes().to_vec();
        payload.extend_from_slice(&rst_status::CANCEL.to_be_bytes());
        self.shared
            .send(control_frame(frame_type::RST_STREAM, 0, &payload))
    }
}

/// The receiving side of a stream.
pub struct StreamReader {
    id: u32,
    rx: mpsc::UnboundedReceiver<Incoming>,
    end: Option<StreamEnd>,
}

impl StreamReader {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next chunk of data; `None` once the stream has ended (see [`StreamReader::end`]).
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        if self.end.is_some() {
            return None;
        }
        match self.rx.recv().await {
            Some(Incoming::Data(d)) => Some(d),
            Some(Incoming::End(end)) => {
                self.end = Some(end);
                None
            }
            None => {
                self.end = Some(StreamEnd::ConnectionLost("session dropped".to_owned()));
                None
            }
        }
    }

    /// Everything until the stream ends.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(d) = self.read().await {
            all.extend_from_slice(&d);
        }
        all
    }

    /// How the stream ended, once it has.
    pub fn end(&self) -> Option<&StreamEnd> {
        self.end.as_ref()
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// The WebSocket handshake (`GET`, RFC 6455) offering `protocols` in one comma-separated
/// `Sec-WebSocket-Protocol` header, as gorilla/websocket does. Returns the chosen subprotocol
/// (empty if none) and the socket. A non-101 answer is an [`HttpRefused`].
pub async fn ws_connect(
    url: &str,
    protocols: &[&str],
) -> Result<(String, WebSocketStream<TcpStream>)> {
    let parsed = StreamUrl::parse(url)?;
    let tcp = parsed.connect().await?;
    let mut request = parsed
        .ws_url()
        .into_client_request()
        .context("WebSocket request")?;
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols
                .join(", ")
                .parse()
                .context("Sec-WebSocket-Protocol value")?,
        );
    }
    let handshake = tokio_tungstenite::client_async(request, tcp);
    match tokio::time::timeout(STREAM_CREATION_TIMEOUT, handshake).await {
        Err(_) => bail!("WebSocket handshake with {url} timed out"),
        Ok(Ok((ws, response))) => {
            let protocol = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Ok((protocol, ws))
        }
        Ok(Err(tungstenite::Error::Http(response))) => Err(HttpRefused {
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }
        .into()),
        Ok(Err(e)) => Err(e).with_context(|| format!("WebSocket handshake with {url}")),
    }
}

enum WsCmd {
    Send(Message),
    /// Send a Close frame (1000) and keep reading until the server closes.
    Close,
}

enum WsEvent {
    /// A data message: channel byte and payload (base64 decoded on base64 protocols).
    Message(u8, Vec<u8>),
    /// The socket ended: the Close code if a Close frame came, else the error.
    End {
        close_code: Option<u16>,
        error: Option<String>,
    },
}

/// Owns the socket: sends queued messages, demultiplexes incoming ones, and answers pings
/// (tungstenite queues the pong while reading and flushes it on the next read or write).
async fn ws_channel_task(
    mut ws: WebSocketStream<TcpStream>,
    mut cmds: mpsc::UnboundedReceiver<WsCmd>,
    events: mpsc::UnboundedSender<WsEvent>,
    base64: bool,
) {
    let mut cmds_open = true;
    let end = |close_code, error| {
        let _ = events.send(WsEvent::End { close_code, error });
    };
    loop {
        tokio::select! {
            cmd = cmds.recv(), if cmds_open => match cmd {
                Some(WsCmd::Send(msg)) => {
                    if let Err(e) = ws.send(msg).await {
                        end(None, Some(format!("send: {e}")));
                        return;
                    }
                }
                Some(WsCmd::Close) | None => {
                    cmds_open = false;
                    let _ = ws
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        })))
                        .await;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Some((&channel, payload)) = b.split_first() {
                        let _ = events.send(WsEvent::Message(channel, payload.to_vec()));
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if !base64 {
                        // client-go treats a text message on a binary protocol as fatal.
                        end(None, Some(format!("text message on a binary protocol: {:?}", t.as_str())));
                        return;
                    }
                    let bytes = t.as_bytes();
                    let Some((&first, payload)) = bytes.split_first() else { continue };
                    let Some(channel) = first.checked_sub(b'0') else {
                        end(None, Some(format!("bad base64 channel {first:#x}")));
                        return;
                    };
                    match base64::engine::general_purpose::STANDARD.decode(payload) {
                        Ok(data) => {
                            let _ = events.send(WsEvent::Message(channel, data));
                        }
                        Err(e) => {
                            end(None, Some(format!("bad base64 payload: {e}")));
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    // Let tungstenite send its Close reply before we drop the socket.
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                    end(frame.map(|f| u16::from(f.code)), None);
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    end(None, Some(e.to_string()));
                    return;
                }
                None => {
                    end(None, Some("connection ended without a Close frame".to_owned()));
                    return;
                }
            }
        }
    }
}

/// A channel-protocol WebSocket session (the socket lives in a task).
struct WsChannels {
    protocol: String,
    base64: bool,
    cmds: mpsc::UnboundedSender<WsCmd>,
    events: mpsc::UnboundedReceiver<WsEvent>,
    task: JoinHandle<()>,
}

impl WsChannels {
    async fn connect(url: &str, protocols: &[&str]) -> Result<Self> {
        let (protocol, ws) = ws_connect(url, protocols).await?;
        let base64 = protocol.contains("base64");
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(ws_channel_task(ws, cmd_rx, event_tx, base64));
        Ok(WsChannels {
            protocol,
            base64,
            cmds,
            events,
            task,
        })
    }

    /// One message on `channel`: binary `[channel][data]`, or text `'0'+channel` + base64.
    fn send(&self, channel: u8, data: &[u8]) -> Result<()> {
        let msg = if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel));
            text.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
            Message::text(text)
        } else {
            let mut bytes = Vec::with_capacity(1 + data.len());
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        };
        self.cmds
            .send(WsCmd::Send(msg))
            .map_err(|_| anyhow!("WebSocket closed"))
    }

    /// A raw binary message (the v5 close signal `[255, channel]`).
    fn send_raw(&self, bytes: Vec<u8>) -> Result<()> {
        self.cmds
            .send(WsCmd::Send(Message::binary(bytes)))
            .map_err(|_| anyhow!("WebSocket closed"))
    }

    async fn close(mut self) {
        let _ = self.cmds.send(WsCmd::Close);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for WsChannels {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Carries a byte stream over WebSocket binary messages, for SPDY tunnelled in WebSocket:
/// incoming payloads are concatenated (boundaries mean nothing), each write becomes one
/// message, EOF from our side becomes a Close(1000).
async fn ws_tunnel_pump(mut ws: WebSocketStream<TcpStream>, mut local: tokio::io::DuplexStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut local_open = true;
    loop {
        tokio::select! {
            n = local.read(&mut buf), if local_open => match n {
                Ok(0) | Err(_) => {
                    local_open = false;
                    let _ = ws
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        })))
                        .await;
                }
                Ok(n) => {
                    if ws.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if local.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Text(_))) | Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// remotecommand (exec / attach)
// ---------------------------------------------------------------------------------------------

/// What to do in an exec or attach session. The set of streams must match the CRI request the
/// URL was minted for (`stdin`, `stdout`, `stderr`, `tty`): the server waits for exactly those.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// `Some` opens a stdin stream; its bytes are sent first. [`exec_spdy`]/[`exec_ws`] then
    /// half-close stdin (client-go on local EOF); with [`RemoteCommand`] the caller does.
    pub stdin: Option<Vec<u8>>,
    pub stdout: bool,
    /// Must be false with `tty` (the CRI refuses tty with stderr).
    pub stderr: bool,
    /// Opens the `resize` stream (SPDY protocol ≥ v3) and sends `resize` on it.
    pub tty: bool,
    /// Terminal sizes `(width, height)` sent right after the streams exist, in order.
    pub resize: Vec<(u16, u16)>,
    /// Protocols to offer; empty = client-go's defaults ([`REMOTECOMMAND_PROTOCOLS`] over
    /// SPDY, [`WEBSOCKET_V5`] over WebSocket); `vec![String::new()]` offers none.
    pub protocols: Vec<String>,
    /// Limit for the whole session in [`exec_spdy`]/[`exec_ws`]/[`RemoteCommand::finish`].
    pub timeout: Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            stdin: None,
            stdout: true,
            stderr: true,
            tty: false,
            resize: Vec::new(),
            protocols: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// The outcome of an exec or attach session.
#[derive(Debug, Clone, Default)]
pub struct ExecResult {
    /// The negotiated protocol.
    pub protocol: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Everything read from the error stream (SPDY) or channel 3 (WebSocket): a
    /// `metav1.Status` JSON with v4/v5, plain text on failure with older protocols, empty for
    /// success on older protocols.
    pub status_json: Vec<u8>,
    /// How the session ended (error stream end over SPDY, Close/EOF over WebSocket).
    pub ended: String,
    /// The WebSocket Close code the server sent, if any.
    pub ws_close_code: Option<u16>,
    /// The first WebSocket message (channel, payload): the kubelet library sends an empty one
    /// on the lowest writable channel right after the upgrade.
    pub ws_first_message: Option<(u8, Vec<u8>)>,
    /// From the start of the request (TCP connect) to the end of the status.
    pub elapsed: Duration,
}

impl ExecResult {
    /// The status as JSON, if it is JSON.
    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.status_json).ok()
    }

    /// The status as text.
    pub fn status_text(&self) -> String {
        String::from_utf8_lossy(&self.status_json).into_owned()
    }

    /// client-go's verdict on the status (v4 decoder): `Ok(0)` for an empty status or
    /// `Success`, `Ok(n)` for `NonZeroExitCode` with an `ExitCode` cause (0-255), `Err` with
    /// the message for any other failure.
    pub fn exit_code(&self) -> std::result::Result<u8, String> {
        if self.status_json.is_empty() {
            return Ok(0);
        }
        let Some(status) = self.status() else {
            return Err(self.status_text());
        };
        match status["status"].as_str() {
            Some("Success") => Ok(0),
            Some("Failure") if status["reason"] == "NonZeroExitCode" => status["details"]["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse::<u8>().ok())
                .ok_or_else(|| format!("invalid exit code in {}", self.status_text())),
            Some("Failure") => Err(status["message"].as_str().unwrap_or_default().to_owned()),
            _ => Err(format!(
                "error stream protocol error: unknown error: {}",
                self.status_text()
            )),
        }
    }
}

enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Status(Vec<u8>),
    First(u8, Vec<u8>),
    End {
        how: String,
        close_code: Option<u16>,
    },
}

enum Transport {
    Spdy {
        client: Option<SpdyClient>,
        stdin: Option<StreamWriter>,
        resize: Option<StreamWriter>,
    },
    Ws {
        channels: Option<WsChannels>,
        v5: bool,
        stdin: bool,
        tty: bool,
    },
}

/// An exec or attach session in progress, for interactive use: write stdin, resize, wait for
/// output, then [`RemoteCommand::finish`] (or [`RemoteCommand::abort`] to vanish).
pub struct RemoteCommand {
    protocol: String,
    transport: Transport,
    events: mpsc::UnboundedReceiver<Event>,
    pump: Option<JoinHandle<()>>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Vec<u8>,
    first: Option<(u8, Vec<u8>)>,
    ended: Option<(String, Option<u16>)>,
    /// Where the next [`RemoteCommand::read_until`] starts looking in stdout.
    mark: usize,
    started: Instant,
    elapsed: Option<Duration>,
    timeout: Duration,
}

/// The protocols to offer: the defaults when none are given; empty strings are dropped, so
/// `vec![String::new()]` offers nothing at all.
fn offered<'a>(given: &'a [String], defaults: &[&'a str]) -> Vec<&'a str> {
    if given.is_empty() {
        return defaults.to_vec();
    }
    given
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect()
}

fn resize_message(width: u16, height: u16) -> Vec<u8> {
    // Go's json.Encoder: PascalCase field names and a trailing newline.
    format!("{{\"Width\":{width},\"Height\":{height}}}\n").into_bytes()
}

/// The remotecommand protocol version (1 for `channel.k8s.io`, 5 for `v5…`).
fn remotecommand_version(protocol: &str) -> u32 {
    protocol
        .strip_prefix('v')
        .and_then(|rest| rest.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

impl RemoteCommand {
    /// Starts a session over SPDY: upgrade, then the streams client-go creates, one after the
    /// other, each waiting for its SYN_REPLY: `error`, `stdin`?, `stdout`?, `stderr`?,
    /// `resize` (tty, protocol ≥ v3).
    pub async fn start_spdy(url: &str, options: &ExecOptions) -> Result<RemoteCommand> {
        let started = Instant::now();
        let protocols = offered(&options.protocols, &REMOTECOMMAND_PROTOCOLS);
        let (protocol, client) = SpdyClient::connect(url, &protocols).await?;
        let error = client.open_stream(&[("streamType", "error")]).await?;
        let stdin = match &options.stdin {
            Some(_) => Some(client.open_stream(&[("streamType", "stdin")]).await?),
            None => None,
        };
        let stdout = match options.stdout {
            true => Some(client.open_stream(&[("streamType", "stdout")]).await?),
            false => None,
        };
        let stderr = match options.stderr {
            true => Some(client.open_stream(&[("streamType", "stderr")]).await?),
            false => None,
        };
        let resize = match options.tty && remotecommand_version(&protocol) >= 3 {
            true => Some(client.open_stream(&[("streamType", "resize")]).await?),
            false => None,
        };
        // The server writes nothing on stdin/resize; their readers are not needed.
        let stdin = stdin.map(|s| s.into_split().0);
        let resize = resize.map(|s| s.into_split().0);
        let (tx, events) = mpsc::unbounded_channel();
        let pump = tokio::spawn(spdy_output_pump(
            error.into_split().1,
            stdout.map(|s| s.into_split().1),
            stderr.map(|s| s.into_split().1),
            tx,
        ));
        let mut session = RemoteCommand {
            protocol,
            transport: Transport::Spdy {
                client: Some(client),
                stdin,
                resize,
            },
            events,
            pump: Some(pump),
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: Vec::new(),
            first: None,
            ended: None,
            mark: 0,
            started,
            elapsed: None,
            timeout: options.timeout,
        };
        session.send_initial(options)?;
        Ok(session)
    }

    /// Starts a session over WebSocket (channel protocols; v5 by default, like crictl).
    pub async fn start_ws(url: &str, options: &ExecOptions) -> Result<RemoteCommand> {
        let started = Instant::now();
        let protocols = offered(&options.protocols, &[WEBSOCKET_V5]);
        let mut channels = WsChannels::connect(url, &protocols).await?;
        let v5 = channels.protocol == WEBSOCKET_V5;
        let (tx, events) = mpsc::unbounded_channel();
        let ws_events = std::mem::replace(&mut channels.events, mpsc::unbounded_channel().1);
        let pump = tokio::spawn(ws_output_pump(ws_events, tx));
        let mut session = RemoteCommand {
            protocol: channels.protocol.clone(),
            transport: Transport::Ws {
                channels: Some(channels),
                v5,
                stdin: options.stdin.is_some(),
                tty: options.tty,
            },
            events,
            pump: Some(pump),
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: Vec::new(),
            first: None,
            ended: None,
            mark: 0,
            started,
            elapsed: None,
            timeout: options.timeout,
        };
        session.send_initial(options)?;
        Ok(session)
    }

    fn send_initial(&mut self, options: &ExecOptions) -> Result<()> {
        for (w, h) in &options.resize {
            self.resize(*w, *h)?;
        }
        if let Some(data) = &options.stdin {
            if !data.is_empty() {
                self.write_stdin(data)?;
            }
        }
        Ok(())
    }

    /// The negotiated protocol.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The SPDY session, for pings.
    pub fn spdy(&self) -> Option<&SpdyClient> {
        match &self.transport {
            Transport::Spdy { client, .. } => client.as_ref(),
            Transport::Ws { .. } => None,
        }
    }

    /// Sends bytes to the process's stdin.
    pub fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        match &self.transport {
            Transport::Spdy { stdin, .. } => stdin
                .as_ref()
                .ok_or_else(|| anyhow!("no stdin stream (ExecOptions.stdin was None)"))?
                .write(data),
            Transport::Ws {
                channels, stdin, ..
            } => {
                ensure!(*stdin, "no stdin (ExecOptions.stdin was None)");
                let channels = channels.as_ref().ok_or_else(|| anyhow!("session closed"))?;
                for chunk in data.chunks(MAX_DATA_CHUNK) {
                    channels.send(0, chunk)?;
                }
                Ok(())
            }
        }
    }

    /// Signals the end of stdin: FIN on the stdin stream (SPDY) or the v5 close signal
    /// `[255, 0]`; older WebSocket protocols have no way to, which is an error.
    pub fn close_stdin(&mut self) -> Result<()> {
        match &self.transport {
            Transport::Spdy { stdin, .. } => stdin
                .as_ref()
                .ok_or_else(|| anyhow!("no stdin stream"))?
                .close_write(),
            Transport::Ws {
                channels,
                v5,
                stdin,
                ..
            } => {
                ensure!(*stdin, "no stdin");
                ensure!(
                    *v5,
                    "{} cannot half-close stdin (only v5.channel.k8s.io can)",
                    self.protocol
                );
                channels
                    .as_ref()
                    .ok_or_else(|| anyhow!("session closed"))?
                    .send_raw(vec![255, 0])
            }
        }
    }

    /// Sends a terminal size on the resize stream / channel 4.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let message = resize_message(width, height);
        match &self.transport {
            Transport::Spdy { resize, .. } => resize
                .as_ref()
                .ok_or_else(|| anyhow!("no resize stream (not a tty, or protocol < v3)"))?
                .write(&message),
            Transport::Ws { channels, tty, .. } => {
                ensure!(*tty, "not a tty session");
                channels
                    .as_ref()
                    .ok_or_else(|| anyhow!("session closed"))?
                    .send(4, &message)
            }
        }
    }

    /// Stdout received so far.
    pub fn stdout(&self) -> &[u8] {
        &self.stdout
    }

    /// Stderr received so far.
    pub fn stderr(&self) -> &[u8] {
        &self.stderr
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Stdout(d) => self.stdout.extend_from_slice(&d),
            Event::Stderr(d) => self.stderr.extend_from_slice(&d),
            Event::Status(d) => self.status.extend_from_slice(&d),
            Event::First(channel, data) => self.first = Some((channel, data)),
            Event::End { how, close_code } => {
                self.elapsed = Some(self.started.elapsed());
                self.ended = Some((how, close_code));
            }
        }
    }

    /// Waits until stdout, from where the last match ended, contains `needle`.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = find(&self.stdout[self.mark..], needle.as_bytes()) {
                self.mark += at + needle.len();
                return Ok(());
            }
            if let Some((how, _)) = &self.ended {
                bail!(
                    "session ended ({how}) before {needle:?} on stdout; stdout {:?}, stderr {:?}, \
                     status {:?}",
                    String::from_utf8_lossy(&self.stdout),
                    String::from_utf8_lossy(&self.stderr),
                    String::from_utf8_lossy(&self.status)
                );
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => self.apply(event),
                Ok(None) => {
                    self.ended
                        .get_or_insert(("event pump gone".to_owned(), None));
                }
                Err(_) => bail!(
                    "no {needle:?} on stdout within {timeout:?}; stdout {:?}, stderr {:?}",
                    String::from_utf8_lossy(&self.stdout),
                    String::from_utf8_lossy(&self.stderr)
                ),
            }
        }
    }

    /// Waits for the end (client-go: stdout and stderr at EOF, then the error stream to its
    /// end), then closes the connection as client-go does, and returns what came.
    pub async fn finish(mut self) -> Result<ExecResult> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        while self.ended.is_none() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => self.apply(event),
                Ok(None) => self.ended = Some(("event pump gone".to_owned(), None)),
                Err(_) => bail!(
                    "{} session did not end within {:?}; stdout {:?}, stderr {:?}, status {:?}",
                    self.protocol,
                    self.timeout,
                    String::from_utf8_lossy(&self.stdout),
                    String::from_utf8_lossy(&self.stderr),
                    String::from_utf8_lossy(&self.status)
                ),
            }
        }
        self.close_transport().await;
        let (ended, ws_close_code) = self.ended.take().unwrap_or_default();
        Ok(ExecResult {
            protocol: std::mem::take(&mut self.protocol),
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
            status_json: std::mem::take(&mut self.status),
            ended,
            ws_close_code,
            ws_first_message: self.first.take(),
            elapsed: self.elapsed.unwrap_or_else(|| self.started.elapsed()),
        })
    }

    async fn close_transport(&mut self) {
        match &mut self.transport {
            Transport::Spdy { client, .. } => {
                if let Some(client) = client.take() {
                    client.close().await;
                }
            }
            Transport::Ws { channels, .. } => {
                if let Some(channels) = channels.take() {
                    channels.close().await;
                }
            }
        }
    }

    /// Leaves before the end, politely (client-go's teardown: RST_STREAMs and GOAWAY over
    /// SPDY, a Close frame over WebSocket): a detach from an attach, an interrupted exec.
    pub async fn close(mut self) {
        self.close_transport().await;
    }

    /// Vanishes: drops the TCP connection with no RST_STREAM, GOAWAY or Close frame.
    pub fn abort(self) {
        drop(self);
    }
}

impl Drop for RemoteCommand {
    fn drop(&mut self) {
        if let Some(pump) = &self.pump {
            pump.abort();
        }
        // Dropping the transport drops the SPDY tasks / the WebSocket task, hence the socket.
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Forwards the SPDY output streams as events in client-go's order: stdout and stderr until
/// their ends, then the error stream's content (read concurrently) and the end.
async fn spdy_output_pump(
    mut error: StreamReader,
    stdout: Option<StreamReader>,
    stderr: Option<StreamReader>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let copy = |reader: Option<StreamReader>, wrap: fn(Vec<u8>) -> Event| {
        let tx = tx.clone();
        async move {
            if let Some(mut reader) = reader {
                while let Some(data) = reader.read().await {
                    let _ = tx.send(wrap(data));
                }
            }
        }
    };
    let status = async {
        let data = error.read_to_end().await;
        (data, error.end().cloned())
    };
    let ((), (), (status, end)) = tokio::join!(
        copy(stdout, Event::Stdout),
        copy(stderr, Event::Stderr),
        status
    );
    let _ = tx.send(Event::Status(status));
    let _ = tx.send(Event::End {
        how: format!("error stream: {end:?}"),
        close_code: None,
    });
}

/// Maps WebSocket channels to exec events: 1 stdout, 2 stderr, 3 status; others ignored, as
/// client-go ignores unknown stream ids.
async fn ws_output_pump(
    mut ws_events: mpsc::UnboundedReceiver<WsEvent>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut first = true;
    while let Some(event) = ws_events.recv().await {
        match event {
            WsEvent::Message(channel, data) => {
                if first {
                    first = false;
                    let _ = tx.send(Event::First(channel, data.clone()));
                }
                let _ = match channel {
                    1 => tx.send(Event::Stdout(data)),
                    2 => tx.send(Event::Stderr(data)),
                    3 => tx.send(Event::Status(data)),
                    _ => Ok(()),
                };
            }
            WsEvent::End { close_code, error } => {
                let how = match (close_code, error) {
                    (Some(code), _) => format!("close {code}"),
                    (None, Some(e)) => format!("WebSocket error: {e}"),
                    (None, None) => "closed".to_owned(),
                };
                let _ = tx.send(Event::End { how, close_code });
                return;
            }
        }
    }
    let _ = tx.send(Event::End {
        how: "WebSocket task gone".to_owned(),
        close_code: None,
    });
}

/// Runs an exec (or attach) over SPDY like `crictl exec`: stdin (if any) is sent and
/// half-closed, resizes sent, output collected until the status.
pub async fn exec_spdy(url: &str, options: &ExecOptions) -> Result<ExecResult> {
    let run = async {
        let mut session = RemoteCommand::start_spdy(url, options).await?;
        if options.stdin.is_some() {
            session.close_stdin()?;
        }
        session.finish().await
    };
    tokio::time::timeout(options.timeout, run)
        .await
        .map_err(|_| {
            anyhow!(
                "SPDY exec of {url} did not finish within {:?}",
                options.timeout
            )
        })?
}

/// Runs an exec (or attach) over WebSocket (v5 by default): stdin (if any) is sent and, on
/// v5, closed with `[255, 0]`; older protocols cannot close stdin, so stdin stays open there.
pub async fn exec_ws(url: &str, options: &ExecOptions) -> Result<ExecResult> {
    let run = async {
        let mut session = RemoteCommand::start_ws(url, options).await?;
        if options.stdin.is_some() && session.protocol() == WEBSOCKET_V5 {
            session.close_stdin()?;
        }
        session.finish().await
    };
    tokio::time::timeout(options.timeout, run)
        .await
        .map_err(|_| {
            anyhow!(
                "WebSocket exec of {url} did not finish within {:?}",
                options.timeout
            )
        })?
}

/// Time from the upgrade request to the end of the status for an exec URL minted with
/// `stdout` and `stderr` only (no stdin, no tty), over SPDY as crictl does it; an error unless
/// the command succeeded. Works against crid and against the kubelet library's server.
pub async fn exec_round_trip(url: &str) -> Result<Duration> {
    let result = exec_spdy(url, &ExecOptions::default()).await?;
    match result.exit_code() {
        Ok(0) => Ok(result.elapsed),
        Ok(code) => bail!("exec exited with {code}: {}", result.status_text()),
        Err(message) => bail!("exec failed: {message}"),
    }
}

// ---------------------------------------------------------------------------------------------
// port-forward
// ---------------------------------------------------------------------------------------------

/// A port-forward session over SPDY (directly, or tunnelled in WebSocket): one connection,
/// any number of forwarded connections, each an `error` + `data` stream pair as client-go's
/// `handleConnection` makes them.
pub struct PortForwarder {
    client: SpdyClient,
    next_request: Mutex<u32>,
}

impl PortForwarder {
    /// SPDY upgrade offering only `portforward.k8s.io`; anything else negotiated is refused,
    /// as client-go does ("unable to negotiate protocol").
    pub async fn connect(url: &str) -> Result<PortForwarder> {
        let (protocol, client) = SpdyClient::connect(url, &[PORT_FORWARD_PROTOCOL]).await?;
        ensure!(
            protocol == PORT_FORWARD_PROTOCOL,
            "unable to negotiate protocol: server chose {protocol:?}"
        );
        Ok(PortForwarder {
            client,
            next_request: Mutex::new(0),
        })
    }

    /// WebSocket upgrade with `SPDY/3.1+portforward.k8s.io`, then SPDY over binary messages.
    pub async fn connect_ws(url: &str) -> Result<PortForwarder> {
        let (protocol, ws) = ws_connect(url, &[PORT_FORWARD_TUNNEL_PROTOCOL]).await?;
        ensure!(
            protocol == PORT_FORWARD_TUNNEL_PROTOCOL,
            "unable to negotiate protocol: server chose {protocol:?}"
        );
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let pump = tokio::spawn(ws_tunnel_pump(ws, theirs));
        let mut client = SpdyClient::over(ours)?;
        client.carrier = Some(pump);
        Ok(PortForwarder {
            client,
            next_request: Mutex::new(0),
        })
    }

    /// Opens a forwarded connection to `port` in the pod: the error stream (half-closed at
    /// once: the client never writes on it), then the data stream, both with `port` and
    /// `requestID` headers.
    pub async fn open(&self, port: u16) -> Result<ForwardedConnection> {
        let request_id = {
            let mut next = self
                .next_request
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let id = *next;
            *next += 1;
            id
        };
        let port_text = port.to_string();
        let request_text = request_id.to_string();
        let error = self
            .client
            .open_stream(&[
                ("streamType", "error"),
                ("port", &port_text),
                ("requestID", &request_text),
            ])
            .await?;
        error.close_write()?;
        let data = self
            .client
            .open_stream(&[
                ("streamType", "data"),
                ("port", &port_text),
                ("requestID", &request_text),
            ])
            .await?;
        Ok(ForwardedConnection {
            request_id,
            data,
            error: error.into_split().1,
        })
    }

    /// The SPDY session (pings, GOAWAY, resets).
    pub fn client(&self) -> &SpdyClient {
        &self.client
    }

    pub async fn close(self) {
        self.client.close().await;
    }

    /// Drops the connection without goodbye.
    pub fn abort(self) {
        self.client.abort();
    }
}

/// One forwarded connection.
pub struct ForwardedConnection {
    pub request_id: u32,
    pub data: SpdyStream,
    error: StreamReader,
}

impl ForwardedConnection {
    pub fn write(&self, data: &[u8]) -> Result<()> {
        self.data.write(data)
    }

    /// FIN on the data stream: the local side finished sending.
    pub fn close_write(&self) -> Result<()> {
        self.data.close_write()
    }

    pub async fn read(&mut self) -> Option<Vec<u8>> {
        self.data.read().await
    }

    /// Everything the pod sends until the data stream ends.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        self.data.read_to_end().await
    }

    /// The error stream's text, read to its end (empty: no error).
    pub async fn error_text(&mut self, timeout: Duration) -> Result<String> {
        let text = tokio::time::timeout(timeout, self.error.read_to_end())
            .await
            .map_err(|_| anyhow!("error stream of request {} did not end", self.request_id))?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Sends `request`, optionally half-closes, reads the reply to its end, then, as
    /// client-go's `handleConnection` does once the remote side has ended, resets the data
    /// stream and waits for the error stream's end.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        half_close: bool,
        timeout: Duration,
    ) -> Result<(Vec<u8>, String)> {
        // A refused connection may already have been reset by the server: like client-go's
        // copy, a failed write does not stop us from reading what the server said.
        let _ = self.write(request);
        if half_close {
            let _ = self.close_write();
        }
        let reply = tokio::time::timeout(timeout, self.read_to_end())
            .await
            .map_err(|_| {
                anyhow!(
                    "no end of the reply of request {} within {timeout:?}",
                    self.request_id
                )
            })?;
        self.data.reset()?;
        let error = self.error_text(timeout).await?;
        Ok((reply, error))
    }
}

/// What one port of a legacy WebSocket port-forward carried.
#[derive(Debug, Clone, Default)]
pub struct LegacyForward {
    /// The port announced in the first two bytes (little-endian) of the data channel.
    pub data_port: Option<u16>,
    pub data: Vec<u8>,
    /// The port announced on the error channel.
    pub error_port: Option<u16>,
    pub error: Vec<u8>,
}

/// A legacy WebSocket port-forward (the kubelet's passthrough for kube-rs/python clients):
/// ports come from the CRI request; port `i` uses channel `2i` for data and `2i+1` for
/// errors, each starting with the port as u16 LE. Sends `requests[i]` on port `i`'s data
/// channel and collects everything until the server closes the socket (it does when all
/// forwards end). `protocol` `None` offers no subprotocol. Returns the negotiated protocol,
/// each port's result and the Close code.
pub async fn ws_port_forward_legacy(
    url: &str,
    protocol: Option<&str>,
    requests: &[&[u8]],
    timeout: Duration,
) -> Result<(String, Vec<LegacyForward>, Option<u16>)> {
    let protocols: Vec<&str> = protocol.into_iter().collect();
    let mut channels = WsChannels::connect(url, &protocols).await?;
    for (i, request) in requests.iter().enumerate() {
        let channel = u8::try_from(2 * i).context("too many ports")?;
        channels.send(channel, request)?;
    }
    let mut forwards = vec![LegacyForward::default(); requests.len()];
    let mut raw: Vec<[Vec<u8>; 2]> = vec![[Vec::new(), Vec::new()]; requests.len()];
    let deadline = tokio::time::Instant::now() + timeout;
    let close_code = loop {
        match tokio::time::timeout_at(deadline, channels.events.recv()).await {
            Err(_) => bail!(
                "legacy port-forward did not end within {timeout:?}; got {:?}",
                raw.iter()
                    .map(|[d, e]| (String::from_utf8_lossy(d), String::from_utf8_lossy(e)))
                    .collect::<Vec<_>>()
            ),
            Ok(None) => break None,
            Ok(Some(WsEvent::Message(channel, data))) => {
                let index = usize::from(channel / 2);
                if let Some(slot) = raw.get_mut(index) {
                    slot[usize::from(channel % 2)].extend_from_slice(&data);
                }
            }
            Ok(Some(WsEvent::End { close_code, .. })) => break close_code,
        }
    };
    for (forward, [data, error]) in forwards.iter_mut().zip(raw) {
        let split = |bytes: Vec<u8>| -> (Option<u16>, Vec<u8>) {
            if bytes.len() >= 2 {
                (
                    Some(u16::from_le_bytes([bytes[0], bytes[1]])),
                    bytes[2..].to_vec(),
                )
            } else {
                (None, bytes)
            }
        };
        (forward.data_port, forward.data) = split(data);
        (forward.error_port, forward.error) = split(error);
    }
    let protocol = channels.protocol.clone();
    channels.close().await;
    Ok((protocol, forwards, close_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_has_the_spdy3_length_and_checksum() {
        let dict = spdy3_dictionary();
        assert_eq!(dict.len(), 1423);
        assert_eq!(adler32(dict), 0xE3C6_A7C2);
        assert!(dict.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(dict.ends_with(b",enq=0."));
    }

    #[test]
    fn adler32_matches_rfc1950_example() {
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    /// Golden bytes from the reference (Python zlib, level 9): two consecutive empty header
    /// blocks of one stream.
    #[test]
    fn inflates_reference_blocks() {
        let mut d = HeaderDecompressor::default();
        let first = [
            0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x06, 0x00, 0x00, 0x00, 0x00,
            0xff, 0xff,
        ];
        assert_eq!(d.decompress(&first).expect("first block"), [0, 0, 0, 0]);
        let second = [0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff];
        assert_eq!(d.decompress(&second).expect("second block"), [0, 0, 0, 0]);
    }

    #[test]
    fn header_blocks_round_trip_through_one_zlib_stream() {
        let mut c = HeaderCompressor::new().expect("compressor");
        let mut d = HeaderDecompressor::default();
        let first = c
            .compress(&encode_header_block(&[("streamType", "error")]))
            .expect("compress");
        // zlib header with FDICT, then the dictionary id; ends with a sync flush.
        assert_eq!(first[0], 0x78);
        assert_ne!(first[1] & 0x20, 0, "FDICT bit");
        assert_eq!(first[2..6], SPDY3_DICTIONARY_ADLER32.to_be_bytes());
        assert!(first.ends_with(&[0, 0, 0xff, 0xff]));
        let block = d.decompress(&first).expect("inflate");
        assert_eq!(
            block,
            b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error"
        );
        for i in 0..50 {
            let port = (8000 + i).to_string();
            let headers = [
                ("streamType", "data"),
                ("port", port.as_str()),
                ("a", "x"),
                ("A", "y"),
            ];
            let z = c
                .compress(&encode_header_block(&headers))
                .expect("compress");
            let decoded = decode_header_block(&d.decompress(&z).expect("inflate")).expect("decode");
            assert_eq!(
                decoded,
                [
                    ("streamtype".to_owned(), "data".to_owned()),
                    ("port".to_owned(), port.clone()),
                    ("a".to_owned(), "x".to_owned()),
                    ("a".to_owned(), "y".to_owned()),
                ]
            );
        }
    }

    #[test]
    fn frames_encode_as_the_reference_shows() {
        assert_eq!(
            data_frame(3, 0, b"hello"),
            [0, 0, 0, 3, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']
        );
        assert_eq!(
            control_frame(frame_type::PING, 0, &1u32.to_be_bytes()),
            [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]
        );
    }

    #[test]
    fn urls_parse() {
        let u = StreamUrl::parse("http://127.0.0.1:38243/exec/Ab3_x-9Q").expect("parse");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 38243, "/exec/Ab3_x-9Q")
        );
        assert_eq!(u.ws_url(), "ws://127.0.0.1:38243/exec/Ab3_x-9Q");
        let u = StreamUrl::parse("http://[::1]:80/x").expect("parse v6");
        assert_eq!(
            (u.host.as_str(), u.authority()),
            ("::1", "[::1]:80".to_owned())
        );
        assert!(StreamUrl::parse("https://h/x").is_err());
    }

    #[test]
    fn exit_codes_follow_client_go() {
        let with = |status: &str| ExecResult {
            status_json: status.as_bytes().to_vec(),
            ..Default::default()
        };
        assert_eq!(with("").exit_code(), Ok(0));
        assert_eq!(
            with(r#"{"metadata":{},"status":"Success"}"#).exit_code(),
            Ok(0)
        );
        assert_eq!(
            with(r#"{"metadata":{},"status":"Failure","message":"m","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#)
                .exit_code(),
            Ok(3)
        );
        assert_eq!(
            with(r#"{"metadata":{},"status":"Failure","message":"boom","reason":"InternalError"}"#)
                .exit_code(),
            Err("boom".to_owned())
        );
    }
}
