//! A terminal made in the container's own devpts instance (its `/dev/ptmx`, opened through the
//! init's root), as runc makes one for `runc exec --tty`: the process sees `/dev/pts/<n>` of
//! its container, and the terminal is set up as runc leaves it (ONLCR cleared on the container
//! side; crid adds the carriage returns on the way to the client, as the terminal runc relays
//! to did).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use crid_common::regular_file;
use nix::fcntl::OFlag;
use nix::sys::termios::{self, OutputFlags, SetArg};

use crate::EnterError;

/// The multiplexer's device number (5, 2), in every devpts instance.
const PTMX_MAJOR: u64 = 5;
const PTMX_MINOR: u64 = 2;

/// Opens a new terminal in the devpts of the container whose root is `root`; returns its
/// (master, slave).
pub fn open_in(root: &OwnedFd) -> Result<(OwnedFd, OwnedFd), EnterError> {
    let failed = |what: &str, e: nix::errno::Errno| {
        EnterError::Unsupported(format!("{what} of the container's terminal: {e}"))
    };
    // Located first, opened once known to be a devpts multiplexer: crid is outside the
    // container's device cgroup, and a device node the container made must not be opened.
    let located = regular_file::locate_in_root(root.as_fd(), "dev/ptmx")
        .map_err(|e| EnterError::Unsupported(format!("the container's /dev/ptmx: {e}")))?
        .ok_or_else(|| EnterError::Unsupported("the container has no /dev/ptmx".into()))?;
    let stat = nix::sys::stat::fstat(&located).map_err(|e| failed("stat", e))?;
    let fs = nix::sys::statfs::fstatfs(&located).map_err(|e| failed("statfs", e))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFCHR
        || stat.st_rdev != nix::sys::stat::makedev(PTMX_MAJOR, PTMX_MINOR)
        || fs.filesystem_type().0 as i64 != super::DEVPTS_SUPER_MAGIC
    {
        return Err(EnterError::Unsupported(
            "the container's /dev/ptmx is not a devpts ptmx".into(),
        ));
    }
    let master = regular_file::reopen(located.as_fd(), OFlag::O_RDWR)
        .map_err(|e| EnterError::Unsupported(format!("the container's /dev/ptmx: {e}")))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which points at `unlock`.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    if rc < 0 {
        return Err(failed("unlock", nix::errno::Errno::last()));
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd for the slave, or -1.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(failed("open the slave", nix::errno::Errno::last()));
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let mut settings = termios::tcgetattr(master.as_fd()).map_err(|e| failed("read", e))?;
    settings.output_flags.remove(OutputFlags::ONLCR);
    termios::tcsetattr(master.as_fd(), SetArg::TCSANOW, &settings)
        .map_err(|e| failed("set up", e))?;
    Ok((master, slave))
}
