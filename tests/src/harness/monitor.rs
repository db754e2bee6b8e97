//! Runs crimon on a bundle against real runc, the way crid does, and cleans up after.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crid_common::exit_record::ExitRecord;
use crid_common::monitor_paths;
use crid_proto::monitor::sync as proto;
use crid_proto::ttrpc;

use super::bundle::{write_bundle, BundleSpec};
use super::{require, unique, wait_for, workspace_binary};

/// What crimon reported on its sync channel.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StartReport {
    pub pid: i32,
    #[serde(default)]
    pub message: Option<String>,
}

/// One container under crimon, in a private temporary directory.
pub struct MonitoredContainer {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub log_path: PathBuf,
    pub exit_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub monitor: PathBuf,
}

impl MonitoredContainer {
    /// Prepares the bundle and directories (does not start anything).
    pub fn new(spec: &BundleSpec) -> Self {
        Self::with_monitor(spec, workspace_binary("crimon"))
    }

    /// The same with another monitor binary (benchmarks).
    pub fn with_monitor(spec: &BundleSpec, monitor: PathBuf) -> Self {
        require::root();
        let dir = tempfile::Builder::new()
            .prefix("crimon-t")
            .tempdir()
            .expect("tempdir");
        let id = unique("ctr");
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(&bundle).expect("mkdir bundle");
        write_bundle(&bundle, spec);
        let runtime_root = dir.path().join("runc");
        let exit_dir = dir.path().join("exits");
        let socket_dir = dir.path().join("sock");
        for d in [&runtime_root, &exit_dir, &socket_dir] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        MonitoredContainer {
            log_path: dir.path().join("ctr.log"),
            dir,
            id,
            bundle,
            runtime: require::tool("runc"),
            runtime_root,
            exit_dir,
            socket_dir,
            monitor,
        }
    }

    /// crimon's command line for this container, plus `extra` flags.
    pub fn command(&self, extra: &[&str]) -> Command {
        self.command_with_id(&self.id, extra)
    }

    /// The same command line with another id.
    pub fn command_with_id(&self, id: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(&self.monitor);
        cmd.arg("--id")
            .arg(id)
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--runtime")
            .arg(&self.runtime)
            .arg("--runtime-root")
            .arg(&self.runtime_root)
            .arg("--log-path")
            .arg(&self.log_path)
            .arg("--exit-dir")
            .arg(&self.exit_dir)
            .arg("--socket-dir")
            .arg(&self.socket_dir)
            .args(extra);
        cmd
    }

    /// Runs crimon (it returns once it reported) and parses its report.
    pub fn create(&self, extra: &[&str]) -> StartReport {
        let out = self.command(extra).output().expect("run crimon");
        parse_report(&out)
    }

    /// Creates and starts the container; panics on failure.
    pub fn run(&self, extra: &[&str]) -> StartReport {
        let report = self.create(extra);
        assert!(report.pid > 0, "crimon failed: {:?}", report.message);
        self.start();
        report
    }

    /// `runc start`.
    pub fn start(&self) {
        let out = self.runc(&["start", &self.id]);
        assert!(
            out.status.success(),
            "runc start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs runc with this container's root.
    pub fn runc(&self, args: &[&str]) -> Output {
        Command::new(&self.runtime)
            .arg("--root")
            .arg(&self.runtime_root)
            .args(args)
            .output()
            .expect("run runc")
    }

    pub fn control_socket(&self) -> PathBuf {
        monitor_paths::control_socket(&self.socket_dir, &self.id)
    }

    pub fn attach_socket(&self) -> PathBuf {
        monitor_paths::attach_socket(&self.socket_dir, &self.id)
    }

    pub fn exit_record_path(&self) -> PathBuf {
        monitor_paths::exit_record(&self.exit_dir, &self.id)
    }

    /// A ttrpc client on the control socket.
    pub fn client(&self) -> proto::MonitorClient {
        let addr = format!("unix://{}", self.control_socket().display());
        let client = ttrpc::Client::connect(&addr).expect("connect to crimon control socket");
        proto::MonitorClient::new(client)
    }

    /// The exit record, waiting up to `timeout` for it to appear.
    pub fn wait_exit_record(&self, timeout: Duration) -> ExitRecord {
        let path = self.exit_record_path();
        wait_for(timeout, || ExitRecord::read(&path).ok())
            .unwrap_or_else(|| panic!("no exit record at {} after {timeout:?}", path.display()))
    }

    /// The log joined into (stream, line) pairs.
    pub fn log_lines(&self) -> Vec<(crid_common::log_line::Stream, String)> {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        crid_common::log_line::join_lines(&bytes)
            .into_iter()
            .map(|(s, l)| (s, String::from_utf8_lossy(&l).into_owned()))
            .collect()
    }

    /// The monitor's pid, from its State.
    pub fn monitor_pid(&self) -> i32 {
        self.client()
            .state(ctx(), &proto::StateRequest::new())
            .expect("State")
            .monitor_pid
    }
}

/// A ttrpc context with a 30 s deadline.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(30_000_000_000)
}

/// Parses crimon's one-line JSON report.
pub fn parse_report(out: &Output) -> StartReport {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "crimon printed no report ({e}); stdout {text:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != Some('Z') && state.is_some())
}

impl Drop for MonitoredContainer {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "--force", &self.id]);
        // The monitor exits once the container is gone; wait so no process outlives the test.
        let socket = self.control_socket();
        let _ = wait_for(Duration::from_secs(10), || (!socket.exists()).then_some(()));
    }
}
