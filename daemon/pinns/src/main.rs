//! crid-pinns: creates a pod's namespaces and pins them to files, so they live without any
//! process in them (a pod needs no infra container; CRI-O's pinns does the same).
//!
//! `crid-pinns --dir DIR --id ID [--net] [--ipc] [--uts] [--pid] [--hostname NAME] [--sysctl K=V]…
//! [--user --uid-map C:H:L… --gid-map C:H:L…]`
//! unshares the namespaces in this (single-threaded) process, sets the hostname and the
//! sysctls inside them, then bind-mounts `/proc/self/ns/<kind>` onto `DIR/<kind>/ID`. crid runs
//! it as a separate program because unshare must not happen in its threaded async runtime.
//!
//! A PID namespace cannot live without its init process, so `--pid` also forks a holder: a
//! process that is PID 1 of the new namespace and only sleeps (reaping nothing: SIGCHLD is
//! ignored, so the kernel reaps). Its namespace is pinned at `DIR/pid/ID` and its pid printed
//! on standard output as `{"holder_pid":N}`; killing it ends the namespace and everything in it.
//! The holder keeps no fd, is not dumpable, and lives in a mount namespace of its own whose
//! only mount is an empty read-only tmpfs: the pod's containers see it as their `/proc/1`, and
//! neither its `mountinfo` nor its `root` (reachable to a container given CAP_SYS_PTRACE)
//! shows anything of the host.
//!
//! `--user` makes a user namespace with the given mappings first and every other namespace
//! inside it (owned by it), so that container root, which is root only in that user
//! namespace, has its capabilities over the pod's network, IPC and UTS namespaces (CRI-O's
//! pinns does the same). A process cannot write its own namespace's mappings, so a child does
//! the unsharing: it makes the user namespace and waits; this process writes the child's
//! `uid_map` and `gid_map`; the child becomes root of the new namespace (its host ids are the
//! mapped ones, never the host's root), makes the other namespaces, sets them up, forks the
//! PID holder, and reports; this process pins the child's namespaces, then lets it exit.
//!
//! `--probe-idmap DIR` checks that the kernel id-maps overlay layers the way crid does for
//! pods with a user namespace (an id-mapped clone of a directory in DIR as an overlay lower
//! layer), undoes it, and exits 0 when it works.
//!
//! On any failure everything made so far is undone; the exit status is 0 only on success.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use clap::Parser;
use crid_common::capabilities::{CapData, CapHeader, LINUX_CAPABILITY_VERSION_3};

#[derive(Debug, Parser)]
#[command(name = "crid-pinns", version)]
struct Args {
    /// Directory under which `<kind>/<id>` files are made.
    #[arg(long, required_unless_present = "probe_idmap")]
    dir: Option<PathBuf>,
    /// The pod sandbox id (names the files).
    #[arg(long, required_unless_present = "probe_idmap")]
    id: Option<String>,
    #[arg(long)]
    net: bool,
    #[arg(long)]
    ipc: bool,
    #[arg(long)]
    uts: bool,
    /// Also make a PID namespace, held by a forked holder process.
    #[arg(long)]
    pid: bool,
    /// Make a user namespace (with --uid-map and --gid-map) and the others inside it.
    #[arg(long)]
    user: bool,
    /// A uid mapping of the user namespace, `container:host:length` (repeatable).
    #[arg(long = "uid-map", value_parser = parse_mapping)]
    uid_maps: Vec<Mapping>,
    /// A gid mapping of the user namespace, `container:host:length` (repeatable).
    #[arg(long = "gid-map", value_parser = parse_mapping)]
    gid_maps: Vec<Mapping>,
    /// Hostname inside the new UTS namespace.
    #[arg(long)]
    hostname: Option<String>,
    /// A namespaced sysctl to set inside the new namespaces, `key=value` (repeatable).
    #[arg(long = "sysctl")]
    sysctls: Vec<String>,
    /// Check id-mapped overlay layers in this (existing, empty) directory, then exit.
    #[arg(long, conflicts_with_all = ["net", "ipc", "uts", "pid", "user", "hostname", "sysctls"])]
    probe_idmap: Option<PathBuf>,
}

