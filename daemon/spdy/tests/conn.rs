//! End-to-end tests of the connection driver over `tokio::io::duplex`. The client side is
//! written by hand from the frame encoder and the header codec only, as a SPDY client would.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crid_spdy::conn::{INITIAL_WINDOW, MAX_CONCURRENT_STREAMS};
use crid_spdy::frame::{self, goaway, rst, Frame};
use crid_spdy::headers::{HeaderDecoder, HeaderEncoder};
use crid_spdy::{server, Config, Error, Headers, Incoming, IncomingStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

async fn within<F: Future>(f: F) -> F::Output {
    timeout(Duration::from_secs(5), f).await.expect("in time")
}

fn data(stream_id: u32, fin: bool, bytes: &[u8]) -> Frame {
    let data = Bytes::copy_from_slice(bytes);
    Frame::Data {
        stream_id,
        fin,
        data,
    }
}

fn rst_frame(stream_id: u32, status: u32) -> Frame {
    Frame::RstStream { stream_id, status }
}

fn goaway_frame(last_good_stream_id: u32, status: u32) -> Frame {
    Frame::GoAway {
        last_good_stream_id,
        status,
    }
}

struct Client {
    io: DuplexStream,
    buf: BytesMut,
    enc: HeaderEncoder,
    dec: HeaderDecoder,
}

impl Client {
    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        frame::encode(&frame, &mut out).expect("encode");
        self.io.write_all(&out).await.expect("client write");
    }

    async fn open(&mut self, stream_id: u32, pairs: &[(&str, &str)]) {
        let headers: Headers = pairs.iter().copied().collect();
        let header_block = self.enc.encode(&headers).expect("compress");
        let (associated_id, priority, slot, fin, unidirectional) = (0, 0, 0, false, false);
        #[rustfmt::skip]
        let frame = Frame::SynStream {
            stream_id, associated_id, priority, slot, fin, unidirectional, header_block,
        };
        self.send(frame).await;
    }

    /// The next frame, `None` at end of file. SYN_REPLY blocks go through the client's one
    /// decompression context, so every reply must be decodable in order.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = frame::decode(&mut self.buf).expect("server frame") {
                if let Frame::SynReply { header_block, .. } = &frame {
                    self.dec.decode(header_block).expect("reply headers");
                }
                return Some(frame);
            }
            if within(self.io.read_buf(&mut self.buf)).await.expect("read") == 0 {
                return None;
            }
        }
    }

    /// The next frame that is not a WINDOW_UPDATE.
    async fn recv_main(&mut self) -> Option<Frame> {
        loop {
            match self.recv().await {
                Some(Frame::WindowUpdate { .. }) => continue,
                other => return other,
            }
        }
    }

    async fn expect(&mut self, frame: Frame) {
        assert_eq!(self.recv_main().await, Some(frame));
    }

    async fn expect_reply(&mut self, id: u32) {
        match self.recv_main().await {
            Some(Frame::SynReply { stream_id, .. }) if stream_id == id => {}
            other => panic!("expected SYN_REPLY {id}, got {other:?}"),
        }
    }
}

fn quick() -> Config {
    let linger = Duration::from_millis(200);
    Config {
        idle_timeout: None,
        linger,
    }
}

fn start(config: Config, buffer: usize) -> (Client, Incoming, JoinHandle<crid_spdy::Result<()>>) {
    let (io, server_io) = tokio::io::duplex(buffer);
    let (driver, incoming) = server(server_io, config);
    let (enc, dec) = (HeaderEncoder::new().expect("encoder"), HeaderDecoder::new());
    let buf = BytesMut::new();
    (
        Client { io, buf, enc, dec },
        incoming,
        tokio::spawn(driver.run()),
    )
}

async fn accept(incoming: &mut Incoming) -> IncomingStream {
    within(incoming.accept()).await.expect("a stream")
}

