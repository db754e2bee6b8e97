//! crimon's command line. It is fixed: crid, operators and scripts rely on it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// crimon monitors one container: it runs the OCI runtime's `create`, then owns the
/// container's stdio, log file, exit code, attach socket and OOM detection.
#[derive(Debug, Parser)]
#[command(name = "crimon", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub monitor: Option<MonitorArgs>,
}

/// Subcommands besides monitoring.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a live monitor's State and Stats as JSON.
    Inspect {
        /// The monitor's control socket, `<socket-dir>/<id>.sock`.
        socket: PathBuf,
    },
}

/// What to monitor and where to put things.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Container id; the last argument to the runtime and the name of the exit record.
    #[arg(long, required = true)]
    pub id: String,
    /// OCI bundle directory.
    #[arg(long, required = true)]
    pub bundle: PathBuf,
    /// Path of the OCI runtime binary (runc, crun).
    #[arg(long, required = true)]
    pub runtime: PathBuf,
    /// The runtime's `--root` state directory.
    #[arg(long)]
    pub runtime_root: Option<PathBuf>,
    /// The CRI log file.
    #[arg(long, required = true)]
    pub log_path: PathBuf,
    /// Truncate the log file when a write would take it past this size (0 or absent: no bound).
    #[arg(long)]
    pub log_size_max: Option<u64>,
    /// Directory of exit records.
    #[arg(long, required = true)]
    pub exit_dir: PathBuf,
    /// Directory of the attach and control sockets.
    #[arg(long, required = true)]
    pub socket_dir: PathBuf,
    /// Give the container a terminal (through the runtime's --console-socket).
    #[arg(long)]
    pub terminal: bool,
    /// Keep the container's stdin open to attach clients.
    #[arg(long)]
    pub stdin: bool,
    /// Close the container's stdin when the first attach client closes its side.
    #[arg(long)]
    pub stdin_once: bool,
    /// Pass `--systemd-cgroup` to the runtime (cgroups through systemd; cgroupsPath is
    /// `slice:prefix:name`).
    #[arg(long)]
    pub systemd_cgroup: bool,
    /// Once the container has exited and its exit is recorded, delete it from the runtime
    /// (`delete --force`): its cgroups go at once, and whatever it left in a shared PID
    /// namespace is killed. The exit record and the log stay.
    #[arg(long)]
    pub delete_after_exit: bool,
    /// Report the start result on this inherited fd (default: standard output).
    #[arg(long)]
    pub sync_fd: Option<i32>,
}
