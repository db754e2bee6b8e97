//! A pod's pinned namespaces: made by `crid-pinns` (a separate, single-threaded program,
//! because unshare cannot happen in crid's threaded runtime), undone here. The crid-pinns
//! client, as `oci_runtime` is runc's: below `state` (which records [`PodNamespaces`]) and
//! `error` (which wraps [`NamespaceError`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MntFlags;
use serde::{Deserialize, Serialize};

use crid_child::{self as child, ChildError};

/// Bounds of a crid-pinns run: it prints one short JSON line and, on failure, one message;
/// it unshares and bind-mounts a few files, which takes milliseconds. More output, or longer
/// than the timeout, means something is wrong: it is killed with its process group (which
/// never holds the PID holder: that one calls setsid).
const PINNS_BOUNDS: child::Bounds = child::Bounds {
    stdout: 64 * 1024,
    stderr: 64 * 1024,
    timeout: Duration::from_secs(30),
};

/// Errors making or removing pod namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("crid-pinns not found next to crid or in $PATH")]
    NoPinns,
    #[error("crid-pinns {path} failed for pod {id}")]
    Run {
        path: PathBuf,
        id: String,
        #[source]
        err: ChildError,
    },
    #[error("creating the namespaces of pod {id} failed: {message}")]
    Failed { id: String, message: String },
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: nix::Error,
    },
}

impl NamespaceError {
    /// Whether crid-pinns ran out of time (DeadlineExceeded for the client).
    pub fn timed_out(&self) -> bool {
        matches!(self, NamespaceError::Run { err, .. } if err.timed_out())
    }
}

/// The namespaces of a pod that crid pinned (absent: shared with the host, or per container).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: Option<PathBuf>,
    /// The process holding the pod's PID namespace, with its start time (in clock ticks since
    /// boot, from /proc/<pid>/stat) so that a reused pid is never killed.
    pub pid_holder: Option<(i32, u64)>,
    /// The pod's own user namespace (mode POD), which owns the others.
    #[serde(default)]
    pub user: Option<PathBuf>,
}

impl PodNamespaces {
    /// The pinned namespace files (the user namespace's last: it owns the others).
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts, &self.pid, &self.user]
            .into_iter()
            .flatten()
    }
}

/// Which namespaces a pod gets, and what is set inside them.
#[derive(Debug, Clone, Default)]
pub struct PinRequest {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub pid: bool,
    /// A user namespace of the pod's own, with these mappings; the others are made in it.
    pub user: Option<crate::idmap::PodIdMappings>,
    pub hostname: Option<String>,
    /// Validated `key=value` namespaced sysctls.
    pub sysctls: Vec<(String, String)>,
}

#[derive(serde::Deserialize)]
struct PinnsReport {
    holder_pid: i32,
}

/// Creates and pins the requested namespaces under `dir`.
pub async fn pin(
    dir: &Path,
    id: &str,
    request: &PinRequest,
) -> Result<PodNamespaces, NamespaceError> {
    let mut out = PodNamespaces::default();
    if !(request.net || request.ipc || request.uts || request.pid || request.user.is_some()) {
        return Ok(out);
    }
    let pinns = crate::config::helper_binary("crid-pinns").ok_or(NamespaceError::NoPinns)?;
    let mut cmd = tokio::process::Command::new(&pinns);
    cmd.arg("--dir").arg(dir).arg("--id").arg(id);
    for (on, flag) in [
        (request.net, "--net"),
        (request.ipc, "--ipc"),
        (request.uts, "--uts"),
        (request.pid, "--pid"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    if let Some(mappings) = &request.user {
        cmd.arg("--user")
            .arg("--uid-map")
            .arg(mappings.uid.to_arg())
            .arg("--gid-map")
            .arg(mappings.gid.to_arg());
    }
    if let Some(hostname) = &request.hostname {
        cmd.arg("--hostname").arg(hostname);
    }
    for (key, value) in &request.sysctls {
        cmd.arg("--sysctl").arg(format!("{key}={value}"));
    }
    let finished =
        child::run(cmd, None, PINNS_BOUNDS)
            .await
            .map_err(|err| NamespaceError::Run {
                path: pinns.clone(),
                id: id.to_owned(),
                err,
            })?;
    let stdout = String::from_utf8_lossy(&finished.stdout).into_owned();
    if !finished.status.success() {
        return Err(NamespaceError::Failed {
            id: id.to_owned(),
            message: finished
                .stderr_text()
                .trim_start_matches("crid-pinns: ")
                .to_owned(),
        });
    }
    let path = |kind: &str, on: bool| on.then(|| dir.join(kind).join(id));
    out.net = path("net", request.net);
    out.ipc = path("ipc", request.ipc);
    out.uts = path("uts", request.uts);
    out.pid = path("pid", request.pid);
    out.user = path("user", request.user.is_some());
    if request.pid {
        let report: Option<PinnsReport> = stdout.lines().find_map(|l| serde_json::from_str(l).ok());
        let Some(report) = report else {
            let undo = out.clone();
            let _ = unpin(&undo);
            return Err(NamespaceError::Failed {
                id: id.to_owned(),
                message: format!("no holder pid reported: {stdout:?}"),
            });
        };
        out.pid_holder = start_time(report.holder_pid).map(|t| (report.holder_pid, t));
    }
    Ok(out)
}

/// The start time of a process (field 22 of /proc/<pid>/stat), to tell it from a later
/// process that reuses its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    crid_common::proc_stat::start_time(pid)
}

/// Kills the PID namespace holder (if it is still the same process), then unmounts and
/// removes every pin. Missing pieces are fine, so this can be retried.
pub fn unpin(namespaces: &PodNamespaces) -> Result<(), NamespaceError> {
    if let Some((pid, started)) = namespaces.pid_holder {
        if start_time(pid) == Some(started) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for file in namespaces.files() {
        match nix::mount::umount2(file.as_path(), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(err) => {
                return Err(NamespaceError::Io {
                    what: "unmount",
                    path: file.clone(),
                    err,
                })
            }
        }
        match std::fs::remove_file(file) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(NamespaceError::Io {
                    what: "remove",
                    path: file.clone(),
                    err: nix::Error::from_raw(err.raw_os_error().unwrap_or(libc::EIO)),
                })
            }
            _ => {}
        }
    }
    Ok(())
}