#[tokio::test]
async fn exec_like_session_end_to_end() {
    let (mut client, mut incoming, driver) = start(quick(), 1 << 20);
    let status = br#"{"metadata":{},"status":"Success"}"#;
    let app = tokio::spawn(async move {
        let mut streams = Vec::new();
        for expected in ["error", "stdin", "stdout"] {
            let pending = accept(&mut incoming).await;
            assert_eq!(pending.headers().get("streamtype"), Some(expected));
            let reply: Headers = [("X-Echo", expected)].into_iter().collect();
            streams.push(pending.reply_with(reply));
        }
        drop(incoming);
        let Ok([mut error, mut stdin, mut stdout]) = <[_; 3]>::try_from(streams) else {
            panic!("three streams");
        };
        let mut input = Vec::new();
        stdin
            .read_to_end(&mut input)
            .await
            .expect("stdin until fin");
        let output = input.to_ascii_uppercase();
        stdout.write_all(&output).await.expect("stdout");
        stdout.shutdown().await.expect("stdout fin");
        error.write_all(status).await.expect("status");
        error.shutdown().await.expect("error fin");
    });

    // Nothing may be written before the client's first frame.
    let early = timeout(
        Duration::from_millis(100),
        client.io.read_buf(&mut client.buf),
    );
    assert!(early.await.is_err(), "server spoke first");
    for (id, streamtype) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
        client.open(id, &[("streamtype", streamtype)]).await;
        client.expect_reply(id).await;
    }
    client.send(Frame::Ping { id: 1 }).await;
    client.send(data(3, false, b"hello ")).await;
    client.send(data(3, false, b"world")).await;
    client.send(data(3, true, b"")).await;

    let mut frames = Vec::new();
    while let Some(frame) = client.recv_main().await {
        frames.push(frame);
    }
    let on_stream = |id: u32| -> (Vec<u8>, Vec<bool>) {
        let (mut bytes, mut fins) = (Vec::new(), Vec::new());
        for f in &frames {
            if let Frame::Data {
                stream_id,
                fin,
                data,
            } = f
            {
                if *stream_id == id {
                    bytes.extend_from_slice(data);
                    fins.push(*fin);
                }
            }
        }
        (bytes, fins)
    };
    let ends_with_fin =
        |fins: &[bool]| fins.last() == Some(&true) && fins.iter().filter(|f| **f).count() == 1;
    let (stdout, fins) = on_stream(5);
    assert_eq!(stdout, b"HELLO WORLD");
    assert!(ends_with_fin(&fins));
    let (error, fins) = on_stream(1);
    assert_eq!(error, status);
    assert!(ends_with_fin(&fins));
    // Dropping the stdin stream half-closes our side of it (the Go client waits for that).
    assert_eq!(on_stream(3), (Vec::new(), vec![true]));
    assert!(frames.contains(&Frame::Ping { id: 1 }), "ping echoed");
    assert_eq!(frames.last(), Some(&goaway_frame(5, goaway::OK)));
    app.await.expect("app");
    driver.await.expect("driver task").expect("clean end");
}

/// A compliant client (honouring stream and session windows) fills one stream the
/// application never reads; another stream still moves 4 windows' worth of data.
#[tokio::test]
async fn unread_stream_does_not_block_another() {
    let (mut client, mut incoming, _driver) = start(quick(), 1 << 20);
    client.open(1, &[("streamtype", "data")]).await;
    client.open(3, &[("streamtype", "data")]).await;
    let mut idle = accept(&mut incoming).await.reply();
    let mut busy = accept(&mut incoming).await.reply();
    let total = 4 * INITIAL_WINDOW as usize;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        busy.read_to_end(&mut got).await.expect("read busy stream");
        got.len()
    });

    let chunk = [7u8; 16 << 10];
    let (mut session, mut window1, mut window3) = (INITIAL_WINDOW, INITIAL_WINDOW, INITIAL_WINDOW);
    while window1 > 0 {
        client.send(data(1, false, &chunk)).await;
        window1 -= chunk.len() as u32;
        session -= chunk.len() as u32;
    }
    let mut sent = 0;
    while sent < total {
        if window3 == 0 || session == 0 {
            match client.recv().await.expect("window update") {
                Frame::WindowUpdate {
                    stream_id: 0,
                    delta,
                } => session += delta,
                Frame::WindowUpdate {
                    stream_id: 3,
                    delta,
                } => window3 += delta,
                Frame::WindowUpdate { .. } => panic!("window update for unread data"),
                _ => {} // the SYN_REPLYs
            }
            continue;
        }
        let n = chunk
            .len()
            .min(window3.min(session) as usize)
            .min(total - sent);
        client.send(data(3, sent + n == total, &chunk[..n])).await;
        (sent, window3, session) = (sent + n, window3 - n as u32, session - n as u32);
    }
    assert_eq!(within(reader).await.expect("reader"), total);
    // The unread stream kept every byte.
    let mut first = vec![0; INITIAL_WINDOW as usize];
    idle.read_exact(&mut first).await.expect("unread stream");
    assert!(first.iter().all(|b| *b == 7));
}

