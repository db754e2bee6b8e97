//! The two processes between crid and the exec'd command, in the order `runc exec` applies
//! each setting (runc 1.1: `nsexec.c`, then `setns_init_linux.go` and `finalizeNamespace`).
//!
//! crid is multi-threaded: between `fork` and `execve` both processes make only
//! async-signal-safe system calls on data prepared before the fork ([`Plan`]): no allocation,
//! no lock, no panic path. Raw `syscall` is used where glibc's wrapper keeps state of its own
//! (the set*id broadcast to other threads, the reserved signals 32 and 33).
//!
//! - The intermediate process (forked by crid, still in crid's namespaces, invisible from the
//!   container) sets the container's `oom_score_adj`, makes itself non-dumpable (so nothing in
//!   the container can ptrace or read the copy of crid's memory it carries), joins the
//!   container's namespaces through the init's pidfd, clones the final process with
//!   `CLONE_PARENT` (crid's child, inside the container's PID namespace, non-dumpable from
//!   birth), reports its pid and exits.
//! - The final process waits until crid has written it into the container's cgroups, then
//!   sets itself up and execs. Every failure is reported as (step, errno) on the report pipe,
//!   which closes on a successful exec.
#![allow(unsafe_code)]

use crid_common::capabilities::{CapData, CapHeader, LINUX_CAPABILITY_VERSION_3};
use std::ffi::{c_char, c_int, c_long, CStr};
use std::os::fd::RawFd;

/// A report: (`REPORT_PID`, pid of the final process) or (step, errno) for a failed step.
pub const REPORT_PID: i32 = 0;
/// Bytes of one report (two native `i32`s; one write, atomic on a pipe).
pub const REPORT_LEN: usize = 8;

const KEYCTL_JOIN_SESSION_KEYRING: c_long = 1;
const CAP_SETPCAP: u32 = 8;

/// The steps that can fail, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Step {
    OomScoreAdj = 1,
    Dumpable,
    Setns,
    Clone,
    AwaitCgroups,
    Signals,
    Stdio,
    Setsid,
    Nofile,
    Keyring,
    Terminal,
    CloseOnExec,
    NoNewPrivs,
    Seccomp,
    Chdir,
    BoundingSet,
    KeepCaps,
    StdioOwner,
    Setgroups,
    Setgid,
    Setuid,
    ClearKeepCaps,
    Capabilities,
    AppArmor,
    Lookup,
    Exec,
    /// The working directory is not inside the container's root (CVE-2024-21626).
    CwdOutside,
}

impl Step {
    const ALL: [Step; 27] = [
        Step::OomScoreAdj,
        Step::Dumpable,
        Step::Setns,
        Step::Clone,
        Step::AwaitCgroups,
        Step::Signals,
        Step::Stdio,
        Step::Setsid,
        Step::Nofile,
        Step::Keyring,
        Step::Terminal,
        Step::CloseOnExec,
        Step::NoNewPrivs,
        Step::Seccomp,
        Step::Chdir,
        Step::BoundingSet,
        Step::KeepCaps,
        Step::StdioOwner,
        Step::Setgroups,
        Step::Setgid,
        Step::Setuid,
        Step::ClearKeepCaps,
        Step::Capabilities,
        Step::AppArmor,
        Step::Lookup,
        Step::Exec,
        Step::CwdOutside,
    ];

    pub fn from_raw(raw: i32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as i32 == raw)
    }
}

