//! The few system calls that `nix` does not wrap, for streaming, container start and the
//! monitor watch: a terminal's window size, and pidfds (a process handle that can never name
//! a reused pid).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Sets the window size of the terminal whose master is `fd`.
pub fn set_window_size(fd: BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points at `size`.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            &size as *const libc::winsize,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd for `pid` (Linux 5.3). Only meaningful when taken while the caller knows `pid` is
/// the process it means (for instance, its start time was just checked).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

/// Sends `signal` to the process behind `pidfd` (never to a later process with its pid).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: the fd is a pidfd; a null siginfo and flags 0 send a plain signal.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the child of `command` a session leader whose controlling terminal is its stdin
/// (the slave of a pty crid made), so that resizing the master sends it SIGWINCH.
pub fn with_controlling_terminal(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec; it only makes the async-signal-safe
    // setsid and ioctl calls and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Registers an owned fd with tokio's reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open fd, owned by the AsyncFd from here on, and returns
    // the same fd from every as_raw_fd call until it is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}
