//! Tests against tokio-tungstenite's client role over an in-memory duplex pipe: the client
//! side frames by hand, independently of the server code's codec.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::streaming::{ConnectPort, Outcome, PortForward, RemoteCommand, RunSession};

type Client = WebSocketStream<DuplexStream>;

const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;
const PIPE: usize = 256 * 1024;
const STEP: Duration = Duration::from_secs(5);
/// Long enough never to fire in a test.
const IDLE: Duration = Duration::from_secs(3600);

fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
    let mut req = http::Request::builder().method("GET").uri("/exec/tok");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap().into_parts().0
}

fn ws_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    h.extend_from_slice(extra);
    h
}

fn protocol_header(response: &http::Response<()>) -> Vec<String> {
    response
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn handshake_accept_key_and_headers() {
    let (response, protocol) = accept(&parts(&ws_headers(&[])), Endpoint::RemoteCommand).unwrap();
    assert_eq!(protocol, Protocol::Unnamed);
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    // RFC 6455 §1.3's example.
    assert_eq!(
        response.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert!(protocol_header(&response).is_empty());
}

#[test]
fn handshake_prefers_server_order_across_header_lines() {
    let req = parts(&ws_headers(&[
        (
            "sec-websocket-protocol",
            "base64.channel.k8s.io, v4.channel.k8s.io",
        ),
        (
            "sec-websocket-protocol",
            " v5.channel.k8s.io ,channel.k8s.io",
        ),
    ]));
    let (response, protocol) = accept(&req, Endpoint::RemoteCommand).unwrap();
    assert_eq!(protocol, Protocol::V5Channel);
    assert_eq!(protocol_header(&response), ["v5.channel.k8s.io"]);

    let req = parts(&ws_headers(&[(
        "sec-websocket-protocol",
        "base64.channel.k8s.io,v4.base64.channel.k8s.io",
    )]));
    let (_, protocol) = accept(&req, Endpoint::RemoteCommand).unwrap();
    assert_eq!(protocol, Protocol::V4Base64Channel);
}

#[test]
fn handshake_port_forward_protocols() {
    let req = parts(&ws_headers(&[(
        "sec-websocket-protocol",
        "v4.channel.k8s.io, SPDY/3.1+portforward.k8s.io",
    )]));
    let (response, protocol) = accept(&req, Endpoint::PortForward).unwrap();
    assert_eq!(protocol, Protocol::SpdyTunnel);
    assert_eq!(protocol_header(&response), ["SPDY/3.1+portforward.k8s.io"]);

    let req = parts(&ws_headers(&[(
        "sec-websocket-protocol",
        "v4.base64.channel.k8s.io",
    )]));
    let (_, protocol) = accept(&req, Endpoint::PortForward).unwrap();
    assert_eq!(protocol, Protocol::V4Base64Channel);

    let (_, protocol) = accept(&parts(&ws_headers(&[])), Endpoint::PortForward).unwrap();
    assert_eq!(protocol, Protocol::Unnamed);

    // v5 and the legacy unversioned names are for exec/attach only, and the tunnel for
    // port-forward only.
    for offered in ["v5.channel.k8s.io", "channel.k8s.io"] {
        let req = parts(&ws_headers(&[("sec-websocket-protocol", offered)]));
        let err = accept(&req, Endpoint::PortForward).unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN, "{offered}");
    }
    let req = parts(&ws_headers(&[(
        "sec-websocket-protocol",
        "SPDY/3.1+portforward.k8s.io",
    )]));
    let err = accept(&req, Endpoint::RemoteCommand).unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
}

#[test]
fn handshake_rejections() {
    let req = parts(&ws_headers(&[(
        "sec-websocket-protocol",
        "v6.channel.k8s.io",
    )]));
    assert_eq!(
        accept(&req, Endpoint::RemoteCommand).unwrap_err().status(),
        StatusCode::FORBIDDEN
    );

    for key in ["", "not base64!", "c2hvcnQ="] {
        let mut h = ws_headers(&[]);
        h[3].1 = key;
        let err = accept(&parts(&h), Endpoint::RemoteCommand).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "key {key:?}");
        assert!(err.body().contains("Sec-WebSocket-Key"));
    }
    let two_keys = ws_headers(&[("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA==")]);
    assert_eq!(
        accept(&parts(&two_keys), Endpoint::RemoteCommand)
            .unwrap_err()
            .status(),
        StatusCode::BAD_REQUEST
    );
    let mut no_key = ws_headers(&[]);
    no_key.remove(3);
    assert_eq!(
        accept(&parts(&no_key), Endpoint::RemoteCommand)
            .unwrap_err()
            .status(),
        StatusCode::BAD_REQUEST
    );

    let mut old = ws_headers(&[]);
    old[2].1 = "8";
    let err = accept(&parts(&old), Endpoint::RemoteCommand).unwrap_err();
    assert_eq!(err.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(err.headers()["sec-websocket-version"], "13");

    let mut not_ws = ws_headers(&[]);
    not_ws[1].1 = "SPDY/3.1";
    assert_eq!(
        accept(&parts(&not_ws), Endpoint::RemoteCommand)
            .unwrap_err()
            .status(),
        StatusCode::BAD_REQUEST
    );
}

/// Reads one HTTP request head off the wire (the test's stand-in for hyper).
async fn read_request(io: &mut DuplexStream) -> http::request::Parts {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        io.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap().split(' ');
    let mut req = http::Request::builder()
        .method(first.next().unwrap())
        .uri(first.next().unwrap());
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap();
        req = req.header(name.trim(), value.trim());
    }
    req.body(()).unwrap().into_parts().0
}

