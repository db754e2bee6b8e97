//! Seccomp: the profile a container gets from its security context. RuntimeDefault is crid's
//! built-in allowlist in the spirit of CRI-O's and docker's default: everything not listed
//! fails with EPERM; namespace-creating `clone` flags, `unshare`, `setns`, `mount` and friends
//! need CAP_SYS_ADMIN; `clone3` fails with ENOSYS (so libcs fall back to the filterable
//! `clone`) unless the container has CAP_SYS_ADMIN. Localhost reads an OCI/docker-format
//! profile file; Unconfined (and privileged containers) get none. The deprecated string
//! field kubelet may still send (`runtime/default`, `docker/default`, `unconfined`,
//! `localhost/<path>`) is honoured when the structured one is absent.

use std::collections::BTreeSet;
use std::path::Path;

use crid_common::regular_file;
use crid_proto::cri;
use oci_spec::runtime::LinuxSeccomp;
use serde_json::{json, Value};

use crate::spec_error::SpecError;

/// Largest Localhost profile read.
const MAX_PROFILE_BYTES: u64 = 1 << 20;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
/// clone flags that create namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET (docker's mask).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// System calls every container may make.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "arch_prctl",
    "modify_ldt",
    "socket",
    "uretprobe",
];

/// System calls allowed only with CAP_SYS_ADMIN (namespaces, mounts, and the like).
const WITH_SYS_ADMIN: &[&str] = &[
    "bpf",
    "clone3",
    "fanotify_init",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "perf_event_open",
    "quotactl",
    "quotactl_fd",
    "setdomainname",
    "sethostname",
    "setns",
    "syslog",
    "umount",
    "umount2",
    "unshare",
];

/// Which profile a container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// The requested profile: the structured field, else the deprecated string.
pub fn requested(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<Profile, SpecError> {
    let Some(sc) = sc else {
        return Ok(Profile::Unconfined);
    };
    if let Some(profile) = &sc.seccomp {
        use cri::security_profile::ProfileType;
        return match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Profile::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(Profile::Unconfined),
            Ok(ProfileType::Localhost) => Ok(Profile::Localhost(profile.localhost_ref.clone())),
            Err(_) => Err(SpecError::Invalid(format!(
                "config.linux.security_context.seccomp: unknown profile type {}",
                profile.profile_type
            ))),
        };
    }
    // The deprecated field is what older kubelets send; it is read only when the new one is
    // absent.
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(Profile::Unconfined),
        "runtime/default" | "docker/default" => Ok(Profile::RuntimeDefault),
        other => match other.strip_prefix("localhost/") {
            Some(path) => Ok(Profile::Localhost(path.to_owned())),
            None => Err(SpecError::Invalid(format!(
                "config.linux.security_context.seccomp_profile_path: unknown profile {other:?}"
            ))),
        },
    }
}

/// The built-in default profile for a container with capabilities `caps`.
pub fn runtime_default(caps: &BTreeSet<String>) -> Result<LinuxSeccomp, SpecError> {
    let sys_admin = caps.contains("CAP_SYS_ADMIN");
    let mut syscalls = vec![json!({ "names": ALLOWED, "action": "SCMP_ACT_ALLOW" })];
    if sys_admin {
        syscalls.push(json!({ "names": WITH_SYS_ADMIN, "action": "SCMP_ACT_ALLOW" }));
        syscalls.push(json!({ "names": ["clone"], "action": "SCMP_ACT_ALLOW" }));
    } else {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
        syscalls
            .push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }));
    }
    // personality: only the harmless personas (docker's rule).
    for persona in [0x0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": persona, "op": "SCMP_CMP_EQ" }],
        }));
    }
    for (cap, names) in [
        (
            "CAP_SYS_PTRACE",
            &[
                "ptrace",
                "process_vm_readv",
                "process_vm_writev",
                "kcmp",
                "pidfd_getfd",
            ][..],
        ),
        ("CAP_SYS_CHROOT", &["chroot"][..]),
        (
            "CAP_SYS_MODULE",
            &["init_module", "finit_module", "delete_module"][..],
        ),
        ("CAP_SYS_BOOT", &["reboot"][..]),
        (
            "CAP_SYS_TIME",
            &["settimeofday", "stime", "clock_settime", "clock_settime64"][..],
        ),
        ("CAP_SYS_PACCT", &["acct"][..]),
        ("CAP_SYS_RAWIO", &["iopl", "ioperm"][..]),
        (
            "CAP_SYS_NICE",
            &[
                "get_mempolicy",
                "mbind",
                "set_mempolicy",
                "set_mempolicy_home_node",
            ][..],
        ),
        ("CAP_SYSLOG", &["syslog"][..]),
        ("CAP_BPF", &["bpf"][..]),
        ("CAP_PERFMON", &["perf_event_open"][..]),
        ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"][..]),
        ("CAP_SYS_TTY_CONFIG", &["vhangup"][..]),
    ] {
        if caps.contains(cap) {
            syscalls.push(json!({ "names": names, "action": "SCMP_ACT_ALLOW" }));
        }
    }
    let profile = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": syscalls,
    });
    serde_json::from_value(profile)
        .map_err(|e| SpecError::Invalid(format!("built-in seccomp profile: {e}")))
}

