//! A terminal session: the pty master the runtime sent, copied to and from the client, and
//! resized as the client's terminal changes.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use super::{BoxRead, BoxWrite, TermSize};
use crate::error::DaemonError;
use crid_enter::sys;

/// One side of a shared non-blocking pty master.
#[derive(Clone)]
struct Master(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for Master {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave fd is closed (the process and its children are gone): EOF.
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Master {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Copies the terminal's output to the client, adding a carriage return before each newline
/// when `onlcr` (the translation the terminal `runc exec` relays to makes; runc clears it on
/// the container's own terminal).
async fn copy_output(
    mut from: Master,
    to: &mut BoxWrite,
    onlcr: bool,
    activity: &super::drain::OutputActivity,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut expanded = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        activity.touch();
        let chunk = if onlcr {
            expanded.clear();
            for &byte in &buf[..n] {
                if byte == b'\n' {
                    expanded.push(b'\r');
                }
                expanded.push(byte);
            }
            &expanded[..]
        } else {
            &buf[..n]
        };
        if to.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Copies between the client and the terminal until `exited` (the process's exit code)
/// resolves. With `runc exec`, the runtime runs on the slave of `master` as its controlling
/// terminal and relays it to the container's own terminal (CRI-O's arrangement): a resize of
/// `master` reaches it as SIGWINCH. With the direct exec, `master` is the container's own
/// terminal and `onlcr` adds the carriage returns crid's relay terminal added.
pub async fn run_session(
    master: OwnedFd,
    exited: impl std::future::Future<Output = Result<i32, DaemonError>>,
    stdin: Option<BoxRead>,
    stdout: Option<BoxWrite>,
    resize: Option<mpsc::Receiver<TermSize>>,
    onlcr: bool,
) -> Result<i32, DaemonError> {
    let io_err = |what: &'static str| {
        move |err| DaemonError::Io {
            what,
            path: "pty master".into(),
            err,
        }
    };
    nix::fcntl::fcntl(
        master.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| io_err("make non-blocking")(e.into()))?;
    let master = Master(Arc::new(sys::async_fd(master).map_err(io_err("watch"))?));
    let resizer = master.clone();
    let resizes = async move {
        if let Some(mut sizes) = resize {
            while let Some(size) = sizes.recv().await {
                let _ = sys::set_window_size(resizer.0.get_ref().as_fd(), size.width, size.height);
            }
        }
        std::future::pending::<()>().await
    };
    let mut writer = master.clone();
    let feed = async move {
        if let Some(mut from) = stdin {
            let _ = tokio::io::copy(&mut from, &mut writer).await;
        }
        std::future::pending::<()>().await
    };
    let reader = master;
    let activity = super::drain::OutputActivity::new();
    let noted = activity.clone();
    let output = async move {
        if let Some(mut to) = stdout {
            copy_output(reader, &mut to, onlcr, &noted).await;
        }
    };
    tokio::pin!(resizes, feed, output, exited);
    let mut output_done = false;
    let code = loop {
        tokio::select! {
            code = &mut exited => break code?,
            () = &mut resizes => unreachable!("resizes never end"),
            () = &mut feed => unreachable!("feed never ends"),
            () = &mut output, if !output_done => output_done = true,
        }
    };
    if !output_done {
        super::drain::drain(output, &activity).await;
    }
    Ok(code)
}
