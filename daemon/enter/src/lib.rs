//! Direct exec: crid runs a command in a running container itself, giving the process exactly
//! what `runc exec` would give it, without the ~20 ms of runc's Go start-up, its self-copy
//! into a memfd and `runc init`.
//!
//! What is copied, and from where (runc 1.1's `runc exec` is the reference):
//! - namespaces: all of the init's, joined through a pidfd of the init (verified to be the
//!   init runc recorded: its start time); a user or time namespace of its own declines;
//! - cgroups: every directory of runc's `cgroup_paths` (the unified one too on a hybrid host),
//!   written by crid while the process waits, as runc's parent side does;
//! - seccomp: the filter runc installed in the init, read back with
//!   `PTRACE_SECCOMP_GET_FILTER` (once per container) and loaded at runc's point (before the
//!   user change without no_new_privs, last before `execve` with it);
//! - the process of the bundle's config.json: user, groups (through the container's
//!   /etc/group as runc reads it), capabilities (bounding, effective, permitted, inheritable,
//!   ambient, with runc's `KEEPCAPS` dance), no_new_privs, AppArmor exec label, cwd,
//!   environment (with runc's `HOME` default), oom_score_adj;
//! - what runc's own processes leave behind: a session of its own, the container's session
//!   keyring, signal dispositions (Go resets all but a few), the soft open-files limit raised
//!   to the hard one (Go's runtime does; taken from the init: it went through the same Go);
//! - `PATH` lookup as Go 1.19's `exec.LookPath`; a terminal from the container's devpts.
//!
//! Anything else declines ([`EnterError`]) and the caller runs `runc exec`: a spec field this
//! module does not reproduce, a rootless or user-namespaced container, another runtime's state
//! layout, a refused ptrace, and any failure of the new process before its `execve` (such as a
//! missing command: runc then reports it with its own message and exit code).
//!
//! [`sys`] holds the other process and terminal calls nix does not wrap (pidfds, window
//! sizes, a controlling terminal), for this crate and for the daemon's exec, attach,
//! container start and monitor watch.

#![deny(unsafe_code)]

mod child;
mod filter;
mod spec;
pub mod sys;
mod terminal;

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crid_common::regular_file::{self, RegularFileError};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};

use self::child::Plan;
pub use self::child::Step;
use self::spec::{ProcessSpec, RuncState};

/// Most bytes read of runc's state.json, the bundle's config.json, /etc/passwd or /etc/group.
const MAX_FILE_BYTES: u64 = 16 << 20;
/// How long the init may take to stop for its seccomp filter to be read.
const FILTER_READ_LIMIT: Duration = Duration::from_secs(1);
/// How long the new process may take to report each step (its pid; then its exec). A process
/// of the container may stop it (SIGSTOP) before it execs: a blocking thread of crid waits for
/// it meanwhile, so it is killed past this.
const REPORT_LIMIT: Duration = Duration::from_secs(30);
/// `DEVPTS_SUPER_MAGIC` and `PROC_SUPER_MAGIC` (linux/magic.h).
const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
/// CAP_SYS_PTRACE's bit.
const CAP_SYS_PTRACE: u32 = 19;
/// Containers whose set-up is kept; past this, entries of ended inits are dropped.
const MAX_CACHED: usize = 1024;
/// The namespaces joined (setns to one crid already shares is allowed and changes nothing).
const NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWCGROUP);

/// Why the direct path was not taken; the caller runs `runc exec` instead.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("not reproduced by the direct exec: {0}")]
    Unsupported(String),
    #[error("unexpected content: {0}")]
    Invalid(String),
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("failed to {what}")]
    Sys {
        what: &'static str,
        #[source]
        err: Errno,
    },
    /// Not now, maybe later (a busy or stopped process): not remembered as a refusal.
    #[error("no answer in time: {0}")]
    Stalled(String),
    #[error("the init {0} of the container is gone or was replaced")]
    InitGone(i32),
    /// The container laid a trap the runtime must not walk into either (a working directory
    /// that leads out of its root, CVE-2024-21626): no exec at all.
    #[error("refused: {0}")]
    Refused(String),
    #[error("the new process failed at {step:?}")]
    Child {
        step: Step,
        #[source]
        err: Errno,
    },
}