/// Everything both processes use, prepared (and allocated) before the fork.
pub struct Plan<'a> {
    pub init_pidfd: RawFd,
    /// `CLONE_NEW*` flags of the namespaces joined through the pidfd.
    pub namespaces: c_int,
    /// The decimal `oom_score_adj` to write, if the spec has one.
    pub oom_score_adj: Option<&'a [u8]>,
    /// Read end of the pipe crid writes one byte to once the cgroups are joined.
    pub cgroups_joined: RawFd,
    /// Write end of the report pipe (close-on-exec).
    pub report: RawFd,
    /// The final process's stdin, stdout, stderr (all the terminal's slave with a tty).
    pub stdio: [RawFd; 3],
    pub terminal: bool,
    /// Signals crid ignores that reach a `runc exec` process with their default action.
    pub reset_signals: u64,
    /// Raise the soft open-files limit to the hard one (runc's Go runtime leaves it raised).
    pub raise_nofile: bool,
    /// The session keyring to join (`_ses.<container id>`), unless the container has none.
    pub keyring: Option<&'a CStr>,
    pub no_new_privs: bool,
    /// The container's seccomp filter (runc's, read from the init).
    pub seccomp: Option<&'a libc::sock_fprog>,
    pub cwd: &'a CStr,
    pub cap_last: u32,
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    /// The supplementary groups (`None`: /proc/self/setgroups says deny).
    pub groups: Option<&'a [libc::gid_t]>,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// "exec <profile>" for the AppArmor exec attribute, if the spec names a profile.
    pub apparmor: Option<&'a [u8]>,
    /// The host's /proc (with `apparmor`): the label is written through it, not through the
    /// container's /proc, which a container may have replaced.
    pub host_proc: RawFd,
    /// Paths `exec.LookPath` would try, with whether Go refuses a hit there.
    pub candidates: &'a [(&'a CStr, bool)],
    /// NULL-terminated argument and environment vectors.
    pub argv: &'a [*const c_char],
    pub envp: &'a [*const c_char],
}

fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}

/// Writes one report; async-signal-safe.
fn report(fd: RawFd, kind: i32, value: i32) {
    let mut message = [0u8; REPORT_LEN];
    message[..4].copy_from_slice(&kind.to_ne_bytes());
    message[4..].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: writes REPORT_LEN bytes from a local buffer to an fd this process owns.
    unsafe {
        libc::write(fd, message.as_ptr().cast(), REPORT_LEN);
    }
}

/// Reports `step` with the current errno and exits.
fn fail(plan: &Plan<'_>, step: Step) -> ! {
    report(plan.report, step as i32, errno());
    // SAFETY: _exit ends the process at once (no atexit handlers, no unwinding).
    unsafe { libc::_exit(1) }
}

/// Fails `step` when a raw call returned a negative value.
fn check(plan: &Plan<'_>, step: Step, rc: c_long) -> c_long {
    if rc < 0 {
        fail(plan, step);
    }
    rc
}

/// Forks the intermediate process, which runs the plan; returns its pid.
pub fn fork(plan: &Plan<'_>) -> nix::Result<nix::unistd::Pid> {
    // SAFETY: the child runs only `intermediate`, which makes async-signal-safe calls on the
    // plan (prepared before, nothing allocated after the fork) and never returns.
    match unsafe { nix::unistd::fork() }? {
        // SAFETY: this is the freshly forked child, with every fd of the plan open.
        nix::unistd::ForkResult::Child => unsafe { intermediate(plan) },
        nix::unistd::ForkResult::Parent { child } => Ok(child),
    }
}

/// The intermediate process, right after crid's fork. Never returns.
///
/// # Safety
/// Must run in a freshly forked child of crid, with every fd of `plan` open.
unsafe fn intermediate(plan: &Plan<'_>) -> ! {
    if let Some(value) = plan.oom_score_adj {
        // Written before the process becomes non-dumpable, as runc's nsexec does: a
        // non-dumpable process's /proc files belong to root, not to it.
        // SAFETY: a static NUL-terminated path; the fd is checked.
        let fd = unsafe {
            libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        check(plan, Step::OomScoreAdj, fd.into());
        // SAFETY: writes `value` (a live slice) to the fd just opened, then closes it.
        let written = unsafe { libc::write(fd, value.as_ptr().cast(), value.len()) };
        if written != value.len() as isize {
            fail(plan, Step::OomScoreAdj);
        }
        // SAFETY: closes the fd opened above.
        unsafe { libc::close(fd) };
    }
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    check(plan, Step::Dumpable, rc.into());
    // SAFETY: setns on a pidfd with CLONE_NEW* flags; joins every namespace at once.
    let rc = unsafe { libc::setns(plan.init_pidfd, plan.namespaces) };
    check(plan, Step::Setns, rc.into());
    // The final process is born in the container's PID namespace (the one the intermediate
    // process now creates children in) as crid's child. A null stack makes clone fork-like:
    // the child runs on its copy of this stack.
    // SAFETY: raw clone without CLONE_VM: the child gets its own copy of the address space
    // and continues below; the pointer arguments are null and unused without the *_TID flags.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: this is the freshly cloned final process, with the plan's fds open.
        unsafe { final_process(plan) }
    }
    check(plan, Step::Clone, pid);
    report(plan.report, REPORT_PID, pid as i32);
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(0) }
}