/// Longest hostname (HOST_NAME_MAX).
const MAX_HOSTNAME: usize = 64;
/// Most mapping lines a user namespace takes (the kernel's limit since Linux 4.15).
const MAX_MAPPINGS: usize = 340;
/// The mapping of the probe's user namespace (any valid range will do).
const PROBE_MAPPING: Mapping = Mapping {
    container: 0,
    host: 1 << 20,
    length: 65536,
};

fn fail(message: String) -> ! {
    eprintln!("crid-pinns: {message}");
    std::process::exit(1);
}

/// One line of a user namespace's `uid_map` or `gid_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    container: u32,
    host: u32,
    length: u32,
}

/// `container:host:length`, a non-empty range that does not wrap.
fn parse_mapping(text: &str) -> Result<Mapping, String> {
    let numbers: Vec<u32> = text
        .split(':')
        .map(|n| n.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("mapping {text:?} is not container:host:length"))?;
    let [container, host, length] = numbers[..] else {
        return Err(format!("mapping {text:?} is not container:host:length"));
    };
    if length == 0 || container.checked_add(length).is_none() || host.checked_add(length).is_none()
    {
        return Err(format!("mapping {text:?} is empty or wraps"));
    }
    Ok(Mapping {
        container,
        host,
        length,
    })
}

/// The text of a `uid_map` or `gid_map` (written in one write, as the kernel requires).
fn map_text(mappings: &[Mapping]) -> String {
    mappings
        .iter()
        .map(|m| format!("{} {} {}\n", m.container, m.host, m.length))
        .collect()
}

