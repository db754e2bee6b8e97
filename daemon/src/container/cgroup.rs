//! Reading a container's cgroup files (cgroupfs layout, v1 or v2): memory usage for
//! UpdateContainerResources, and the numbers of ContainerStats.

use std::path::PathBuf;

use super::resources::cgroup_v2;

/// A container's cgroup, by its OCI `cgroupsPath` (cgroupfs form: `/parent/crid-<id>`).
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: String,
    v2: bool,
}

fn read_u64(path: PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(path: PathBuf, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Where a `cgroupsPath` lives below a hierarchy's root. The systemd form
/// `parent.slice:prefix:name` is the unit `prefix-name.scope` inside the parent slice, whose
/// directory nests every dash-separated ancestor (`a-b.slice` is in `a.slice`).
fn filesystem_path(cgroups_path: &str) -> String {
    let mut parts = cgroups_path.splitn(3, ':');
    let (Some(slice), Some(prefix), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return cgroups_path.trim_start_matches('/').to_owned();
    };
    let mut dirs = Vec::new();
    if let Some(stem) = slice.strip_suffix(".slice").filter(|s| *s != "-") {
        let mut prefix_so_far = String::new();
        for piece in stem.split('-') {
            if !prefix_so_far.is_empty() {
                prefix_so_far.push('-');
            }
            prefix_so_far.push_str(piece);
            dirs.push(format!("{prefix_so_far}.slice"));
        }
    }
    dirs.push(format!("{prefix}-{name}.scope"));
    dirs.join("/")
}

/// CPU and memory numbers of a cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_nanos: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub working_set_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    pub pids: Option<u64>,
}

impl Usage {
    /// Adds another cgroup's numbers (a number known on either side is known in the sum).
    pub fn add(&mut self, other: &Usage) {
        let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.cpu_nanos = sum(self.cpu_nanos, other.cpu_nanos);
        self.memory_bytes = sum(self.memory_bytes, other.memory_bytes);
        self.working_set_bytes = sum(self.working_set_bytes, other.working_set_bytes);
        self.rss_bytes = sum(self.rss_bytes, other.rss_bytes);
        self.page_faults = sum(self.page_faults, other.page_faults);
        self.major_page_faults = sum(self.major_page_faults, other.major_page_faults);
        self.pids = sum(self.pids, other.pids);
    }
}

impl Cgroup {
    pub fn new(path: &str) -> Self {
        Cgroup {
            path: filesystem_path(path),
            v2: cgroup_v2(),
        }
    }

    fn file(&self, controller: &str, name: &str) -> PathBuf {
        let root = PathBuf::from("/sys/fs/cgroup");
        if self.v2 {
            root.join(&self.path).join(name)
        } else {
            root.join(controller).join(&self.path).join(name)
        }
    }

    /// Bytes of memory in use (page cache included).
    pub fn memory_usage(&self) -> Option<u64> {
        if self.v2 {
            read_u64(self.file("", "memory.current"))
        } else {
            read_u64(self.file("memory", "memory.usage_in_bytes"))
        }
    }

    /// CPU time, memory usage and working set (usage minus inactive file pages, as cAdvisor
    /// and kubelet compute it), process count.
    pub fn usage(&self) -> Usage {
        let memory_bytes = self.memory_usage();
        if self.v2 {
            let stat = self.file("", "memory.stat");
            let inactive = stat_field(stat.clone(), "inactive_file").unwrap_or(0);
            Usage {
                cpu_nanos: stat_field(self.file("", "cpu.stat"), "usage_usec").map(|us| us * 1000),
                memory_bytes,
                working_set_bytes: memory_bytes.map(|m| m.saturating_sub(inactive)),
                rss_bytes: stat_field(stat.clone(), "anon"),
                page_faults: stat_field(stat.clone(), "pgfault"),
                major_page_faults: stat_field(stat, "pgmajfault"),
                pids: read_u64(self.file("", "pids.current")),
            }
        } else {
            let stat = self.file("memory", "memory.stat");
            let inactive = stat_field(stat.clone(), "total_inactive_file").unwrap_or(0);
            Usage {
                cpu_nanos: read_u64(self.file("cpuacct", "cpuacct.usage")),
                memory_bytes,
                working_set_bytes: memory_bytes.map(|m| m.saturating_sub(inactive)),
                rss_bytes: stat_field(stat.clone(), "total_rss"),
                page_faults: stat_field(stat.clone(), "total_pgfault"),
                major_page_faults: stat_field(stat, "total_pgmajfault"),
                pids: read_u64(self.file("pids", "pids.current")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::filesystem_path;

    #[test]
    fn cgroupfs_and_systemd_paths() {
        assert_eq!(
            filesystem_path("/kubepods/pod1/crid-x"),
            "kubepods/pod1/crid-x"
        );
        assert_eq!(
            filesystem_path("kubepods-burstable-pod1.slice:crid:x"),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/crid-x.scope"
        );
        assert_eq!(
            filesystem_path("system.slice:crid:x"),
            "system.slice/crid-x.scope"
        );
    }
}
