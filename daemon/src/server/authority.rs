//! Lets every gRPC client in, whatever `:authority` it sends on a unix socket.
//!
//! gRPC-core clients (Python, C++, Ruby, PHP since 1.57) send the percent-encoded socket path
//! as `:authority` (`tmp%2Fcrid.sock`), grpc-java and old grpc-go the raw path
//! (`/run/crid/crid.sock`). Neither is an RFC 3986 authority, and the HTTP/2 layer under tonic
//! (h2) resets every such stream with PROTOCOL_ERROR, where grpc-go servers (containerd,
//! CRI-O) answer. On a unix socket the authority means nothing, so this reader sits between
//! the socket and h2 and, on connections that need it, replaces the authority with
//! `localhost` (what grpc-go, kubelet and crictl send).
//!
//! Replacing one header means re-encoding header blocks: HPACK state is per connection, so
//! once a connection is rewritten, every later header block on it is decoded with the
//! client's context and encoded again with ours (h2 then decodes our encoding). Which
//! connections need it is decided on the first header block: when its authority is absent or
//! valid (kubelet, crictl, every grpc-go client), the reader steps aside for the rest of the
//! connection and hands reads straight to the socket, so their path costs one HPACK decode
//! per connection and nothing per call.
//!
//! Only the client-to-server direction is touched; writes go to the socket unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload we send on: h2's SETTINGS_MAX_FRAME_SIZE, which crid leaves at
/// the protocol default.
const MAX_OUT_FRAME: usize = 16_384;
/// The largest frame we hold to inspect. Bigger frames (only legal when a server raised its
/// max frame size, which crid does not) are handed to h2 untouched, which refuses them.
const MAX_IN_FRAME: usize = 1 << 20;
/// Bound on one header block (HEADERS plus CONTINUATIONs) held while it is rewritten.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Bound on one decoded header list (HPACK can expand a small block a thousandfold).
const MAX_DECODED_HEADERS: usize = 1 << 20;
/// h2's SETTINGS_HEADER_TABLE_SIZE, which crid leaves at the protocol default: the client's
/// encoder may use this much dynamic table, and h2's decoder expects ours to stay within it.
const HEADER_TABLE_SIZE: usize = 4096;
/// What a rewritten connection's requests carry as their authority.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";
/// How much to read from the socket at once while inspecting.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for the connection preface.
    Preface,
    /// Looking for the first header block.
    Inspect,
    /// Every header block is re-encoded.
    Rewrite,
    /// Bytes go through untouched (also for anything that is not HTTP/2 as expected: h2 says
    /// what is wrong with it).
    PassThrough,
}

/// A header block being collected: its HEADERS frame's fields and its fragments so far.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
    /// The frames as received, for when the block turns out to need no rewrite.
    raw: BytesMut,
}