/// `/proc/sys/…` for a sysctl key; keys hold only `[A-Za-z0-9_.-]` segments (no `..`, no `/`),
/// values no newline (CVE-2022-0811 came from an unchecked value).
fn sysctl_path(key: &str, value: &str) -> Result<PathBuf, String> {
    if !crid_common::sysctl::well_formed_key(key) {
        return Err(format!("invalid sysctl key {key:?}"));
    }
    if value.contains(['\n', '\0', '+', '=']) {
        return Err(format!("invalid value {value:?} for sysctl {key}"));
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

/// What exists so far, to undo on failure.
struct Pinned {
    files: Vec<PathBuf>,
    holder: Option<libc::pid_t>,
    /// The child that made a user namespace, while it lives.
    child: Option<libc::pid_t>,
}

impl Pinned {
    fn undo(&mut self) {
        for pid in [self.holder, self.child].into_iter().flatten() {
            // SAFETY: kill takes plain integers; the pid is a process of ours not reaped yet
            // (the holder is reaped by nobody; its pid stays ours until it is killed).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(child) = self.child.take() {
            reap(child);
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

/// Waits for a child of ours to end.
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid writes the status of our own child into `status`.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

/// What is set up inside the new namespaces.
struct Inside<'a> {
    /// CLONE_NEW* flags of the network, IPC and UTS namespaces asked for.
    flags: libc::c_int,
    net: bool,
    hostname: Option<&'a str>,
    /// (path under /proc/sys, value, key)
    sysctls: &'a [(PathBuf, String, String)],
    /// With a PID namespace: the holder's image (see [`holder_image`]).
    holder_image: Option<BorrowedFd<'a>>,
}

/// Unshares the namespaces, brings up `lo`, sets the hostname and the sysctls, and forks the
/// PID namespace's holder (whose pid is returned).
fn make_inside(inside: &Inside<'_>) -> Result<Option<libc::pid_t>, String> {
    // SAFETY: unshare takes flags only; this process has a single thread.
    if inside.flags != 0 && unsafe { libc::unshare(inside.flags) } != 0 {
        return Err(format!("unshare: {}", std::io::Error::last_os_error()));
    }
    if inside.net {
        loopback_up()?;
    }
    if let Some(name) = inside.hostname {
        // SAFETY: the pointer and length describe `name`'s bytes.
        if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
            return Err(format!("sethostname: {}", std::io::Error::last_os_error()));
        }
    }
    for (path, value, key) in inside.sysctls {
        std::fs::write(path, value).map_err(|e| format!("set sysctl {key}: {e}"))?;
    }
    if let Some(image) = inside.holder_image {
        return fork_pid_holder(image).map(Some);
    }
    Ok(None)
}

fn run(args: &Args) -> Result<(), String> {
    if let Some(scratch) = &args.probe_idmap {
        return probe_idmap(scratch);
    }
    let (Some(dir), Some(id)) = (&args.dir, &args.id) else {
        return Err("--dir and --id are needed".into());
    };
    crid_common::id::validate(id).map_err(|e| e.to_string())?;
    if let Some(name) = &args.hostname {
        if !args.uts {
            return Err("--hostname needs --uts".into());
        }
        if name.is_empty() || name.len() > MAX_HOSTNAME || name.contains(['\0', '/']) {
            return Err(format!("invalid hostname {name:?}"));
        }
    }
    if args.user {
        for (name, maps) in [("--uid-map", &args.uid_maps), ("--gid-map", &args.gid_maps)] {
            if maps.is_empty() || maps.len() > MAX_MAPPINGS {
                return Err(format!(
                    "--user needs 1 to {MAX_MAPPINGS} {name} mappings, {} given",
                    maps.len()
                ));
            }
        }
    } else if !(args.uid_maps.is_empty() && args.gid_maps.is_empty()) {
        return Err("--uid-map and --gid-map need --user".into());
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
    if kinds.is_empty() && !args.pid && !args.user {
        return Err("no namespace requested (--net, --ipc, --uts, --pid, --user)".into());
    }
    let image = args.pid.then(holder_image).transpose()?;
    let inside = Inside {
        flags: kinds.iter().fold(0, |acc, (_, flag)| acc | flag),
        net: args.net,
        hostname: args.hostname.as_deref(),
        sysctls: &sysctls,
        holder_image: image.as_ref().map(AsFd::as_fd),
    };

    let mut pinned = Pinned {
        files: Vec::new(),
        holder: None,
        child: None,
    };
    let result = (|| {
        let pinned_kinds = args
            .user
            .then_some("user")
            .into_iter()
            .chain(kinds.iter().map(|(kind, _)| *kind))
            .chain(args.pid.then_some("pid"));
        for kind in pinned_kinds {
            let kind_dir = dir.join(kind);
            std::fs::create_dir_all(&kind_dir)
                .map_err(|e| format!("create {}: {e}", kind_dir.display()))?;
            let file = kind_dir.join(id);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
                .map_err(|e| format!("create {}: {e}", file.display()))?;
            pinned.files.push(file);
        }
        // Where the namespaces are read from: this process, or the child in the user
        // namespace.
        let (owner, holder, gate) = if args.user {
            let (holder, gate) = make_in_user_namespace(args, &inside, &mut pinned)?;
            (pinned.child.unwrap_or(0).to_string(), holder, Some(gate))
        } else {
            let holder = make_inside(&inside)?;
            pinned.holder = holder;
            ("self".to_owned(), holder, None)
        };
        for kind in args
            .user
            .then_some("user")
            .into_iter()
            .chain(kinds.iter().map(|(kind, _)| *kind))
        {
            pin(
                &format!("/proc/{owner}/ns/{kind}"),
                &dir.join(kind).join(id),
            )?;
        }
        if let Some(holder) = holder {
            pin(&format!("/proc/{holder}/ns/pid"), &dir.join("pid").join(id))?;
        }
        Ok((holder, gate))
    })();
    match result {
        Ok((holder, gate)) => {
            // The child (with a user namespace) ends once its namespaces are pinned.
            drop(gate);
            if let Some(child) = pinned.child.take() {
                reap(child);
            }
            if let Some(holder) = holder {
                println!("{{\"holder_pid\":{holder}}}");
            }
            Ok(())
        }
        Err(err) => {
            pinned.undo();
            Err(err)
        }
    }
}

/// A pipe whose ends are closed on exec.
fn pipe() -> Result<(File, File), String> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("make a pipe: {e}"))?;
    Ok((File::from(read), File::from(write)))
}

/// Forks the child that makes a user namespace and waits; returns its pid and the pipes to
/// talk to it (its reports, and the end whose close lets it go on or end).
fn fork_userns_child(
    then: impl FnOnce() -> Result<String, String>,
) -> Result<(libc::pid_t, BufReader<File>, File), String> {
    let (from_child, mut to_parent) = pipe()?;
    let (mut from_parent, to_child) = pipe()?;
    // SAFETY: this process is single-threaded, so the child may run anything.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(from_child);
        drop(to_child);
        let (report, code) = match userns_child(&mut to_parent, &mut from_parent, then) {
            Ok(report) => (report, 0),
            Err(message) => (format!("error {}", message.replace('\n', " ")), 1),
        };
        let _ = writeln!(to_parent, "{report}");
        // Stay until the parent has pinned our namespaces (it closes its end, or kills us).
        let _ = from_parent.read(&mut [0u8; 1]);
        // SAFETY: _exit ends this forked child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    drop(to_parent);
    drop(from_parent);
    Ok((pid, BufReader::new(from_child), to_child))
}

/// The child's part: a user namespace, announced; then, once the parent has written its
/// mappings (one byte on `from_parent`), `then`.
fn userns_child(
    to_parent: &mut File,
    from_parent: &mut File,
    then: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    // SAFETY: unshare takes flags only; this forked child has a single thread.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(format!(
            "unshare user namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    writeln!(to_parent, "userns").map_err(|e| format!("report: {e}"))?;
    let mut byte = [0u8; 1];
    match from_parent.read(&mut byte) {
        Ok(1) => {}
        _ => return Err("crid-pinns did not write the mappings".into()),
    }
    then()
}

/// Reads the child's next report line; `error …` lines become errors.
fn next_report(reports: &mut BufReader<File>) -> Result<String, String> {
    let mut line = String::new();
    reports
        .by_ref()
        .take(4096)
        .read_line(&mut line)
        .map_err(|e| format!("read the child's report: {e}"))?;
    let line = line.trim_end().to_owned();
    if line.is_empty() {
        return Err("the child making the user namespace ended early".into());
    }
    match line.strip_prefix("error ") {
        Some(message) => Err(message.to_owned()),
        None => Ok(line),
    }
}

/// Writes `/proc/<pid>/uid_map` and `gid_map`.
fn write_maps(pid: libc::pid_t, uids: &[Mapping], gids: &[Mapping]) -> Result<(), String> {
    for (file, maps) in [("uid_map", uids), ("gid_map", gids)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, map_text(maps)).map_err(|e| format!("write {path}: {e}"))?;
    }
    Ok(())
}

/// Becomes root of the (new) user namespace: no supplementary groups, uid and gid 0 (the
/// mapped host ids), keeping the namespace's capabilities.
fn become_namespace_root() -> Result<(), String> {
    // SAFETY: plain syscalls on constant arguments; a null list with size 0 clears the groups.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setresgid(0, 0, 0) != 0 {
            return Err(format!("setresgid 0: {}", std::io::Error::last_os_error()));
        }
        if libc::setresuid(0, 0, 0) != 0 {
            return Err(format!("setresuid 0: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Makes the user namespace through a child, and the other namespaces inside it; returns the
/// PID holder and the child's gate: the child (in `pinned.child`) lives, holding its
/// namespaces, until the gate is dropped.
fn make_in_user_namespace(
    args: &Args,
    inside: &Inside<'_>,
    pinned: &mut Pinned,
) -> Result<(Option<libc::pid_t>, File), String> {
    let (child, mut reports, mut to_child) = fork_userns_child(|| {
        become_namespace_root()?;
        let holder = make_inside(inside)?;
        Ok(format!("ready {}", holder.unwrap_or(0)))
    })?;
    pinned.child = Some(child);
    if next_report(&mut reports)? != "userns" {
        return Err("unexpected report from the child making the user namespace".into());
    }
    write_maps(child, &args.uid_maps, &args.gid_maps)?;
    to_child
        .write_all(b"m")
        .map_err(|e| format!("resume the child: {e}"))?;
    let ready = next_report(&mut reports)?;
    let holder: libc::pid_t = ready
        .strip_prefix("ready ")
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| format!("unexpected report {ready:?}"))?;
    let holder = (holder > 0).then_some(holder);
    pinned.holder = holder;
    Ok((holder, to_child))
}

/// `--probe-idmap`: an id-mapped clone of `scratch/lower` as the lower layer of an overlay on
/// `scratch/merged`, in a fresh user namespace; everything undone after.
fn probe_idmap(scratch: &Path) -> Result<(), String> {
    let sub = |name: &str| scratch.join(name);
    for name in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir(sub(name))
            .map_err(|e| format!("create {}: {e}", sub(name).display()))?;
    }
    let (child, mut reports, to_child) = fork_userns_child(|| Ok("ready".to_owned()))?;
    let result = (|| {
        if next_report(&mut reports)? != "userns" {
            return Err("unexpected report from the probe's child".to_owned());
        }
        write_maps(child, &[PROBE_MAPPING], &[PROBE_MAPPING])?;
        let userns_path = format!("/proc/{child}/ns/user");
        let userns: OwnedFd = File::open(&userns_path)
            .map_err(|e| format!("open {userns_path}: {e}"))?
            .into();
        let layers =
            crid_mount::idmap::IdmappedLayers::stage(scratch, &[sub("lower")], userns.as_fd())
                .map_err(|e| format!("id-map {}: {e}", sub("lower").display()))?;
        crid_mount::overlay::mount_overlay(
            &layers.paths,
            &sub("upper"),
            &sub("work"),
            &sub("merged"),
        )
        .map_err(|e| crid_common::error_chain::error_chain(&e))?;
        let unmounted = crid_mount::overlay::unmount_rootfs(&sub("merged"))
            .map_err(|e| crid_common::error_chain::error_chain(&e));
        layers
            .release()
            .map_err(|e| format!("unmount the id-mapped layer: {e}"))?;
        unmounted
    })();
    drop(to_child);
    // SAFETY: kill takes plain integers; `child` is our unreaped child.
    unsafe { libc::kill(child, libc::SIGKILL) };
    reap(child);
    let _ = crid_mount::idmap::unstage_all(scratch);
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

/// The fd on which the holder reports, across its exec: one byte, 0 once set up, or the
/// [`HolderStep`] that failed followed by its errno (4 bytes, native order).
const HOLDER_REPORT_FD: libc::c_int = 3;

/// The argument with which crid-pinns runs as a PID namespace's holder (after its exec).
const HOLD_ARGUMENT: &str = "--hold-pid-namespace";

/// What the holder was doing when it failed (its report byte).
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum HolderStep {
    Exec = 1,
    MountNamespace,
    Privileges,
    Seccomp,
}

impl HolderStep {
    /// What the step with report byte `byte` does.
    fn describe(byte: u8) -> &'static str {
        const STEPS: [(HolderStep, &str); 4] = [
            (HolderStep::Exec, "exec its read-only image"),
            (HolderStep::MountNamespace, "make its empty mount namespace"),
            (HolderStep::Privileges, "drop its capabilities"),
            (HolderStep::Seccomp, "load its seccomp filter"),
        ];
        STEPS
            .iter()
            .find(|(step, _)| *step as u8 == byte)
            .map_or("report", |(_, what)| what)
    }
}

/// The holder's program: this executable, through a detached read-only bind mount of it. The
/// holder is PID 1 of the pod's PID namespace, so a container given CAP_SYS_PTRACE can open
/// it as `/proc/1/exe`; through this mount no such open can ever write the host's binary
/// (CVE-2019-5736's overwrite, which runc closes with a sealed copy of itself), and nothing is
/// copied per pod. Made while this process is in the host's mount namespace.
fn holder_image() -> Result<OwnedFd, String> {
    let exe = Path::new("/proc/self/exe");
    let needs = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::ENOSYS) => format!(
            "{e}: a pod-level PID namespace needs Linux 5.12 or later (open_tree and mount_setattr)"
        ),
        _ => e.to_string(),
    };
    let image = crid_mount::mount_api::clone_tree(exe, false)
        .map_err(|e| format!("clone a mount of {}: {}", exe.display(), needs(e)))?;
    let read_only = crid_mount::mount_api::Attributes {
        read_only: true,
        ..Default::default()
    };
    crid_mount::mount_api::set_attributes(&image, read_only, false)
        .map_err(|e| format!("make the holder's image read-only: {}", needs(e)))?;
    Ok(image)
}

