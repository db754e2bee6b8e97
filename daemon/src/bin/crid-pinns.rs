//! crid-pinns: creates a pod's namespaces and pins them to files, so they live without any
//! process in them (a pod needs no infra container; CRI-O's pinns does the same).
//!
//! `crid-pinns --dir DIR --id ID [--net] [--ipc] [--uts] [--pid] [--hostname NAME] [--sysctl K=V]…`
//! unshares the namespaces in this (single-threaded) process, sets the hostname and the
//! sysctls inside them, then bind-mounts `/proc/self/ns/<kind>` onto `DIR/<kind>/ID`. crid runs
//! it as a separate program because unshare must not happen in its threaded async runtime.
//!
//! A PID namespace cannot live without its init process, so `--pid` also forks a holder: a
//! process that is PID 1 of the new namespace and only sleeps (reaping nothing: SIGCHLD is
//! ignored, so the kernel reaps). Its namespace is pinned at `DIR/pid/ID` and its pid printed
//! on standard output as `{"holder_pid":N}`; killing it ends the namespace and everything in it.
//!
//! On any failure everything made so far is undone; the exit status is 0 only on success.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "crid-pinns", version)]
struct Args {
    /// Directory under which `<kind>/<id>` files are made.
    #[arg(long)]
    dir: PathBuf,
    /// The pod sandbox id (names the files).
    #[arg(long)]
    id: String,
    #[arg(long)]
    net: bool,
    #[arg(long)]
    ipc: bool,
    #[arg(long)]
    uts: bool,
    /// Also make a PID namespace, held by a forked holder process.
    #[arg(long)]
    pid: bool,
    /// Hostname inside the new UTS namespace.
    #[arg(long)]
    hostname: Option<String>,
    /// A namespaced sysctl to set inside the new namespaces, `key=value` (repeatable).
    #[arg(long = "sysctl")]
    sysctls: Vec<String>,
}

/// Longest hostname (HOST_NAME_MAX).
const MAX_HOSTNAME: usize = 64;

fn fail(message: String) -> ! {
    eprintln!("crid-pinns: {message}");
    std::process::exit(1);
}