async fn write_response(
    io: &mut DuplexStream,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &str,
) {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    out.push_str(body);
    io.write_all(out.as_bytes()).await.unwrap();
}

/// A real handshake over a pipe: the tungstenite client against [`accept`].
async fn connect(
    endpoint: Endpoint,
    offered: &[&str],
) -> Result<(Client, DuplexStream, Protocol), StatusCode> {
    let (client_io, mut server_io) = tokio::io::duplex(PIPE);
    let mut request = "ws://127.0.0.1/exec/tok".into_client_request().unwrap();
    // One comma-separated line, as kube-rs sends (tungstenite's client reads only the first
    // line when checking the answer).
    if !offered.is_empty() {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            offered.join(", ").parse().unwrap(),
        );
    }
    let server = async move {
        let parts = read_request(&mut server_io).await;
        match accept(&parts, endpoint) {
            Ok((response, protocol)) => {
                write_response(&mut server_io, response.status(), response.headers(), "").await;
                Ok((server_io, protocol))
            }
            Err(response) => {
                let status = response.status();
                write_response(&mut server_io, status, response.headers(), response.body()).await;
                Err((server_io, status))
            }
        }
    };
    let client = tokio_tungstenite::client_async(request, client_io);
    let (server, client) = tokio::join!(server, client);
    match (server, client) {
        (Ok((server_io, protocol)), Ok((client, response))) => {
            let chosen = response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(chosen.as_deref(), protocol.name());
            Ok((client, server_io, protocol))
        }
        (Err((_, status)), Err(_)) => Err(status),
        (server, client) => panic!(
            "handshake disagreement: server ok {}, client {:?}",
            server.is_ok(),
            client.map(|_| ())
        ),
    }
}