/// A socket whose client-to-server HTTP/2 header blocks get a valid `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    /// Read from the socket, not yet looked at.
    input: BytesMut,
    /// Looked at, ready for h2.
    output: BytesMut,
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        let mut encoder = loona_hpack::Encoder::new();
        encoder.set_max_table_size(HEADER_TABLE_SIZE);
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            pending: None,
            decoder,
            encoder,
        }
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.mode {
                Mode::PassThrough => {
                    let all = self.input.split();
                    self.output.extend_from_slice(&all);
                    return Ok(());
                }
                Mode::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.mode = Mode::PassThrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    let preface = self.input.split_to(PREFACE.len());
                    self.output.extend_from_slice(&preface);
                    self.mode = Mode::Inspect;
                }
                Mode::Inspect | Mode::Rewrite => {
                    if self.input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let len = (usize::from(self.input[0]) << 16)
                        | (usize::from(self.input[1]) << 8)
                        | usize::from(self.input[2]);
                    if len > MAX_IN_FRAME {
                        if self.pending.is_some() {
                            return Err(invalid("header block frame too large"));
                        }
                        self.mode = Mode::PassThrough;
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER_LEN + len {
                        self.input
                            .reserve(FRAME_HEADER_LEN + len - self.input.len());
                        return Ok(());
                    }
                    let frame = self.input.split_to(FRAME_HEADER_LEN + len);
                    self.frame(frame)?;
                }
            }
        }
    }

    /// Handles one whole frame in Inspect or Rewrite mode.
    fn frame(&mut self, frame: BytesMut) -> io::Result<()> {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        match (kind, self.pending.as_mut()) {
            (FRAME_HEADERS, None) => {
                let mut payload = &frame[FRAME_HEADER_LEN..];
                let mut pad = 0;
                if flags & FLAG_PADDED != 0 {
                    let (&n, rest) = payload
                        .split_first()
                        .ok_or_else(|| invalid("padded HEADERS frame without a pad length"))?;
                    pad = usize::from(n);
                    payload = rest;
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    let fields: [u8; 5] = payload
                        .get(..5)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(|| invalid("HEADERS frame too short for its priority"))?;
                    priority = Some(fields);
                    payload = &payload[5..];
                }
                let fragment = payload
                    .get(..payload.len().saturating_sub(pad))
                    .filter(|_| pad <= payload.len())
                    .ok_or_else(|| invalid("HEADERS frame padding longer than the frame"))?;
                self.pending = Some(PendingBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: BytesMut::from(fragment),
                    raw: frame.clone(),
                });
                if flags & FLAG_END_HEADERS != 0 {
                    self.finish_block()?;
                }
            }
            (FRAME_CONTINUATION, Some(block)) if block.stream_id == stream_id => {
                if block.fragment.len() + frame.len() > MAX_HEADER_BLOCK {
                    return Err(invalid("header block too large"));
                }
                block.fragment.extend_from_slice(&frame[FRAME_HEADER_LEN..]);
                block.raw.extend_from_slice(&frame);
                if flags & FLAG_END_HEADERS != 0 {
                    self.finish_block()?;
                }
            }
            // Anything else inside a header block is the client's protocol error: h2 says so.
            (_, Some(_)) => {
                let block = self.pending.take();
                if let Some(block) = block {
                    self.output.extend_from_slice(&block.raw);
                }
                self.output.extend_from_slice(&frame);
                self.mode = Mode::PassThrough;
            }
            (_, None) => self.output.extend_from_slice(&frame),
        }
        Ok(())
    }

    /// A whole header block has arrived: decide, rewrite or pass it on.
    fn finish_block(&mut self) -> io::Result<()> {
        let Some(block) = self.pending.take() else {
            return Ok(());
        };
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded = 0usize;
        let mut too_large = false;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                decoded += name.len() + value.len() + 32;
                if decoded > MAX_DECODED_HEADERS {
                    too_large = true;
                    return;
                }
                headers.push((name.into_owned(), value.into_owned()));
            })
            .map_err(|e| invalid(&format!("header block does not decode: {e:?}")))?;
        if too_large {
            return Err(invalid("decoded header list too large"));
        }
        if self.mode == Mode::Inspect {
            let needs_rewrite = headers
                .iter()
                .any(|(name, value)| name == b":authority" && !valid_authority(value));
            if !needs_rewrite {
                // This connection's client sends valid authorities: step aside for good.
                self.output.extend_from_slice(&block.raw);
                self.mode = Mode::PassThrough;
                return Ok(());
            }
            tracing::debug!("rewriting an invalid :authority to localhost on this connection");
            self.mode = Mode::Rewrite;
        }
        for (name, value) in &mut headers {
            if name == b":authority" && !valid_authority(value) {
                *value = REPLACEMENT_AUTHORITY.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        self.emit_block(&block, &encoded);
        Ok(())
    }

    /// Writes a re-encoded header block as one HEADERS frame and as many CONTINUATIONs as its
    /// size needs.
    fn emit_block(&mut self, block: &PendingBlock, encoded: &[u8]) {
        let first_room = MAX_OUT_FRAME - if block.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| &p[..]);
        self.frame_header(
            priority.len() + first.len(),
            FRAME_HEADERS,
            flags,
            block.stream_id,
        );
        self.output.extend_from_slice(priority);
        self.output.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_OUT_FRAME));
            let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.frame_header(chunk.len(), FRAME_CONTINUATION, flags, block.stream_id);
            self.output.extend_from_slice(chunk);
            rest = tail;
        }
    }

    fn frame_header(&mut self, len: usize, kind: u8, flags: u8, stream_id: u32) {
        // Lengths here are at most MAX_OUT_FRAME, well inside 24 bits.
        let len = len as u32;
        self.output.extend_from_slice(&[
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
        ]);
        self.output.put_u32(stream_id);
    }
}

