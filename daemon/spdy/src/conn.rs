//! The connection driver: one reader and one writer over any `AsyncRead + AsyncWrite`, a stream
//! table shared with the application's [`Stream`] handles, and the flow-control and teardown
//! rules described in the crate documentation.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::frame::{self, goaway, rst, Frame};
use crate::headers::{HeaderDecoder, HeaderEncoder, Headers};

/// SPDY/3.1 initial stream and session receive window; we never announce another.
pub const INITIAL_WINDOW: u32 = 64 << 10;
/// Streams open at once (accepted or waiting in [`Incoming`]); further SYN_STREAMs are
/// refused with REFUSED_STREAM. (The SPDY spec recommends allowing at least 100.)
pub const MAX_CONCURRENT_STREAMS: usize = 128;
/// Unread bytes buffered per stream before the reader stops reading the connection. Only a
/// peer that ignores our window (Go's spdystream does) gets this far: see the crate docs.
pub const STREAM_RECV_BUFFER: usize = 256 << 10;
/// Unread bytes buffered on the whole connection before the reader stops: every stream's
/// full window, so a peer that honours windows never reaches it.
pub const CONN_RECV_BUFFER: usize = MAX_CONCURRENT_STREAMS * INITIAL_WINDOW as usize;
/// Bytes a stream may queue for sending before its `poll_write` waits.
pub const STREAM_SEND_BUFFER: usize = 64 << 10;
/// Largest DATA frame sent (the reference asks for at most 32 KiB).
pub const MAX_DATA_CHUNK: usize = 32 << 10;
/// Control frames (PING echoes, RST_STREAMs) the reader may queue before it waits for the
/// writer: a peer that sends but never reads cannot grow the queue.
pub const MAX_QUEUED_CONTROL: usize = 64;
/// Bytes the writer gathers into one write, taken round-robin across streams.
const WRITE_BATCH: usize = 128 << 10;
/// DATA payloads from this size on are written from their own buffers (vectored writes);
/// smaller ones are copied next to their header.
const VECTORED_MIN: usize = 4 << 10;
/// Buffers per vectored write (well under IOV_MAX).
const MAX_IOVECS: usize = 64;
/// How long a failing connection may spend sending its final GOAWAY.
const ERROR_GOAWAY_TIMEOUT: Duration = Duration::from_secs(1);

/// Connection settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Close the connection after this long without a frame in either direction
    /// (the kubelet library's `StreamIdleTimeout` default is 4 h). `None`: never.
    pub idle_timeout: Option<Duration>,
    /// On shutdown, how long to wait for the peer to close the connection before sending
    /// GOAWAY, and then again for its end of file.
    pub linger: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(4 * 3600)),
            linger: Duration::from_secs(5),
        }
    }
}

/// Starts serving SPDY on `io`: returns the driver, which must be run (spawned) for anything
/// to happen, and the source of peer-initiated streams.
pub fn server<T>(io: T, config: Config) -> (Driver<T>, Incoming) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new()),
        writer: Notify::new(),
        reader: Notify::new(),
    });
    let driver = Driver {
        io,
        config,
        guard: CloseGuard(shared.clone()),
    };
    (driver, Incoming { shared })
}

/// Reads and writes the connection; completes when it is over.
pub struct Driver<T> {
    io: T,
    config: Config,
    guard: CloseGuard,
}

