//! ExecSync: runs a command in the container with `<runtime> exec`, waits for it with a
//! timeout, and writes its output to files the caller named.
//!
//! Output goes to files, not into the reply: ttrpc messages are limited to 4 MiB and each
//! stream may hold up to 16 MiB. Past the bound, output is read and thrown away (so the
//! command never blocks on a full pipe) and the truncation is reported.

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

/// Most bytes kept of each of stdout and stderr: kubelet's bound for exec output
/// (kubernetes PR 82514; CRI-O's and containerd's caps after CVE-2022-1708 / CVE-2022-31030).
pub const MAX_EXEC_OUTPUT: u64 = 16 << 20;
/// Most arguments, and most bytes across them, an ExecSync may carry.
const MAX_ARGS: usize = 4096;
const MAX_ARGS_BYTES: usize = 1 << 20;
/// After the command exited, how long a quiet pipe is waited on: a background child that kept
/// the pipe open must not hold the call forever.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);

struct Sink {
    pipe: Option<OwnedFd>,
    file: File,
    kept: u64,
    truncated: bool,
}

impl Sink {
    fn take(&mut self, data: &[u8]) -> Result<()> {
        let room = MAX_EXEC_OUTPUT.saturating_sub(self.kept) as usize;
        let keep = data.len().min(room);
        if keep < data.len() {
            self.truncated = true;
        }
        self.file
            .write_all(&data[..keep])
            .map_err(|e| MonitorError::sys("write exec output", e))?;
        self.kept += keep as u64;
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

    let mut cmd = shared.runtime.exec(&shared.id, &pid_file, &req.args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    // Register the child before the event loop can reap it.
    let (child_pid, pidfd) = {
        let mut registry = shared.children.lock();
        let child = cmd
            .spawn()
            .map_err(|e| MonitorError::path("run runtime exec", &shared.runtime.path, e))?;
        let pid = child.id() as libc::pid_t;
        registry.insert(pid, None);
        (pid, sys::pidfd_open(pid).ok())
    };
    drop(cmd); // closes our copies of the pipes' write ends

    let deadline =
        (req.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(req.timeout_ms));
    let outcome = pump(&mut out, &mut err, pidfd.as_ref(), deadline);
    let timed_out = matches!(outcome, Pump::TimedOut);
    if timed_out {
        // Kill the command inside the container, then the runtime's exec process.
        if let Some(pid) = read_pid(&pid_file) {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        let _ = sys::kill(child_pid, libc::SIGKILL);
    }
    let status = shared.children.take(child_pid, Duration::from_secs(10));
    let _ = std::fs::remove_file(&pid_file);
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

fn read_pid(path: &Path) -> Option<libc::pid_t> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

enum Pump {
    Done,
    TimedOut,
}

/// Copies both pipes into their sinks until the command exited and the pipes went quiet (or
/// closed), or the deadline passed.
fn pump(
    out: &mut Sink,
    err: &mut Sink,
    pidfd: Option<&OwnedFd>,
    deadline: Option<Instant>,
) -> Pump {
    let mut buf = vec![0u8; 64 * 1024];
    let mut exited = pidfd.is_none();
    loop {
        let now = Instant::now();
        if let Some(deadline) = deadline {
            if now >= deadline {
                return Pump::TimedOut;
            }
        }
        if out.pipe.is_none() && err.pipe.is_none() && exited {
            return Pump::Done;
        }
        let mut wait_ms: i64 = match deadline {
            Some(d) => d.saturating_duration_since(now).as_millis() as i64 + 1,
            None => -1,
        };
        if exited {
            wait_ms = if wait_ms < 0 {
                DRAIN_IDLE.as_millis() as i64
            } else {
                wait_ms.min(DRAIN_IDLE.as_millis() as i64)
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
        if fds[2].revents != 0 {
            exited = true;
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
                    if sink.take(&buf[..n]).is_err() {
                        sink.pipe = None;
                    }
                }
            }
        }
    }
}