/// Makes a new PID namespace and forks its init, which execs `image` (see [`holder_image`])
/// as the holder: a process that sleeps until killed. Returns once the holder is set up (it
/// holds no fd of ours then, has no capability, and lives in its empty mount namespace), or
/// fails, the holder reaped, if it could not be.
fn fork_pid_holder(image: BorrowedFd<'_>) -> Result<libc::pid_t, String> {
    // SAFETY: unshare takes flags only; this process has a single thread.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(format!(
            "unshare pid namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    let (report, report_w) = pipe()?;
    // SAFETY: single-threaded, so the child may run anything; it only makes plain syscalls on
    // what was made before the fork, and execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: this is the forked child; both fds are open.
        unsafe { exec_holder(image.as_raw_fd(), report_w.as_raw_fd()) };
    }
    drop(report_w);
    let mut report = report;
    let mut bytes = [0u8; 5];
    let mut got = 0;
    while got < bytes.len() {
        match report.read(&mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        if got >= 1 && bytes[0] == 0 {
            // Set up; the holder closed its end (or is about to): nothing more comes.
            return Ok(pid);
        }
    }
    // The holder failed: it exits right after its report (or already has).
    reap(pid);
    if got == 0 {
        return Err("the PID namespace holder ended before it was set up".into());
    }
    let errno = i32::from_ne_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Err(format!(
        "the PID namespace holder could not {}: {}",
        HolderStep::describe(bytes[0]),
        std::io::Error::from_raw_os_error(errno)
    ))
}

