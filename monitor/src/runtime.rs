//! Command lines for the OCI runtime (runc and crun take the same ones).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys;

/// The runtime binary and its state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub path: PathBuf,
    pub root: Option<PathBuf>,
    /// Run the runtime with `--systemd-cgroup`.
    pub systemd_cgroup: bool,
}

impl Runtime {
    fn base(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        if let Some(root) = &self.root {
            cmd.arg("--root").arg(root);
        }
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        sys::reset_signals_before_exec(&mut cmd);
        cmd
    }

    /// `<runtime> [--root R] create --bundle B --pid-file P [--console-socket S] <id>`.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console: Option<&Path>,
    ) -> Command {
        let mut cmd = self.base();
        cmd.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(console) = console {
            cmd.arg("--console-socket").arg(console);
        }
        cmd.arg(id);
        // The runtime is forked from the main thread, which lives as long as the monitor, so
        // the parent-death signal fires only when the monitor itself dies.
        sys::kill_on_parent_death(&mut cmd);
        cmd
    }

    /// `<runtime> [--root R] exec --detach --pid-file P <id> <args…>`: the container's process
    /// spec with these arguments; the runtime exits once the command runs (see `exec_sync`).
    pub fn exec(&self, id: &str, pid_file: &Path, args: &[String]) -> Command {
        let mut cmd = self.base();
        cmd.arg("exec")
            .arg("--detach")
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .args(args);
        cmd
    }

    /// `<runtime> [--root R] delete --force <id>`: undoes a create whose monitor cannot go on.
    pub fn delete_force(&self, id: &str) {
        let mut cmd = self.base();
        cmd.arg("delete").arg("--force").arg(id);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let _ = cmd.status();
    }
}