/// Whether h2 takes `value` as an authority.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("http/2 client: {what}"))
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::PassThrough && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            this.input.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.input) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Ready(Ok(0)) => {
                    // End of stream: whatever is held goes to h2 as it is.
                    this.mode = Mode::PassThrough;
                    if let Some(block) = this.pending.take() {
                        this.output.extend_from_slice(&block.raw);
                    }
                    let rest = this.input.split();
                    this.output.extend_from_slice(&rest);
                    if this.output.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                Poll::Ready(Ok(_)) => {}
            }
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn request(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'_>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    /// Runs `input` through the reader in small reads (so frames arrive split) and returns
    /// what h2 would see.
    async fn through(input: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(&input).await.expect("write");
            client.shutdown().await.expect("shutdown");
        });
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.expect("read");
        writer.await.expect("writer");
        out
    }

    /// Splits h2's view back into (kind, flags, stream, payload) frames after the preface.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    #[tokio::test]
    async fn valid_authority_passes_byte_for_byte() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        for stream in [1, 3] {
            let block = encode(
                &mut encoder,
                &request("localhost", "/runtime.v1.RuntimeService/Version"),
            );
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, &[0, 0, 0, 0, 0]));
        }
        assert_eq!(through(input.clone()).await, input);
    }

    #[tokio::test]
    async fn invalid_authorities_become_localhost_on_every_block() {
        let mut client = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        // A percent-encoded path (gRPC core), then a raw one with padding and priority, split
        // across a CONTINUATION (grpc-java style), reusing the client's dynamic table.
        let first = encode(&mut client, &request("tmp%2Fcrid.sock", "/a"));
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &first));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]));
        let second = encode(&mut client, &request("/run/crid/crid.sock", "/b"));
        let (head, tail) = second.split_at(3);
        let mut payload = vec![2u8];
        payload.extend_from_slice(&[0, 0, 0, 1, 15]);
        payload.extend_from_slice(head);
        payload.extend_from_slice(&[0, 0]);
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            3,
            &payload,
        ));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, tail));
        let out = through(input).await;
        let mut server = loona_hpack::Decoder::new();
        let seen = frames(&out);
        assert_eq!(seen[0].0, 0x4, "settings first");
        let blocks: Vec<_> = seen.iter().filter(|f| f.0 == FRAME_HEADERS).collect();
        assert_eq!(blocks.len(), 2);
        let decoded = server.decode(&blocks[0].3).expect("decode first");
        assert_eq!(decoded, request("localhost", "/a"));
        assert_eq!(blocks[1].1, FLAG_PRIORITY | FLAG_END_HEADERS);
        assert_eq!(&blocks[1].3[..5], &[0, 0, 0, 1, 15]);
        let decoded = server.decode(&blocks[1].3[5..]).expect("decode second");
        assert_eq!(decoded, request("localhost", "/b"));
        // DATA frames are untouched.
        assert!(seen.iter().any(|f| f.0 == 0 && (f.2 == 1 || f.2 == 3)));
    }

    #[tokio::test]
    async fn large_rewritten_blocks_are_split() {
        let mut client = loona_hpack::Encoder::new();
        let mut headers = request("%2Fx", "/big");
        headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = encode(&mut client, &headers);
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(block.len() / 2);
        input.extend(frame(FRAME_HEADERS, 0, 1, a));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b));
        let out = through(input).await;
        let seen = frames(&out);
        assert!(seen.len() >= 3, "split into HEADERS and CONTINUATIONs");
        assert!(seen.iter().all(|f| f.3.len() <= MAX_OUT_FRAME));
        assert_eq!(seen.last().map(|f| f.1), Some(FLAG_END_HEADERS));
        let joined: Vec<u8> = seen.iter().flat_map(|f| f.3.clone()).collect();
        let decoded = loona_hpack::Decoder::new().decode(&joined).expect("decode");
        assert_eq!(decoded[3], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(decoded[6].1.len(), 40_000);
    }

    #[tokio::test]
    async fn not_http2_passes_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(input.clone()).await, input);
    }

    #[tokio::test]
    async fn hpack_bombs_are_refused() {
        // A small block that references one 4 KiB table entry many times.
        let mut client = loona_hpack::Encoder::new();
        let mut headers = request("%2Fx", "/bomb");
        headers.push((b"x-big".to_vec(), vec![b'a'; 4000]));
        let mut block = encode(&mut client, &headers);
        // The entry just added is dynamic index 62: 0xbe.
        block.extend(std::iter::repeat_n(0xbe, 1000));
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        let (mut client_io, server) = tokio::io::duplex(1 << 16);
        use tokio::io::AsyncWriteExt;
        client_io.write_all(&input).await.expect("write");
        client_io.shutdown().await.expect("shutdown");
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        let err = fixed.read_to_end(&mut out).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