/// Reports the step that failed (and errno) on the report fd, then exits.
///
/// # Safety
/// Only in the holder (forked or exec'd), where nothing else runs.
unsafe fn holder_failed(step: HolderStep) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let e = errno.to_ne_bytes();
    let bytes = [step as u8, e[0], e[1], e[2], e[3]];
    // SAFETY: writes a local buffer; the caller's process only exits after.
    unsafe {
        libc::write(HOLDER_REPORT_FD, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(1)
    }
}

/// The forked holder, before its exec: leaves crid's session, puts the report pipe on
/// [`HOLDER_REPORT_FD`] (the only fd the exec keeps: the others are close-on-exec) and execs
/// the read-only image. Makes system calls only: no allocation between fork and exec.
///
/// # Safety
/// Only in a child just forked from this single-threaded process; `image` and `report` open.
unsafe fn exec_holder(image: libc::c_int, report: libc::c_int) -> ! {
    let argv = [
        c"crid-pinns".as_ptr(),
        c"--hold-pid-namespace".as_ptr(),
        std::ptr::null(),
    ];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: plain syscalls on fds of this process and static NUL-terminated strings.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let mut image = image;
        if image == HOLDER_REPORT_FD {
            image = libc::fcntl(image, libc::F_DUPFD_CLOEXEC, HOLDER_REPORT_FD + 1);
        }
        // dup2 clears close-on-exec on the new fd; an fd already there needs it cleared.
        let placed = if report == HOLDER_REPORT_FD {
            libc::fcntl(report, libc::F_SETFD, 0)
        } else {
            libc::dup2(report, HOLDER_REPORT_FD)
        };
        if image < 0 || placed < 0 {
            // Without the report fd in place the parent sees EOF: "ended before set up".
            libc::_exit(1);
        }
        libc::syscall(
            libc::SYS_execveat,
            image,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        holder_failed(HolderStep::Exec)
    }
}

