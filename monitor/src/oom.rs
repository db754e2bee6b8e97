//! OOM-kill detection for the container's memory cgroup.
//!
//! - cgroup v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`;
//!   on each event the `oom_kill` counter of `memory.oom_control` confirms a kill (a bare
//!   event can also mean the cgroup was removed).
//! - cgroup v2: inotify on `memory.events`, watching its `oom_kill` counter (not `oom`,
//!   which is charged to the pod when pod and container share a limit).
//!
//! Either way the counter is checked once more at exit: the last kill may land just before
//! the process is reaped.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys;

/// Longest cgroup control file we read.
const MAX_CGROUP_FILE: u64 = 64 * 1024;

fn read_small(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CGROUP_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The `key value` counter from a cgroup flat-keyed file.
fn counter(path: &Path, key: &str) -> Option<u64> {
    flat_key(&read_small(path).ok()?, key)
}

fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Where the memory cgroup of `pid` is, and which cgroup version.
fn memory_cgroup(pid: libc::pid_t) -> Option<(PathBuf, bool)> {
    let proc_cgroup = read_small(Path::new(&format!("/proc/{pid}/cgroup"))).ok()?;
    let root = Path::new("/sys/fs/cgroup");
    if sys::is_cgroup2(root) {
        return Some((cgroup2_dir(&proc_cgroup, root)?, true));
    }
    let mountinfo = read_small(Path::new("/proc/self/mountinfo")).ok()?;
    Some((memory_dir_v1(&proc_cgroup, &mountinfo)?, false))
}

/// cgroup v2: the `0::<path>` line under the unified root.
fn cgroup2_dir(proc_cgroup: &str, root: &Path) -> Option<PathBuf> {
    let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(rel.trim_start_matches('/')))
}

/// cgroup v1: the `memory` controller's line, under the memory controller's mount point.
fn memory_dir_v1(proc_cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
    let rel = proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })?;
    let mount = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fstype, _source, options) = (r.next()?, r.next()?, r.next()?);
        if fstype != "cgroup" || !options.split(',').any(|o| o == "memory") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// Watches one container's memory cgroup.
pub struct OomWatcher {
    fd: OwnedFd,
    /// The file holding the `oom_kill` counter.
    counter_file: PathBuf,
    /// `cgroup.event_control` (v1): its absence after an event means the cgroup went away.
    event_control: Option<PathBuf>,
    baseline: u64,
    killed: bool,
    /// v1: the registration refers to this file; it stays open while we watch.
    _oom_control: Option<std::fs::File>,
}

impl OomWatcher {
    /// Sets up the watch for `pid`'s memory cgroup; `None` when it has none we can watch.
    pub fn new(pid: libc::pid_t) -> Option<Self> {
        let (dir, v2) = memory_cgroup(pid)?;
        if v2 {
            let events = dir.join("memory.events");
            let fd = sys::inotify_modify_watch(&events).ok()?;
            let baseline = counter(&events, "oom_kill").unwrap_or(0);
            return Some(OomWatcher {
                fd,
                counter_file: events,
                event_control: None,
                baseline,
                killed: false,
                _oom_control: None,
            });
        }
        let oom_control_path = dir.join("memory.oom_control");
        let oom_control = std::fs::File::open(&oom_control_path).ok()?;
        let efd = sys::eventfd().ok()?;
        let event_control = dir.join("cgroup.event_control");
        sys::register_v1_oom_event(&event_control, efd.as_fd(), oom_control.as_fd()).ok()?;
        let baseline = counter(&oom_control_path, "oom_kill").unwrap_or(0);
        Some(OomWatcher {
            fd: efd,
            counter_file: oom_control_path,
            event_control: Some(event_control),
            baseline,
            killed: false,
            _oom_control: Some(oom_control),
        })
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Handles readiness: drains the fd and re-reads the counter.
    pub fn on_event(&mut self) {
        sys::drain_fd(self.fd.as_fd());
        match counter(&self.counter_file, "oom_kill") {
            Some(now) => self.killed |= now > self.baseline,
            // Kernels without the counter: a v1 event on a live cgroup is an OOM.
            None => {
                if self.event_control.as_ref().is_some_and(|p| p.exists()) {
                    self.killed = true;
                }
            }
        }
    }

    /// The final answer, checking the counter once more.
    pub fn oom_killed(&mut self) -> bool {
        if let Some(now) = counter(&self.counter_file, "oom_kill") {
            self.killed |= now > self.baseline;
        }
        self.killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v1_memory_cgroup() {
        let proc_cgroup = "9:name=systemd:/\n4:memory:/kubepods/pod1/ctr\n3:cpu,cpuacct:/x\n0::/\n";
        let mountinfo = "30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                         35 25 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n";
        assert_eq!(
            memory_dir_v1(proc_cgroup, mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/memory/kubepods/pod1/ctr"))
        );
        assert_eq!(memory_dir_v1("1:cpu:/x\n", mountinfo), None);
    }

    #[test]
    fn finds_the_v2_cgroup_and_reads_counters() {
        let dir = cgroup2_dir(
            "0::/kubepods.slice/ctr.scope\n",
            Path::new("/sys/fs/cgroup"),
        );
        assert_eq!(
            dir,
            Some(PathBuf::from("/sys/fs/cgroup/kubepods.slice/ctr.scope"))
        );
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(flat_key(events, "oom_kill"), Some(2));
        assert_eq!(flat_key(events, "oom"), Some(3));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(flat_key(v1, "oom_kill"), Some(1));
        assert_eq!(flat_key(v1, "missing"), None);
    }
}
