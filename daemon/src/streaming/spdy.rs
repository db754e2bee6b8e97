//! The Kubernetes protocols over SPDY/3.1 (reference §3.6, §3.11): remotecommand
//! (`v4.channel.k8s.io` down to `channel.k8s.io`) for exec and attach, and
//! `portforward.k8s.io`. The SPDY engine is the `crid-spdy` crate.

use std::collections::HashMap;
use std::time::Duration;

use crid_spdy::frame::rst;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Io, PortForward, RemoteCommand};

/// How long a client has to open every stream its session needs (the kubelet library's
/// StreamCreationTimeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Resize messages queued before the reader waits for the terminal to catch up.
const RESIZE_QUEUE: usize = 16;
/// How long the status and the last output get to reach the client before the connection is
/// dropped.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from a pod's socket at once when forwarding (one DATA frame at most 32 KiB
/// each: the SPDY engine splits larger writes).
const FORWARD_READ: usize = 64 << 10;

/// The remotecommand protocol versions crid speaks over SPDY, in its order of preference.
pub const REMOTE_COMMAND_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward protocol (exactly this string).
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

fn spdy_config(idle: Duration) -> crid_spdy::Config {
    crid_spdy::Config {
        idle_timeout: Some(idle),
        ..Default::default()
    }
}

/// Serves one exec or attach session on an upgraded connection speaking `protocol`.
pub async fn serve_remote_command<T>(io: T, protocol: &str, idle: Duration, session: RemoteCommand)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let v4 = protocol == REMOTE_COMMAND_PROTOCOLS[0];
    // The resize stream exists from v3 on.
    let resize_wanted =
        session.tty && matches!(protocol, "v4.channel.k8s.io" | "v3.channel.k8s.io");
    let (driver, mut incoming) = crid_spdy::server(io, spdy_config(idle));
    let mut driver = tokio::spawn(driver.run());
    let mut error = None;
    let mut stdin = None;
    let mut stdout = None;
    let mut stderr = None;
    let mut resize = None;
    let complete = |e: &Option<_>, i: &Option<_>, o: &Option<_>, r: &Option<_>, z: &Option<_>| {
        e.is_some()
            && i.is_some() == session.stdin
            && o.is_some() == session.stdout
            && r.is_some() == session.stderr
            && z.is_some() == resize_wanted
    };
    let gathered = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while !complete(&error, &stdin, &stdout, &stderr, &resize) {
            let pending = incoming.accept().await?;
            let kind = pending
                .headers()
                .get("streamtype")
                .unwrap_or_default()
                .to_owned();
            let slot = match kind.as_str() {
                "error" => &mut error,
                "stdin" if session.stdin => &mut stdin,
                "stdout" if session.stdout => &mut stdout,
                "stderr" if session.stderr => &mut stderr,
                "resize" if resize_wanted => &mut resize,
                _ => {
                    pending.refuse(rst::REFUSED_STREAM);
                    continue;
                }
            };
            if slot.is_some() {
                pending.refuse(rst::PROTOCOL_ERROR);
                continue;
            }
            *slot = Some(pending.reply());
        }
        Some(())
    })
    .await;
    let (Ok(Some(())), Some(error)) = (gathered, error) else {
        // The client never opened its streams (or left): nothing was started.
        incoming.handle().shutdown();
        drop(incoming);
        let _ = tokio::time::timeout(FINISH_TIMEOUT, driver).await;
        return;
    };
    let (resizes, resize_reader) = match resize {
        Some(stream) => {
            let (tx, rx) = mpsc::channel(RESIZE_QUEUE);
            let (recv, _send) = stream.into_split();
            (
                Some(rx),
                Some(tokio::spawn(super::resize::forward(recv, tx))),
            )
        }
        None => (None, None),
    };
    // stdin's send side stays open until the session ends: the Go client reads it and takes
    // its close (FIN) for the end of the session, closing its own side and dropping whatever
    // is typed after (kubelet's server closes it with the connection). The outputs' receive
    // sides are dropped.
    let (stdin, stdin_open) = match stdin.map(crid_spdy::Stream::into_split) {
        Some((recv, send)) => (Some(Box::new(recv) as super::BoxRead), Some(send)),
        None => (None, None),
    };
    let io = Io {
        stdin,
        stdout: stdout.map(|s| Box::new(s.into_split().1) as super::BoxWrite),
        stderr: stderr.map(|s| Box::new(s.into_split().1) as super::BoxWrite),
        resize: resizes,
    };
    let cmd = session.cmd.clone();
    let run = (session.run)(io);
    let mut driver_done = false;
    let outcome = tokio::select! {
        outcome = run => Some(outcome),
        // The connection ended first: the client is gone, and dropping the session stops it.
        _ = &mut driver => {
            driver_done = true;
            None
        }
    };
    if let Some(reader) = resize_reader {
        reader.abort();
    }
    if let Some(outcome) = outcome {
        let payload = super::status::payload(v4, &cmd, &outcome).unwrap_or_default();
        let (_recv, mut send) = error.into_split();
        let finish = async {
            if !payload.is_empty() {
                send.write_all(payload.as_bytes()).await?;
            }
            send.shutdown().await
        };
        let _ = tokio::time::timeout(FINISH_TIMEOUT, finish).await;
    }
    // Dropping the last streams and `incoming` shuts the connection down gracefully: what is
    // queued goes out, the client gets time to close first, then GOAWAY.
    drop(stdin_open);
    drop(incoming);
    if !driver_done {
        let _ = driver.await;
    }
}