#[tokio::test]
async fn handshake_over_the_wire() {
    let (_, _, protocol) = connect(
        Endpoint::RemoteCommand,
        &["v4.channel.k8s.io", "v5.channel.k8s.io"],
    )
    .await
    .unwrap();
    assert_eq!(protocol, Protocol::V5Channel);
    let (_, _, protocol) = connect(Endpoint::RemoteCommand, &[]).await.unwrap();
    assert_eq!(protocol, Protocol::Unnamed);
    let status = connect(Endpoint::RemoteCommand, &["v5.channel.k8s.io.evil"])
        .await
        .unwrap_err();
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The next data or close message (pongs and pings skipped).
async fn next(client: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(STEP, client.next())
            .await
            .expect("a message in time")
            .expect("the connection is open")
            .expect("a valid message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

async fn expect_close(client: &mut Client) {
    match next(client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected Close 1000, got {other:?}"),
    }
}

/// Lets the server finish: the client answers the Close, then the server must end.
async fn finish(mut client: Client, server: tokio::task::JoinHandle<()>) {
    // Reading after the Close sends tungstenite's reply and then ends.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, client.next()).await {}
    tokio::time::timeout(STEP, server)
        .await
        .expect("the server ends after the close handshake")
        .unwrap();
}

fn binary(channel: u8, data: &[u8]) -> Message {
    let mut v = vec![channel];
    v.extend_from_slice(data);
    Message::binary(v)
}

fn session(
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    cmd: &[&str],
    run: RunSession,
) -> RemoteCommand {
    RemoteCommand {
        stdin,
        stdout,
        stderr,
        tty,
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        run,
    }
}

/// The fake container: stdin echoed to stdout, a word on stderr, exit code 3.
fn echo_exit_3() -> RunSession {
    Box::new(|mut io: Io| {
        Box::pin(async move {
            let mut input = Vec::new();
            io.stdin
                .as_mut()
                .unwrap()
                .read_to_end(&mut input)
                .await
                .unwrap();
            io.stdout.as_mut().unwrap().write_all(&input).await.unwrap();
            io.stderr
                .as_mut()
                .unwrap()
                .write_all(b"oops")
                .await
                .unwrap();
            assert!(io.resize.is_none());
            Outcome::Exited(3)
        })
    })
}

#[tokio::test]
async fn v5_exec_echo_close_signal_and_exit_status() {
    let (mut client, server_io, protocol) =
        connect(Endpoint::RemoteCommand, &["v5.channel.k8s.io"])
            .await
            .unwrap();
    let s = session(
        true,
        true,
        true,
        false,
        &["sh", "-c", "cat; exit 3"],
        echo_exit_3(),
    );
    let server = tokio::spawn(serve_remote_command(server_io, protocol, IDLE, s));

    assert_eq!(next(&mut client).await, Message::binary(vec![STDOUT]));
    client.send(binary(0, b"hel")).await.unwrap();
    client
        .send(Message::Ping(b"p".to_vec().into()))
        .await
        .unwrap();
    client.send(binary(0, b"lo")).await.unwrap();
    client.send(binary(9, b"ignored channel")).await.unwrap();
    client.send(Message::binary(Vec::new())).await.unwrap();
    client.send(binary(CLOSE_SIGNAL, &[0])).await.unwrap();

    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = loop {
        let data = match next(&mut client).await {
            Message::Binary(data) => data,
            other => panic!("unexpected {other:?}"),
        };
        match data[0] {
            1 => stdout.extend_from_slice(&data[1..]),
            2 => stderr.extend_from_slice(&data[1..]),
            3 => break String::from_utf8(data[1..].to_vec()).unwrap(),
            ch => panic!("unexpected channel {ch}"),
        }
    };
    assert_eq!(stdout, b"hello");
    assert_eq!(stderr, b"oops");
    assert_eq!(
        status,
        r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c cat; exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
    );
    expect_close(&mut client).await;
    finish(client, server).await;
}

#[tokio::test]
async fn v4_exec_status_is_exact_and_stdin_is_ignored_when_not_asked_for() {
    let (mut client, server_io, protocol) = connect(
        Endpoint::RemoteCommand,
        &["v4.channel.k8s.io", "channel.k8s.io"],
    )
    .await
    .unwrap();
    assert_eq!(protocol, Protocol::V4Channel);
    let run: RunSession = Box::new(|mut io: Io| {
        Box::pin(async move {
            assert!(io.stdin.is_none() && io.stdout.is_none());
            io.stderr
                .as_mut()
                .unwrap()
                .write_all(b"ls: /nope")
                .await
                .unwrap();
            Outcome::Exited(2)
        })
    });
    let s = session(false, false, true, false, &["ls", "/nope"], run);
    let server = tokio::spawn(serve_remote_command(server_io, protocol, IDLE, s));
    client.send(binary(0, b"nobody reads this")).await.unwrap();

    assert_eq!(next(&mut client).await, Message::binary(vec![STDERR]));
    assert_eq!(next(&mut client).await, binary(2, b"ls: /nope"));
    assert_eq!(
        next(&mut client).await,
        binary(
            3,
            br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [ls /nope], exit code 2","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"2"}]}}"#
        )
    );
    expect_close(&mut client).await;
    finish(client, server).await;
}