/// `/proc/sys/…` for a sysctl key; keys hold only `[A-Za-z0-9_.-]` segments (no `..`, no `/`),
/// values no newline (CVE-2022-0811 came from an unchecked value).
fn sysctl_path(key: &str, value: &str) -> Result<PathBuf, String> {
    if !crid_daemon::sandbox::sysctl::well_formed_key(key) {
        return Err(format!("invalid sysctl key {key:?}"));
    }
    if value.contains(['\n', '\0', '+', '=']) {
        return Err(format!("invalid value {value:?} for sysctl {key}"));
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

struct Pinned {
    files: Vec<PathBuf>,
    holder: Option<libc::pid_t>,
}

impl Pinned {
    fn undo(&self) {
        if let Some(pid) = self.holder {
            // SAFETY: kill takes plain integers; the pid is our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for file in &self.files {
            if let Ok(c) = CString::new(file.as_os_str().as_encoded_bytes()) {
                // SAFETY: c is NUL-terminated; MNT_DETACH on a non-mount is a harmless EINVAL.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = std::fs::remove_file(file);
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    crid_common::id::validate(&args.id).map_err(|e| e.to_string())?;
    if let Some(name) = &args.hostname {
        if !args.uts {
            return Err("--hostname needs --uts".into());
        }
        if name.is_empty() || name.len() > MAX_HOSTNAME || name.contains(['\0', '/']) {
            return Err(format!("invalid hostname {name:?}"));
        }
    }
    let mut sysctls = Vec::new();
    for pair in &args.sysctls {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("sysctl {pair:?} is not key=value"))?;
        sysctls.push((sysctl_path(key, value)?, value.to_owned(), key.to_owned()));
    }
    let kinds: Vec<(&str, libc::c_int)> = [
        (args.net, "net", libc::CLONE_NEWNET),
        (args.ipc, "ipc", libc::CLONE_NEWIPC),
        (args.uts, "uts", libc::CLONE_NEWUTS),
    ]
    .into_iter()
    .filter(|(on, _, _)| *on)
    .map(|(_, kind, flag)| (kind, flag))
    .collect();
    if kinds.is_empty() && !args.pid {
        return Err("no namespace requested (--net, --ipc, --uts, --pid)".into());
    }

    let mut pinned = Pinned {
        files: Vec::new(),
        holder: None,
    };
    let result = (|| {
        let pinned_kinds = kinds
            .iter()
            .map(|(kind, _)| *kind)
            .chain(args.pid.then_some("pid"));
        for kind in pinned_kinds {
            let dir = args.dir.join(kind);
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let file = dir.join(&args.id);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
                .map_err(|e| format!("create {}: {e}", file.display()))?;
            pinned.files.push(file);
        }
        let flags = kinds.iter().fold(0, |acc, (_, flag)| acc | flag);
        // SAFETY: unshare takes flags only; this process has a single thread.
        if flags != 0 && unsafe { libc::unshare(flags) } != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        if args.net {
            loopback_up()?;
        }
        if let Some(name) = &args.hostname {
            // SAFETY: the pointer and length describe `name`'s bytes.
            if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
                return Err(format!("sethostname: {}", std::io::Error::last_os_error()));
            }
        }
        for (path, value, key) in &sysctls {
            std::fs::write(path, value).map_err(|e| format!("set sysctl {key}: {e}"))?;
        }
        for (kind, _) in &kinds {
            pin(
                &format!("/proc/self/ns/{kind}"),
                &args.dir.join(kind).join(&args.id),
            )?;
        }
        if args.pid {
            let holder = fork_pid_holder()?;
            pinned.holder = Some(holder);
            pin(
                &format!("/proc/{holder}/ns/pid"),
                &args.dir.join("pid").join(&args.id),
            )?;
            println!("{{\"holder_pid\":{holder}}}");
        }
        Ok(())
    })();
    if result.is_err() {
        pinned.undo();
    }
    result
}

/// Brings up `lo` in the new network namespace, as every pod needs it. The loopback
/// interface is not a network attachment, so it is not left to a CNI plugin (containerd
/// also sets it up on its own).
fn loopback_up() -> Result<(), String> {
    let err = |what: &str| format!("{what} lo: {}", std::io::Error::last_os_error());
    // SAFETY: socket takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket for"));
    }
    // SAFETY: fd was just opened and is owned here.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: request is a valid ifreq naming "lo"; the kernel fills in its flags.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } != 0 {
        return Err(err("get flags of"));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: request is a valid ifreq with the flags to set.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } != 0 {
        return Err(err("bring up"));
    }
    Ok(())
}

fn pin(source: &str, target: &Path) -> Result<(), String> {
    let source_c = CString::new(source).map_err(|e| e.to_string())?;
    let target_c =
        CString::new(target.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: both paths are NUL-terminated; a bind mount has no fs type or data.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "pin {source} at {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Makes a new PID namespace and forks its init: a holder that sleeps until killed.
fn fork_pid_holder() -> Result<libc::pid_t, String> {
    // SAFETY: unshare takes flags only; this process has a single thread.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(format!(
            "unshare pid namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: single-threaded, so the child may run anything; it only makes plain syscalls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        hold();
    }
    Ok(pid)
}

/// The holder's life: detached from crid's session and stdio, deaf to every signal that can be
/// ignored (as PID 1 of its namespace, only SIGKILL from outside ends it), never reaping.
fn hold() -> ! {
    // SAFETY: plain syscalls on constant arguments; no memory is shared with the parent.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        loop {
            libc::pause();
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Err(message) = run(&args) {
        fail(message);
    }
}

#[cfg(test)]
mod tests {
    use super::sysctl_path;

    #[test]
    fn sysctl_keys_and_values_are_checked() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward", "1").expect("ok"),
            std::path::Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(sysctl_path("net.core.somaxconn", "1024").is_ok());
        for key in [
            "",
            "net..x",
            "../etc",
            "net/ipv4",
            "kernel.shm_rmid_forced/../x",
        ] {
            assert!(sysctl_path(key, "1").is_err(), "{key}");
        }
        // CVE-2022-0811: a value smuggling a second assignment.
        assert!(sysctl_path("kernel.shm_rmid_forced", "1+kernel.core_pattern=|/x").is_err());
        assert!(sysctl_path("net.ipv4.ip_forward", "1\nkernel.x=2").is_err());
    }
}