impl<T: AsyncRead + AsyncWrite> Driver<T> {
    /// Runs the connection until the peer closes it, the application has shut it down (see
    /// [`Handle::shutdown`]), or an error occurs. Every stream sees end of file or an error
    /// afterwards, also if this future is dropped.
    pub async fn run(self) -> Result<()> {
        let Driver { io, config, guard } = self;
        let shared = &*guard.0;
        let (mut rd, mut wr) = tokio::io::split(io);
        let reader = read_loop(shared, &mut rd, config.idle_timeout);
        let writer = write_loop(shared, &mut wr, config.linger);
        tokio::pin!(reader, writer);
        tokio::select! {
            r = &mut reader => match r {
                Ok(()) => Ok(()),
                Err(e) => {
                    {
                        let mut st = shared.lock();
                        if st.received_any && !st.write_closed {
                            st.final_goaway = e.goaway_status();
                        }
                        st.close();
                    }
                    shared.writer.notify_one();
                    let _ = tokio::time::timeout(ERROR_GOAWAY_TIMEOUT, &mut writer).await;
                    Err(e)
                }
            },
            w = &mut writer => {
                // Either GOAWAY is out and our side closed, or writing failed (typically the
                // peer went away). Both ways, keep reading for a while: frames the peer sent
                // before leaving still reach their streams.
                if w.is_err() {
                    shared.lock().write_closed = true;
                }
                let r = tokio::time::timeout(config.linger, &mut reader).await;
                match (w, r) {
                    (Err(e), Ok(Err(_)) | Err(_)) => Err(e),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Marks the connection closed when the driver goes away, however it ends.
struct CloseGuard(Arc<Shared>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.lock().close();
        self.0.reader.notify_one();
    }
}

/// Hands out the streams the peer opens.
pub struct Incoming {
    shared: Arc<Shared>,
}

impl Incoming {
    /// The next stream the peer opened, or `None` once no more can come (peer GOAWAY,
    /// shutdown, connection closed). Reply to it promptly: Go clients wait for SYN_REPLY.
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Poll form of [`Incoming::accept`].
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<IncomingStream>> {
        let mut st = self.shared.lock();
        while let Some(id) = st.pending.pop_front() {
            if let Some(s) = st.streams.get_mut(&id) {
                let headers = s.headers.take().unwrap_or_default();
                let shared = self.shared.clone();
                return Poll::Ready(Some(IncomingStream {
                    shared,
                    id,
                    headers,
                    answered: false,
                }));
            }
        }
        if st.phase != Phase::Open || st.peer_goaway {
            return Poll::Ready(None);
        }
        st.accept_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// A handle that can shut the connection down.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Incoming {
    /// Refuses streams not yet accepted (and any later ones); once the last stream is gone
    /// too, the connection shuts down.
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.incoming_alive = false;
        while let Some(id) = st.pending.pop_front() {
            st.streams.remove(&id);
            st.control.push_back(Control::Rst(id, rst::REFUSED_STREAM));
        }
        st.auto_shutdown();
        drop(st);
        self.shared.writer.notify_one();
    }
}

/// Shuts a connection down from anywhere.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Graceful shutdown: refuse new streams, send what is queued, give the peer
    /// [`Config::linger`] to close first, then GOAWAY and close our side.
    pub fn shutdown(&self) {
        self.shared.lock().begin_shutdown();
        self.shared.writer.notify_one();
    }
}

/// A stream the peer opened, not yet answered. Dropping it refuses it (REFUSED_STREAM).
pub struct IncomingStream {
    shared: Arc<Shared>,
    id: u32,
    headers: Headers,
    answered: bool,
}

impl IncomingStream {
    /// The stream id (odd: client-initiated).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The SYN_STREAM headers (`streamtype`, `port`, `requestid`, …).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Accepts the stream: queues a SYN_REPLY with no headers.
    pub fn reply(self) -> Stream {
        self.reply_with(Headers::new())
    }

    /// Accepts the stream with reply headers.
    pub fn reply_with(mut self, reply: Headers) -> Stream {
        self.answered = true;
        let mut st = self.shared.lock();
        if let Some(s) = st.streams.get(&self.id) {
            if !s.send_closed && s.reset.is_none() {
                st.control.push_back(Control::Reply(self.id, reply));
            }
        }
        drop(st);
        self.shared.writer.notify_one();
        let (shared, id) = (self.shared.clone(), self.id);
        Stream {
            headers: std::mem::take(&mut self.headers),
            recv: RecvStream {
                shared: shared.clone(),
                id,
            },
            send: SendStream { shared, id },
        }
    }

    /// Rejects the stream with RST_STREAM and `status` (see [`crate::frame::rst`]).
    pub fn refuse(mut self, status: u32) {
        self.answered = true;
        self.shared.refuse(self.id, status);
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if !self.answered {
            self.shared.refuse(self.id, rst::REFUSED_STREAM);
        }
    }
}

/// An accepted stream: read what the peer sends, write what it should receive.
///
/// `poll_shutdown` sends FIN (half-close); dropping the write side sends FIN too, after the
/// queued data. [`Stream::reset`] aborts with RST_STREAM.
pub struct Stream {
    headers: Headers,
    recv: RecvStream,
    send: SendStream,
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.recv.id
    }

    /// The SYN_STREAM headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Splits into halves usable from different tasks.
    pub fn into_split(self) -> (RecvStream, SendStream) {
        (self.recv, self.send)
    }

    /// Aborts the stream with RST_STREAM and `status`; later reads and writes fail.
    pub fn reset(&self, status: u32) {
        self.recv.shared.reset(self.recv.id, status);
    }
}

/// The receiving half of a [`Stream`]. Dropping it discards unread and later data.
pub struct RecvStream {
    shared: Arc<Shared>,
    id: u32,
}

/// The sending half of a [`Stream`]. Dropping it sends FIN after the queued data.
pub struct SendStream {
    shared: Arc<Shared>,
    id: u32,
}

impl RecvStream {
    /// Aborts the whole stream with RST_STREAM and `status`.
    pub fn reset(&self, status: u32) {
        self.shared.reset(self.id, status);
    }
}

impl SendStream {
    /// Aborts the whole stream with RST_STREAM and `status`.
    pub fn reset(&self, status: u32) {
        self.shared.reset(self.id, status);
    }

    /// Queues `data` whole, without copying it, once the send buffer has room: a relay that
    /// reads into `Bytes` hands them on as they are. The buffer then holds at most
    /// [`STREAM_SEND_BUFFER`] plus this one chunk.
    pub async fn send(&mut self, data: Bytes) -> io::Result<()> {
        let mut data = Some(data);
        poll_fn(|cx| self.shared.poll_send(self.id, cx, &mut data)).await
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.shared.release(self.id, true);
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        self.shared.release(self.id, false);
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.shared.poll_read(self.id, cx, buf)
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.poll_write(self.id, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.poll_flush(self.id, cx, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.poll_flush(self.id, cx, true)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

// ---- shared state ----

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: something to send, or a phase change.
    writer: Notify,
    /// Wakes a reader waiting for buffer or control-queue room.
    reader: Notify,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    ShuttingDown,
    Closed,
}

enum Control {
    Reply(u32, Headers),
    Rst(u32, u32),
    Ping(u32),
}

struct State {
    phase: Phase,
    streams: HashMap<u32, StreamState>,
    /// Streams waiting for [`Incoming::accept`], in arrival order.
    pending: VecDeque<u32>,
    accept_waker: Option<Waker>,
    incoming_alive: bool,
    control: VecDeque<Control>,
    /// Streams with consumed-but-unacknowledged bytes worth a WINDOW_UPDATE.
    window_updates: VecDeque<u32>,
    session_unacked: u32,
    /// Streams with queued data or FIN, served round-robin.
    ready: VecDeque<u32>,
    recv_buffered: usize,
    reader_blocked: bool,
    /// Highest stream id the peer opened (GOAWAY's last-good-stream-id).
    last_stream_id: u32,
    /// Nothing is written before the peer's first frame: Go's client parses the HTTP 101
    /// through a throw-away buffered reader and loses bytes that arrive with it.
    received_any: bool,
    peer_goaway: bool,
    /// GOAWAY sent or the connection is gone: writes fail.
    write_closed: bool,
    final_goaway: Option<u32>,
    last_activity: Instant,
}

#[derive(Default)]
struct StreamState {
    /// SYN_STREAM headers until the stream is accepted.
    headers: Option<Headers>,
    recv: VecDeque<Bytes>,
    recv_len: usize,
    recv_fin: bool,
    reader_open: bool,
    read_waker: Option<Waker>,
    unacked: u32,
    window_update_queued: bool,
    send: VecDeque<Bytes>,
    send_len: usize,
    fin_queued: bool,
    send_closed: bool,
    writer_open: bool,
    write_waker: Option<Waker>,
    in_ready: bool,
    reset: Option<u32>,
}

impl StreamState {
    fn new(headers: Headers, fin: bool, unidirectional: bool) -> Self {
        Self {
            headers: Some(headers),
            recv_fin: fin,
            send_closed: unidirectional,
            reader_open: true,
            writer_open: true,
            ..Self::default()
        }
    }

    fn wake(&mut self) {
        wake(&mut self.read_waker);
        wake(&mut self.write_waker);
    }

    /// Takes up to `max` queued bytes, coalescing small writes into one frame.
    fn take_chunk(&mut self, max: usize) -> Bytes {
        let (front_len, pieces) = (self.send.front().map_or(0, Bytes::len), self.send.len());
        let chunk = match self.send.front_mut() {
            Some(front) if front_len >= max => front.split_to(max),
            Some(_) if pieces == 1 => self.send.pop_front().unwrap_or_default(),
            _ => {
                let mut out = BytesMut::new();
                while let Some(front) = self.send.front_mut() {
                    let n = front.len().min(max - out.len());
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&front[..n]);
                    front.advance(n);
                    if front.is_empty() {
                        self.send.pop_front();
                    }
                }
                out.freeze()
            }
        };
        if self.send.front().is_some_and(Bytes::is_empty) {
            self.send.pop_front();
        }
        self.send_len -= chunk.len();
        chunk
    }
}

impl State {
    fn new() -> Self {
        Self {
            phase: Phase::Open,
            streams: HashMap::new(),
            pending: VecDeque::new(),
            accept_waker: None,
            incoming_alive: true,
            control: VecDeque::new(),
            window_updates: VecDeque::new(),
            session_unacked: 0,
            ready: VecDeque::new(),
            recv_buffered: 0,
            reader_blocked: false,
            last_stream_id: 0,
            received_any: false,
            peer_goaway: false,
            write_closed: false,
            final_goaway: None,
            last_activity: Instant::now(),
        }
    }

    fn wake_accept(&mut self) {
        wake(&mut self.accept_waker);
    }

    fn schedule(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.in_ready {
                s.in_ready = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Forgets a stream once the application holds no half of it and nothing more will be
    /// sent on it. Later DATA from the peer is answered with RST_STREAM(CANCEL).
    fn maybe_remove(&mut self, id: u32) {
        let done = self.streams.get(&id).is_some_and(|s| {
            !s.reader_open && !s.writer_open && (s.send_closed || s.reset.is_some())
        });
        if done {
            if let Some(s) = self.streams.remove(&id) {
                self.recv_buffered -= s.recv_len;
            }
            self.auto_shutdown();
        }
    }

    fn auto_shutdown(&mut self) {
        if !self.incoming_alive && self.streams.is_empty() {
            self.begin_shutdown();
        }
    }

    fn begin_shutdown(&mut self) {
        if self.phase != Phase::Open {
            return;
        }
        self.phase = Phase::ShuttingDown;
        while let Some(id) = self.pending.pop_front() {
            self.streams.remove(&id);
            self.control
                .push_back(Control::Rst(id, rst::REFUSED_STREAM));
        }
        self.wake_accept();
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.write_closed = true;
        self.ready.clear();
        self.control.clear();
        self.streams.values_mut().for_each(StreamState::wake);
        self.wake_accept();
    }

    fn on_data(&mut self, id: u32, fin: bool, data: Bytes) {
        let len = data.len();
        self.session_unacked = self.session_unacked.saturating_add(len as u32);
        let State {
            streams,
            control,
            recv_buffered,
            last_stream_id,
            ..
        } = self;
        match streams.get_mut(&id) {
            Some(s) if s.reset.is_some() => {}
            Some(s) if s.recv_fin => {
                s.reset = Some(rst::STREAM_ALREADY_CLOSED);
                s.wake();
                control.push_back(Control::Rst(id, rst::STREAM_ALREADY_CLOSED));
            }
            Some(s) => {
                if s.reader_open && len > 0 {
                    s.recv.push_back(data);
                    s.recv_len += len;
                    *recv_buffered += len;
                }
                s.recv_fin = fin;
                wake(&mut s.read_waker);
            }
            None if id > *last_stream_id => {
                control.push_back(Control::Rst(id, rst::INVALID_STREAM))
            }
            None if len > 0 => control.push_back(Control::Rst(id, rst::CANCEL)),
            None => {}
        }
    }

    fn on_reset(&mut self, id: u32, status: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.reset.is_none() {
                s.reset = Some(status);
                s.send.clear();
                s.send_len = 0;
                s.wake();
            }
        }
        self.maybe_remove(id);
    }

    /// Whether a DATA frame for `id` must wait for the application to read.
    fn recv_full(&self, id: u32) -> bool {
        self.streams.get(&id).is_some_and(|s| {
            let buffers = s.reader_open && s.reset.is_none() && !s.recv_fin;
            buffers && (s.recv_len >= STREAM_RECV_BUFFER || self.recv_buffered >= CONN_RECV_BUFFER)
        })
    }

    /// Moves what can be sent now into `items`; returns whether the reader may continue.
    fn collect(&mut self, items: &mut Vec<Item>) -> bool {
        if !self.received_any || self.write_closed {
            return false;
        }
        let drained_control = !self.control.is_empty();
        while let Some(c) = self.control.pop_front() {
            match c {
                Control::Reply(id, headers) => {
                    if self.streams.get(&id).is_some_and(|s| s.reset.is_none()) {
                        items.push(Item::Reply(id, headers));
                    }
                }
                Control::Rst(stream_id, status) => {
                    items.push(Item::Frame(Frame::RstStream { stream_id, status }));
                }
                Control::Ping(id) => items.push(Item::Frame(Frame::Ping { id })),
            }
        }
        if self.session_unacked >= INITIAL_WINDOW / 2 {
            let delta = std::mem::take(&mut self.session_unacked);
            items.push(Item::Frame(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            }));
        }
        while let Some(stream_id) = self.window_updates.pop_front() {
            if let Some(s) = self.streams.get_mut(&stream_id) {
                s.window_update_queued = false;
                if s.reset.is_none() && !s.recv_fin && s.unacked > 0 {
                    let delta = std::mem::take(&mut s.unacked);
                    items.push(Item::Frame(Frame::WindowUpdate { stream_id, delta }));
                }
            }
        }
        let mut budget = WRITE_BATCH;
        while budget > 0 {
            let Some(stream_id) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&stream_id) else {
                continue;
            };
            s.in_ready = false;
            if s.reset.is_some() || s.send_closed {
                continue;
            }
            let data = s.take_chunk(MAX_DATA_CHUNK.min(budget));
            let fin = s.fin_queued && s.send.is_empty();
            if data.is_empty() && !fin {
                continue;
            }
            budget = budget.saturating_sub(data.len());
            s.send_closed = fin;
            wake(&mut s.write_waker);
            if !s.send.is_empty() {
                s.in_ready = true;
                self.ready.push_back(stream_id);
            }
            items.push(Item::Frame(Frame::Data {
                stream_id,
                fin,
                data,
            }));
            if fin {
                self.maybe_remove(stream_id);
            }
        }
        drained_control
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

enum Item {
    Frame(Frame),
    Reply(u32, Headers),
}

fn stream_error(s: &StreamState, id: u32, phase: Phase) -> io::Error {
    match s.reset {
        Some(status) => Error::StreamReset { id, status }.into_io(io::ErrorKind::ConnectionReset),
        None if phase == Phase::Closed => {
            Error::ConnectionClosed.into_io(io::ErrorKind::ConnectionAborted)
        }
        None => Error::WriteClosed { id }.into_io(io::ErrorKind::BrokenPipe),
    }
}

fn gone(id: u32) -> io::Error {
    Error::StreamReset {
        id,
        status: rst::CANCEL,
    }
    .into_io(io::ErrorKind::ConnectionReset)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_reader(&self, st: &mut State) {
        if std::mem::take(&mut st.reader_blocked) {
            self.reader.notify_one();
        }
    }

    fn refuse(&self, id: u32, status: u32) {
        let mut st = self.lock();
        if st.streams.remove(&id).is_some() {
            st.control.push_back(Control::Rst(id, status));
        }
        st.auto_shutdown();
        drop(st);
        self.writer.notify_one();
    }

    fn reset(&self, id: u32, status: u32) {
        let mut st = self.lock();
        let State {
            streams,
            control,
            recv_buffered,
            ..
        } = &mut *st;
        if let Some(s) = streams.get_mut(&id) {
            if s.reset.is_none() {
                s.reset = Some(status);
                s.send.clear();
                s.send_len = 0;
                s.recv.clear();
                *recv_buffered -= std::mem::take(&mut s.recv_len);
                s.wake();
                control.push_back(Control::Rst(id, status));
            }
        }
        self.wake_reader(&mut st);
        st.maybe_remove(id);
        drop(st);
        self.writer.notify_one();
    }

    /// The application dropped one half of a stream.
    fn release(&self, id: u32, read_half: bool) {
        let mut st = self.lock();
        let State {
            streams,
            recv_buffered,
            write_closed,
            ..
        } = &mut *st;
        let Some(s) = streams.get_mut(&id) else {
            return;
        };
        if read_half {
            s.reader_open = false;
            s.recv.clear();
            *recv_buffered -= std::mem::take(&mut s.recv_len);
        } else {
            s.writer_open = false;
            if !s.send_closed && s.reset.is_none() && !*write_closed {
                s.fin_queued = true;
                st.schedule(id);
            }
        }
        self.wake_reader(&mut st);
        st.maybe_remove(id);
        drop(st);
        self.writer.notify_one();
    }

    fn poll_read(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        let phase = st.phase;
        let State {
            streams,
            recv_buffered,
            window_updates,
            ..
        } = &mut *st;
        let Some(s) = streams.get_mut(&id) else {
            return Poll::Ready(Err(gone(id)));
        };
        if s.recv_len == 0 {
            if s.recv_fin {
                return Poll::Ready(Ok(()));
            }
            if s.reset.is_some() || phase == Phase::Closed {
                return Poll::Ready(Err(stream_error(s, id, Phase::Closed)));
            }
            s.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut copied = 0;
        while let Some(front) = s.recv.front_mut() {
            let n = front.len().min(buf.remaining());
            if n == 0 {
                break;
            }
            buf.put_slice(&front[..n]);
            front.advance(n);
            copied += n;
            if front.is_empty() {
                s.recv.pop_front();
            }
        }
        s.recv_len -= copied;
        *recv_buffered -= copied;
        s.unacked = s.unacked.saturating_add(copied as u32);
        let update = !s.recv_fin && s.unacked >= INITIAL_WINDOW / 2 && !s.window_update_queued;
        if update {
            s.window_update_queued = true;
            window_updates.push_back(id);
        }
        self.wake_reader(&mut st);
        drop(st);
        if update {
            self.writer.notify_one();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_write(&self, id: u32, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_queue(id, cx, buf.is_empty(), |room| {
            Bytes::copy_from_slice(&buf[..room.min(buf.len())])
        })
    }

    /// [`SendStream::send`]: takes `data` whole once there is room.
    fn poll_send(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        data: &mut Option<Bytes>,
    ) -> Poll<io::Result<()>> {
        let empty = data.as_ref().is_none_or(Bytes::is_empty);
        self.poll_queue(id, cx, empty, |_| data.take().unwrap_or_default())
            .map_ok(drop)
    }

    /// Queues the chunk `piece` makes, given the room left (at least 1 byte), once the send
    /// buffer has room; returns its length.
    fn poll_queue(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        empty: bool,
        piece: impl FnOnce(usize) -> Bytes,
    ) -> Poll<io::Result<usize>> {
        let mut st = self.lock();
        let (phase, write_closed) = (st.phase, st.write_closed);
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(gone(id)));
        };
        if s.reset.is_some() || write_closed || s.send_closed || s.fin_queued {
            return Poll::Ready(Err(stream_error(s, id, phase)));
        }
        if empty {
            return Poll::Ready(Ok(0));
        }
        let room = STREAM_SEND_BUFFER.saturating_sub(s.send_len);
        if room == 0 {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let chunk = piece(room);
        let n = chunk.len();
        s.send.push_back(chunk);
        s.send_len += n;
        st.schedule(id);
        drop(st);
        self.writer.notify_one();
        Poll::Ready(Ok(n))
    }

    /// Flush waits until the writer has taken every queued byte; shutdown also queues FIN
    /// and waits until it is taken.
    fn poll_flush(&self, id: u32, cx: &mut Context<'_>, fin: bool) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        let (phase, write_closed) = (st.phase, st.write_closed);
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(gone(id)));
        };
        if s.send_closed || (!fin && s.send_len == 0) {
            return Poll::Ready(Ok(()));
        }
        if s.reset.is_some() || write_closed {
            return Poll::Ready(Err(stream_error(s, id, phase)));
        }
        s.write_waker = Some(cx.waker().clone());
        if fin && !s.fin_queued {
            s.fin_queued = true;
            st.schedule(id);
            drop(st);
            self.writer.notify_one();
        }
        Poll::Pending
    }
}

// ---- the two halves of the driver ----

async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    rd: &mut R,
    idle: Option<Duration>,
) -> Result<()> {
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut decoder = HeaderDecoder::new();
    loop {
        while let Some(frame) = frame::decode(&mut buf)? {
            handle_frame(shared, &mut decoder, frame).await?;
        }
        buf.reserve(8 << 10);
        if read_some(shared, rd, &mut buf, idle).await? == 0 {
            return if buf.is_empty() {
                Ok(())
            } else {
                Err(Error::Truncated)
            };
        }
    }
}

async fn read_some<R: AsyncRead + Unpin>(
    shared: &Shared,
    rd: &mut R,
    buf: &mut BytesMut,
    idle: Option<Duration>,
) -> Result<usize> {
    let Some(idle) = idle else {
        return rd.read_buf(buf).await.map_err(Error::Io);
    };
    loop {
        let deadline = shared.lock().last_activity + idle;
        tokio::select! {
            // `read_buf` is cancel-safe: nothing is lost when the timer wins.
            r = rd.read_buf(buf) => return r.map_err(Error::Io),
            () = tokio::time::sleep_until(deadline) => {
                if shared.lock().last_activity + idle <= Instant::now() {
                    return Err(Error::IdleTimeout(idle));
                }
            }
        }
    }
}

async fn handle_frame(shared: &Shared, decoder: &mut HeaderDecoder, frame: Frame) -> Result<()> {
    // Every header block is decompressed, in arrival order, even for frames that are then
    // ignored: the zlib context is shared by the whole connection.
    let headers = match &frame {
        Frame::SynStream { header_block, .. }
        | Frame::SynReply { header_block, .. }
        | Frame::Headers { header_block, .. } => decoder.decode(header_block)?,
        _ => Headers::new(),
    };
    // Wait for room before taking more: per-stream buffers (only a peer that ignores our
    // window gets here) and the control queue (only a peer that does not read gets here).
    loop {
        {
            let mut st = shared.lock();
            let control_full = st.control.len() >= MAX_QUEUED_CONTROL && !st.write_closed;
            let data_full = match &frame {
                Frame::Data { stream_id, .. } => st.recv_full(*stream_id),
                _ => false,
            };
            if !control_full && !data_full || st.phase == Phase::Closed {
                break;
            }
            st.reader_blocked = true;
        }
        shared.reader.notified().await;
    }
    let mut st = shared.lock();
    st.received_any = true;
    st.last_activity = Instant::now();
    match frame {
        Frame::SynStream {
            stream_id: id,
            fin,
            unidirectional,
            ..
        } => {
            if id % 2 == 0 || id <= st.last_stream_id {
                return Err(Error::Protocol(
                    "syn_stream id is not a new client stream id",
                ));
            }
            st.last_stream_id = id;
            let full = st.streams.len() >= MAX_CONCURRENT_STREAMS;
            if st.phase != Phase::Open || !st.incoming_alive || st.peer_goaway || full {
                st.control.push_back(Control::Rst(id, rst::REFUSED_STREAM));
            } else {
                st.streams
                    .insert(id, StreamState::new(headers, fin, unidirectional));
                st.pending.push_back(id);
                st.wake_accept();
            }
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => st.on_data(stream_id, fin, data),
        Frame::Headers {
            stream_id,
            fin: true,
            ..
        } => st.on_data(stream_id, true, Bytes::new()),
        Frame::RstStream { stream_id, status } => st.on_reset(stream_id, status),
        Frame::Ping { id } if id % 2 == 1 => st.control.push_back(Control::Ping(id)),
        Frame::GoAway { .. } => {
            st.peer_goaway = true;
            st.wake_accept();
        }
        // SETTINGS and WINDOW_UPDATE: we do not limit sending by the peer's window (see the
        // crate docs). Also ignored: our own PING ids, SYN_REPLY, HEADERS without FIN, unknown.
        _ => {}
    }
    drop(st);
    shared.writer.notify_one();
    Ok(())
}

enum Step {
    Write,
    Wait(Option<Instant>),
    Finish { goaway: Option<(u32, u32)> },
}

/// Writes every piece, in order, with vectored writes; empties `pieces`.
async fn write_pieces<W: AsyncWrite + Unpin>(
    wr: &mut W,
    pieces: &mut Vec<Bytes>,
) -> io::Result<()> {
    let mut first = 0;
    loop {
        while pieces.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        if first >= pieces.len() {
            break;
        }
        let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (slot, piece) in slices.iter_mut().zip(&pieces[first..]) {
            *slot = io::IoSlice::new(piece);
            count += 1;
        }
        let mut written = wr.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let piece = &mut pieces[first];
            if written >= piece.len() {
                written -= piece.len();
                first += 1;
            } else {
                piece.advance(written);
                written = 0;
            }
        }
    }
    pieces.clear();
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    wr: &mut W,
    linger: Duration,
) -> Result<()> {
    let mut encoder = HeaderEncoder::new()?;
    let mut items = Vec::new();
    let mut out = BytesMut::new();
    // With vectored writes, DATA payloads go to the socket from the buffers they were queued
    // in (only their 8-byte headers are encoded): no copy per byte sent.
    let vectored = wr.is_write_vectored();
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut linger_until = None;
    loop {
        let step = {
            let mut st = shared.lock();
            if st.phase == Phase::Closed {
                let goaway = st
                    .final_goaway
                    .take()
                    .map(|status| (st.last_stream_id, status));
                Step::Finish { goaway }
            } else {
                if st.collect(&mut items) {
                    shared.wake_reader(&mut st);
                }
                if !items.is_empty() {
                    Step::Write
                } else if st.phase == Phase::ShuttingDown && st.ready.is_empty() {
                    let now = Instant::now();
                    let until = *linger_until.get_or_insert(now + linger);
                    match (st.received_any, now >= until) {
                        (false, _) => Step::Finish { goaway: None },
                        (true, true) => Step::Finish {
                            goaway: Some((st.last_stream_id, goaway::OK)),
                        },
                        (true, false) => Step::Wait(Some(until)),
                    }
                } else {
                    Step::Wait(None)
                }
            }
        };
        match step {
            Step::Write => {
                for item in items.drain(..) {
                    let frame = match item {
                        Item::Frame(frame) => frame,
                        Item::Reply(stream_id, headers) => {
                            let header_block = encoder.encode(&headers)?;
                            Frame::SynReply {
                                stream_id,
                                fin: false,
                                header_block,
                            }
                        }
                    };
                    match frame {
                        Frame::Data {
                            stream_id,
                            fin,
                            data,
                        } if vectored && data.len() >= VECTORED_MIN => {
                            frame::encode_data_header(stream_id, fin, data.len(), &mut out)?;
                            pieces.push(out.split().freeze());
                            pieces.push(data);
                        }
                        frame => frame::encode(&frame, &mut out)?,
                    }
                }
                if pieces.is_empty() {
                    wr.write_all(&out).await.map_err(Error::Io)?;
                    out.clear();
                } else {
                    if !out.is_empty() {
                        pieces.push(out.split().freeze());
                    }
                    write_pieces(wr, &mut pieces).await.map_err(Error::Io)?;
                }
                wr.flush().await.map_err(Error::Io)?;
                shared.lock().last_activity = Instant::now();
            }
            Step::Wait(None) => shared.writer.notified().await,
            Step::Wait(Some(until)) => {
                tokio::select! {
                    () = shared.writer.notified() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
            Step::Finish { goaway } => {
                shared.lock().write_closed = true;
                if let Some((last_good_stream_id, status)) = goaway {
                    frame::encode(
                        &Frame::GoAway {
                            last_good_stream_id,
                            status,
                        },
                        &mut out,
                    )?;
                    wr.write_all(&out).await.map_err(Error::Io)?;
                }
                let _ = wr.shutdown().await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `step` bytes per (vectored) write.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.step;
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(left);
                self.got.extend_from_slice(&buf[..n]);
                (left, taken) = (left - n, taken + n);
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn vectored_writes_keep_order_across_short_writes() {
        let mut expected = Vec::new();
        let mut pieces = Vec::new();
        for i in 0..200u32 {
            let piece: Vec<u8> = (0..(i % 17)).map(|b| (b as u8) ^ (i as u8)).collect();
            expected.extend_from_slice(&piece);
            pieces.push(Bytes::from(piece));
        }
        for step in [1, 3, 64, 1 << 20] {
            let mut sink = Trickle {
                got: Vec::new(),
                step,
            };
            let mut queued = pieces.clone();
            write_pieces(&mut sink, &mut queued).await.expect("write");
            assert!(queued.is_empty());
            assert_eq!(sink.got, expected, "step {step}");
        }
    }
}
