//! Exec for the streaming server: `<runtime> exec` in a running container, with pipes or a
//! terminal, copied to and from the client's streams.
//!
//! The runtime builds the process from the container's bundle (`config.json`): user,
//! capabilities, no_new_privs, AppArmor label, environment; seccomp and the cgroup are the
//! container's. That is exactly what ExecSync gets (crimon runs the same command).
//!
//! The exec'd process dies with the session: when the client goes away (the future is
//! dropped), it is killed through a pidfd taken while `runtime exec`, its parent, still
//! waits on it (so the pid cannot have been reused), and `runtime exec` itself is killed.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{pty, sys, Io};
use crate::container::lifecycle::runtime;
use crate::error::DaemonError;
use crate::state::container::{Container, Phase};
use crate::state::State;

/// Most arguments, and most bytes across them, an exec may carry (as ExecSync).
const MAX_ARGS: usize = 4096;
const MAX_ARGS_BYTES: usize = 1 << 20;
/// How long the runtime has to report the exec'd process (its pid file).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// After the process exited, how long output still in flight is copied: a background child
/// that inherited the pipes must not hold the session open.
pub(super) const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

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
        let mut child = command.spawn().map_err(|err| DaemonError::Io {
            what: "run",
            path: rt.path.clone(),
            err,
        })?;
        // Only the runtime may hold the slave: the master reads end of file when it is gone.
        drop(command);
        drop(pty.slave);
        let session = pty::run_session(pty.master, &mut child, stdin, stdout, resize);
        let watch = watch_pid_file(&pid_file);
        tokio::pin!(session, watch);
        let mut watched = false;
        let code = loop {
            tokio::select! {
                code = &mut session => break code,
                pidfd = &mut watch, if !watched => {
                    guard.pidfd = pidfd;
                    watched = true;
                }
            }
        };
        guard.done = true;
        return code;
    }
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
    let mut child = command.spawn().map_err(|err| DaemonError::Io {
        what: "run",
        path: rt.path.clone(),
        err,
    })?;
    let child_stdin = child.stdin.take();
    let child_stdout = child.stdout.take();
    let child_stderr = child.stderr.take();
    let feed = async move {
        if let (Some(mut from), Some(mut to)) = (stdin, child_stdin) {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            // Dropping `to` closes the process's stdin.
        }
        std::future::pending::<()>().await
    };
    let outputs = async move {
        let out = async {
            if let (Some(mut from), Some(mut to)) = (child_stdout, stdout) {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }
        };
        let err = async {
            if let (Some(mut from), Some(mut to)) = (child_stderr, stderr) {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }
        };
        tokio::join!(out, err);
    };
    let watch = watch_pid_file(&pid_file);
    tokio::pin!(feed, outputs, watch);
    let (mut outputs_done, mut watched) = (false, false);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = &mut feed => unreachable!("feed never ends"),
            () = &mut outputs, if !outputs_done => outputs_done = true,
            pidfd = &mut watch, if !watched => {
                guard.pidfd = pidfd;
                watched = true;
            }
        }
    };
    guard.done = true;
    let status = status.map_err(|err| DaemonError::Io {
        what: "wait for",
        path: rt.path.clone(),
        err,
    })?;
    if !outputs_done {
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut outputs).await;
    }
    Ok(exit_code(status))
}

/// The exit code as the client sees it: a signal `n` as 128 + n, as shells report it.
pub(super) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}