/// Whether CAP_SETPCAP is in the effective set (gocapability drops bounding capabilities only
/// then).
fn setpcap_effective() -> bool {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData from a version-3 header; both are live locals.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    rc == 0 && data[0].effective & (1 << CAP_SETPCAP) != 0
}

/// Drops every capability up to `cap_last` that `keep` lacks from the bounding set, if
/// CAP_SETPCAP is effective; EINVAL (unknown to this kernel) is ignored, as gocapability does.
fn drop_bounding(plan: &Plan<'_>, keep: u64) {
    if !setpcap_effective() {
        return;
    }
    for cap in 0..=plan.cap_last.min(63) {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 && errno() != libc::EINVAL {
            fail(plan, Step::BoundingSet);
        }
    }
}

/// runc's `fixStdioPermissions`: each stdio fd that is not the container's /dev/null is
/// given to the exec user (its group kept); EINVAL and EPERM are ignored.
fn own_stdio(plan: &Plan<'_>) {
    // SAFETY: stat/fstat fill zeroed local structs; the path is a static NUL-terminated string.
    unsafe {
        let mut null: libc::stat = std::mem::zeroed();
        if libc::stat(c"/dev/null".as_ptr(), &mut null) < 0 {
            fail(plan, Step::StdioOwner);
        }
        // Go's order: stdin, stderr, stdout.
        for fd in [0, 2, 1] {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) < 0 {
                fail(plan, Step::StdioOwner);
            }
            if st.st_rdev == null.st_rdev {
                continue;
            }
            if libc::fchown(fd, plan.uid, st.st_gid) < 0 {
                let e = errno();
                if e != libc::EINVAL && e != libc::EPERM {
                    fail(plan, Step::StdioOwner);
                }
            }
        }
    }
}

/// Closes every fd from 3 up but those of `keep` (-1: none).
fn close_all_but(plan: &Plan<'_>, mut keep: [RawFd; 2]) {
    keep.sort_unstable();
    let mut next: RawFd = 3;
    for fd in keep {
        if fd < next {
            continue;
        }
        if fd > next {
            close_range(plan, next as u32, (fd - 1) as u32);
        }
        next = fd + 1;
    }
    close_range(plan, next as u32, u32::MAX);
}

fn close_range(plan: &Plan<'_>, first: u32, last: u32) {
    // SAFETY: closes fds of this process only; nothing in it uses them after.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    check(plan, Step::CloseOnExec, rc);
}

/// AppArmor: the profile the exec switches to (new attribute path first), written as root
/// through the host's /proc (the label stays across the user change).
fn set_apparmor_exec_label(plan: &Plan<'_>, value: &[u8]) {
    // SAFETY: fstatat fills a zeroed local; openat, write and close act on fds of this
    // process and static NUL-terminated paths.
    unsafe {
        // "thread-self" of the host's procfs: this process has a pid there too.
        let mut path = c"thread-self/attr/apparmor/exec";
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(plan.host_proc, path.as_ptr(), &mut st, 0) < 0 && errno() == libc::ENOENT {
            path = c"thread-self/attr/exec";
        }
        let fd = check(
            plan,
            Step::AppArmor,
            libc::openat(
                plan.host_proc,
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
            .into(),
        ) as c_int;
        if libc::write(fd, value.as_ptr().cast(), value.len()) != value.len() as isize {
            fail(plan, Step::AppArmor);
        }
        libc::close(fd);
    }
}

/// Changes to the working directory without following a magic link (`/proc/self/fd/N`,
/// `/proc/<pid>/cwd`, ...: a container may make its working directory one). The path is
/// absolute and resolved from this process's root, the container's, which `..` cannot leave.
/// Returns -1 with errno set on failure.
fn enter_working_directory(plan: &Plan<'_>) -> c_int {
    // SAFETY: open_how is plain integers, for which zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the NUL-terminated path and the open_how whose size is passed;
    // fchdir and close act on the fd it returned.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            plan.cwd.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        );
        if fd < 0 {
            return -1;
        }
        let rc = libc::fchdir(fd as c_int);
        let saved = errno();
        libc::close(fd as c_int);
        *libc::__errno_location() = saved;
        rc
    }
}

