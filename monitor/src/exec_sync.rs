//! ExecSync: runs a command in the container with `<runtime> exec`, waits for it with a
//! timeout, and writes its output to files the caller named.
//!
//! Output goes to files, not into the reply: ttrpc messages are limited to 4 MiB, and the two
//! streams together may hold up to [`EXEC_SYNC_MAX_OUTPUT`] (what fits in crid's CRI reply).
//! Past the bound, output is read and thrown away (so the command never blocks on a full
//! pipe) and the truncation is reported.
//!
//! The call ends when the command has exited and its pipes are drained: closed, quiet for
//! [`DRAIN_IDLE`], or read for [`DRAIN_MAX`] since the exit, whichever comes first. A
//! background child that keeps the pipes open (quiet or writing without end) cannot hold the
//! call, even without a timeout; like conmon, which stops at the exec'd process's exit once
//! what is buffered has been read.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crid_proto::monitor::sync::{ExecSyncRequest, ExecSyncResponse};

use crate::error::{MonitorError, Result};
use crate::shared::{Counters, Shared};
use crate::sys;

use crid_common::limits::EXEC_SYNC_MAX_OUTPUT;
/// Most arguments, and most bytes across them, an ExecSync may carry.
const MAX_ARGS: usize = 4096;
const MAX_ARGS_BYTES: usize = 1 << 20;
/// After the command exited, how long a quiet pipe is waited on: a background child that kept
/// the pipe open must not hold the call forever.
const DRAIN_IDLE: Duration = Duration::from_millis(200);
/// After the command exited, how long the pipes are read at most: a background child that
/// keeps writing must not hold the call forever either. What the command itself wrote is in
/// the pipes' buffers by then (64 KiB each), read in far less.
const DRAIN_MAX: Duration = Duration::from_secs(1);

static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);

struct Sink {
    pipe: Option<OwnedFd>,
    file: File,
    kept: u64,
    truncated: bool,
}

impl Sink {
    /// Keeps what fits in `room` (shared by both streams) and counts it off.
    fn take(&mut self, data: &[u8], room: &mut u64) -> Result<()> {
        let keep = data.len().min(usize::try_from(*room).unwrap_or(usize::MAX));
        if keep < data.len() {
            self.truncated = true;
        }
        self.file
            .write_all(&data[..keep])
            .map_err(|e| MonitorError::sys("write exec output", e))?;
        self.kept += keep as u64;
        *room -= keep as u64;
        Ok(())
    }
}

fn create_output(path: &str) -> Result<File> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(MonitorError::InvalidArgument(format!(
            "exec output path {path:?} is not absolute"
        )));
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| MonitorError::path("create exec output", p, e))
}

fn validate(req: &ExecSyncRequest) -> Result<()> {
    if req.args.is_empty() {
        return Err(MonitorError::InvalidArgument("exec args are empty".into()));
    }
    let bytes: usize = req.args.iter().map(String::len).sum();
    if req.args.len() > MAX_ARGS || bytes > MAX_ARGS_BYTES {
        return Err(MonitorError::InvalidArgument(format!(
            "exec args exceed {MAX_ARGS} arguments or {MAX_ARGS_BYTES} bytes"
        )));
    }
    if req.args.iter().any(|a| a.contains('\0')) {
        return Err(MonitorError::InvalidArgument(
            "exec args contain a NUL byte".into(),
        ));
    }
    Ok(())
}

