//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: CPU and memory
//! from the cgroup files, the writable layer's bytes and inodes, the pod's network from its
//! namespace. CPU rate (`usage_nano_cores`) needs two samples: crid keeps the previous one
//! per container and pod.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io::{BufRead, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};

use crid_proto::cri;

use crate::container::cgroup::{Cgroup, Usage};
use crate::state::container::{Container, Phase};
use crate::state::pod::Pod;
use crate::state::{persist, State};

/// Most directory entries walked to measure one writable layer.
const MAX_LAYER_WALK: u64 = 1_000_000;
/// Longest one writable layer's walk may take; past it the walk reports what it counted.
/// A container decides how big and how slow its upper directory is (slow storage, millions
/// of entries): a stats call must not hold a blocking thread for it.
const LAYER_WALK_TIME_BUDGET: Duration = Duration::from_secs(2);
/// Deepest directory level the walk descends to: the walk holds one open directory per
/// level, and a container can nest directories without limit (each `mkdir` relative to the
/// last). Deeper entries are not counted.
const MAX_LAYER_WALK_DEPTH: usize = 128;
/// How long a stats call waits for a walk another call started when there is no earlier
/// measurement to report: a little longer than the walk's budget.
const LAYER_WALK_WAIT: Duration = Duration::from_secs(3);
/// How old a writable layer's measurement may be before a stats call measures it again. A
/// walk of a big layer costs seconds of disk I/O; kubelet asks for every container's stats
/// every 10-15 s, so measurements are shared between calls rather than made per call
/// (containerd refreshes its snapshot usage every 10 s in the background).
pub const LAYER_USAGE_MAX_AGE: Duration = Duration::from_secs(5);

/// Most bytes of `/proc/<pid>/net/dev` read for a pod's network stats (a line is about 130
/// bytes: some 30,000 interfaces). A pod with CAP_NET_ADMIN can make as many interfaces as
/// it likes; the read and the reply stay bounded whatever it makes.
const MAX_NET_DEV_BYTES: u64 = 4 << 20;
/// Interfaces reported besides the default one (`eth0`). containerd and CRI-O report only
/// the default interface; crid reports it (wherever it is in the file) and the first
/// `MAX_STATS_INTERFACES` others in the kernel's order (secondary networks such as Multus'
/// `net1`), and never more: ListPodSandboxStats must fit kubelet's 16 MiB message limit
/// however many interfaces a pod makes.
const MAX_STATS_INTERFACES: usize = 8;

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

/// One writable layer's measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Measurement {
    bytes: u64,
    inodes: u64,
}

/// What is known of one container's writable layer.
#[derive(Default)]
struct LayerEntry {
    /// The last measurement and when it was made.
    last: Option<(Measurement, Instant)>,
    /// A walk is running: no other call starts one.
    walking: bool,
}

/// Writable-layer measurements by container id, at most one walk per container at a time.
#[derive(Default)]
pub struct LayerUsage {
    entries: Mutex<HashMap<String, LayerEntry>>,
    /// Signalled when a walk ends.
    walked: Condvar,
}

/// Ends a walk, whatever way it ends: a panicking walk must not leave `walking` set.
struct WalkDone<'a> {
    usage: &'a LayerUsage,
    id: &'a str,
    result: Option<Measurement>,
}

impl Drop for WalkDone<'_> {
    fn drop(&mut self) {
        let mut entries = self.usage.lock();
        // A container forgotten (removed) while it was walked stays forgotten.
        if let Some(entry) = entries.get_mut(self.id) {
            entry.walking = false;
            if let Some(m) = self.result {
                entry.last = Some((m, Instant::now()));
            }
        }
        drop(entries);
        self.usage.walked.notify_all();
    }
}

impl LayerUsage {
    /// The container's writable layer usage, measured at most [`LAYER_USAGE_MAX_AGE`] ago.
    /// Walks the layer when the measurement is older: call it off the async workers. None
    /// when it has never been measured and the first walk did not end in time.
    fn get(&self, container: &Container) -> Option<Measurement> {
        let upper = container.dir.join("upper");
        self.measure(&container.id, || disk_usage(&upper))
    }

