//! Exec for the streaming server: the command runs in a running container with pipes or a
//! terminal, copied to and from the client's streams.
//!
//! The process gets the container's security context exactly as `runc exec` (and so ExecSync)
//! gives it: user, groups, capabilities, no_new_privs, seccomp, AppArmor label, cgroups,
//! namespaces, environment. By default crid enters the container itself ([`crid_enter`],
//! `[streaming] exec_direct`), copying what runc would apply; where that module declines (a
//! setting it does not reproduce, a missing command, anything failing before the exec) the
//! session runs `<runtime> exec` instead, whose messages and exit codes the client then sees.
//!
//! The exec'd process dies with the session: when the client goes away (the future is
//! dropped), it is killed through a pidfd. The direct path holds that pidfd from the start
//! (the process is crid's child); with `runtime exec` it is taken while the runtime, its
//! parent, still waits on it (so the pid cannot have been reused), and `runtime exec` itself
//! is left to end with it.

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::drain::{drain, OutputActivity};
use super::{pty, BoxRead, BoxWrite, Io};
use crate::container::lifecycle::runtime;
use crate::error::DaemonError;
use crate::state::container::{Container, Phase};
use crate::state::State;
use crid_enter::sys;
use crid_enter::{self as enter, EnterError};

/// Most arguments, and most bytes across them, an exec may carry (as ExecSync).
const MAX_ARGS: usize = 4096;
const MAX_ARGS_BYTES: usize = 1 << 20;
/// How long the runtime has to report the exec'd process (its pid file).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Copies `from` to `to` until end of file (or an error), noting each chunk in `activity`;
/// then shuts `to` down. Without `to` (the client did not ask for the stream) the output is
/// read and dropped, as `runc exec` relays it to its /dev/null.
async fn copy_output(
    mut from: impl AsyncRead + Unpin,
    mut to: Option<BoxWrite>,
    activity: &OutputActivity,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        activity.touch();
        if let Some(to) = &mut to {
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }
    if let Some(to) = &mut to {
        let _ = to.shutdown().await;
    }
}

/// Kills the exec'd process when the session ends before it (the client went away), and
/// removes the pid file.
///
/// The runtime's `exec` is not killed itself: killed between starting the process and
/// writing the pid file, it would leave a process nobody can name. It ends by itself once
/// its process is dead (and is then reaped by tokio).
struct ProcessGuard {
    pid_file: PathBuf,
    pidfd: Option<OwnedFd>,
    /// The process exited: nothing to kill.
    done: bool,
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if self.done {
            let _ = std::fs::remove_file(&self.pid_file);
            return;
        }
        if let Some(fd) = &self.pidfd {
            // Already gone is fine.
            let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            let _ = std::fs::remove_file(&self.pid_file);
            return;
        }
        // Not known to have started yet: wait (bounded) for the runtime to name it.
        let pid_file = self.pid_file.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(fd) = watch_pid_file(&pid_file).await {
                    let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                }
                let _ = std::fs::remove_file(&pid_file);
            });
        }
    }
}

/// Kills a directly exec'd process (crid's own child) when the session ends before it, and
/// reaps it.
struct DirectGuard {
    process: Arc<OwnedFd>,
    /// The process exited and was reaped.
    done: bool,
}

impl Drop for DirectGuard {
    fn drop(&mut self) {
        if !self.done {
            kill_and_reap(self.process.clone());
        }
    }
}

/// Kills a process crid started directly and reaps it in the background.
fn kill_and_reap(process: Arc<OwnedFd>) {
    let _ = sys::pidfd_send_signal(process.as_fd(), libc::SIGKILL);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                let _ = enter::wait(&process).await;
            });
        }
        Err(_) => {
            let _ = nix::sys::wait::waitid(
                nix::sys::wait::Id::PIDFd(process.as_fd()),
                nix::sys::wait::WaitPidFlag::WEXITED,
            );
        }
    }
}

fn check_args(cmd: &[String]) -> Result<(), DaemonError> {
    if cmd.is_empty() {
        return Err(DaemonError::InvalidArgument("cmd is empty".into()));
    }
    let bytes: usize = cmd.iter().map(String::len).sum();
    if cmd.len() > MAX_ARGS || bytes > MAX_ARGS_BYTES || cmd.iter().any(|a| a.contains('\0')) {
        return Err(DaemonError::InvalidArgument(format!(
            "cmd exceeds {MAX_ARGS} arguments or {MAX_ARGS_BYTES} bytes, or holds a NUL"
        )));
    }
    Ok(())
}

