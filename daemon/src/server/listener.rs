//! The CRI socket: one crid per socket, never a stolen live one, removed on exit.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why the socket could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another crid is already serving {socket} (lock {lock} is held)")]
    AlreadyRunning { socket: PathBuf, lock: PathBuf },
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ListenError + 'a {
    move |err| ListenError::Io {
        what,
        path: path.to_owned(),
        err,
    }
}

/// Holds the lock and removes the socket when dropped.
/// The lock file stays: removing it would let two starters lock two different files.
pub struct SocketGuard {
    socket: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The single-instance lock, `<socket>.lock`, held for the process's life.
pub struct InstanceLock(nix::fcntl::Flock<File>);

/// Takes `<socket>.lock`; a held lock refuses the start. Taken before anything else touches
/// crid's state (a second instance must not, say, clean the first one's work in progress).
pub fn lock(socket: &Path) -> Result<InstanceLock, ListenError> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    }
    let mut lock_name = socket.as_os_str().to_owned();
    lock_name.push(".lock");
    let lock_path = PathBuf::from(lock_name);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open lock file", &lock_path))?;
    match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(InstanceLock(lock)),
        Err(_) => Err(ListenError::AlreadyRunning {
            socket: socket.to_owned(),
            lock: lock_path,
        }),
    }
}

/// Binds `socket` (mode 0600) under the instance lock. A socket file left by a crid that died
/// is replaced.
pub fn bind(
    socket: &Path,
    lock: InstanceLock,
) -> Result<(tokio::net::UnixListener, SocketGuard), ListenError> {
    // We hold the lock, so a socket file here is a dead crid's leftover.
    match std::fs::remove_file(socket) {
        Ok(()) => tracing::warn!(socket = %socket.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale socket", socket)(e)),
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(io("bind", socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", socket))?;
    Ok((
        listener,
        SocketGuard {
            socket: socket.to_owned(),
            _lock: lock.0,
        },
    ))
}
