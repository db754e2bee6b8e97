//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: CPU and memory
//! from the cgroup files, the writable layer's bytes and inodes, the pod's network from its
//! namespace. CPU rate (`usage_nano_cores`) needs two samples: crid keeps the previous one
//! per container and pod.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crid_proto::cri;

use crate::container::cgroup::{Cgroup, Usage};
use crate::state::container::{Container, Phase};
use crate::state::pod::Pod;
use crate::state::{persist, State};

/// Most directory entries walked to measure one writable layer.
const MAX_LAYER_WALK: u64 = 1_000_000;
/// How old a writable layer's measurement may be before a stats call measures it again. A
/// walk of a big layer costs seconds of disk I/O; kubelet asks for every container's stats
/// every 10-15 s, so measurements are shared between calls rather than made per call
/// (containerd refreshes its snapshot usage every 10 s in the background).
pub const LAYER_USAGE_MAX_AGE: Duration = Duration::from_secs(5);

fn value(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

/// Previous CPU samples: id → (cpu nanoseconds, wall nanoseconds).
#[derive(Default)]
pub struct CpuSamples(Mutex<HashMap<String, (u64, i64)>>);

impl CpuSamples {
    /// The CPU rate since the previous sample of `id`, in nanocores.
    fn rate(&self, id: &str, cpu_nanos: Option<u64>, now: i64) -> Option<u64> {
        let cpu = cpu_nanos?;
        let mut samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let previous = samples.insert(id.to_owned(), (cpu, now));
        let (prev_cpu, prev_time) = previous?;
        let elapsed = now.checked_sub(prev_time).filter(|e| *e > 0)? as u128;
        let used = cpu.checked_sub(prev_cpu)? as u128;
        Some((used * 1_000_000_000 / elapsed) as u64)
    }
}

/// Writable-layer measurements by container id: (bytes, inodes, when measured).
#[derive(Default)]
pub struct LayerUsage(Mutex<HashMap<String, (u64, u64, Instant)>>);

impl LayerUsage {
    /// The container's writable layer usage, measured at most [`LAYER_USAGE_MAX_AGE`] ago.
    /// Walks the layer when the measurement is older: call it off the async workers.
    fn get(&self, container: &Container) -> (u64, u64) {
        let fresh = |at: &Instant| at.elapsed() < LAYER_USAGE_MAX_AGE;
        if let Some((bytes, inodes, at)) = self.lock().get(&container.id) {
            if fresh(at) {
                return (*bytes, *inodes);
            }
        }
        // Measured without the lock: other containers' calls do not wait for this walk.
        let (bytes, inodes) = disk_usage(&container.dir.join("upper"));
        self.lock()
            .insert(container.id.clone(), (bytes, inodes, Instant::now()));
        (bytes, inodes)
    }

    /// Forgets the containers that are gone.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| live(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the stats calls keep between calls.
#[derive(Default)]
pub struct StatsCache {
    pub cpu: CpuSamples,
    pub layers: LayerUsage,
}

fn cpu_memory(
    samples: &CpuSamples,
    id: &str,
    usage: &Usage,
    now: i64,
) -> (cri::CpuUsage, cri::MemoryUsage) {
    (
        cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: value(usage.cpu_nanos),
            usage_nano_cores: value(samples.rate(id, usage.cpu_nanos, now)),
        },
        cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: value(usage.working_set_bytes),
            available_bytes: None,
            usage_bytes: value(usage.memory_bytes),
            rss_bytes: value(usage.rss_bytes),
            page_faults: value(usage.page_faults),
            major_page_faults: value(usage.major_page_faults),
        },
    )
}

/// Bytes and inodes under `dir`, not following symlinks, bounded.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if inodes >= MAX_LAYER_WALK {
                return (bytes, inodes);
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            inodes += 1;
            bytes += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

/// A container's stats. Reads cgroup files and may walk the writable layer: call it off the
/// async workers (`spawn_blocking`).
pub fn container_stats(
    state: &State,
    cache: &StatsCache,
    container: &Container,
) -> cri::ContainerStats {
    stats_with_usage(state, cache, container, &cgroup_usage(container))
}

fn cgroup_usage(container: &Container) -> Usage {
    Cgroup::new(&container.record().cgroup_path).usage()
}

/// A container's stats around a usage already read from its cgroup.
fn stats_with_usage(
    state: &State,
    cache: &StatsCache,
    container: &Container,
    usage: &Usage,
) -> cri::ContainerStats {
    let now = persist::now_nanos();
    let (cpu, memory) = cpu_memory(&cache.cpu, &container.id, usage, now);
    let (bytes, inodes) = cache.layers.get(container);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: container.id.clone(),
            metadata: container.config.metadata.clone(),
            labels: container.config.labels.clone(),
            annotations: container.config.annotations.clone(),
        }),
        cpu: Some(cpu),
        memory: Some(memory),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: state.config.root.display().to_string(),
            }),
            used_bytes: value(Some(bytes)),
            inodes_used: value(Some(inodes)),
        }),
        swap: None,
    }
}

/// The containers stats are kept for: created or running (an exited one's cgroup is gone).
pub fn live(state: &State, container: &Container) -> bool {
    container.phase(&state.paths.exits) != Phase::Exited
}

/// `/proc/<pid>/net/dev` of a process in the pod's network namespace.
fn network(pid: i32, now: i64) -> Option<cri::NetworkUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut interfaces = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let n: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if n.len() < 16 {
            continue;
        }
        interfaces.push(cri::NetworkInterfaceUsage {
            name: name.to_owned(),
            rx_bytes: value(Some(n[0])),
            rx_errors: value(Some(n[2])),
            tx_bytes: value(Some(n[8])),
            tx_errors: value(Some(n[10])),
        });
    }
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == crid_cni::POD_INTERFACE)
        .cloned();
    Some(cri::NetworkUsage {
        timestamp: now,
        default_interface,
        interfaces,
    })
}

/// A pod's stats and its containers'; blocking like [`container_stats`].
pub fn pod_stats(state: &State, cache: &StatsCache, pod: &Pod) -> cri::PodSandboxStats {
    let now = persist::now_nanos();
    let containers: Vec<_> = state
        .containers_of(&pod.id)
        .into_iter()
        .filter(|c| live(state, c))
        .collect();
    // Each container's cgroup is read once, for its own stats and the pod's totals: the sum
    // over its containers (the cgroup parent may hold other pods' when kubelet does not give
    // one per pod).
    let usages: Vec<Usage> = containers.iter().map(|c| cgroup_usage(c)).collect();
    let container_stats: Vec<cri::ContainerStats> = containers
        .iter()
        .zip(&usages)
        .map(|(c, u)| stats_with_usage(state, cache, c, u))
        .collect();
    let mut usage = Usage::default();
    for u in &usages {
        usage.add(u);
    }
    let (cpu, memory) = cpu_memory(&cache.cpu, &pod.id, &usage, now);
    let in_pod_netns = pod.record().namespaces.net.is_some();
    let network = containers
        .iter()
        .filter(|c| in_pod_netns && c.phase(&state.paths.exits) == Phase::Running)
        .find_map(|c| network(c.record().pid, now));
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: pod.config.metadata.clone(),
            labels: pod.config.labels.clone(),
            annotations: pod.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            network,
            process: Some(cri::ProcessUsage {
                timestamp: now,
                process_count: value(usage.pids),
            }),
            containers: container_stats,
        }),
        windows: None,
    }
}