/// Exec needs a running container.
pub fn check_running(state: &State, container: &Container) -> Result<(), DaemonError> {
    if container.phase(&state.paths.exits) != Phase::Running {
        return Err(DaemonError::FailedPrecondition(format!(
            "container {} is not running",
            container.id
        )));
    }
    Ok(())
}

/// Waits for the runtime's pid file and takes a pidfd for the process it names.
async fn watch_pid_file(path: &Path) -> Option<OwnedFd> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(text) = tokio::fs::read_to_string(path).await {
            if let Ok(pid) = text.trim().parse::<i32>() {
                return sys::pidfd_open(pid).ok();
            }
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `cmd` in container `id` with the client's streams; returns its exit code. Errors are
/// for a session that could not run the command (the runtime's message included).
pub async fn exec(
    state: &State,
    id: &str,
    cmd: &[String],
    tty: bool,
    io: Io,
) -> Result<i32, DaemonError> {
    check_args(cmd)?;
    let container = state.container(id)?;
    check_running(state, &container)?;
    let io = if state.config.streaming.exec_direct {
        match exec_direct(state, &container, cmd, tty, io).await {
            Ok(code) => return code,
            Err((_, EnterError::Refused(why))) => {
                tracing::warn!(id = %container.id, %why, "exec refused");
                return Err(DaemonError::FailedPrecondition(format!(
                    "exec in container {}: {why}",
                    container.id
                )));
            }
            Err((io, reason)) => {
                tracing::debug!(
                    id = %container.id,
                    reason = %crid_common::error_chain::error_chain(&reason),
                    "exec through the runtime"
                );
                io
            }
        }
    } else {
        io
    };
    exec_runtime(state, &container, cmd, tty, io).await
}

/// Runs the session with crid entering the container itself; gives the client's streams back
/// when the direct path declines (nothing has run then).
async fn exec_direct(
    state: &State,
    container: &Container,
    cmd: &[String],
    tty: bool,
    io: Io,
) -> Result<Result<i32, DaemonError>, (Io, EnterError)> {
    let stdio = if tty {
        enter::Stdio::Terminal
    } else {
        enter::Stdio::Pipes
    };
    let runtime_root = state.config.runtime.runtime_root.clone();
    let (id, bundle, cmd) = (container.id.clone(), container.dir.clone(), cmd.to_vec());
    let monitor = state.config.monitor_binary().unwrap_or_default();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let entered = enter::enter(&enter::Request {
            runtime_root: &runtime_root,
            container_id: &id,
            bundle: &bundle,
            cmd: &cmd,
            stdio,
            monitor: &monitor,
        });
        // The session is gone already: the process must not outlive it.
        if let Err(Ok(orphan)) = sender.send(entered) {
            kill_and_reap(Arc::new(orphan.process));
        }
    });
    let entered = match receiver.await {
        Ok(Ok(entered)) => entered,
        Ok(Err(reason)) => return Err((io, reason)),
        Err(_) => {
            return Err((
                io,
                EnterError::Invalid("the direct exec's thread ended without an answer".into()),
            ))
        }
    };
    let mut guard = DirectGuard {
        process: Arc::new(entered.process),
        done: false,
    };
    let process = guard.process.clone();
    let exited = async move {
        enter::wait(&process).await.map_err(|err| DaemonError::Io {
            what: "wait for",
            path: "the exec'd process".into(),
            err,
        })
    };
    let Io {
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    let result = match entered.terminal {
        Some(master) => pty::run_session(master, exited, stdin, stdout, resize, true).await,
        None => {
            let sender = |fd: Option<OwnedFd>| {
                fd.map(tokio::net::unix::pipe::Sender::from_owned_fd)
                    .transpose()
            };
            let receiver = |fd: Option<OwnedFd>| {
                fd.map(tokio::net::unix::pipe::Receiver::from_owned_fd)
                    .transpose()
            };
            match (
                sender(entered.stdin),
                receiver(entered.stdout),
                receiver(entered.stderr),
            ) {
                (Ok(to_stdin), Ok(from_stdout), Ok(from_stderr)) => {
                    let streams = (stdin, stdout, stderr);
                    pipe_session(streams, to_stdin, from_stdout, from_stderr, exited).await
                }
                (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => Err(DaemonError::Io {
                    what: "watch",
                    path: "the exec'd process's pipes".into(),
                    err,
                }),
            }
        }
    };
    // Reaped when it exited; on an error the guard kills and reaps it.
    guard.done = result.is_ok();
    Ok(result)
}

/// Copies between the client's streams and the process's pipes until `exited` resolves,
/// then drains what is still in flight (bounded).
async fn pipe_session(
    (stdin, stdout, stderr): (Option<BoxRead>, Option<BoxWrite>, Option<BoxWrite>),
    to_stdin: Option<impl AsyncWrite + Unpin>,
    from_stdout: Option<impl AsyncRead + Unpin>,
    from_stderr: Option<impl AsyncRead + Unpin>,
    exited: impl Future<Output = Result<i32, DaemonError>>,
) -> Result<i32, DaemonError> {
    let feed = async move {
        // Dropping `to` closes the process's stdin (at once when the client sends none).
        if let (Some(mut from), Some(mut to)) = (stdin, to_stdin) {
            let _ = tokio::io::copy(&mut from, &mut to).await;
        }
        std::future::pending::<()>().await
    };
    let activity = OutputActivity::new();
    let noted = activity.clone();
    let outputs = async move {
        let out = async {
            if let Some(from) = from_stdout {
                copy_output(from, stdout, &noted).await;
            }
        };
        let err = async {
            if let Some(from) = from_stderr {
                copy_output(from, stderr, &noted).await;
            }
        };
        tokio::join!(out, err);
    };
    tokio::pin!(feed, outputs, exited);
    let mut outputs_done = false;
    let code = loop {
        tokio::select! {
            code = &mut exited => break code?,
            () = &mut feed => unreachable!("feed never ends"),
            () = &mut outputs, if !outputs_done => outputs_done = true,
        }
    };
    if !outputs_done {
        drain(outputs, &activity).await;
    }
    Ok(code)
}

/// Runs the session through `<runtime> exec`.
async fn exec_runtime(
    state: &State,
    container: &Container,
    cmd: &[String],
    tty: bool,
    io: Io,
) -> Result<i32, DaemonError> {
    let rt = runtime(state);
    let dir = &state.paths.exec_sessions;
    let session = crate::state::new_id();
    let pid_file = dir.join(format!("{}.pid", &session[..16]));
    let mut guard = ProcessGuard {
        pid_file: pid_file.clone(),
        pidfd: None,
        done: false,
    };

    let mut command = tokio::process::Command::new(&rt.path);
    command.arg("--root").arg(&rt.root);
    if rt.systemd_cgroup {
        command.arg("--systemd-cgroup");
    }
    command.arg("exec").arg("--pid-file").arg(&pid_file);
    if tty {
        command.arg("--tty");
    }
    command.arg(&container.id).args(cmd);
    let Io {
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    let run_error = |err| DaemonError::Io {
        what: "run",
        path: rt.path.clone(),
        err,
    };
    let mut pty_master = None;
    if tty {
        // runc hands a console socket only to detached processes, whose exit code nobody
        // could then collect: it runs in the foreground on a terminal crid makes instead.
        let pty = nix::pty::openpty(None, None).map_err(|e| DaemonError::Io {
            what: "open",
            path: "a pty".into(),
            err: e.into(),
        })?;
        let slave = |what| {
            pty.slave.try_clone().map_err(|err| DaemonError::Io {
                what,
                path: "pty slave".into(),
                err,
            })
        };
        command
            .stdin(Stdio::from(slave("dup")?))
            .stdout(Stdio::from(slave("dup")?))
            .stderr(Stdio::from(slave("dup")?));
        sys::with_controlling_terminal(&mut command);
        pty_master = Some(pty.master);
    } else {
        let piped = |wanted: bool| {
            if wanted {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        command
            .stdin(piped(stdin.is_some()))
            .stdout(piped(stdout.is_some()))
            .stderr(piped(stderr.is_some()));
    }
    let mut child = command.spawn().map_err(run_error)?;
    // Only the runtime may hold a terminal's slave: the master reads end of file when it is
    // gone.
    drop(command);
    let (to_stdin, from_stdout, from_stderr) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let guard_ref = &mut guard;
    let exited = async move {
        let watch = watch_pid_file(&pid_file);
        tokio::pin!(watch);
        let mut watched = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                pidfd = &mut watch, if !watched => {
                    guard_ref.pidfd = pidfd;
                    watched = true;
                }
            }
        };
        guard_ref.done = true;
        status.map(exit_code).map_err(|err| DaemonError::Io {
            what: "wait for",
            path: rt.path.clone(),
            err,
        })
    };
    match pty_master {
        Some(master) => pty::run_session(master, exited, stdin, stdout, resize, false).await,
        None => {
            let streams = (stdin, stdout, stderr);
            pipe_session(streams, to_stdin, from_stdout, from_stderr, exited).await
        }
    }
}

/// The exit code as the client sees it: a signal `n` as 128 + n, as shells report it.
pub(super) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}