/// runc's check after its CVE-2024-21626 fix: the working directory must be reachable from
/// the root (the kernel's getcwd says "(unreachable)" otherwise).
fn check_working_directory(plan: &Plan<'_>) {
    let mut buffer = [0u8; 4096];
    // SAFETY: getcwd writes at most `buffer.len()` bytes into the local buffer.
    let rc = unsafe { libc::syscall(libc::SYS_getcwd, buffer.as_mut_ptr(), buffer.len()) };
    if rc < 0 {
        fail(plan, Step::CwdOutside);
    }
    if buffer[0] != b'/' {
        // SAFETY: sets this thread's errno, for the report.
        unsafe { *libc::__errno_location() = libc::EXDEV };
        fail(plan, Step::CwdOutside);
    }
}

/// Loads the seccomp filter the way runc does when the spec names no flags.
fn load_seccomp(plan: &Plan<'_>) {
    if let Some(program) = plan.seccomp {
        // SAFETY: PR_SET_SECCOMP reads the sock_fprog and the instructions it points to,
        // both alive in the plan.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                program as *const libc::sock_fprog,
                0,
                0,
            )
        };
        check(plan, Step::Seccomp, rc.into());
    }
}

/// The final process. Never returns: it execs or exits.
///
/// # Safety
/// Must run in the process cloned by [`intermediate`], with every fd of `plan` open.
unsafe fn final_process(plan: &Plan<'_>) -> ! {
    // Wait for crid to have written us into the container's cgroups (EOF: crid gave up).
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(plan.cgroups_joined, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        // SAFETY: _exit ends the process at once.
        unsafe { libc::_exit(1) };
    }

    // SAFETY: each block below makes one async-signal-safe system call on locals or on data
    // of the plan, which outlives this process's use of it.
    unsafe {
        // Signals: crid's handlers are reset by exec anyway; of the signals crid ignores,
        // those runc's Go processes would reset get their default action; the mask is empty.
        for signal in 1..=64 {
            if plan.reset_signals & (1u64 << (signal - 1)) == 0 {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            if libc::sigaction(signal, &action, std::ptr::null_mut()) < 0 {
                fail(plan, Step::Signals);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0 {
            fail(plan, Step::Signals);
        }

        // Stdio: sources below 3 are moved up first so no dup2 overwrites another source.
        let mut sources = plan.stdio;
        for source in &mut sources {
            if *source < 3 {
                *source = check(
                    plan,
                    Step::Stdio,
                    libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, 3).into(),
                ) as RawFd;
            }
        }
        for (target, source) in sources.iter().enumerate() {
            check(
                plan,
                Step::Stdio,
                libc::dup2(*source, target as c_int).into(),
            );
        }

        // nsexec's last stage: a session of its own.
        check(plan, Step::Setsid, libc::setsid().into());

        if plan.raise_nofile {
            let mut limit: libc::rlimit = std::mem::zeroed();
            check(
                plan,
                Step::Nofile,
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit).into(),
            );
            limit.rlim_cur = limit.rlim_max;
            check(
                plan,
                Step::Nofile,
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit).into(),
            );
        }

        // setns_init: the container's session keyring (ENOSYS tolerated, as runc does).
        if let Some(name) = plan.keyring {
            let rc = libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr());
            if rc < 0 && errno() != libc::ENOSYS {
                fail(plan, Step::Keyring);
            }
        }
        if plan.terminal {
            check(
                plan,
                Step::Terminal,
                libc::ioctl(0, libc::TIOCSCTTY, 0).into(),
            );
        }
        // finalizeNamespace's first step (done before the filter: close_range need not be
        // in the container's allowlist). Not only close-on-exec, as runc marks them: every
        // fd of crid this process was forked with is closed now, before anything is resolved
        // in the container, so that no `/proc/self/fd/N` there (a working directory a
        // container made a symlink to one, CVE-2024-21626) can lead to one of crid's files.
        // What remains: stdio, the report pipe, and the host's /proc while the AppArmor
        // label is still to be written.
        let host_proc = if plan.apparmor.is_some() {
            plan.host_proc
        } else {
            -1
        };
        close_all_but(plan, [plan.report, host_proc]);
        if let Some(value) = plan.apparmor {
            set_apparmor_exec_label(plan, value);
            libc::close(plan.host_proc);
        }
        // finalizeNamespace: chdir as root first (EACCES: again as the user). Before the
        // container's seccomp filter, unlike runc: a profile without openat2 (older ones) must
        // not make the exec fail; a profile that forbids chdir, which runc would fail on, is
        // no reason to.
        let mut chdir_later = false;
        if enter_working_directory(plan) < 0 {
            if errno() != libc::EACCES {
                fail(plan, Step::Chdir);
            }
            chdir_later = true;
        }
        if plan.no_new_privs {
            check(
                plan,
                Step::NoNewPrivs,
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
            );
        }
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: before the user change.
        if !plan.no_new_privs {
            load_seccomp(plan);
        }

        drop_bounding(plan, plan.bounding);
        check(
            plan,
            Step::KeepCaps,
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into(),
        );
        own_stdio(plan);
        if let Some(groups) = plan.groups {
            check(
                plan,
                Step::Setgroups,
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
            );
        }
        check(
            plan,
            Step::Setgid,
            libc::syscall(libc::SYS_setgid, plan.gid),
        );
        check(
            plan,
            Step::Setuid,
            libc::syscall(libc::SYS_setuid, plan.uid),
        );
        // A change of uid or gid resets the dumpable flag to fs.suid_dumpable; at 1 the
        // process (still a copy of crid's memory and fds) would be ptraceable by the
        // container's user until its execve.
        check(
            plan,
            Step::Dumpable,
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0).into(),
        );
        if chdir_later {
            check(plan, Step::Chdir, enter_working_directory(plan).into());
        }
        check_working_directory(plan);
        check(
            plan,
            Step::ClearKeepCaps,
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0).into(),
        );
        // gocapability's Apply(CAPS | BOUNDS | AMBS): bounding (only with CAP_SETPCAP still
        // effective), then capset, then each ambient capability raised or lowered with its
        // errors ignored (runc 1.1's vendored gocapability discards them).
        drop_bounding(plan, plan.bounding);
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: plan.effective as u32,
                permitted: plan.permitted as u32,
                inheritable: plan.inheritable as u32,
            },
            CapData {
                effective: (plan.effective >> 32) as u32,
                permitted: (plan.permitted >> 32) as u32,
                inheritable: (plan.inheritable >> 32) as u32,
            },
        ];
        check(
            plan,
            Step::Capabilities,
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
        );
        for cap in 0..=plan.cap_last.min(63) {
            let action = if plan.ambient & (1 << cap) != 0 {
                libc::PR_CAP_AMBIENT_RAISE
            } else {
                libc::PR_CAP_AMBIENT_LOWER
            };
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                action as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            );
        }

        // exec.LookPath (Go 1.19): the first candidate that exists, is not a directory and
        // has an execute bit.
        let mut program: Option<&CStr> = None;
        for (path, refused) in plan.candidates {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(path.as_ptr(), &mut st) < 0 {
                continue;
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR || st.st_mode & 0o111 == 0 {
                continue;
            }
            if *refused {
                *libc::__errno_location() = libc::EPERM;
                fail(plan, Step::Lookup);
            }
            program = Some(path);
            break;
        }
        let Some(program) = program else {
            *libc::__errno_location() = libc::ENOENT;
            fail(plan, Step::Lookup)
        };

        // With no_new_privs the filter comes as late as possible, as in runc.
        if plan.no_new_privs {
            load_seccomp(plan);
        }
        libc::execve(program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(plan, Step::Exec)
    }
}