#[tokio::test]
async fn legacy_channel_protocol_reports_only_failures_as_text() {
    for (outcome, status) in [
        (Outcome::Done, None),
        (
            Outcome::Failed("container is gone".into()),
            Some("Internal error occurred: container is gone"),
        ),
    ] {
        let (mut client, server_io, protocol) =
            connect(Endpoint::RemoteCommand, &["channel.k8s.io"])
                .await
                .unwrap();
        let run: RunSession = Box::new(move |_io: Io| Box::pin(async move { outcome }));
        let s = session(false, true, false, false, &[], run);
        let server = tokio::spawn(serve_remote_command(server_io, protocol, IDLE, s));
        assert_eq!(next(&mut client).await, Message::binary(vec![STDOUT]));
        if let Some(status) = status {
            assert_eq!(next(&mut client).await, binary(3, status.as_bytes()));
        }
        expect_close(&mut client).await;
        finish(client, server).await;
    }
}

#[test]
fn status_payloads() {
    let cmd = ["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
    for outcome in [Outcome::Exited(0), Outcome::Done] {
        assert_eq!(
            status_payload(Protocol::V4Channel, &cmd, &outcome).as_deref(),
            Some(SUCCESS)
        );
        assert_eq!(status_payload(Protocol::Channel, &cmd, &outcome), None);
        assert_eq!(status_payload(Protocol::Unnamed, &cmd, &outcome), None);
    }
    assert_eq!(
        status_payload(Protocol::V5Channel, &cmd, &Outcome::Exited(3)).unwrap(),
        r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
    );
    assert_eq!(
        status_payload(
            Protocol::V4Base64Channel,
            &cmd,
            &Outcome::Failed("boom \"x\"".into())
        )
        .unwrap(),
        r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom \"x\"","reason":"InternalError","details":{"causes":[{"message":"boom \"x\""}]},"code":500}"#
    );
    assert_eq!(
        status_payload(Protocol::Base64Channel, &cmd, &Outcome::Exited(3)).unwrap(),
        "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
    );
}

#[tokio::test]
async fn base64_framing_both_ways() {
    let (mut client, server_io, protocol) =
        connect(Endpoint::RemoteCommand, &["v4.base64.channel.k8s.io"])
            .await
            .unwrap();
    let run: RunSession = Box::new(|mut io: Io| {
        Box::pin(async move {
            let mut word = [0u8; 5];
            io.stdin
                .as_mut()
                .unwrap()
                .read_exact(&mut word)
                .await
                .unwrap();
            io.stdout.as_mut().unwrap().write_all(&word).await.unwrap();
            Outcome::Exited(0)
        })
    });
    let s = session(true, true, false, false, &["cat"], run);
    let server = tokio::spawn(serve_remote_command(server_io, protocol, IDLE, s));

    assert_eq!(next(&mut client).await, Message::text("1"));
    // Binary messages are not this protocol's: ignored.
    client.send(binary(0, b"xx")).await.unwrap();
    // Split across messages, each one padded base64 of its own.
    client.send(Message::text("0aGVs")).await.unwrap();
    client.send(Message::text("0bG8=")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("1aGVsbG8="));
    assert_eq!(
        next(&mut client).await,
        Message::text(format!("3{}", STANDARD.encode(SUCCESS)))
    );
    expect_close(&mut client).await;
    finish(client, server).await;
}

