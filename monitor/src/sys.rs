//! Every system call crimon makes that needs `unsafe`, each behind a small safe function.
//! The rest of the crate is `#![deny(unsafe_code)]`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Which side of a fork we are on.
pub enum Forked {
    Parent,
    Child,
}

/// Forks the process.
///
/// # Safety
/// The process must have one thread: the child then is a full copy with no lock held by
/// another thread, and both sides may go on in ordinary (allocating) Rust code.
pub unsafe fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        _ => Ok(Forked::Parent),
    }
}

/// Blocks SIGCHLD (it is read through a signalfd) and ignores the signals that must not
/// stop the monitor: SIGTERM, SIGINT and SIGHUP (crimon never loses an exit code; SIGKILL is
/// the only way to stop it) and SIGPIPE (a vanished client is an error, not a death).
pub fn setup_monitor_signals() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code; the call only changes the disposition.
        if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: a zeroed sigset_t is a valid argument to sigemptyset/sigaddset, which fill it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
    }
    // SAFETY: `set` is initialised; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Makes `cmd`'s child start with default signal dispositions and an empty mask.
pub fn reset_signals_before_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook only makes async-signal-safe system calls (signal, sigprocmask) and
    // allocates nothing, as is required between fork and exec.
    unsafe {
        cmd.pre_exec(restore_child_signals);
    }
}

/// Makes `cmd`'s child receive SIGKILL when the thread that forked it dies.
pub fn kill_on_parent_death(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(set_parent_death_kill);
    }
}

/// The umask runtimes run with (the conventional one).
const RUNTIME_UMASK: libc::mode_t = 0o022;

/// For `pre_exec` of a runtime child: restores the default dispositions, an empty signal
/// mask and umask 022, which exec would otherwise inherit from the monitor.
/// Async-signal-safe: it only makes system calls and allocates nothing.
fn restore_child_signals() -> io::Result<()> {
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGPIPE,
        libc::SIGCHLD,
    ] {
        // SAFETY: SIG_DFL installs no handler code; signal() is async-signal-safe.
        if unsafe { libc::signal(sig, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    // The runtime creates the container's mount points with the umask it inherits; the
    // monitor's own 077 would make them unreadable to a container's non-root users.
    // SAFETY: umask is async-signal-safe and cannot fail.
    unsafe { libc::umask(RUNTIME_UMASK) };
    // SAFETY: a zeroed sigset_t is valid for sigemptyset, which fills it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid; sigemptyset and sigprocmask are async-signal-safe.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    cvt(rc).map(drop)
}

/// For `pre_exec` of `runtime create`: the runtime dies if the monitor dies before it is done.
/// Async-signal-safe.
fn set_parent_death_kill() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    cvt(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
    .map(drop)
}

/// Makes this process the reaper of every orphaned descendant (the container's init is a
/// grandchild: the runtime forks it and exits).
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no memory is passed.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Starts a new session so the monitor leaves the caller's session and process group.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid has no arguments and no memory effects.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// Sets the file mode creation mask.
pub fn set_umask(mask: libc::mode_t) {
    // SAFETY: umask only changes the process's mask and cannot fail.
    unsafe { libc::umask(mask) };
}

/// Points fds 0, 1 and 2 at /dev/null (after the start report, the monitor has no stdio).
pub fn stdio_to_dev_null() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..=2 {
        // SAFETY: dup2 onto the standard fds; `null` is a valid open fd.
        cvt(unsafe { libc::dup2(null.as_raw_fd(), target) })?;
    }
    Ok(())
}

/// Sets or clears O_NONBLOCK.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a valid borrowed fd.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// Sets FD_CLOEXEC on an inherited fd.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD on an fd number; an invalid one yields EBADF, which we return.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// Takes ownership of an inherited fd number after checking that it is open.
///
/// # Safety
/// Nothing else in the process may own or use `fd` (it was inherited for us alone, and is
/// taken once).
pub unsafe fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    set_cloexec(fd)?;
    // SAFETY: the fd is open (fcntl succeeded) and the caller guarantees we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Grows a pipe's buffer (fewer wake-ups under heavy output); best effort.
pub fn grow_pipe(fd: BorrowedFd<'_>, bytes: libc::c_int) {
    // SAFETY: F_SETPIPE_SZ on a valid pipe fd; failure (e.g. above pipe-max-size) is harmless.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
}

/// An eventfd, used to wake the event loop from control threads.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes an initial value and flags; it returns a new fd or -1.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd counter.
pub fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64; EAGAIN (counter full) still leaves it readable.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Reads (and resets) an eventfd counter; 0 if nothing was pending.
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> u64 {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    if n == 8 {
        value
    } else {
        0
    }
}

/// A signalfd for SIGCHLD (already blocked by [`setup_monitor_signals`]).
pub fn sigchld_fd() -> io::Result<OwnedFd> {
    // SAFETY: a zeroed sigset_t is valid for sigemptyset/sigaddset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid and writable.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
    }
    // SAFETY: -1 asks for a new signalfd for the initialised `set`.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Empties a signalfd (the reaper calls waitpid until nothing is left anyway).
pub fn drain_signalfd(fd: BorrowedFd<'_>) {
    // SAFETY: signalfd_siginfo is plain data; zeroed is a valid value to read into.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads whole siginfo records into a buffer of exactly that size.
    while unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    } == size as isize
    {}
}

