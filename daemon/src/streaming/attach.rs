//! Attach for the streaming server: the client joins crimon's attach socket (SOCK_SEQPACKET,
//! one stream-id byte per output packet, as conmon serves it) and the terminal is resized
//! through the monitor's control socket.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crid_common::monitor_paths::{self, ATTACH_PACKET_PAYLOAD_MAX};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Io;
use crate::error::DaemonError;
use crate::monitor_client::MonitorConnection;
use crate::state::container::Phase;
use crate::state::State;

/// Stream ids crimon puts before output packets.
const STDOUT_ID: u8 = 2;
const STDERR_ID: u8 = 3;

/// Most output bytes gathered from the monitor's packets into one client write.
const OUTPUT_BATCH: usize = 64 * 1024;

/// Writes (and empties) a batch of output to the client stream it belongs to; false when the
/// client is gone.
async fn write_batch(
    batch: &mut Vec<u8>,
    stream: u8,
    stdout: &mut Option<super::BoxWrite>,
    stderr: &mut Option<super::BoxWrite>,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let to = match stream {
        STDOUT_ID => stdout.as_mut(),
        STDERR_ID => stderr.as_mut().or(stdout.as_mut()),
        _ => None,
    };
    let ok = match to {
        Some(to) => to.write_all(batch).await.is_ok(),
        None => true,
    };
    batch.clear();
    ok
}

/// Checks what Attach asks for against the container, before a URL is handed out.
pub fn check(state: &State, id: &str, stdin: bool) -> Result<(), DaemonError> {
    let container = state.container(id)?;
    if container.phase(&state.paths.exits) != Phase::Running {
        return Err(DaemonError::FailedPrecondition(format!(
            "container {} is not running",
            container.id
        )));
    }
    if stdin && !container.config.stdin {
        return Err(DaemonError::FailedPrecondition(format!(
            "container {} was not created with stdin; attach without stdin",
            container.id
        )));
    }
    Ok(())
}

fn connect(path: &std::path::Path) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    // A local SEQPACKET connect completes at once (or fails): no EINPROGRESS to wait on.
    socket::connect(fd.as_raw_fd(), &addr)?;
    crid_enter::sys::async_fd(fd)
}

/// Attaches the client's streams to container `id` until the container exits (the monitor
/// closes the socket) or the client goes away (this future is dropped).
pub async fn attach(state: &State, id: &str, io: Io) -> Result<(), DaemonError> {
    check(state, id, io.stdin.is_some())?;
    let container = state.container(id)?;
    let path = monitor_paths::attach_socket(&state.paths.monitors, &container.id);
    let socket = connect(&path).map_err(|err| DaemonError::Io {
        what: "connect to",
        path: path.clone(),
        err,
    })?;
    let Io {
        stdin,
        mut stdout,
        mut stderr,
        resize,
    } = io;
    let sock = &socket;
    let feed = async move {
        if let Some(mut from) = stdin {
            let mut buf = vec![0u8; ATTACH_PACKET_PAYLOAD_MAX];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let sent = sock
                    .async_io(tokio::io::Interest::WRITABLE, |fd| {
                        socket::send(fd.as_raw_fd(), &buf[..n], MsgFlags::MSG_NOSIGNAL)
                            .map_err(io::Error::from)
                    })
                    .await;
                if sent.is_err() {
                    break;
                }
            }
            // The monitor closes the container's stdin here if it was created stdin-once.
            let _ = socket::shutdown(sock.get_ref().as_raw_fd(), socket::Shutdown::Write);
        }
        std::future::pending::<()>().await
    };
    let monitors = state.paths.monitors.clone();
    let container_id = container.id.clone();
    let resizes = async move {
        if let Some(mut sizes) = resize {
            if let Ok(conn) = MonitorConnection::connect(&monitors, &container_id).await {
                while let Some(size) = sizes.recv().await {
                    if let Err(err) = conn.resize(size.width, size.height).await {
                        tracing::debug!(container = %container_id, error = %err, "resize failed");
                    }
                }
            }
        }
        std::future::pending::<()>().await
    };
    let output = async move {
        // Packets waiting in the socket are gathered into one write per stream (up to
        // OUTPUT_BATCH bytes): one DATA frame per 8 KiB packet made the client's end the
        // slow side of a flood.
        let mut packet = vec![0u8; ATTACH_PACKET_PAYLOAD_MAX + 1];
        let mut batch: Vec<u8> = Vec::with_capacity(OUTPUT_BATCH);
        let mut batch_stream = STDOUT_ID;
        'session: loop {
            let n = sock
                .async_io(tokio::io::Interest::READABLE, |fd| {
                    socket::recv(fd.as_raw_fd(), &mut packet, MsgFlags::empty())
                        .map_err(io::Error::from)
                })
                .await;
            let mut n = match n {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            loop {
                if packet[0] != batch_stream || batch.len() + n - 1 > OUTPUT_BATCH {
                    if !write_batch(&mut batch, batch_stream, &mut stdout, &mut stderr).await {
                        break 'session;
                    }
                    batch_stream = packet[0];
                }
                batch.extend_from_slice(&packet[1..n]);
                // More already queued? Take it without waiting.
                match socket::recv(
                    sock.get_ref().as_raw_fd(),
                    &mut packet,
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(0) => {
                        let _ =
                            write_batch(&mut batch, batch_stream, &mut stdout, &mut stderr).await;
                        break 'session;
                    }
                    Ok(more) => n = more,
                    Err(_) => break,
                }
            }
            if !write_batch(&mut batch, batch_stream, &mut stdout, &mut stderr).await {
                break;
            }
        }
        for to in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
            let _ = to.shutdown().await;
        }
    };
    tokio::select! {
        () = output => {}
        () = feed => unreachable!("feed never ends"),
        () = resizes => unreachable!("resizes never end"),
    }
    Ok(())
}