#[tokio::test]
async fn base64_garbage_ends_the_session() {
    let (mut client, server_io, protocol) =
        connect(Endpoint::RemoteCommand, &["base64.channel.k8s.io"])
            .await
            .unwrap();
    let (_alive, gone) = tokio::sync::oneshot::channel::<()>();
    let run: RunSession = Box::new(move |_io: Io| {
        Box::pin(async move {
            let _alive = _alive;
            std::future::pending::<Outcome>().await
        })
    });
    let s = session(true, true, false, false, &["cat"], run);
    let server = tokio::spawn(serve_remote_command(server_io, protocol, IDLE, s));
    assert_eq!(next(&mut client).await, Message::text("1"));
    client.send(Message::text("0!!!")).await.unwrap();
    tokio::time::timeout(STEP, server).await.unwrap().unwrap();
    // The session future was dropped with the connection.
    assert!(gone.await.is_err());
}

#[tokio::test]
async fn v5_resize_channel() {
    let (mut client, server_io, protocol) =
        connect(Endpoint::RemoteCommand, &["v5.channel.k8s.io"])
            .await
            .unwrap();
    let run: RunSession = Box::new(|mut io: Io| {
        Box::pin(async move {
            assert!(io.stdin.is_none() && io.stderr.is_none());
            let mut resize = io.resize.take().unwrap();
            let stdout = io.stdout.as_mut().unwrap();
            for _ in 0..3 {
                let size = resize.recv().await.unwrap();
                let line = format!("{}x{}\n", size.width, size.height);
                stdout.write_all(line.as_bytes()).await.unwrap();
            }
            // The client's close signal for channel 4 ends the sizes.
            assert_eq!(resize.recv().await, None);
            Outcome::Done
        })
    });
    let s = session(false, true, false, true, &[], run);
    let server = tokio::spawn(serve_remote_command(server_io, protocol, IDLE, s));
    assert_eq!(next(&mut client).await, Message::binary(vec![STDOUT]));

    client.send(binary(4, br#"{"Width":80,"#)).await.unwrap();
    client.send(binary(4, b"\"Height\":24}\n")).await.unwrap();
    assert_eq!(next(&mut client).await, binary(1, b"80x24\n"));
    client
        .send(binary(
            4,
            b"{\"width\":100,\"height\":50}\n{\"Width\":0,\"Height\":0}\n",
        ))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await, binary(1, b"100x50\n"));
    client
        .send(binary(4, br#"{"WIDTH":1,"height":2}"#))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await, binary(1, b"1x2\n"));
    client.send(binary(CLOSE_SIGNAL, &[4])).await.unwrap();
    assert_eq!(next(&mut client).await, binary(3, SUCCESS.as_bytes()));
    expect_close(&mut client).await;
    finish(client, server).await;
}

#[tokio::test]
async fn client_leaving_drops_the_session() {
    for how in [
        "close frame",
        "hang up",
        "bad close signal",
        "oversized message",
    ] {
        let (mut client, server_io, protocol) =
            connect(Endpoint::RemoteCommand, &["v5.channel.k8s.io"])
                .await
                .unwrap();
        let (alive, gone) = tokio::sync::oneshot::channel::<()>();
        let run: RunSession = Box::new(move |_io: Io| {
            Box::pin(async move {
                let _alive = alive;
                std::future::pending::<Outcome>().await
            })
        });
        let s = session(true, true, false, false, &["sleep", "inf"], run);
        let server = tokio::spawn(serve_remote_command(server_io, protocol, IDLE, s));
        assert_eq!(next(&mut client).await, Message::binary(vec![STDOUT]));
        match how {
            "close frame" => client.close(None).await.unwrap(),
            "hang up" => drop(client),
            "bad close signal" => client.send(binary(CLOSE_SIGNAL, &[0, 1])).await.unwrap(),
            _ => {
                let big = vec![0u8; MAX_MESSAGE + 1];
                // The server stops reading mid-message: the send itself may fail.
                let _ = tokio::time::timeout(STEP, client.send(Message::binary(big))).await;
            }
        }
        tokio::time::timeout(STEP, server)
            .await
            .unwrap_or_else(|_| panic!("{how}: the server ends"))
            .unwrap();
        assert!(gone.await.is_err(), "{how}: the session was dropped");
    }
}

#[tokio::test]
async fn idle_connection_is_closed() {
    let (mut client, server_io, protocol) =
        connect(Endpoint::RemoteCommand, &["v5.channel.k8s.io"])
            .await
            .unwrap();
    let run: RunSession = Box::new(|_io: Io| Box::pin(std::future::pending::<Outcome>()));
    let s = session(true, true, false, false, &["sleep", "inf"], run);
    let idle = Duration::from_millis(300);
    let server = tokio::spawn(serve_remote_command(server_io, protocol, idle, s));
    assert_eq!(next(&mut client).await, Message::binary(vec![STDOUT]));
    // Activity keeps it open past the timeout…
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        client.send(binary(0, b"x")).await.unwrap();
    }
    assert!(!server.is_finished());
    // …silence ends it.
    tokio::time::timeout(STEP, server).await.unwrap().unwrap();
}

/// A one-shot "pod" port: answers the first read with `pong:` + what it read, then closes.
async fn pod_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.unwrap();
        let mut reply = b"pong:".to_vec();
        reply.extend_from_slice(&buf[..n]);
        conn.write_all(&reply).await.unwrap();
    });
    port
}