/// One reaped child: its pid and raw wait status.
pub fn reap_one() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid c_int.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid > 0 {
        Some((pid, status))
    } else {
        None
    }
}

/// A pidfd for `pid`: readable once the process has exited.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: the pidfd_open syscall takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` to the process behind `pidfd` (never to a later process with its pid).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: the fd is a pidfd; a null siginfo and flags 0 send a plain signal.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends a signal; refuses pids that would address a group or every process.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    if pid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}"),
        ));
    }
    // SAFETY: kill with a positive pid (checked above) signals that one process only.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Sets a terminal's window size.
pub fn set_window_size(fd: BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct from a valid pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) }).map(drop)
}

fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// A listening SOCK_SEQPACKET unix socket at `path` (non-blocking, close-on-exec).
pub fn seqpacket_listener(path: &Path, backlog: libc::c_int) -> io::Result<OwnedFd> {
    let (addr, len) = unix_addr(path)?;
    // SAFETY: socket() returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: the fd was just created and is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    // SAFETY: listen on our bound socket.
    cvt(unsafe { libc::listen(sock.as_raw_fd(), backlog) })?;
    Ok(sock)
}

/// Accepts one connection, non-blocking and close-on-exec; `None` when none is pending.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    // SAFETY: accept4 with null address pointers returns a new fd or -1.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: the fd was just created and is ours.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Sets a socket's send buffer size (best effort).
pub fn set_send_buffer(fd: BorrowedFd<'_>, bytes: libc::c_int) {
    // SAFETY: SO_SNDBUF reads one c_int from a valid pointer.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Sends one packet made of a stream-id byte and `data`, without blocking.
pub fn send_packet(fd: BorrowedFd<'_>, stream: u8, data: &[u8]) -> io::Result<()> {
    let head = [stream];
    let mut iov = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: 1,
        },
        libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        },
    ];
    // SAFETY: msghdr is plain data; zeroed means no address and no control data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    // SAFETY: msg points at two iovecs over live buffers; the kernel only reads them.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one fd sent with SCM_RIGHTS (the PTY master from the runtime's console socket).
