//! crid's side of crimon: launching a monitor for a container and talking to it.
//!
//! crid runs `crimon …` and reads its one-line JSON report from the launcher's standard output
//! (EOF comes once the launcher has exited and the detached monitor has dropped its copy), then
//! talks to the monitor's ttrpc socket. The monitor outlives crid; a restarted crid reconnects
//! by socket path.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crid_common::limits::EXEC_SYNC_MAX_OUTPUT;
use crid_common::monitor_paths;
use crid_proto::monitor::asynchronous as proto;
use crid_proto::ttrpc;
use tokio::io::AsyncReadExt;

/// Most bytes of a monitor's start report read (a runtime error message is at most 8 KiB).
const MAX_REPORT_BYTES: u64 = 64 * 1024;
/// How long a monitor may take to create a container (runc create) before crid gives up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(240);

/// Errors launching or calling a monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorClientError {
    #[error("failed to run monitor {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("monitor for {id} gave no usable report: {report:?}")]
    BadReport { id: String, report: String },
    #[error("creating container {id} failed: {message}")]
    CreateFailed { id: String, message: String },
    #[error("creating container {id} did not finish within {timeout:?}")]
    CreateTimedOut { id: String, timeout: Duration },
    #[error("monitor of {id}: {call} failed")]
    Call {
        id: String,
        call: &'static str,
        #[source]
        err: ttrpc::Error,
    },
    #[error("failed to read exec output {path}")]
    ExecOutput {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

/// Where a monitor keeps its things, and how it runs the container.
#[derive(Debug, Clone)]
pub struct MonitorSpec {
    pub monitor: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub log_path: PathBuf,
    pub log_size_max: u64,
    pub exit_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub terminal: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    /// Have the monitor delete the container from the runtime once it has exited.
    pub delete_after_exit: bool,
    /// Run the runtime with `--systemd-cgroup`.
    pub systemd_cgroup: bool,
}

#[derive(serde::Deserialize)]
struct Report {
    pid: i32,
    #[serde(default)]
    message: Option<String>,
}

/// Launches a monitor, which creates the container; returns the container's pid.
pub async fn create(spec: &MonitorSpec) -> Result<i32, MonitorClientError> {
    let mut cmd = tokio::process::Command::new(&spec.monitor);
    cmd.arg("--id")
        .arg(&spec.id)
        .arg("--bundle")
        .arg(&spec.bundle)
        .arg("--runtime")
        .arg(&spec.runtime)
        .arg("--runtime-root")
        .arg(&spec.runtime_root)
        .arg("--log-path")
        .arg(&spec.log_path)
        .arg("--exit-dir")
        .arg(&spec.exit_dir)
        .arg("--socket-dir")
        .arg(&spec.socket_dir);
    if spec.log_size_max > 0 {
        cmd.arg("--log-size-max").arg(spec.log_size_max.to_string());
    }
    for (on, flag) in [
        (spec.terminal, "--terminal"),
        (spec.stdin, "--stdin"),
        (spec.stdin_once, "--stdin-once"),
        (spec.delete_after_exit, "--delete-after-exit"),
        (spec.systemd_cgroup, "--systemd-cgroup"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // The launcher is waited for below; if crid gives up on it, it must not linger.
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|err| MonitorClientError::Spawn {
        path: spec.monitor.clone(),
        err,
    })?;
    let Some(stdout) = child.stdout.take() else {
        return Err(MonitorClientError::BadReport {
            id: spec.id.clone(),
            report: "no standard output".into(),
        });
    };
    let read = async {
        let mut text = String::new();
        let _ = stdout
            .take(MAX_REPORT_BYTES)
            .read_to_string(&mut text)
            .await;
        let _ = child.wait().await;
        text
    };
    let text = tokio::time::timeout(CREATE_TIMEOUT, read)
        .await
        .map_err(|_| MonitorClientError::CreateTimedOut {
            id: spec.id.clone(),
            timeout: CREATE_TIMEOUT,
        })?;
    let line = text.lines().next().unwrap_or_default();
    let report: Report = serde_json::from_str(line).map_err(|_| MonitorClientError::BadReport {
        id: spec.id.clone(),
        report: text.clone(),
    })?;
    if report.pid <= 0 {
        return Err(MonitorClientError::CreateFailed {
            id: spec.id.clone(),
            message: report.message.unwrap_or_default(),
        });
    }
    Ok(report.pid)
}

/// A connection to one monitor's control socket.
pub struct MonitorConnection {
    id: String,
    socket_dir: PathBuf,
    client: proto::MonitorClient,
}

/// Output and status of one ExecSync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_duration(timeout)
}

/// Calls made with no deadline of their own get this one.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl MonitorConnection {
    /// Connects to the monitor of `id` in `socket_dir`.
    pub async fn connect(socket_dir: &Path, id: &str) -> Result<Self, MonitorClientError> {
        let socket = monitor_paths::control_socket(socket_dir, id);
        let client = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
            .await
            .map_err(|err| MonitorClientError::Call {
                id: id.to_owned(),
                call: "connect",
                err,
            })?;
        Ok(MonitorConnection {
            id: id.to_owned(),
            socket_dir: socket_dir.to_owned(),
            client: proto::MonitorClient::new(client),
        })
    }

    fn failed(&self, call: &'static str) -> impl FnOnce(ttrpc::Error) -> MonitorClientError + '_ {
        move |err| MonitorClientError::Call {
            id: self.id.clone(),
            call,
            err,
        }
    }

    /// The monitor's view of the container.
    pub async fn state(&self) -> Result<proto::StateResponse, MonitorClientError> {
        self.client
            .state(ctx(CALL_TIMEOUT), &proto::StateRequest::new())
            .await
            .map_err(self.failed("State"))
    }

    /// Waits for the container's exit (its exit record is on disk when this returns).
    pub async fn wait(&self) -> Result<proto::WaitResponse, MonitorClientError> {
        // Wait has no deadline: a container may run for months.
        self.client
            .wait(
                ttrpc::context::Context::default(),
                &proto::WaitRequest::new(),
            )
            .await
            .map_err(self.failed("Wait"))
    }

    /// Sets the container's terminal size.
    pub async fn resize(&self, width: u16, height: u16) -> Result<(), MonitorClientError> {
        let mut req = proto::ResizeRequest::new();
        req.width = u32::from(width);
        req.height = u32::from(height);
        self.client
            .resize(ctx(CALL_TIMEOUT), &req)
            .await
            .map(drop)
            .map_err(self.failed("Resize"))
    }

    /// Reopens the container's log file.
    pub async fn reopen_log(&self) -> Result<(), MonitorClientError> {
        self.client
            .reopen_log(ctx(CALL_TIMEOUT), &proto::ReopenLogRequest::new())
            .await
            .map(drop)
            .map_err(self.failed("ReopenLog"))
    }

    /// Runs `args` in the container; output comes back through files in the socket directory
    /// that are removed once read.
    pub async fn exec_sync(
        &self,
        args: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, MonitorClientError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_path =
            self.socket_dir
                .join(format!("{}.execout-{}-{seq}", self.id, std::process::id()));
        let err_path = out_path.with_extension(format!("err-{seq}"));
        let mut req = proto::ExecSyncRequest::new();
        req.args = args.to_vec();
        req.timeout_ms = timeout.map_or(0, |t| t.as_millis() as u64);
        req.stdout_path = out_path.display().to_string();
        req.stderr_path = err_path.display().to_string();
        // The call may take as long as the command's own timeout, plus a margin.
        let deadline = timeout.map_or(Duration::from_secs(24 * 3600), |t| t + CALL_TIMEOUT);
        let result = self
            .client
            .exec_sync(ctx(deadline), &req)
            .await
            .map_err(self.failed("ExecSync"));
        // Up to 16 MiB of file reads: off the tokio workers.
        let paths = (out_path.clone(), err_path.clone());
        let outputs = tokio::task::spawn_blocking(move || {
            let read = read_exec_outputs(&paths.0, &paths.1);
            let _ = std::fs::remove_file(&paths.0);
            let _ = std::fs::remove_file(&paths.1);
            read
        })
        .await
        .map_err(|err| MonitorClientError::ExecOutput {
            path: out_path,
            err: std::io::Error::other(err),
        })?;
        let resp = result?;
        let files = outputs?;
        Ok(ExecOutput {
            exit_code: resp.exit_code,
            timed_out: resp.timed_out,
            stdout: files.stdout,
            stderr: files.stderr,
            stdout_truncated: resp.stdout_truncated || files.stdout_cut,
            stderr_truncated: resp.stderr_truncated || files.stderr_cut,
        })
    }
}

/// The output files of one ExecSync, as read.
struct ExecFiles {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Whether each file held more than was read.
    stdout_cut: bool,
    stderr_cut: bool,
}

/// Reads the ExecSync output files, stdout then stderr, at most [`EXEC_SYNC_MAX_OUTPUT`] bytes
/// of the two together (a monitor bounds the sum itself; one started by an older crid bounded
/// each stream alone).
fn read_exec_outputs(stdout: &Path, stderr: &Path) -> Result<ExecFiles, MonitorClientError> {
    use std::io::Read;
    let read = |path: &Path, limit: u64| {
        let fail = |err| MonitorClientError::ExecOutput {
            path: path.to_owned(),
            err,
        };
        let file = std::fs::File::open(path).map_err(fail)?;
        let size = file.metadata().map_err(fail)?.len();
        let mut data = Vec::with_capacity(size.min(limit) as usize);
        file.take(limit).read_to_end(&mut data).map_err(fail)?;
        Ok::<_, MonitorClientError>((data, size > limit))
    };
    let (stdout, stdout_cut) = read(stdout, EXEC_SYNC_MAX_OUTPUT)?;
    let (stderr, stderr_cut) = read(stderr, EXEC_SYNC_MAX_OUTPUT - stdout.len() as u64)?;
    Ok(ExecFiles {
        stdout,
        stderr,
        stdout_cut,
        stderr_cut,
    })
}