/// Reads a Localhost profile (an absolute path on the host).
pub fn localhost(path: &str) -> Result<LinuxSeccomp, SpecError> {
    let bad = |why: String| {
        SpecError::Invalid(format!(
            "config.linux.security_context.seccomp: localhost profile {path:?}: {why}"
        ))
    };
    if !Path::new(path).is_absolute() {
        return Err(bad("not an absolute path".into()));
    }
    // The path is located with O_PATH and opened for reading only once known to be a regular
    // file: crid runs as the host's root outside any device cgroup, and a request naming
    // /dev/watchdog (or a FIFO, or a /proc file) must not make it open that.
    let bytes = regular_file::read_host_file(Path::new(path), MAX_PROFILE_BYTES)
        .map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
    let mut doc: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    // Docker-format profiles name architectures through an archMap; OCI wants a list.
    if doc.get("architectures").is_none() {
        if let Some(map) = doc.get("archMap").and_then(Value::as_array).cloned() {
            let arches: Vec<Value> = map
                .iter()
                .filter_map(|a| a.get("architecture").cloned())
                .collect();
            doc["architectures"] = Value::Array(arches);
        }
    }
    serde_json::from_value(doc).map_err(|e| bad(e.to_string()))
}

/// The profile for the spec (None: unconfined).
pub fn profile(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    caps: &BTreeSet<String>,
    privileged: bool,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let requested = requested(sc)?;
    if privileged {
        return Ok(None);
    }
    match requested {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => runtime_default(caps).map(Some),
        Profile::Localhost(path) => localhost(&path).map(Some),
    }
}

#[cfg(test)]
mod tests {

    /// A Localhost profile path naming a FIFO or a device is refused without being opened for
    /// reading: a writer waiting on the FIFO is not woken (the kernel wakes a waiting writer on
    /// any reader's open, even one closed at once).
    #[test]
    fn a_localhost_profile_that_is_a_fifo_or_a_device_is_never_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("profile.json");
        let probe = crid_common::test_util::FifoProbe::new(&fifo);
        let err = localhost(fifo.to_str().expect("utf-8")).expect_err("a fifo");
        assert!(
            !probe.was_opened(std::time::Duration::from_millis(300)),
            "crid opened the fifo for reading"
        );
        assert!(
            err.to_string().contains("not a regular file (a fifo)"),
            "{err}"
        );
        assert!(
            err.to_string().contains(fifo.to_str().expect("utf-8")),
            "{err}"
        );
        let err = localhost("/dev/null").expect_err("a device");
        assert!(
            err.to_string()
                .ends_with("\"/dev/null\": not a regular file (a character device)"),
            "{err}"
        );
        let err = localhost("/proc/self/status").expect_err("procfs");
        assert!(err.to_string().contains("kernel file system"), "{err}");
    }

    #[test]
    fn a_localhost_profile_that_is_a_fifo_or_too_big_is_refused_without_hanging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("profile.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let err = localhost(fifo.to_str().expect("utf-8")).expect_err("a fifo");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_PROFILE_BYTES + 1) as usize]).expect("write");
        let err = localhost(big.to_str().expect("utf-8")).expect_err("too big");
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    use super::*;

    #[test]
    #[allow(deprecated)]
    fn requested_profiles_from_both_fields() {
        let mut sc = cri::LinuxContainerSecurityContext::default();
        assert_eq!(requested(Some(&sc)).expect("empty"), Profile::Unconfined);
        sc.seccomp_profile_path = "runtime/default".into();
        assert_eq!(requested(Some(&sc)).expect("old"), Profile::RuntimeDefault);
        sc.seccomp_profile_path = "localhost//etc/p.json".into();
        assert_eq!(
            requested(Some(&sc)).expect("old"),
            Profile::Localhost("/etc/p.json".into())
        );
        sc.seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        });
        assert_eq!(requested(Some(&sc)).expect("new wins"), Profile::Unconfined);
        sc.seccomp = None;
        sc.seccomp_profile_path = "bogus".into();
        assert!(requested(Some(&sc)).is_err());
    }

    #[test]
    fn default_profile_parses_and_depends_on_sys_admin() {
        let plain = serde_json::to_value(runtime_default(&BTreeSet::new()).expect("profile"))
            .expect("json");
        let text = plain.to_string();
        assert!(text.contains("SCMP_CMP_MASKED_EQ"));
        assert!(!text.contains("\"unshare\""));
        let admin: BTreeSet<String> = ["CAP_SYS_ADMIN".to_owned()].into();
        let text = serde_json::to_value(runtime_default(&admin).expect("profile"))
            .expect("json")
            .to_string();
        assert!(text.contains("\"unshare\""));
        assert!(localhost("/nonexistent/profile.json").is_err());
        assert!(localhost("relative.json").is_err());
    }
}