/// Runs one ExecSync to completion.
pub fn run(shared: &Shared, req: &ExecSyncRequest) -> Result<ExecSyncResponse> {
    validate(req)?;
    if shared.exit().is_some() {
        return Err(MonitorError::Exited(shared.id.clone()));
    }
    Counters::add(&shared.counters.exec_sync_calls, 1);
    let mut out = Sink {
        pipe: None,
        file: create_output(&req.stdout_path)?,
        kept: 0,
        truncated: false,
    };
    let mut err = Sink {
        pipe: None,
        file: create_output(&req.stderr_path)?,
        kept: 0,
        truncated: false,
    };
    let seq = EXEC_SEQ.fetch_add(1, Ordering::Relaxed);
    let pid_file: PathBuf = shared
        .socket_dir
        .join(format!("{}.exec-{seq}.pid", shared.id));
    let (out_r, out_w) = sys::pipe().map_err(|e| MonitorError::sys("create pipe", e))?;
    let (err_r, err_w) = sys::pipe().map_err(|e| MonitorError::sys("create pipe", e))?;
    out.pipe = Some(out_r);
    err.pipe = Some(err_r);

    // `--detach`: the runtime starts the command and exits, and the command, handed our pipes
    // as its stdout and stderr, becomes our child (we are a subreaper). Without it the runtime
    // copies the output through pipes of its own and waits for their end, which a background
    // child of the command can hold off for ever. conmon runs exec the same way.
    let mut cmd = shared.runtime.exec(&shared.id, &pid_file, &req.args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    let since = Instant::now();
    // Register the runtime before the event loop can reap it.
    let (runtime_pid, runtime_pidfd) = {
        let mut registry = shared.children.lock();
        let child = cmd
            .spawn()
            .map_err(|e| MonitorError::path("run runtime exec", &shared.runtime.path, e))?;
        let pid = child.id() as libc::pid_t;
        registry.insert(pid);
        (pid, sys::pidfd_open(pid).ok())
    };
    drop(cmd); // closes our copies of the pipes' write ends

    // Any client may ask (crimon's socket is for operators too): a deadline past what the
    // clock holds is none at all, never a panic.
    let deadline = (req.timeout_ms > 0)
        .then(|| Instant::now().checked_add(Duration::from_millis(req.timeout_ms)))
        .flatten();
    // The runtime's own errors (no such binary...) arrive on the pipes meanwhile.
    let started = pump(&mut out, &mut err, runtime_pidfd.as_ref(), deadline, false);
    if matches!(started, Pump::TimedOut) {
        let _ = sys::kill(runtime_pid, libc::SIGKILL);
    }
    let runtime_status = shared.children.take(runtime_pid, Duration::from_secs(10));
    let command = read_pid(&pid_file);
    let _ = std::fs::remove_file(&pid_file);
    let (timed_out, status) = match (started, runtime_status, command) {
        // Started: follow the command itself until it exits, then drain.
        (Pump::Done, Some(0), Some(pid)) => {
            let pidfd = command_pidfd(pid);
            let outcome = pump(&mut out, &mut err, pidfd.as_ref(), deadline, true);
            let timed_out = matches!(outcome, Pump::TimedOut);
            if timed_out {
                if let Some(pidfd) = &pidfd {
                    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                }
            }
            (
                timed_out,
                shared.children.claim(pid, since, Duration::from_secs(10)),
            )
        }
        // The runtime failed: its exit status is the call's.
        (Pump::Done, status, _) => {
            pump(&mut out, &mut err, None, deadline, true);
            (false, status)
        }
        (Pump::TimedOut, _, command) => {
            if let Some(pidfd) = command.and_then(command_pidfd) {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            }
            (true, None)
        }
    };
    let exit_code = match (timed_out, status) {
        (true, _) | (false, None) => -1,
        (false, Some(status)) => crid_common::exit_record::exit_code_from_wait_status(status),
    };
    Ok(ExecSyncResponse {
        exit_code,
        timed_out,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        stdout_bytes: out.kept,
        stderr_bytes: err.kept,
        ..Default::default()
    })
}

/// A pidfd for the command the runtime started (pid `pid`, from its pid file), once the
/// runtime has exited: the command is our child then (we are its subreaper), which a later
/// process that reused the pid would not be. None when it is gone already.
fn command_pidfd(pid: libc::pid_t) -> Option<OwnedFd> {
    let pidfd = sys::pidfd_open(pid).ok()?;
    // Checked after the pidfd is open, so the pid cannot change meaning in between.
    (crid_common::proc_stat::parent(pid) == Some(std::process::id() as i32)).then_some(pidfd)
}

fn read_pid(path: &Path) -> Option<libc::pid_t> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

enum Pump {
    Done,
    TimedOut,
}

/// Copies both pipes into their sinks until the process behind `pidfd` exited (a `None` has
/// exited) and, with `drain`, the pipes closed, went quiet for [`DRAIN_IDLE`] or were read for
/// [`DRAIN_MAX`]; or until the deadline passed.
fn pump(
    out: &mut Sink,
    err: &mut Sink,
    pidfd: Option<&OwnedFd>,
    deadline: Option<Instant>,
    drain: bool,
) -> Pump {
    let mut buf = vec![0u8; 64 * 1024];
    // Shared by both streams, across both calls of one ExecSync.
    let mut room = EXEC_SYNC_MAX_OUTPUT.saturating_sub(out.kept + err.kept);
    // When the command was seen to exit; from then on the drain bounds apply.
    let mut exited_at = pidfd.is_none().then(Instant::now);
    loop {
        let now = Instant::now();
        if let Some(deadline) = deadline {
            if now >= deadline {
                return Pump::TimedOut;
            }
        }
        let exited = exited_at.is_some();
        if exited && (!drain || (out.pipe.is_none() && err.pipe.is_none())) {
            return Pump::Done;
        }
        if exited_at.is_some_and(|at| now.duration_since(at) >= DRAIN_MAX) {
            return Pump::Done; // a background child keeps writing: stop listening to it
        }
        let mut wait_ms: i64 = match deadline {
            Some(d) => d.saturating_duration_since(now).as_millis() as i64 + 1,
            None => -1,
        };
        if let Some(at) = exited_at {
            let left = DRAIN_MAX.saturating_sub(now.duration_since(at));
            let bound = DRAIN_IDLE.min(left).as_millis() as i64 + 1;
            wait_ms = if wait_ms < 0 {
                bound
            } else {
                wait_ms.min(bound)
            };
        }
        let mut fds = Vec::with_capacity(3);
        for sink in [&*out, &*err] {
            fds.push(libc::pollfd {
                fd: sink.pipe.as_ref().map_or(-1, |p| p.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        fds.push(libc::pollfd {
            fd: if exited {
                -1
            } else {
                pidfd.map_or(-1, |p| p.as_raw_fd())
            },
            events: libc::POLLIN,
            revents: 0,
        });
        let ready = sys::poll(&mut fds, wait_ms as libc::c_int);
        if ready == 0 && exited {
            return Pump::Done; // the command is gone and its pipes stayed quiet
        }
        if fds[2].revents != 0 && exited_at.is_none() {
            exited_at = Some(Instant::now());
        }
        if exited_at.is_some() && !drain {
            return Pump::Done;
        }
        for (i, sink) in [&mut *out, &mut *err].into_iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            let Some(pipe) = sink.pipe.as_ref() else {
                continue;
            };
            match nix::unistd::read(pipe.as_fd(), &mut buf) {
                Ok(0) | Err(_) => sink.pipe = None,
                Ok(n) => {
                    if sink.take(&buf[..n], &mut room).is_err() {
                        sink.pipe = None;
                    }
                }
            }
        }
    }
}