async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn local_connect() -> ConnectPort {
    Arc::new(|port| Box::pin(tokio::net::TcpStream::connect(("127.0.0.1", port))))
}

#[tokio::test]
async fn legacy_port_forward_initial_frames_relay_and_errors() {
    let open = pod_port().await;
    let closed = closed_port().await;
    let (mut client, server_io, protocol) = connect(Endpoint::PortForward, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let forward = PortForward {
        pod_id: "pod-1".into(),
        ports: vec![open, closed],
        connect: local_connect(),
    };
    let server = tokio::spawn(serve_port_forward_legacy(
        server_io, protocol, IDLE, forward,
    ));

    // Each channel starts with its port, little-endian, in port order.
    let [lo, hi] = open.to_le_bytes();
    let [lo2, hi2] = closed.to_le_bytes();
    let mut initial = Vec::new();
    for _ in 0..4 {
        initial.push(next(&mut client).await);
    }
    assert_eq!(
        initial,
        [
            Message::binary(vec![0, lo, hi]),
            Message::binary(vec![1, lo, hi]),
            Message::binary(vec![2, lo2, hi2]),
            Message::binary(vec![3, lo2, hi2]),
        ]
    );
    client.send(binary(0, b"ping")).await.unwrap();
    client
        .send(binary(1, b"error channels are the server's"))
        .await
        .unwrap();

    let (mut data, mut error) = (Vec::new(), String::new());
    loop {
        match next(&mut client).await {
            Message::Binary(m) if m[0] == 0 => data.extend_from_slice(&m[1..]),
            Message::Binary(m) if m[0] == 3 => {
                error.push_str(std::str::from_utf8(&m[1..]).unwrap())
            }
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Normal);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(data, b"pong:ping");
    let prefix = format!("error forwarding port {closed} to pod pod-1, uid : ");
    assert!(error.starts_with(&prefix), "{error}");
    assert!(error.len() > prefix.len());
    finish(client, server).await;
}

#[tokio::test]
async fn legacy_port_forward_base64() {
    let open = pod_port().await;
    let (mut client, server_io, protocol) =
        connect(Endpoint::PortForward, &["v4.base64.channel.k8s.io"])
            .await
            .unwrap();
    let forward = PortForward {
        pod_id: "pod-1".into(),
        ports: vec![open],
        connect: local_connect(),
    };
    let server = tokio::spawn(serve_port_forward_legacy(
        server_io, protocol, IDLE, forward,
    ));
    let port = STANDARD.encode(open.to_le_bytes());
    assert_eq!(next(&mut client).await, Message::text(format!("0{port}")));
    assert_eq!(next(&mut client).await, Message::text(format!("1{port}")));
    client
        .send(Message::text(format!("0{}", STANDARD.encode("hi"))))
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await,
        Message::text(format!("0{}", STANDARD.encode("pong:hi")))
    );
    expect_close(&mut client).await;
    finish(client, server).await;
}

#[tokio::test]
async fn legacy_port_forward_too_many_ports_is_refused() {
    let (mut client, server_io, protocol) =
        connect(Endpoint::PortForward, &["v4.base64.channel.k8s.io"])
            .await
            .unwrap();
    let forward = PortForward {
        pod_id: "pod-1".into(),
        ports: (1..=41).collect(),
        connect: local_connect(),
    };
    let server = tokio::spawn(serve_port_forward_legacy(
        server_io, protocol, IDLE, forward,
    ));
    match next(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("unexpected {other:?}"),
    }
    finish(client, server).await;
}

#[tokio::test]
async fn byte_stream_round_trip() {
    let (mut client, server_io, protocol) =
        connect(Endpoint::PortForward, &["SPDY/3.1+portforward.k8s.io"])
            .await
            .unwrap();
    assert_eq!(protocol, Protocol::SpdyTunnel);
    let server = tokio::spawn(async move {
        let mut stream = tunnel(server_io).await;
        // Message boundaries mean nothing; empty messages are no EOF.
        let mut six = [0u8; 6];
        stream.read_exact(&mut six).await.unwrap();
        assert_eq!(&six, b"abcdef");
        stream.write_all(b"xyz").await.unwrap();
        stream.flush().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"ghi");
        stream.shutdown().await.unwrap();
    });
    client.send(Message::binary(b"ab".to_vec())).await.unwrap();
    client.send(Message::binary(Vec::new())).await.unwrap();
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    client
        .send(Message::binary(b"cdefg".to_vec()))
        .await
        .unwrap();
    client.send(Message::binary(b"hi".to_vec())).await.unwrap();
    // The pong arrives while the server reads.
    let mut pong = false;
    let reply = loop {
        match tokio::time::timeout(STEP, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Pong(data) => {
                assert_eq!(&data[..], b"are you there");
                pong = true;
            }
            other => break other,
        }
    };
    assert_eq!(reply, Message::binary(b"xyz".to_vec()));
    // A Close frame from the client is EOF for the reader.
    client.close(None).await.unwrap();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(STEP, client.next()).await {
        pong |= m.is_pong();
    }
    assert!(pong);
    tokio::time::timeout(STEP, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn byte_stream_text_is_an_error_and_shutdown_sends_close() {
    let (mut client, server_io, _) =
        connect(Endpoint::PortForward, &["SPDY/3.1+portforward.k8s.io"])
            .await
            .unwrap();
    let server = tokio::spawn(async move {
        let mut stream = tunnel(server_io).await;
        let mut buf = [0u8; 8];
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        stream.shutdown().await.unwrap();
        // Keep reading until the client answers the Close.
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    });
    client.send(Message::text("not spdy")).await.unwrap();
    expect_close(&mut client).await;
    finish(client, server).await;
}