/// Go's spdystream ignores windows: a flood on one stream is buffered up to the limit, then
/// back-pressured through the transport, and arrives complete and in order.
#[tokio::test]
async fn window_ignoring_flood_is_backpressured_without_loss() {
    let (mut client, mut incoming, _driver) = start(quick(), 16 << 10);
    client.open(1, &[("streamtype", "stdin")]).await;
    let mut stream = accept(&mut incoming).await.reply();
    let (frames, size) = (512, 4096);
    let (mut rd, mut wr) = tokio::io::split(client.io);
    let drain = tokio::spawn(async move { tokio::io::copy(&mut rd, &mut tokio::io::sink()).await });
    let flood = tokio::spawn(async move {
        let mut out = BytesMut::new();
        for i in 0..frames {
            let frame = data(1, i == frames - 1, &vec![(i % 251) as u8; size]);
            frame::encode(&frame, &mut out).expect("encode");
        }
        wr.write_all(&out).await.expect("flood");
        wr
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !flood.is_finished(),
        "the transport is back-pressured while nobody reads"
    );
    let mut got = Vec::new();
    within(stream.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got.len(), frames * size);
    let in_order = got
        .chunks(size)
        .enumerate()
        .all(|(i, c)| c.iter().all(|b| *b == (i % 251) as u8));
    assert!(in_order);
    drop((flood.await.expect("flood task"), stream, incoming));
    within(drain)
        .await
        .expect("drain")
        .expect("copy until the server closes");
}

#[tokio::test]
async fn peer_disconnect_ends_every_stream() {
    let (mut client, mut incoming, driver) = start(quick(), 1 << 20);
    client.open(1, &[("streamtype", "error")]).await;
    client.open(3, &[("streamtype", "stdin")]).await;
    let mut one = accept(&mut incoming).await.reply();
    let mut three = accept(&mut incoming).await.reply();
    client.send(data(3, false, b"partial")).await;
    drop(client);
    let mut buf = Vec::new();
    let read = within(three.read_to_end(&mut buf)).await;
    assert!(read.is_err(), "no clean end of file without FIN");
    assert_eq!(buf, b"partial");
    assert!(within(incoming.accept()).await.is_none());
    assert!(one.write_all(b"x").await.is_err());
    driver
        .await
        .expect("driver task")
        .expect("peer close is a clean end");
}

#[tokio::test]
async fn fin_reset_and_refusal() {
    let (mut client, mut incoming, _driver) = start(quick(), 1 << 20);
    for id in [1, 3, 5, 7] {
        let headers = [("streamtype", "data"), ("port", "80"), ("requestid", "0")];
        client.open(id, &headers).await;
    }
    let mut one = accept(&mut incoming).await.reply();
    let three = accept(&mut incoming).await.reply();
    let five = accept(&mut incoming).await;
    assert_eq!(five.headers().get("port"), Some("80"));
    let mut seven = accept(&mut incoming).await.reply();
    for id in [1, 3, 7] {
        client.expect_reply(id).await;
    }
    one.write_all(b"bye").await.expect("write");
    drop(one);
    three.reset(rst::CANCEL);
    drop(five);
    // "bye" then FIN on 1 (possibly one frame), RST on 3, refusal of 5, in any order.
    let (mut bye, mut rsts) = (Vec::new(), Vec::new());
    while bye.last() != Some(&true) || rsts.len() < 2 {
        match client.recv_main().await.expect("frame") {
            Frame::Data {
                stream_id: 1,
                fin,
                data,
            } => {
                assert_eq!(data, &b"bye"[..data.len()]);
                bye.push(fin);
            }
            Frame::RstStream { stream_id, status } => rsts.push((stream_id, status)),
            other => panic!("unexpected {other:?}"),
        }
    }
    rsts.sort_unstable();
    assert_eq!(rsts, [(3, rst::CANCEL), (5, rst::REFUSED_STREAM)]);
    // Data for a stream the application dropped is cancelled; for one never opened, invalid.
    client.send(data(1, false, b"more")).await;
    client.expect(rst_frame(1, rst::CANCEL)).await;
    client.send(data(99, false, b"?")).await;
    client.expect(rst_frame(99, rst::INVALID_STREAM)).await;
    // The peer resets a stream: reads and writes fail.
    client.send(rst_frame(7, rst::CANCEL)).await;
    let err = within(seven.read(&mut [0; 8])).await.expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(seven.write_all(b"x").await.is_err());
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let (mut client, mut incoming, _driver) = start(quick(), 1 << 20);
    let last = 2 * MAX_CONCURRENT_STREAMS as u32 + 1;
    for id in (1..=last).step_by(2) {
        client.open(id, &[("streamtype", "data")]).await;
    }
    client.expect(rst_frame(last, rst::REFUSED_STREAM)).await;
    assert_eq!(accept(&mut incoming).await.id(), 1);
}

#[tokio::test]
async fn oversized_frame_ends_the_connection_with_goaway() {
    let (mut client, _incoming, driver) = start(quick(), 1 << 20);
    client.send(Frame::Ping { id: 1 }).await;
    client.expect(Frame::Ping { id: 1 }).await;
    let header = [0, 0, 0, 1, 0, 0xff, 0xff, 0xff];
    client.io.write_all(&header).await.expect("write");
    client.expect(goaway_frame(0, goaway::PROTOCOL_ERROR)).await;
    assert_eq!(client.recv().await, None);
    let err = driver
        .await
        .expect("driver task")
        .expect_err("protocol error");
    assert!(matches!(err, Error::FrameTooLarge { .. }), "{err}");
}

#[tokio::test]
async fn reused_stream_id_is_a_protocol_error() {
    let (mut client, mut incoming, driver) = start(quick(), 1 << 20);
    client.open(3, &[("streamtype", "error")]).await;
    let _three = accept(&mut incoming).await.reply();
    client.open(1, &[("streamtype", "stdout")]).await;
    // The reply to 3 may or may not get out before the session error.
    let mut last = client.recv_main().await;
    if matches!(last, Some(Frame::SynReply { stream_id: 3, .. })) {
        last = client.recv_main().await;
    }
    assert_eq!(last, Some(goaway_frame(3, goaway::PROTOCOL_ERROR)));
    assert!(matches!(
        driver.await.expect("task"),
        Err(Error::Protocol(_))
    ));
}

#[tokio::test]
async fn explicit_shutdown_and_idle_timeout() {
    let (mut client, incoming, driver) = start(quick(), 1 << 20);
    client.open(1, &[("streamtype", "data")]).await;
    client.send(Frame::Ping { id: 1 }).await;
    client.expect(Frame::Ping { id: 1 }).await;
    incoming.handle().shutdown();
    client.expect(rst_frame(1, rst::REFUSED_STREAM)).await;
    client.expect(goaway_frame(1, goaway::OK)).await;
    assert_eq!(client.recv().await, None);
    driver.await.expect("task").expect("clean shutdown");

    let idle = Some(Duration::from_millis(100));
    let (mut client, _incoming, driver) = start(
        Config {
            idle_timeout: idle,
            ..quick()
        },
        4096,
    );
    client.send(Frame::Ping { id: 1 }).await;
    client.expect(Frame::Ping { id: 1 }).await;
    client.expect(goaway_frame(0, goaway::OK)).await;
    assert!(matches!(
        driver.await.expect("task"),
        Err(Error::IdleTimeout(_))
    ));
}