impl EnterError {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |err| EnterError::Io { what, path, err }
    }

    fn sys(what: &'static str) -> impl FnOnce(Errno) -> Self {
        move |err| EnterError::Sys { what, err }
    }
}

/// The exec'd process's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// A terminal of the container's devpts on all three.
    Terminal,
    /// A pipe for each stream (as `runc exec` relays them): crid writes stdin and reads the
    /// outputs.
    Pipes,
}

/// What to run, and where.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// runc's `--root`.
    pub runtime_root: &'a Path,
    pub container_id: &'a str,
    /// The OCI bundle (its config.json).
    pub bundle: &'a Path,
    pub cmd: &'a [String],
    pub stdio: Stdio,
    /// The monitor binary (crimon), whose process is the init's parent.
    pub monitor: &'a Path,
}

/// A started process.
#[derive(Debug)]
pub struct Entered {
    /// A pidfd of the process (crid's child: [`wait`] reaps it).
    pub process: OwnedFd,
    /// The terminal's master (with [`Stdio::Terminal`]).
    pub terminal: Option<OwnedFd>,
    /// crid's ends of the pipes (with [`Stdio::Pipes`]).
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A container's set-up that holds as long as its init does.
#[derive(Debug)]
struct Target {
    init_pid: i32,
    init_start: u64,
    cgroup_procs: Vec<PathBuf>,
    keyring: Option<CString>,
    process: ProcessSpec,
    filter: Option<filter::Program>,
    raise_nofile: bool,
    cap_last: u32,
}

/// One container's cached set-up: the init it was read for, and the outcome (a reason when
/// the container is one the direct path declines).
struct Cached {
    init_pid: i32,
    init_start: u64,
    outcome: Result<Arc<Target>, String>,
}

type Slot = Arc<Mutex<Option<Cached>>>;

fn cache() -> &'static Mutex<HashMap<String, Slot>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, EnterError> {
    let file = std::fs::File::open(path).map_err(EnterError::io("open", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(EnterError::io("read", path))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(EnterError::Invalid(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

fn read_text(path: &str) -> Result<String, EnterError> {
    std::fs::read_to_string(path).map_err(EnterError::io("read", path))
}

/// The start time of process `pid` now (`None`: no such process).
fn start_time(pid: i32) -> Option<u64> {
    spec::start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether the namespace `kind` of `pid` is crid's own.
fn same_namespace(pid: i32, kind: &str) -> Result<bool, EnterError> {
    same_file(
        Path::new(&format!("/proc/{pid}/ns/{kind}")),
        Path::new(&format!("/proc/thread-self/ns/{kind}")),
    )
}

/// Whether two paths (links followed) name the same file.
fn same_file(a: &Path, b: &Path) -> Result<bool, EnterError> {
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(a).map_err(EnterError::io("stat", a))?;
    let b = std::fs::metadata(b).map_err(EnterError::io("stat", b))?;
    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
}

/// How many of the init's seccomp filters it inherited from the process that ran runc: its
/// monitor's count (crimon, the subreaper `runc create` ran under, is the init's parent and
/// never adds one; known by its executable, the very file crid runs as `monitor`). runc's filter is the next one. crid's own count is no measure: crid may
/// have been restarted under other filters since, and an inherited filter taken for runc's
/// would give the exec'd process a weaker one.
fn inherited_filters(init_status: &str, monitor: &Path) -> Result<usize, EnterError> {
    let parent = spec::parent_pid(init_status)
        .ok_or_else(|| EnterError::Invalid("PPid of the container's init".into()))?;
    let status = read_text(&format!("/proc/{parent}/status"))?;
    // A monitor binary replaced since (an upgrade) declines too: only the filter count
    // matters here, and it is read from this very process.
    if !same_file(Path::new(&format!("/proc/{parent}/exe")), monitor).unwrap_or(false) {
        return Err(EnterError::Unsupported(format!(
            "the init's parent {parent} is not a monitor ({})",
            monitor.display()
        )));
    }
    spec::seccomp_filters(&status)
        .ok_or_else(|| EnterError::Invalid(format!("Seccomp_filters of process {parent}")))
}

/// Reads runc's record and the bundle, and the init's seccomp filter.
fn build_target(request: &Request<'_>) -> Result<Target, EnterError> {
    let state_file = request
        .runtime_root
        .join(request.container_id)
        .join("state.json");
    let state = RuncState::parse(&read_bounded(&state_file)?)?;
    let pid = state.init_process_pid;
    if start_time(pid) != Some(state.init_process_start) {
        return Err(EnterError::InitGone(pid));
    }
    let cap_last: u32 = read_text("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|_| EnterError::Invalid("/proc/sys/kernel/cap_last_cap".into()))?;
    let process = ProcessSpec::parse(
        &read_bounded(&request.bundle.join("config.json"))?,
        cap_last,
    )?;
    // The new process carries a copy of crid's memory (and fds) until its execve, visible in
    // the container's PID namespace: a process there that may hold CAP_SYS_PTRACE could read
    // it. So the direct path takes only a container whose init is PID 1 of a PID namespace of
    // its own (no sibling container, no TARGET debugger shares it) and whose capabilities
    // exclude CAP_SYS_PTRACE, privileged ones included (seccomp or AppArmor may still confine
    // those).
    if process.caps.bounding & (1 << CAP_SYS_PTRACE) != 0 {
        return Err(EnterError::Unsupported(
            "a container that may hold CAP_SYS_PTRACE".into(),
        ));
    }
    let init_status = read_text(&format!("/proc/{}/status", state.init_process_pid))?;
    let pid_in_namespace = init_status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last())
        .ok_or_else(|| EnterError::Invalid("NSpid of the container's init".into()))?;
    if pid_in_namespace != "1" {
        return Err(EnterError::Unsupported(
            "a PID namespace shared with other containers".into(),
        ));
    }
    if process.seccomp != state.config.seccomp.is_some() {
        return Err(EnterError::Unsupported(
            "runc's state and the bundle disagree on seccomp".into(),
        ));
    }
    for kind in ["user", "time"] {
        if !same_namespace(pid, kind)? {
            return Err(EnterError::Unsupported(format!("a {kind} namespace")));
        }
    }
    let limits = read_text(&format!("/proc/{pid}/limits"))?;
    let (soft, hard) = spec::nofile_limits(&limits)
        .ok_or_else(|| EnterError::Invalid(format!("/proc/{pid}/limits")))?;
    let filter = if process.seccomp {
        let inherited = inherited_filters(&init_status, request.monitor)?;
        Some(filter::runc_filter(pid, inherited, FILTER_READ_LIMIT)?)
    } else {
        None
    };
    let keyring = if state.config.no_new_keyring {
        None
    } else {
        Some(
            CString::new(format!("_ses.{}", request.container_id))
                .map_err(|_| EnterError::Invalid("a NUL in the container id".into()))?,
        )
    };
    Ok(Target {
        init_pid: pid,
        init_start: state.init_process_start,
        cgroup_procs: state
            .cgroup_paths
            .values()
            .map(|dir| dir.join("cgroup.procs"))
            .collect(),
        keyring,
        process,
        filter,
        raise_nofile: soft == hard,
        cap_last,
    })
}

/// The container's set-up, read once per init.
fn target(request: &Request<'_>) -> Result<Arc<Target>, EnterError> {
    let slot = {
        let mut map = cache().lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CACHED && !map.contains_key(request.container_id) {
            map.retain(|_, slot| {
                slot.try_lock().map_or(true, |cached| {
                    cached
                        .as_ref()
                        .is_some_and(|c| start_time(c.init_pid) == Some(c.init_start))
                })
            });
        }
        map.entry(request.container_id.to_owned())
            .or_default()
            .clone()
    };
    let mut cached = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cached.as_ref() {
        if start_time(c.init_pid) == Some(c.init_start) {
            return c.outcome.clone().map_err(EnterError::Unsupported);
        }
    }
    match build_target(request) {
        Ok(target) => {
            let target = Arc::new(target);
            *cached = Some(Cached {
                init_pid: target.init_pid,
                init_start: target.init_start,
                outcome: Ok(target.clone()),
            });
            Ok(target)
        }
        Err(EnterError::Unsupported(reason)) => {
            // Declined for good while this init lives (when it is known).
            if let Some((pid, start)) = init_of(request) {
                *cached = Some(Cached {
                    init_pid: pid,
                    init_start: start,
                    outcome: Err(reason.clone()),
                });
            }
            Err(EnterError::Unsupported(reason))
        }
        Err(e) => {
            *cached = None;
            Err(e)
        }
    }
}

/// The init runc recorded, if its state can be read at all.
fn init_of(request: &Request<'_>) -> Option<(i32, u64)> {
    let path = request
        .runtime_root
        .join(request.container_id)
        .join("state.json");
    let json: serde_json::Value = serde_json::from_slice(&read_bounded(&path).ok()?).ok()?;
    let pid = i32::try_from(json.get("init_process_pid")?.as_i64()?).ok()?;
    Some((pid, json.get("init_process_start")?.as_u64()?))
}

/// A file of the container's root filesystem, resolved inside it as runc would from within
/// (`None`: it does not exist, which runc treats as an empty file). Located with `O_PATH` and
/// read only once known to be a regular file not of the kernel's (crid reads as the host's
/// root, outside the container's device cgroup; runc would have read it as the container's).
fn read_in_root(root: &OwnedFd, relative: &str) -> Result<Option<String>, EnterError> {
    let path = format!("the container's /{relative}");
    let refused = |e: RegularFileError| EnterError::Unsupported(format!("{path}: {e}"));
    let located = match regular_file::locate_in_root(root.as_fd(), relative) {
        Ok(Some(located)) => located,
        // runc, as the container's user, would not see it either.
        Ok(None) | Err(RegularFileError::Open(Errno::EACCES)) => return Ok(None),
        Err(e) => return Err(refused(e)),
    };
    let bytes = regular_file::read_located(located.as_fd(), MAX_FILE_BYTES).map_err(refused)?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| EnterError::Unsupported(format!("{path} is not UTF-8")))
}

/// The host's /proc, for the new process to write its AppArmor label through after it entered
/// the container's mount namespace, where /proc is the container's to replace.
fn host_proc() -> Result<OwnedFd, EnterError> {
    let proc = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(EnterError::sys("open /proc"))?;
    let fs = nix::sys::statfs::fstatfs(&proc).map_err(EnterError::sys("statfs /proc"))?;
    if fs.filesystem_type().0 as i64 != PROC_SUPER_MAGIC {
        return Err(EnterError::Unsupported("/proc is not procfs".into()));
    }
    Ok(proc)
}

fn cstring(text: &str) -> Result<CString, EnterError> {
    CString::new(text).map_err(|_| EnterError::Unsupported(format!("a NUL in {text:?}")))
}

/// One read of the report pipe: `None` at end of file; [`EnterError::Stalled`] when nothing
/// came within [`REPORT_LIMIT`].
fn read_report(pipe: &mut std::fs::File) -> Result<Option<(i32, i32)>, EnterError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + REPORT_LIMIT;
    let mut message = [0u8; child::REPORT_LEN];
    let mut filled = 0;
    while filled < message.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::ZERO);
        let mut ready = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut ready, timeout) {
            Ok(0) => {
                return Err(EnterError::Stalled(format!(
                    "the new process did not report within {REPORT_LIMIT:?}"
                )))
            }
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(EnterError::sys("poll the report pipe")(e)),
        }
        match pipe.read(&mut message[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(EnterError::Invalid("a short report".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnterError::io("read", "the report pipe")(e)),
        }
    }
    let word = |range: std::ops::Range<usize>| {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&message[range]);
        i32::from_ne_bytes(bytes)
    };
    Ok(Some((word(0..4), word(4..8))))
}

fn child_failure(step: i32, errno: i32) -> EnterError {
    match Step::from_raw(step) {
        Some(Step::CwdOutside) => EnterError::Refused(
            "the working directory is not inside the container's root".into(),
        ),
        // A magic link on the way, or a working directory that is missing or not a
        // directory: runc exec would fail to enter it too, or (a trap: a symlink to
        // /proc/self/fd/N, which is gone here since crid's fds are closed first) enter
        // something of its own. Other errors (a seccomp filter that refuses openat2 to the
        // user's second attempt, EPERM or ENOSYS) are left to runc exec.
        Some(Step::Chdir) if [libc::ELOOP, libc::ENOENT, libc::ENOTDIR].contains(&errno) => {
            EnterError::Refused(match errno {
                libc::ELOOP => "the working directory leads through a magic link (/proc/<pid>/fd, cwd, root) or a symlink loop".into(),
                _ => format!(
                    "the working directory cannot be entered: {}",
                    Errno::from_raw(errno).desc()
                ),
            })
        }
        Some(step) => EnterError::Child {
            step,
            err: Errno::from_raw(errno),
        },
        None => EnterError::Invalid(format!("a report of step {step}")),
    }
}

/// Kills the process behind `pidfd` (a child of crid, not reaped) and reaps it.
fn kill_and_reap(pidfd: &OwnedFd) {
    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
    reap_blocking(pidfd);
}

/// Blocks until the process behind `pidfd` (a child of crid) has exited, and reaps it.
fn reap_blocking(pidfd: &OwnedFd) {
    loop {
        match waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Starts `request.cmd` in the container (blocking: run it off the async workers).
pub fn enter(request: &Request<'_>) -> Result<Entered, EnterError> {
    let (program, _) = request
        .cmd
        .split_first()
        .ok_or_else(|| EnterError::Invalid("an empty command".into()))?;
    let target = target(request)?;
    let pid = target.init_pid;
    let init = sys::pidfd_open(pid).map_err(|_| EnterError::InitGone(pid))?;
    let root_path = format!("/proc/{pid}/root");
    let root = nix::fcntl::open(
        root_path.as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| EnterError::InitGone(pid))?;
    let setgroups = read_text(&format!("/proc/{pid}/setgroups")).unwrap_or_default();
    // Opened before this check: had the init been replaced, the start time would differ.
    if start_time(pid) != Some(target.init_start) {
        return Err(EnterError::InitGone(pid));
    }
    let process = &target.process;
    let user = spec::exec_user(
        process.uid,
        &process.additional_gids,
        read_in_root(&root, "etc/passwd")?.as_deref(),
        read_in_root(&root, "etc/group")?.as_deref(),
    )?;
    let env = spec::go_environment(&process.env, &user.home)?;
    let candidates = spec::lookup_candidates(program, &env)?;
    let args: Vec<CString> = request
        .cmd
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = env.iter().map(|e| cstring(e)).collect::<Result<_, _>>()?;
    let vector = |items: &[CString]| -> Vec<*const c_char> {
        items
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv, envp) = (vector(&args), vector(&env));
    let candidates: Vec<(&CStr, bool)> = candidates
        .iter()
        .map(|c| (c.path.as_c_str(), c.refused))
        .collect();
    let cwd = cstring(&process.cwd)?;
    let oom_score_adj = process.oom_score_adj.map(|v| v.to_string());
    let apparmor = (!process.apparmor_profile.is_empty())
        .then(|| format!("exec {}", process.apparmor_profile));
    let proc = match apparmor {
        Some(_) => Some(host_proc()?),
        None => None,
    };
    let fprog = target.filter.as_ref().map(|program| libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    });
    let crid_ignored = spec::ignored_signals(&read_text("/proc/self/status")?).unwrap_or(0);

    // The streams: crid's ends are returned, the process's are dropped after the fork.
    let mut terminal_master = None;
    let mut ours: [Option<OwnedFd>; 3] = [None, None, None];
    let theirs: [OwnedFd; 3] = match request.stdio {
        Stdio::Terminal => {
            let (master, slave) = terminal::open_in(&root)?;
            terminal_master = Some(master);
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(EnterError::io("dup", "pty slave"));
            [dup(&slave)?, dup(&slave)?, slave]
        }
        Stdio::Pipes => {
            // runc relays its own stdio through three pipes of its making, whatever it was
            // given: the process always gets pipes.
            let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(EnterError::sys("pipe"));
            let (stdin, our_stdin) = pipe()?;
            let (our_stdout, stdout) = pipe()?;
            let (our_stderr, stderr) = pipe()?;
            ours = [Some(our_stdin), Some(our_stdout), Some(our_stderr)];
            [stdin, stdout, stderr]
        }
    };
    let (joined_read, joined_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(EnterError::sys("pipe"))?;
    let (report_read, report_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(EnterError::sys("pipe"))?;
    let plan = Plan {
        init_pidfd: init.as_raw_fd(),
        namespaces: NAMESPACES.bits(),
        oom_score_adj: oom_score_adj.as_deref().map(str::as_bytes),
        cgroups_joined: joined_read.as_raw_fd(),
        report: report_write.as_raw_fd(),
        stdio: [
            theirs[0].as_raw_fd(),
            theirs[1].as_raw_fd(),
            theirs[2].as_raw_fd(),
        ],
        terminal: request.stdio == Stdio::Terminal,
        reset_signals: crid_ignored & !spec::GO_KEEPS_IGNORED,
        raise_nofile: target.raise_nofile,
        keyring: target.keyring.as_deref(),
        no_new_privs: process.no_new_privileges,
        seccomp: fprog.as_ref(),
        cwd: &cwd,
        cap_last: target.cap_last,
        bounding: process.caps.bounding,
        effective: process.caps.effective,
        permitted: process.caps.permitted,
        inheritable: process.caps.inheritable,
        ambient: process.caps.ambient,
        groups: (setgroups.trim() != "deny").then_some(user.groups.as_slice()),
        uid: process.uid,
        gid: process.gid,
        apparmor: apparmor.as_deref().map(str::as_bytes),
        host_proc: proc.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        candidates: &candidates,
        argv: &argv,
        envp: &envp,
    };

    let intermediate = child::fork(&plan).map_err(EnterError::sys("fork"))?;
    drop(report_write);
    drop(joined_read);
    drop(theirs);
    let mut report = std::fs::File::from(report_read);
    let first = read_report(&mut report);
    if first.is_err() {
        let _ = nix::sys::signal::kill(intermediate, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = waitpid(intermediate, None);
    let final_pid = match first? {
        Some((child::REPORT_PID, pid)) => pid,
        Some((step, errno)) => return Err(child_failure(step, errno)),
        None => return Err(EnterError::Invalid("no report from the new process".into())),
    };
    // Our child, not reaped yet: the pid cannot name anything else.
    let process = match sys::pidfd_open(final_pid) {
        Ok(process) => process,
        Err(e) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(final_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = waitpid(nix::unistd::Pid::from_raw(final_pid), None);
            return Err(EnterError::Io {
                what: "open a pidfd of",
                path: format!("process {final_pid}").into(),
                err: e,
            });
        }
    };
    // runc's parent side: the process joins the init's cgroups before it runs anything.
    let pid_text = final_pid.to_string();
    for procs in &target.cgroup_procs {
        let joined = std::fs::OpenOptions::new()
            .write(true)
            .open(procs)
            .and_then(|mut f| f.write_all(pid_text.as_bytes()));
        if let Err(e) = joined {
            // The waiting process holds a copy of the pipe's write end too: kill it.
            drop(joined_write);
            kill_and_reap(&process);
            return Err(EnterError::io("join", procs)(e));
        }
    }
    let mut joined = std::fs::File::from(joined_write);
    if let Err(e) = joined.write_all(&[1]) {
        drop(joined);
        kill_and_reap(&process);
        return Err(EnterError::io("write", "the cgroup pipe")(e));
    }
    drop(joined);
    // End of file: the exec happened (the report pipe is close-on-exec).
    match read_report(&mut report) {
        Ok(None) => {
            let [stdin, stdout, stderr] = ours;
            Ok(Entered {
                process,
                terminal: terminal_master,
                stdin,
                stdout,
                stderr,
            })
        }
        Ok(Some((step, errno))) => {
            // It exits after its report, unless something stopped it first.
            kill_and_reap(&process);
            Err(child_failure(step, errno))
        }
        Err(e) => {
            kill_and_reap(&process);
            Err(e)
        }
    }
}

/// Waits for the process behind `pidfd` (a child of crid) to exit and reaps it; returns its
/// exit code, a signal `n` as 128 + n (what `runc exec` exits with).
pub async fn wait(pidfd: &OwnedFd) -> std::io::Result<i32> {
    let watched = sys::async_fd(pidfd.try_clone()?)?;
    loop {
        let mut ready = watched.readable().await?;
        match waitid(
            Id::PIDFd(pidfd.as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        ) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) => ready.clear_ready(),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