    /// The measurement of `id`, fresh, or made by `walk` when no other call is walking it;
    /// while one is, its previous measurement (or, when there is none, the running walk's).
    fn measure(&self, id: &str, walk: impl FnOnce() -> Measurement) -> Option<Measurement> {
        let waited_since = Instant::now();
        let mut entries = self.lock();
        loop {
            let entry = entries.entry(id.to_owned()).or_default();
            if let Some((m, at)) = entry.last {
                if at.elapsed() < LAYER_USAGE_MAX_AGE || entry.walking {
                    return Some(m);
                }
            }
            if !entry.walking {
                entry.walking = true;
                break;
            }
            // The first walk is running: wait for it, not forever (it may be stuck in
            // a syscall on slow storage).
            let left = LAYER_WALK_WAIT.checked_sub(waited_since.elapsed())?;
            entries = self
                .walked
                .wait_timeout(entries, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        // Walked without the lock: other containers' calls do not wait for this walk.
        drop(entries);
        let mut done = WalkDone {
            usage: self,
            id,
            result: None,
        };
        let m = walk();
        done.result = Some(m);
        Some(m)
    }

    /// Forgets the containers that are gone.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| live(id));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, LayerEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
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

/// How the walk opens a directory: never through a symlink, never anything but a directory.
fn walk_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Bytes and inodes of the writable layer at `upper`, bounded by [`MAX_LAYER_WALK`] entries
/// and [`LAYER_WALK_TIME_BUDGET`].
fn disk_usage(upper: &Path) -> Measurement {
    disk_usage_bounded(
        upper,
        Instant::now() + LAYER_WALK_TIME_BUDGET,
        MAX_LAYER_WALK,
    )
}

/// Bytes and inodes under `upper`, walked by file descriptor: the container owns every name
/// below `upper` and can swap a directory for a symlink (`ln -s / dir`) at any moment, so
/// each directory is opened relative to its parent's descriptor with O_NOFOLLOW, its entries
/// read from that descriptor and stat'ed without following, and no path is resolved again.
/// The walk stays on `upper`'s file system (a mount point below it is counted, never
/// entered) and stops at `max_entries` entries or at `deadline`, reporting what it counted.
fn disk_usage_bounded(upper: &Path, deadline: Instant, max_entries: u64) -> Measurement {
    let mut m = Measurement {
        bytes: 0,
        inodes: 0,
    };
    let Ok(root) = nix::fcntl::open(upper, walk_flags(), Mode::empty()) else {
        return m;
    };
    let Ok(device) = fstat(&root).map(|st| st.st_dev) else {
        return m;
    };
    // One open directory per level, read as the walk goes.
    let mut levels: Vec<Level> = Level::new(root).into_iter().collect();
    loop {
        let depth = levels.len();
        let Some(level) = levels.last_mut() else {
            break;
        };
        let entry = match level.entries.next() {
            Some(Ok(entry)) => entry,
            // The end of this directory, or it cannot be read further.
            _ => {
                levels.pop();
                continue;
            }
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if m.inodes >= max_entries || Instant::now() >= deadline {
            break;
        }
        let Ok(st) = fstatat(&level.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        m.inodes += 1;
        m.bytes = m.bytes.saturating_add((st.st_blocks.max(0) as u64) * 512);
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if !is_dir || st.st_dev != device || depth >= MAX_LAYER_WALK_DEPTH {
            continue;
        }
        if let Some(child) = open_subdir(&level.fd, name, device) {
            levels.push(child);
        }
    }
    m
}

/// One directory being walked: its descriptor, for the `*at` calls, and a stream of its
/// entries (read through a duplicate of the descriptor, which `nix`'s `Dir` owns).
struct Level {
    fd: OwnedFd,
    entries: nix::dir::OwningIter,
}

impl Level {
    fn new(fd: OwnedFd) -> Option<Level> {
        let entries = Dir::from_fd(fd.try_clone().ok()?).ok()?.into_iter();
        Some(Level { fd, entries })
    }
}

/// The directory `name` in `parent`, when it still is a directory on `device`: between the
/// fstatat and the open it may have been swapped for a symlink (O_NOFOLLOW refuses it) or
/// for another directory.
fn open_subdir(parent: &OwnedFd, name: &CStr, device: u64) -> Option<Level> {
    let child = nix::fcntl::openat(parent, name, walk_flags(), Mode::empty()).ok()?;
    let st = fstat(&child).ok()?;
    if st.st_dev != device {
        return None;
    }
    Level::new(child)
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
    let layer = cache.layers.get(container);
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
            used_bytes: value(layer.map(|m| m.bytes)),
            inodes_used: value(layer.map(|m| m.inodes)),
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
    let file = std::fs::File::open(format!("/proc/{pid}/net/dev")).ok()?;
    Some(parse_net_dev(bounded_net_dev(file), now))
}

/// The first [`MAX_NET_DEV_BYTES`] of a `net/dev` file.
fn bounded_net_dev<R: Read>(file: R) -> std::io::BufReader<std::io::Take<R>> {
    std::io::BufReader::new(file.take(MAX_NET_DEV_BYTES))
}

/// The interfaces of a `/proc/net/dev` text but `lo`: the default one ([`POD_INTERFACE`]
/// (crid_cni::POD_INTERFACE)) and at most [`MAX_STATS_INTERFACES`] others. Read line by
/// line: a line is kept only while it is parsed, so memory stays bounded by the longest
/// line, itself bounded by the reader. Names that are not UTF-8 are reported lossily.
fn parse_net_dev(text: impl BufRead, now: i64) -> cri::NetworkUsage {
    let mut default_interface = None;
    let mut interfaces = Vec::new();
    for line in text.split(b'\n').skip(2) {
        let Ok(line) = line else {
            break;
        };
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]);
        let name = name.trim();
        let is_default = name == crid_cni::POD_INTERFACE;
        if name == "lo" || (!is_default && interfaces.len() >= MAX_STATS_INTERFACES) {
            continue;
        }
        let counters = String::from_utf8_lossy(&line[colon + 1..]);
        let n: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if n.len() < 16 {
            continue;
        }
        let usage = cri::NetworkInterfaceUsage {
            name: name.to_owned(),
            rx_bytes: value(Some(n[0])),
            rx_errors: value(Some(n[2])),
            tx_bytes: value(Some(n[8])),
            tx_errors: value(Some(n[10])),
        };
        if is_default {
            default_interface.get_or_insert(usage);
        } else {
            interfaces.push(usage);
        }
    }
    // The default interface is listed too, first.
    if let Some(default) = &default_interface {
        interfaces.insert(0, default.clone());
    }
    cri::NetworkUsage {
        timestamp: now,
        default_interface,
        interfaces,
    }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    const CANARY_BYTES: usize = 8 << 20;

    /// An upper directory with a few small files and directories, and a canary directory
    /// outside it holding a big file the walk must never count.
    struct Layout {
        _tmp: tempfile::TempDir,
        upper: PathBuf,
        canary: PathBuf,
    }

    fn layout() -> Layout {
        let tmp = tempfile::tempdir().expect("tempdir");
        let upper = tmp.path().join("upper");
        let canary = tmp.path().join("canary");
        std::fs::create_dir_all(upper.join("a/b")).expect("mkdir");
        std::fs::write(upper.join("a/b/small"), b"x").expect("write");
        std::fs::create_dir_all(canary.join("deep")).expect("mkdir");
        // Written, not sparse: its blocks count.
        std::fs::write(canary.join("deep/big"), vec![7u8; CANARY_BYTES]).expect("write");
        Layout {
            _tmp: tmp,
            upper,
            canary,
        }
    }

    fn walk(upper: &Path) -> Measurement {
        disk_usage_bounded(
            upper,
            Instant::now() + Duration::from_secs(30),
            MAX_LAYER_WALK,
        )
    }

    #[test]
    fn anchor_c_stats_walk_counts_the_upper_dir() {
        let l = layout();
        let m = walk(&l.upper);
        // a, a/b, a/b/small.
        assert_eq!(m.inodes, 3);
        assert!(m.bytes > 0 && m.bytes < 1 << 20, "{m:?}");
        // Not there (the container is being removed): nothing, no error.
        assert_eq!(walk(&l.upper.join("gone")).inodes, 0);
    }

    #[test]
    fn anchor_c_stats_walk_never_follows_a_symlink_in_the_upper_dir() {
        let l = layout();
        symlink(&l.canary, l.upper.join("a/escape")).expect("symlink");
        symlink("/", l.upper.join("root")).expect("symlink");
        let m = walk(&l.upper);
        // The two symlinks are counted as what they are, nothing behind them.
        assert_eq!(m.inodes, 5, "{m:?}");
        assert!(m.bytes < CANARY_BYTES as u64, "counted the canary: {m:?}");
        // The upper directory itself as a symlink is not followed either.
        let linked = l.upper.with_file_name("linked-upper");
        symlink(&l.canary, &linked).expect("symlink");
        assert_eq!(walk(&linked).inodes, 0);
    }

    /// The container swaps a directory for a symlink to a host directory (`ln -s / d`) over
    /// and over while crid walks: no walk ever counts what is behind the symlink. Walking by
    /// path (lstat, then read_dir of the path) counts the canary within a few walks.
    #[test]
    fn anchor_c_stats_walk_never_leaves_the_upper_dir() {
        let l = layout();
        let swapped = l.upper.join("a/swapped");
        std::fs::create_dir_all(swapped.join("inner")).expect("mkdir");
        for i in 0..50 {
            std::fs::write(swapped.join(format!("f{i}")), b"y").expect("write");
        }
        let aside = l.upper.join("a/aside");
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicUsize::new(0));
        let swapper = {
            let (stop, swaps, canary) = (stop.clone(), swaps.clone(), l.canary.clone());
            let (swapped, aside) = (swapped.clone(), aside.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(&swapped, &aside).expect("rename aside");
                    symlink(&canary, &swapped).expect("symlink");
                    std::thread::sleep(Duration::from_micros(100));
                    std::fs::remove_file(&swapped).expect("unlink");
                    std::fs::rename(&aside, &swapped).expect("rename back");
                    std::thread::sleep(Duration::from_micros(100));
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let started = Instant::now();
        let mut walks = 0;
        while started.elapsed() < Duration::from_secs(2) {
            let m = walk(&l.upper);
            walks += 1;
            assert!(
                m.bytes < CANARY_BYTES as u64,
                "walk {walks} counted the host directory behind the symlink: {m:?}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().expect("swapper");
        assert!(
            swaps.load(Ordering::Relaxed) > 10,
            "the swapper did not run"
        );
        assert!(walks > 10, "only {walks} walks");
    }

    /// Unmounts on drop.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn anchor_c_stats_walk_refuses_to_leave_the_upper_dirs_file_system() {
        let l = layout();
        let point = l.upper.join("a/mnt");
        std::fs::create_dir(&point).expect("mkdir");
        nix::mount::mount(
            Some("tmpfs"),
            &point,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=16m"),
        )
        .unwrap_or_else(|e| panic!("this test mounts a tmpfs (needs root, CAP_SYS_ADMIN): {e}"));
        let _mounted = Mounted(point.clone());
        std::fs::create_dir(point.join("dir")).expect("mkdir");
        std::fs::write(point.join("dir/big"), vec![1u8; 4 << 20]).expect("write");
        let m = walk(&l.upper);
        // The mount point is counted as an entry; nothing in it is.
        assert_eq!(m.inodes, 4, "{m:?}");
        assert!(m.bytes < 4 << 20, "{m:?}");
    }

    #[test]
    fn anchor_c_stats_walk_stops_at_its_entry_depth_and_time_bounds() {
        let l = layout();
        for i in 0..100 {
            std::fs::write(l.upper.join(format!("f{i}")), b"z").expect("write");
        }
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(disk_usage_bounded(&l.upper, far, 10).inodes, 10);
        // Out of time: reports what it counted (nothing yet).
        assert_eq!(disk_usage_bounded(&l.upper, Instant::now(), 1000).inodes, 0);
        // Nested past the depth bound: the walk holds one descriptor per level, so it
        // stops descending there.
        let deep_root = l.upper.with_file_name("deep");
        let mut dir = deep_root.clone();
        for _ in 0..MAX_LAYER_WALK_DEPTH + 20 {
            dir.push("d");
        }
        std::fs::create_dir_all(&dir).expect("mkdir deep");
        assert_eq!(
            walk(&deep_root).inodes,
            MAX_LAYER_WALK_DEPTH as u64,
            "one entry per level walked"
        );
    }

    #[test]
    fn anchor_c_one_walk_per_container_at_a_time() {
        let usage = Arc::new(LayerUsage::default());
        let walks = Arc::new(AtomicUsize::new(0));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = {
            let (usage, walks) = (usage.clone(), walks.clone());
            std::thread::spawn(move || {
                usage.measure("c1", || {
                    walks.fetch_add(1, Ordering::SeqCst);
                    released.recv().expect("release");
                    Measurement {
                        bytes: 1,
                        inodes: 1,
                    }
                })
            })
        };
        while walks.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        // Calls while the first walk runs start no walk: they wait for its result.
        let second = {
            let (usage, walks) = (usage.clone(), walks.clone());
            std::thread::spawn(move || {
                usage.measure("c1", || {
                    walks.fetch_add(1, Ordering::SeqCst);
                    Measurement {
                        bytes: 2,
                        inodes: 2,
                    }
                })
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        release.send(()).expect("release");
        let want = Some(Measurement {
            bytes: 1,
            inodes: 1,
        });
        assert_eq!(first.join().expect("first"), want);
        assert_eq!(second.join().expect("second"), want);
        assert_eq!(walks.load(Ordering::SeqCst), 1);
        // A stale measurement: one call walks again, calls meanwhile get the previous one.
        usage.lock().get_mut("c1").expect("entry").last = Some((
            Measurement {
                bytes: 1,
                inodes: 1,
            },
            Instant::now() - LAYER_USAGE_MAX_AGE,
        ));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let third = {
            let (usage, walks) = (usage.clone(), walks.clone());
            std::thread::spawn(move || {
                usage.measure("c1", || {
                    walks.fetch_add(1, Ordering::SeqCst);
                    released.recv().expect("release");
                    Measurement {
                        bytes: 3,
                        inodes: 3,
                    }
                })
            })
        };
        while walks.load(Ordering::SeqCst) == 1 {
            std::thread::yield_now();
        }
        let during = usage.measure("c1", || panic!("a second walk started"));
        assert_eq!(during, want);
        release.send(()).expect("release");
        assert_eq!(third.join().expect("third").map(|m| m.bytes), Some(3));
        // A walk stuck for good: the first call's waiters give up after their bound.
        let stuck = Arc::new(LayerUsage::default());
        let (_hold, held) = std::sync::mpsc::channel::<()>();
        {
            let stuck = stuck.clone();
            std::thread::spawn(move || {
                stuck.measure("c2", || {
                    let _ = held.recv();
                    Measurement {
                        bytes: 0,
                        inodes: 0,
                    }
                })
            });
        }
        while !stuck.lock().get("c2").is_some_and(|e| e.walking) {
            std::thread::yield_now();
        }
        let started = Instant::now();
        assert_eq!(
            stuck.measure("c2", || panic!("a second walk started")),
            None
        );
        assert!(started.elapsed() < LAYER_WALK_WAIT + Duration::from_secs(1));
    }

    fn net_dev_line(name: &str, rx: u64, tx: u64) -> String {
        format!("{name:>6}: {rx} 10 0 0 0 0 0 0 {tx} 20 0 0 0 0 0 0\n")
    }

    const NET_DEV_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    #[test]
    fn anchor_c_pod_network_stats_are_bounded_however_many_interfaces() {
        // 10^5 dummy interfaces (what a pod with CAP_NET_ADMIN can make), eth0 among them.
        let mut text = String::from(NET_DEV_HEADER);
        text.push_str(&net_dev_line("lo", 1, 1));
        for i in 0..50_000 {
            text.push_str(&net_dev_line(&format!("dummy{i}"), i, i));
        }
        text.push_str(&net_dev_line("eth0", 1234, 5678));
        for i in 50_000..100_000 {
            text.push_str(&net_dev_line(&format!("dummy{i}"), i, i));
        }
        assert!(text.len() as u64 > MAX_NET_DEV_BYTES / 2);
        let usage = parse_net_dev(bounded_net_dev(text.as_bytes()), 7);
        let default = usage.default_interface.clone().expect("eth0 found");
        assert_eq!(default.name, "eth0");
        assert_eq!(default.rx_bytes.map(|v| v.value), Some(1234));
        assert_eq!(default.tx_bytes.map(|v| v.value), Some(5678));
        assert_eq!(usage.interfaces.len(), 1 + MAX_STATS_INTERFACES);
        assert_eq!(usage.interfaces[0].name, "eth0");
        assert_eq!(usage.interfaces[1].name, "dummy0");
        assert!(usage.interfaces.iter().all(|i| i.name != "lo"));
        let encoded = prost::Message::encoded_len(&usage);
        assert!(
            encoded < 4096,
            "reply grows with the interfaces: {encoded} bytes"
        );
        // Past the read bound: what follows is never read (eth0 there is not found), and
        // a line cut by the bound is not reported.
        let mut huge = String::from(NET_DEV_HEADER);
        while (huge.len() as u64) < MAX_NET_DEV_BYTES + (1 << 20) {
            huge.push_str(&net_dev_line("dummyxxxxxxxx", 1, 1));
        }
        huge.push_str(&net_dev_line("eth0", 1, 1));
        let usage = parse_net_dev(bounded_net_dev(huge.as_bytes()), 7);
        assert!(usage.default_interface.is_none());
        assert_eq!(usage.interfaces.len(), MAX_STATS_INTERFACES);
        // Names that are not UTF-8 do not lose the pod its stats.
        let mut odd = NET_DEV_HEADER.as_bytes().to_vec();
        odd.extend_from_slice(b"  \xff\xfe: 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n");
        odd.extend_from_slice(net_dev_line("eth0", 3, 4).as_bytes());
        let usage = parse_net_dev(bounded_net_dev(&odd[..]), 7);
        assert_eq!(
            usage.default_interface.map(|i| i.name).as_deref(),
            Some("eth0")
        );
        assert_eq!(usage.interfaces.len(), 2);
    }
}
