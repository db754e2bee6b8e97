//! File names a monitor uses in its socket and exit directories. crid and operators find a
//! container's monitor through these.

use std::path::{Path, PathBuf};

/// The ttrpc control socket: `<socket-dir>/<id>.sock`.
pub fn control_socket(socket_dir: &Path, id: &str) -> PathBuf {
    socket_dir.join(format!("{id}.sock"))
}

/// The attach socket: `<socket-dir>/<id>.attach`.
pub fn attach_socket(socket_dir: &Path, id: &str) -> PathBuf {
    socket_dir.join(format!("{id}.attach"))
}

/// The console socket runc connects to in terminal mode (removed once the PTY arrived).
pub fn console_socket(socket_dir: &Path, id: &str) -> PathBuf {
    socket_dir.join(format!("{id}.console"))
}

/// The runtime's `--pid-file` (removed once read).
pub fn pid_file(socket_dir: &Path, id: &str) -> PathBuf {
    socket_dir.join(format!("{id}.pid"))
}

/// The exit record: `<exit-dir>/<id>`.
pub fn exit_record(exit_dir: &Path, id: &str) -> PathBuf {
    exit_dir.join(id)
}

/// Stream ids on the attach socket, numbered as conmon numbers them (CRI-O reads these).
pub mod attach_stream {
    /// Container standard output.
    pub const STDOUT: u8 = 2;
    /// Container standard error.
    pub const STDERR: u8 = 3;
}

/// Largest payload in one attach packet (after the stream byte); CRI-O reads with an
/// 8193-byte buffer, so a packet must never be larger than 1 + 8192 bytes.
pub const ATTACH_PACKET_PAYLOAD_MAX: usize = 8192;
