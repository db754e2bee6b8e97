//! The OCI runtime's command line (runc, crun) for what crid does itself: start, kill,
//! delete. `create` is run by the container's monitor.

use std::path::PathBuf;
use std::time::Duration;

use crid_child::{self as child, ChildError};

/// How long one runtime call may take.
const RUNTIME_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds of one runtime call: these commands print nothing on success and one logrus line on
/// failure; more is killed (with the runtime's process group) as a failure.
const RUNTIME_CALL_BOUNDS: child::Bounds = child::Bounds {
    stdout: 64 * 1024,
    stderr: 64 * 1024,
    timeout: RUNTIME_CALL_TIMEOUT,
};

/// Errors of runtime calls; the message is the runtime's own.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{runtime} {command} {id} failed")]
    Run {
        runtime: String,
        command: &'static str,
        id: String,
        #[source]
        err: ChildError,
    },
    #[error("{runtime} {command}: {id:?} is not a container id crid makes")]
    BadId {
        runtime: String,
        command: &'static str,
        id: String,
    },
    #[error("{runtime} {command} {id} failed: {message}")]
    Failed {
        runtime: String,
        command: &'static str,
        id: String,
        message: String,
    },
    #[error("{runtime} {command} {id} did not finish within {timeout:?}")]
    TimedOut {
        runtime: String,
        command: &'static str,
        id: String,
        timeout: Duration,
    },
}

/// An OCI runtime binary with its state directory.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub path: PathBuf,
    pub root: PathBuf,
    /// Pass `--systemd-cgroup` (the systemd cgroup driver).
    pub systemd_cgroup: bool,
}

impl OciRuntime {
    fn name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Runs `<runtime> --root <root> <command> <args…>` (`args` name the container `id`).
    async fn run(
        &self,
        command: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<(), RuntimeError> {
        // Ids are crid's own (hex); anything else, and above all one that starts with '-' and
        // would read as an option, never reaches the runtime's command line.
        if !is_container_id(id) {
            return Err(RuntimeError::BadId {
                runtime: self.name(),
                command,
                id: id.to_owned(),
            });
        }
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.arg("--root").arg(&self.root);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.arg(command).args(args);
        let finished = child::run(cmd, None, RUNTIME_CALL_BOUNDS)
            .await
            .map_err(|err| {
                if err.timed_out() {
                    RuntimeError::TimedOut {
                        runtime: self.name(),
                        command,
                        id: id.to_owned(),
                        timeout: RUNTIME_CALL_TIMEOUT,
                    }
                } else {
                    RuntimeError::Run {
                        runtime: self.name(),
                        command,
                        id: id.to_owned(),
                        err,
                    }
                }
            })?;
        if finished.status.success() {
            return Ok(());
        }
        Err(RuntimeError::Failed {
            runtime: self.name(),
            command,
            id: id.to_owned(),
            message: runtime_message(&String::from_utf8_lossy(&finished.stderr)),
        })
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("start", id, &[id]).await
    }

    /// Applies the OCI resources in `file` (JSON) to a running or created container.
    pub async fn update(&self, id: &str, file: &std::path::Path) -> Result<(), RuntimeError> {
        let file = file.display().to_string();
        self.run("update", id, &["--resources", &file, id]).await
    }

    /// Sends `signal` to the container's init (or, with `all`, to every process in it). A
    /// container that is already gone is not an error.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let signal = signal.to_string();
        let args: Vec<&str> = if all {
            vec!["--all", id, &signal]
        } else {
            vec![id, &signal]
        };
        match self.run("kill", id, &args).await {
            Err(RuntimeError::Failed { ref message, .. }) if is_gone(message) => Ok(()),
            other => other,
        }
    }

    /// Deletes the container's runtime state (force: kills what still runs). Absent is fine.
    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run("delete", id, &["--force", id]).await {
            Err(RuntimeError::Failed { ref message, .. }) if is_gone(message) => Ok(()),
            other => other,
        }
    }
}

/// Whether `id` has the form of a container id: what runc accepts (`^[\w+-\.]+$`), and not
/// starting with `-`.
fn is_container_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
}

/// Whether a runtime error says the container does not exist or no longer runs.
fn is_gone(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("does not exist")
        || m.contains("not found")
        || m.contains("not running")
        || m.contains("no such process")
        || m.contains("process already finished")
}

/// The useful part of runc's stderr: the `msg="…"` of its last logrus line, else the text.
fn runtime_message(text: &str) -> String {
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    if let Some(start) = last.find("msg=\"") {
        let rest = &last[start + 5..];
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '"' => break,
                c => out.push(c),
            }
        }
        return out;
    }
    last.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::{is_container_id, is_gone, runtime_message};

    #[test]
    fn runc_messages_are_extracted() {
        assert_eq!(
            runtime_message(
                "time=\"2024\" level=error msg=\"container \\\"x\\\" does not exist\"\n"
            ),
            "container \"x\" does not exist"
        );
        assert_eq!(runtime_message("plain failure\n\n"), "plain failure");
        assert!(is_gone("container not running"));
        assert!(!is_gone("permission denied"));
    }

    #[test]
    fn only_container_ids_reach_the_command_line() {
        assert!(is_container_id("0123abcdef"));
        for bad in ["", "--all", "-h", "a b", "a/b", "a\0b", "a;b"] {
            assert!(!is_container_id(bad), "{bad:?}");
        }
    }
}