/// `AUDIT_ARCH_*` of this build's architecture (linux/audit.h), checked by the holder's filter.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// The only system calls the holder makes once set up: sleeping, signal returns, writing its
/// report and closing its fds, and exiting.
const HOLDER_SYSCALLS: &[libc::c_long] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pause,
    libc::SYS_ppoll,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The holder's seccomp program: `HOLDER_SYSCALLS` of this architecture, anything else kills
/// it (and with it the pod's PID namespace: code injected into it can do nothing else).
fn holder_filter() -> Vec<libc::sock_filter> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump_eq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    // struct seccomp_data: int nr; __u32 arch; ...
    let (nr_offset, arch_offset) = (0, 4);
    let count = HOLDER_SYSCALLS.len();
    let mut program = vec![
        stmt(load, arch_offset),
        jump_eq(AUDIT_ARCH, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(load, nr_offset),
    ];
    for (i, nr) in HOLDER_SYSCALLS.iter().enumerate() {
        // Match: jump over the remaining checks and the kill, to the allow.
        program.push(jump_eq(*nr as u32, (count - i) as u8, 0));
    }
    program.push(stmt(ret, libc::SECCOMP_RET_KILL_PROCESS));
    program.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    program
}

/// Takes every capability from this process for good: bounding set, ambient, then the
/// effective, permitted and inheritable sets, and no_new_privs.
///
/// # Safety
/// Only in the holder, which needs none of them after.
unsafe fn drop_every_capability() -> libc::c_long {
    // SAFETY: prctl and capset on integers and live locals.
    unsafe {
        for cap in 0..64 {
            // EINVAL past the kernel's last capability.
            let rc = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return -1;
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return -1;
        }
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into()
    }
}