/// Where a port-forward request's streams are paired: by `requestid`, or for clients that
/// send none, the error stream's id (the data stream's id minus 2).
fn pair_key(headers: &crid_spdy::Headers, id: u32, data: bool) -> String {
    match headers.get("requestid") {
        Some(request) => format!("r{request}"),
        None => format!("s{}", if data { id.saturating_sub(2) } else { id }),
    }
}

/// A port-forward request waiting for its other stream.
struct Half {
    port: u16,
    error: Option<crid_spdy::Stream>,
    data: Option<crid_spdy::Stream>,
    since: tokio::time::Instant,
}

/// Serves a port-forward session: every (error, data) stream pair is one connection to a
/// port of the pod, until the client leaves.
pub async fn serve_port_forward<T>(io: T, idle: Duration, session: PortForward)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (driver, mut incoming) = crid_spdy::server(io, spdy_config(idle));
    let driver = tokio::spawn(driver.run());
    let mut halves: HashMap<String, Half> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let pending = tokio::select! {
            pending = incoming.accept() => match pending {
                Some(pending) => pending,
                None => break,
            },
            _ = tick.tick() => {
                // Pairs that never completed: say so on the stream that came.
                let now = tokio::time::Instant::now();
                let stale: Vec<String> = halves
                    .iter()
                    .filter(|(_, h)| now.duration_since(h.since) > STREAM_CREATION_TIMEOUT)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in stale {
                    if let Some(half) = halves.remove(&key) {
                        if let Some(error) = half.error {
                            forwards.spawn(fail(error, half.data, format!(
                                "timed out waiting for the data stream of port {}", half.port
                            )));
                        }
                    }
                }
                continue;
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let headers = pending.headers();
        let port = headers
            .get("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0);
        let data = match headers.get("streamtype") {
            Some("data") => true,
            Some("error") => false,
            _ => {
                pending.refuse(rst::PROTOCOL_ERROR);
                continue;
            }
        };
        let Some(port) = port else {
            pending.refuse(rst::PROTOCOL_ERROR);
            continue;
        };
        let key = pair_key(headers, pending.id(), data);
        let half = halves.entry(key.clone()).or_insert_with(|| Half {
            port,
            error: None,
            data: None,
            since: tokio::time::Instant::now(),
        });
        let slot = if data {
            &mut half.data
        } else {
            &mut half.error
        };
        if slot.is_some() || half.port != port {
            pending.refuse(rst::PROTOCOL_ERROR);
            continue;
        }
        *slot = Some(pending.reply());
        if half.error.is_some() && half.data.is_some() {
            if let Some(Half {
                port,
                error: Some(error),
                data: Some(data),
                ..
            }) = halves.remove(&key)
            {
                let connect = session.connect.clone();
                let pod_id = session.pod_id.clone();
                forwards.spawn(forward(connect, pod_id, port, error, data));
            }
        }
    }
    // The client is gone (or went away with GOAWAY): stop what still runs.
    forwards.shutdown().await;
    drop(halves);
    drop(incoming);
    let _ = driver.await;
}

/// Writes `message` on a port-forward error stream and closes the pair.
async fn fail(error: crid_spdy::Stream, data: Option<crid_spdy::Stream>, message: String) {
    let (_recv, mut send) = error.into_split();
    let _ = send.write_all(message.as_bytes()).await;
    let _ = send.shutdown().await;
    if let Some(data) = data {
        data.reset(rst::CANCEL);
    }
}

/// Relays one port-forward connection.
async fn forward(
    connect: super::ConnectPort,
    pod_id: String,
    port: u16,
    error: crid_spdy::Stream,
    data: crid_spdy::Stream,
) {
    let tcp = match connect(port).await {
        Ok(tcp) => tcp,
        Err(err) => {
            fail(
                error,
                Some(data),
                format!("error forwarding port {port} to pod {pod_id}, uid : {err}"),
            )
            .await;
            return;
        }
    };
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let (mut data_recv, mut data_send) = data.into_split();
    let (_error_recv, mut error_send) = error.into_split();
    let to_pod = async {
        let _ = tokio::io::copy(&mut data_recv, &mut tcp_write).await;
        // The client's FIN: no more for the pod, but its answer still comes back.
        let _ = tcp_write.shutdown().await;
    };
    // Reset or refused connections after a successful connect are not reported: client-go
    // ends the whole session on any error text (reference §1.4). The pod's end of file is
    // FIN on the data stream, then on the error stream (reference §3.11): the pair is done
    // for a client that waits for it, whatever it does with the data stream.
    let from_pod = async {
        // Large reads make large DATA frames: fewer frames, and fewer writer wake-ups, per
        // byte than tokio::io::copy's 8 KiB. Each read's bytes are queued as they are, and
        // written to the client from the same buffer.
        let mut buf = bytes::BytesMut::new();
        loop {
            buf.reserve(FORWARD_READ);
            match tcp_read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // A large read goes on as it is; a small one is copied, so that a pod sending
            // small segments to a client that does not read cannot pin a whole read buffer
            // per queued byte (the send buffer bounds bytes, not buffers): at most 4x.
            let chunk = if buf.len() >= FORWARD_READ / 4 {
                buf.split().freeze()
            } else {
                let small = bytes::Bytes::copy_from_slice(&buf);
                buf.clear();
                small
            };
            if data_send.send(chunk).await.is_err() {
                break;
            }
        }
        let _ = data_send.shutdown().await;
        let _ = error_send.shutdown().await;
    };
    tokio::join!(to_pod, from_pod);
}
