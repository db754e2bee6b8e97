//! The server side of SPDY/3.1 as Kubernetes streaming (exec, attach, port-forward) uses it.
//!
//! The peer is untrusted: every length, count and buffer it can influence is bounded by a
//! named constant, and a protocol violation ends the connection with GOAWAY rather than a panic
//! or an allocation of a size the peer chose. The wire facts and the Go client's traps this
//! crate follows are in `shared/reference/streaming-protocol.md` (§3.2–3.5, §3.8).
//!
//! * [`frame`]: pure encode/decode of every frame type (SYN_STREAM, SYN_REPLY, RST_STREAM,
//!   SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE, DATA); the decoder takes partial input.
//! * [`headers`]: header blocks and their zlib compression with the SPDY/3 dictionary.
//! * [`conn`]: the async connection driver over any `AsyncRead + AsyncWrite` (a hyper
//!   upgrade, or SPDY tunnelled in WebSocket binary messages).
//!
//! # Usage
//! ```no_run
//! # async fn serve(io: tokio::io::DuplexStream) {
//! use tokio::io::AsyncWriteExt;
//!
//! let (driver, mut incoming) = crid_spdy::server(io, crid_spdy::Config::default());
//! tokio::spawn(driver.run());
//! while let Some(pending) = incoming.accept().await {
//!     match pending.headers().get("streamtype") {
//!         Some("stdout") => {
//!             let mut stream = pending.reply();
//!             tokio::spawn(async move {
//!                 let _ = stream.write_all(b"hello").await;
//!                 let _ = stream.shutdown().await; // FIN
//!             });
//!         }
//!         _ => pending.refuse(crid_spdy::frame::rst::REFUSED_STREAM),
//!     }
//! }
//! # }
//! ```
//!
//! # Decisions
//! * **Only client streams.** The server answers SYN_STREAMs (odd, increasing ids; anything
//!   else is a session error) with SYN_REPLY or RST_STREAM and never opens streams or pings.
//!   It also writes nothing before the client's first complete frame (the Go client parses the
//!   HTTP 101 through a throw-away buffered reader and would lose those bytes).
//! * **Header compression.** One zlib stream per direction for the whole connection, level 9,
//!   SPDY/3 dictionary, a sync flush after each block; every received block is decompressed in
//!   order even when its frame is then ignored. SYN_REPLY always carries a block, even an
//!   empty one (a bare SYN_REPLY breaks the Go client). Repeated names are sent as one
//!   NUL-joined pair (Go rejects a name twice). Received names are lower-cased; decompressed
//!   blocks are bounded by [`headers::MAX_HEADER_BLOCK_LEN`] and [`headers::MAX_HEADERS`].
//! * **Flow control, receive side.** We keep the SPDY/3.1 defaults (64 KiB per stream and per
//!   session, no SETTINGS sent) and send WINDOW_UPDATE for a stream as the application reads
//!   it, and for the session as data is buffered (the per-stream windows already bound the
//!   buffers, so a stream nobody reads never starves the others of session window). A peer
//!   that honours windows therefore never blocks the connection with one unread stream.
//!   Go's spdystream ignores windows: for such a peer a stream buffers up to
//!   [`conn::STREAM_RECV_BUFFER`] (the connection up to [`conn::CONN_RECV_BUFFER`]) and then
//!   the reader stops reading until the application catches up, i.e. TCP back-pressure, which
//!   is what the Go server does too. Refusing the data instead would break `kubectl cp`.
//! * **Flow control, send side: none.** The Go peer never sends WINDOW_UPDATE, so honouring
//!   its 64 KiB window would stall every stream after 64 KiB (reference §3.5). Incoming
//!   SETTINGS and WINDOW_UPDATE are parsed and ignored. Sending is bounded per stream by
//!   [`conn::STREAM_SEND_BUFFER`] and fair: the writer takes at most
//!   [`conn::MAX_DATA_CHUNK`] per stream per turn, round-robin.
//! * **Bounds.** Frames above [`frame::MAX_DATA_LEN`] / [`frame::MAX_CONTROL_LEN`] are refused
//!   from their 8-byte header; at most [`conn::MAX_CONCURRENT_STREAMS`] streams (refused
//!   beyond); the control-frame queue the peer can fill (PING echoes, RST_STREAMs) is bounded
//!   by [`conn::MAX_QUEUED_CONTROL`], beyond which the reader waits for the writer.
//! * **Teardown.** `poll_shutdown` (or dropping the write half) sends FIN after the queued
//!   data; dropping the read half discards unread and later data, and DATA arriving for a
//!   stream the application has fully dropped is answered with RST_STREAM(CANCEL).
//!   [`Stream::reset`] sends RST_STREAM. Peer RST_STREAM: reads return what was buffered,
//!   then an error; writes fail. Peer EOF or a connection error: every stream gets an error
//!   after its buffered data (a clean EOF only after the peer's FIN).
//! * **Shutdown.** When the application has dropped [`Incoming`] and every stream (or calls
//!   [`Handle::shutdown`]), the writer sends everything queued, waits up to
//!   [`Config::linger`] for the peer to close first (the Go client drops frames it has read
//!   but not yet handled when the connection closes under it), then sends GOAWAY(OK),
//!   closes its side, and drains the peer for up to `linger` again. A protocol error sends
//!   GOAWAY(PROTOCOL_ERROR). Idle connections close after [`Config::idle_timeout`].
//! * **Errors** are one [`enum@Error`] enum (lowercase messages); stream I/O errors are
//!   `io::Error`s wrapping it. No `unsafe`, no panics on peer input.

#![forbid(unsafe_code)]

pub mod conn;
mod error;
pub mod frame;
pub mod headers;

pub use conn::{
    server, Config, Driver, Handle, Incoming, IncomingStream, RecvStream, SendStream, Stream,
};
pub use error::{Error, Result};
pub use headers::Headers;