/// The holder's life after its exec (`crid-pinns --hold-pid-namespace`): PID 1 of the pod's
/// namespace, not dumpable, detached from crid's session, stdio and every other fd, in an
/// empty mount namespace of its own, without any capability, under a seccomp filter that
/// allows sleeping and little else, deaf to every signal that can be ignored (as PID 1 of its
/// namespace, only SIGKILL from outside ends it), never reaping.
fn hold_pid_namespace() -> ! {
    let filter = holder_filter();
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain syscalls on constant arguments and live locals; this process has a single
    // thread and shares no memory.
    unsafe {
        // Dumpable again since the exec: not for a moment longer than needed.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"crid-pinns".as_ptr(), 0, 0, 0);
        if libc::getpid() != 1 {
            // Run by hand: not a holder, and nothing to report to.
            eprintln!("crid-pinns: {HOLD_ARGUMENT} is crid-pinns' own; it runs only as PID 1");
            libc::_exit(2);
        }
        // Opened while the host's /dev is still in reach.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        // A root of its own with nothing in it. Every container of the pod sees this process
        // as its /proc/1: any of them can read /proc/1/mountinfo, and one given CAP_SYS_PTRACE
        // passes the non-dumpable check (its capability counts in the host's user namespace)
        // and would reach the host's files through /proc/1/root. In a mount namespace whose
        // only mount is an empty read-only tmpfs there is nothing to read or reach.
        let none = std::ptr::null::<libc::c_char>();
        if null < 0
            || libc::unshare(libc::CLONE_NEWNS) != 0
            || libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            || libc::mount(
                c"none".as_ptr(),
                c"/proc".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"size=4k,mode=0555".as_ptr().cast(),
            ) != 0
            || libc::chdir(c"/proc".as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
            || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            holder_failed(HolderStep::MountNamespace);
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        libc::close(null);
        for signal in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Code a container could inject (with CAP_SYS_PTRACE it may trace this process) must
        // find nothing: no capability, no system call to speak of.
        if drop_every_capability() != 0 {
            holder_failed(HolderStep::Privileges);
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
            0,
            0,
        ) != 0
        {
            holder_failed(HolderStep::Seccomp);
        }
        libc::write(HOLDER_REPORT_FD, [0u8].as_ptr().cast(), 1);
        libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, 0);
        loop {
            libc::pause();
        }
    }
}

fn main() {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(HOLD_ARGUMENT)) {
        hold_pid_namespace();
    }
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