/// A message whose control data was cut short (MSG_CTRUNC: the sender passed more fds than
/// fit, and the kernel closed the rest) or that carries anything but exactly one fd is
/// refused, and every fd it did carry is closed. (nix's `cmsgs()` refuses to walk a truncated
/// buffer, which would leave the fds that did arrive open, so the walk is done here.)
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // Room for two fds, aligned for cmsghdr: one more than expected, so that a second fd
    // shows up as such.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(2 * std::mem::size_of::<RawFd>() as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain data; zeroed is valid before we fill in the buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: every pointer in msg refers to a live local buffer of the stated size.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut other_control = false;
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR return null or a header that
    // lies within the `msg_controllen` bytes the kernel wrote.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and within the control buffer (see above).
        let (level, kind, len) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` fds at CMSG_DATA (cmsg_len says so, and it
                // never exceeds what fit in the buffer); read_unaligned copes with alignment.
                let fd = unsafe {
                    std::ptr::read_unaligned((libc::CMSG_DATA(cmsg) as *const RawFd).add(i))
                };
                // SAFETY: the kernel installed this fd in our table for us to own; it is
                // wrapped once, so it is closed once.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        } else {
            other_control = true;
        }
        // SAFETY: as above; NXTHDR checks the bounds against msg_controllen.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    let refuse = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()));
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return refuse("console socket message was truncated (MSG_CTRUNC)");
    }
    if other_control {
        return refuse("console socket sent control data other than one fd");
    }
    match (fds.pop(), fds.is_empty()) {
        (Some(fd), true) => Ok(fd),
        (None, _) => refuse("console socket sent no fd"),
        (Some(_), false) => refuse("console socket sent more than one fd"),
    }
}

/// A minimal epoll: level-triggered, one u64 token per fd.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 returns a new fd or -1.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: the fd was just created and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event; the kernel copies it.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    pub fn add(&self, fd: impl AsFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_fd().as_raw_fd(), events, token)
    }

    pub fn modify(&self, fd: impl AsFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd.as_fd().as_raw_fd(), events, token)
    }

    pub fn delete(&self, fd: impl AsFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd.as_fd().as_raw_fd(), 0, 0);
    }

    /// Waits for events; returns how many of `events` were filled.
    pub fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout_ms: libc::c_int,
    ) -> io::Result<usize> {
        // SAFETY: `events` is a valid writable buffer of the given length.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(n as usize)
    }
}

/// Path as a C string (for system calls on paths not covered by std).
pub fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Registers an eventfd for cgroup v1 memory OOM notifications:
/// writes "<eventfd> <oom_control fd>" to `cgroup.event_control`.
pub fn register_v1_oom_event(
    event_control: &Path,
    efd: BorrowedFd<'_>,
    oom_control: BorrowedFd<'_>,
) -> io::Result<()> {
    use std::io::Write;
    let mut control = std::fs::OpenOptions::new()
        .write(true)
        .open(event_control)?;
    // One write: the kernel parses each write(2) as a whole registration.
    let line = format!("{} {}", efd.as_raw_fd(), oom_control.as_raw_fd());
    control.write_all(line.as_bytes())
}

/// An inotify fd watching `path` for modification (cgroup v2 `memory.events`).
pub fn inotify_modify_watch(path: &Path) -> io::Result<OwnedFd> {
    // SAFETY: inotify_init1 returns a new fd or -1.
    let fd = cvt(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
    // SAFETY: the fd was just created and is ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let cpath = cstring(path)?;
    // SAFETY: cpath is a valid NUL-terminated path.
    cvt(unsafe { libc::inotify_add_watch(owned.as_raw_fd(), cpath.as_ptr(), libc::IN_MODIFY) })?;
    Ok(owned)
}

/// Reads and discards whatever is pending on a non-blocking fd.
pub fn drain_fd(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 512];
    // SAFETY: reads into a valid local buffer.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Whether `path` is on a cgroup2 file system.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(cpath) = cstring(path) else {
        return false;
    };
    // SAFETY: statfs is plain data; zeroed is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: cpath is NUL-terminated and st is writable.
    let rc = unsafe { libc::statfs(cpath.as_ptr(), &mut st) };
    rc == 0 && st.f_type == libc::CGROUP2_SUPER_MAGIC
}

/// Sets this process's oom_score_adj; the host may forbid lowering it (no CAP_SYS_RESOURCE).
pub fn set_oom_score_adj(value: i32) -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", value.to_string())
}

/// poll(2) over raw entries (negative fds are skipped); returns how many are ready.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> usize {
    // SAFETY: `fds` is a valid writable array of pollfd of the given length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    usize::try_from(n).unwrap_or(0)
}

/// One malloc arena for the whole process: the control server's threads would otherwise each
/// get an arena of their own, which is resident memory for a process that allocates little.
/// Call before any thread exists.
pub fn single_malloc_arena() {
    // SAFETY: mallopt only changes allocator parameters.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Gives back to the kernel what start-up used and no longer needs: free heap pages, and the
/// main thread's stack pages below the current stack pointer (start-up ran deeper than the
/// event loop ever will). Both come back zero-filled if touched again.
pub fn release_startup_memory() {
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096);
    // Nothing below the stack pointer is live (the x86-64 red zone is 128 bytes); the margin
    // only spares the next few calls from faulting pages back in.
    let keep_below = (sp & !(page - 1)).saturating_sub(2 * page);
    let Some(low) = stack_low_end() else { return };
    if keep_below > low {
        // SAFETY: [low, keep_below) lies in the main thread's stack mapping, below the live
        // frames and their margin; DONTNEED on it only drops pages nobody uses.
        unsafe {
            libc::madvise(
                low as *mut libc::c_void,
                keep_below - low,
                libc::MADV_DONTNEED,
            )
        };
    }
}

/// The low end of the main thread's stack mapping, from /proc/self/maps.
fn stack_low_end() -> Option<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[stack]"))?;
    let range = line.split_whitespace().next()?;
    usize::from_str_radix(range.split_once('-')?.0, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{
        sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    };

    fn send_fds(sock: BorrowedFd<'_>, fds: &[RawFd]) {
        let iov = [io::IoSlice::new(b"x")];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).expect("sendmsg");
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    #[test]
    fn recv_fd_takes_exactly_one_fd() {
        let (a, b) = pair();
        let (p, _q) = pipe().expect("pipe");
        send_fds(a.as_fd(), &[p.as_raw_fd()]);
        let got = recv_fd(b.as_fd()).expect("one fd");
        assert_ne!(got.as_raw_fd(), p.as_raw_fd());
    }

    #[test]
    fn recv_fd_refuses_none_two_and_truncated() {
        let (a, b) = pair();
        send_fds(a.as_fd(), &[]);
        let err = recv_fd(b.as_fd()).expect_err("no fd");
        assert!(err.to_string().contains("no fd"), "{err}");

        let (p, q) = pipe().expect("pipe");
        send_fds(a.as_fd(), &[p.as_raw_fd(), q.as_raw_fd()]);
        let err = recv_fd(b.as_fd()).expect_err("two fds");
        assert!(err.to_string().contains("more than one"), "{err}");

        // Eight fds do not fit the control buffer: the kernel truncates and says so.
        let many = [p.as_raw_fd(); 8];
        send_fds(a.as_fd(), &many);
        let err = recv_fd(b.as_fd()).expect_err("truncated");
        assert!(err.to_string().contains("MSG_CTRUNC"), "{err}");
    }
}
