//! The seccomp filter runc installed in a container's init, read back from the kernel with
//! `PTRACE_SECCOMP_GET_FILTER`: the very classic-BPF program `runc exec` would build again
//! from the same configuration, without reimplementing libseccomp and runc's patching.
//!
//! The init is seized (`PTRACE_SEIZE`: no signal, no stop of its own), interrupted, read and
//! detached at once, on a thread of its own: a tracee that does not stop (frozen, in an
//! uninterruptible sleep) keeps only that thread waiting, and the kernel detaches every tracee
//! of a thread that ends, so the init is never left stopped. The caller waits a bounded time
//! and declines the direct path if nothing came.
#![allow(unsafe_code)]

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::EnterError;

/// `PTRACE_SECCOMP_GET_FILTER` (linux/ptrace.h; not in the libc crate).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
/// Most instructions a filter may have (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;

/// A classic-BPF seccomp program.
pub type Program = Vec<libc::sock_filter>;

/// The number of instructions of filter `index` (0: the newest), or its instructions.
fn get_filter(pid: Pid, index: usize, into: Option<&mut Program>) -> Result<usize, Errno> {
    let buffer = into.map_or(std::ptr::null_mut(), |p| p.as_mut_ptr());
    // SAFETY: with a null buffer the kernel only returns the length; otherwise it writes that
    // many instructions into `buffer`, which the caller sized from the same call on the same
    // stopped tracee (its filters cannot change while it is stopped).
    let rc = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            pid.as_raw(),
            index as *mut libc::c_void,
            buffer,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(rc as usize)
}

/// Reads, from the stopped tracee, the oldest filter after the `inherited` ones it shares with
/// crid (the one runc installed before exec'ing the container's process; any later ones the
/// container stacked itself).
fn read_stopped(pid: Pid, inherited: usize) -> Result<Program, EnterError> {
    let failed = |what: &str, e: Errno| EnterError::Unsupported(format!("{what}: {e}"));
    let mut count = 0;
    loop {
        match get_filter(pid, count, None) {
            Ok(_) => count += 1,
            Err(Errno::ENOENT) => break,
            Err(e) => return Err(failed("PTRACE_SECCOMP_GET_FILTER", e)),
        }
    }
    if count <= inherited {
        return Err(EnterError::Unsupported(format!(
            "the init has {count} seccomp filters, none of runc's"
        )));
    }
    let index = count - 1 - inherited;
    let length = get_filter(pid, index, None).map_err(|e| failed("filter length", e))?;
    if length == 0 || length > MAX_INSTRUCTIONS {
        return Err(EnterError::Invalid(format!(
            "a filter of {length} instructions"
        )));
    }
    let mut program = vec![
        libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0
        };
        length
    ];
    let read = get_filter(pid, index, Some(&mut program)).map_err(|e| failed("filter", e))?;
    if read != length {
        return Err(EnterError::Invalid("the filter changed while read".into()));
    }
    Ok(program)
}

/// Seizes, stops, reads and detaches `pid` on the calling thread.
fn read_traced(pid: Pid, inherited: usize) -> Result<Program, EnterError> {
    let failed = |what: &str, e: Errno| EnterError::Unsupported(format!("{what}: {e}"));
    ptrace::seize(pid, ptrace::Options::empty()).map_err(|e| failed("PTRACE_SEIZE", e))?;
    if let Err(e) = ptrace::interrupt(pid) {
        // Not stopped: detach is refused, the end of this thread detaches.
        return Err(failed("PTRACE_INTERRUPT", e));
    }
    let status = loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    // A signal that arrived first stopped it instead: it is handed back on detach.
    let reinject = match status {
        Ok(WaitStatus::Stopped(_, signal)) => Some(signal),
        Ok(WaitStatus::PtraceEvent(..)) => None,
        Ok(other) => {
            return Err(EnterError::Unsupported(format!(
                "the init did not stop: {other:?}"
            )))
        }
        Err(e) => return Err(failed("wait for the init to stop", e)),
    };
    let program = read_stopped(pid, inherited);
    ptrace::detach(pid, reinject).map_err(|e| failed("PTRACE_DETACH", e))?;
    program
}

/// Inits whose filter a reader thread is reading.
struct InFlight(std::sync::Mutex<std::collections::HashSet<i32>>);

impl InFlight {
    /// Notes `pid`; false when it already was.
    fn insert(&self, pid: i32) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(pid)
    }

    fn remove(&self, pid: i32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }
}

fn in_flight() -> &'static InFlight {
    static READERS: std::sync::OnceLock<InFlight> = std::sync::OnceLock::new();
    READERS.get_or_init(|| InFlight(Default::default()))
}

/// The seccomp filter runc installed in the init `pid` (crid itself runs under `inherited`
/// filters, which the init inherited too); waits at most `limit` for the init to stop.
pub fn runc_filter(pid: i32, inherited: usize, limit: Duration) -> Result<Program, EnterError> {
    // A reader that timed out may still be attached to the init: a second one would fail to
    // seize it (EPERM) and have the init refused for good. Until the first one ends, the
    // answer is "not now".
    if !in_flight().insert(pid) {
        return Err(EnterError::Stalled(format!(
            "the seccomp filter of init {pid} is still being read"
        )));
    }
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("crid-seccomp".into())
        .spawn(move || {
            let _ = sender.send(read_traced(Pid::from_raw(pid), inherited));
            in_flight().remove(pid);
        });
    if let Err(e) = spawned {
        in_flight().remove(pid);
        return Err(EnterError::Stalled(format!(
            "no thread to read the filter: {e}"
        )));
    }
    receiver.recv_timeout(limit).map_err(|_| {
        EnterError::Stalled(format!(
            "init {pid} did not stop within {limit:?} for its seccomp filter to be read"
        ))
    })?
}
