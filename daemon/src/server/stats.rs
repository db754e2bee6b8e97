//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: CPU and memory
//! from the cgroup files, the writable layer's bytes and inodes, the pod's network from its
//! namespace. CPU rate (`usage_nano_cores`) needs two samples: crid keeps the previous one
//! per container and pod.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
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
/// Longest one writable layer's walk may take. The walk never leaves the upper directory's
/// own file system (crid's root: local storage, not a network mount that can hang), so this
/// only stops a layer too big for the disk: generous, for an honest big layer on a slow disk
/// must not be under-reported. A walk cut short is not taken for the layer's size (see
/// [`LayerEntry`]).
const LAYER_WALK_TIME_BUDGET: Duration = Duration::from_secs(30);
/// Deepest directory level below the upper directory the walk enters. The walk keeps a few
/// bytes per level (and at most [`LAYER_WALK_OPEN_DIRS`] directories open, whatever the
/// depth); a container can nest directories without limit (each `mkdir` relative to the
/// last), so the levels are bounded too, far beyond what PATH_MAX lets a path name.
const MAX_LAYER_WALK_DEPTH: usize = 4096;
/// Most directories the walk holds open (two descriptors each): the upper directory and the
/// deepest levels walked. A directory further up is read to its end and closed, the
/// subdirectories it still holds remembered by name; the walk opens it again through `..`
/// when it comes back up (checking it is the same directory).
const LAYER_WALK_OPEN_DIRS: usize = 32;
/// Most bytes of subdirectory names the walk remembers for the directories it closed.
const MAX_LAYER_WALK_PENDING_BYTES: usize = 16 << 20;
/// How long a stats call waits for a walk another call started when there is no earlier
/// measurement to report; past it the call reports no writable-layer usage (the walk goes
/// on, and later calls report its result). Shorter than a walk may take: a stats call must
/// not hold its blocking thread for another call's walk.
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

impl Measurement {
    const ZERO: Measurement = Measurement {
        bytes: 0,
        inodes: 0,
    };

    /// The larger of each count.
    fn max(self, other: Measurement) -> Measurement {
        Measurement {
            bytes: self.bytes.max(other.bytes),
            inodes: self.inodes.max(other.inodes),
        }
    }
}

/// Why a walk did not count the whole layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// [`MAX_LAYER_WALK`] entries counted: the walk stopped.
    Entries,
    /// Out of time: the walk stopped.
    Time,
    /// The names of subdirectories left to walk outgrew [`MAX_LAYER_WALK_PENDING_BYTES`]:
    /// the walk stopped.
    Pending,
    /// A directory past the depth bound was counted, not entered.
    Depth,
    /// A directory was moved while the walk was below it: what the walk had not read of the
    /// directories above it was left.
    Moved,
}

impl Cut {
    /// Whether the walk stops there (rather than leaving one part of the layer).
    fn stops(self) -> bool {
        matches!(self, Cut::Entries | Cut::Time | Cut::Pending)
    }
}

/// What one walk counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walked {
    m: Measurement,
    /// Why the count is not the whole layer's; None when it is.
    cut: Option<Cut>,
}

/// What a stats call reports for a writable layer, and whether later calls may too.
#[derive(Debug, Clone, Copy)]
struct Reported {
    m: Measurement,
    at: Instant,
    /// A complete walk's count (or one backed by an earlier complete walk): calls report it
    /// for [`LAYER_USAGE_MAX_AGE`]. A cut-short count with nothing better is reported by the
    /// call that made it, and the next call walks again.
    reusable: bool,
}

/// What is known of one container's writable layer.
#[derive(Default)]
struct LayerEntry {
    /// What calls report, and when it was measured. After a walk cut short (a bound hit,
    /// a directory moved under it), the larger of its count and the last complete walk's:
    /// the partial count is what the layer holds at least, and a container must not make
    /// its reported usage smaller by making walks of its layer stop early.
    last: Option<Reported>,
    /// The last complete walk's count.
    complete: Option<Measurement>,
    /// A walk is running: no other call starts one.
    walking: bool,
    /// A walk cut short has been logged at info for this container (later ones at debug).
    cut_logged: bool,
}

impl LayerEntry {
    /// Records a walk that just ended; returns why it was cut short and whether that is the
    /// first time for this container.
    fn record(&mut self, walked: Walked) -> Option<(Cut, bool)> {
        let at = Instant::now();
        let Some(cut) = walked.cut else {
            self.complete = Some(walked.m);
            self.last = Some(Reported {
                m: walked.m,
                at,
                reusable: true,
            });
            return None;
        };
        self.last = Some(match self.complete {
            Some(complete) => Reported {
                m: complete.max(walked.m),
                at,
                reusable: true,
            },
            None => Reported {
                m: walked.m,
                at,
                reusable: false,
            },
        });
        let first = !self.cut_logged;
        self.cut_logged = true;
        Some((cut, first))
    }
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
    result: Option<Walked>,
}

impl Drop for WalkDone<'_> {
    fn drop(&mut self) {
        let mut entries = self.usage.lock();
        let mut cut = None;
        // A container forgotten (removed) while it was walked stays forgotten.
        if let Some(entry) = entries.get_mut(self.id) {
            entry.walking = false;
            if let Some(walked) = self.result {
                cut = entry.record(walked);
            }
        }
        drop(entries);
        self.usage.walked.notify_all();
        match cut {
            Some((cut, true)) => tracing::info!(
                container = %self.id,
                ?cut,
                "writable layer walk cut short: reporting the last complete measurement, or at least what it counted"
            ),
            Some((cut, false)) => {
                tracing::debug!(container = %self.id, ?cut, "writable layer walk cut short")
            }
            None => {}
        }
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
    fn measure(&self, id: &str, walk: impl FnOnce() -> Walked) -> Option<Measurement> {
        let waited_since = Instant::now();
        let mut entries = self.lock();
        loop {
            let entry = entries.entry(id.to_owned()).or_default();
            if let Some(last) = entry.last {
                if entry.walking || (last.reusable && last.at.elapsed() < LAYER_USAGE_MAX_AGE) {
                    return Some(last.m);
                }
            }
            if !entry.walking {
                entry.walking = true;
                break;
            }
            // The first walk is running: wait for it, not as long as it may take.
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
        let walked = walk();
        done.result = Some(walked);
        drop(done);
        // What the entry now reports (the walk's count, or the last complete one when the
        // walk was cut short), unless the container was forgotten meanwhile.
        Some(
            self.lock()
                .get(id)
                .and_then(|e| e.last)
                .map_or(walked.m, |last| last.m),
        )
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

/// The bounds of one walk.
#[derive(Debug, Clone, Copy)]
struct WalkBounds {
    deadline: Instant,
    max_entries: u64,
    max_depth: usize,
}

/// Bytes and inodes of the writable layer at `upper`, bounded by [`MAX_LAYER_WALK`] entries,
/// [`MAX_LAYER_WALK_DEPTH`] levels and [`LAYER_WALK_TIME_BUDGET`].
fn disk_usage(upper: &Path) -> Walked {
    disk_usage_bounded(
        upper,
        WalkBounds {
            deadline: Instant::now() + LAYER_WALK_TIME_BUDGET,
            max_entries: MAX_LAYER_WALK,
            max_depth: MAX_LAYER_WALK_DEPTH,
        },
    )
}

/// Bytes and inodes under `upper`, walked by file descriptor (see [`LayerWalk`]). Nothing
/// when `upper` is not there (the container is being removed).
fn disk_usage_bounded(upper: &Path, bounds: WalkBounds) -> Walked {
    let Some(mut walk) = LayerWalk::start(upper, bounds) else {
        return Walked {
            m: Measurement::ZERO,
            cut: None,
        };
    };
    while walk.step() {}
    walk.finish()
}

/// A walk of a writable layer by file descriptor: the container owns every name below
/// `upper` and can swap a directory for a symlink (`ln -s / dir`) or move it at any moment,
/// so each directory is opened relative to its parent's descriptor with O_NOFOLLOW, its
/// entries read from that descriptor and stat'ed without following, and no path is resolved
/// again. The walk stays on `upper`'s file system (a mount point below it is counted, never
/// entered) and stops at its entry, time and name bounds.
///
/// However deep the layer, at most [`LAYER_WALK_OPEN_DIRS`] directories are open: the upper
/// directory and the deepest ones walked. Going deeper closes the highest open one (but the
/// upper directory) after reading the rest of it: its entries are counted and its
/// subdirectories remembered by name. Coming back up to a closed directory opens it again
/// as `..` of the directory just walked, and goes on only if it is the very directory
/// entered before (same device and inode): a directory the container moved meanwhile leads
/// elsewhere, and what is left of the closed directories above it is abandoned (the walk
/// goes on from the upper directory and is marked cut short).
struct LayerWalk {
    device: u64,
    bounds: WalkBounds,
    m: Measurement,
    /// The directories from the upper directory (first) down to the one being walked.
    stack: Vec<Frame>,
    /// How many directories at the end of `stack` are open, the upper directory (always
    /// open) not counted: the open ones are the upper directory and this tail.
    open_tail: usize,
    /// Bytes of the names in the frames' `pending` lists.
    pending_bytes: usize,
    cut: Option<Cut>,
}

/// One directory on the walk's stack.
struct Frame {
    /// Its device and inode when it was entered.
    id: (u64, u64),
    /// Its descriptor, for the `*at` calls, while it is open.
    fd: Option<OwnedFd>,
    /// A stream of its entries not read yet (through a duplicate of the descriptor, which
    /// `nix`'s `Dir` owns); None once read to its end.
    entries: Option<nix::dir::OwningIter>,
    /// Subdirectories counted but not walked yet, read before the directory was closed.
    pending: Vec<CString>,
}

impl Frame {
    fn open(fd: OwnedFd, id: (u64, u64)) -> Option<Frame> {
        let entries = Dir::from_fd(fd.try_clone().ok()?).ok()?.into_iter();
        Some(Frame {
            id,
            fd: Some(fd),
            entries: Some(entries),
            pending: Vec::new(),
        })
    }
}

impl LayerWalk {
    /// A walk of `upper`; None when it cannot be opened as a directory (not there, or a
    /// symlink).
    fn start(upper: &Path, bounds: WalkBounds) -> Option<LayerWalk> {
        let root = nix::fcntl::open(upper, walk_flags(), Mode::empty()).ok()?;
        let st = fstat(&root).ok()?;
        Some(LayerWalk {
            device: st.st_dev,
            bounds,
            m: Measurement::ZERO,
            stack: vec![Frame::open(root, (st.st_dev, st.st_ino))?],
            open_tail: 0,
            pending_bytes: 0,
            cut: None,
        })
    }

    /// One step: counts one entry, or enters or leaves one directory. False once the walk
    /// is over (all walked, or a bound hit).
    fn step(&mut self) -> bool {
        if self.cut.is_some_and(Cut::stops) {
            return false;
        }
        let Some(top) = self.stack.last_mut() else {
            return false;
        };
        if let Some(entries) = top.entries.as_mut() {
            match entries.next() {
                Some(Ok(entry)) => {
                    let name = entry.file_name();
                    if name != c"." && name != c".." && self.count(self.stack.len() - 1, name) {
                        self.enter(name);
                    }
                }
                // The end of the directory, or it cannot be read further.
                _ => top.entries = None,
            }
        } else if let Some(name) = top.pending.pop() {
            // A subdirectory counted before the directory was closed.
            self.pending_bytes -= name.as_bytes_with_nul().len();
            self.enter(&name);
        } else {
            self.leave();
        }
        true
    }

    /// What the walk counted, and why it is not the whole layer when it is not.
    fn finish(self) -> Walked {
        Walked {
            m: self.m,
            cut: self.cut,
        }
    }

    fn note(&mut self, cut: Cut) {
        if self.cut.is_none() || cut.stops() {
            self.cut = Some(cut);
        }
    }

    /// Counts the entry `name` of the open directory `stack[at]`; true when it is a
    /// directory on the upper directory's file system (to be walked).
    fn count(&mut self, at: usize, name: &CStr) -> bool {
        if self.m.inodes >= self.bounds.max_entries {
            self.note(Cut::Entries);
            return false;
        }
        if Instant::now() >= self.bounds.deadline {
            self.note(Cut::Time);
            return false;
        }
        let Some(fd) = self.stack[at].fd.as_ref() else {
            return false;
        };
        let Ok(st) = fstatat(fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return false;
        };
        self.m.inodes += 1;
        self.m.bytes = self
            .m
            .bytes
            .saturating_add((st.st_blocks.max(0) as u64) * 512);
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        is_dir && st.st_dev == self.device
    }

    /// Enters the directory `name` of the directory walked, when it still is a directory on
    /// the upper directory's file system: between the fstatat and the open it may have been
    /// swapped for a symlink (O_NOFOLLOW refuses it) or for another directory.
    fn enter(&mut self, name: &CStr) {
        if self.stack.len() > self.bounds.max_depth {
            self.note(Cut::Depth);
            return;
        }
        let Some(parent) = self.stack.last().and_then(|f| f.fd.as_ref()) else {
            return;
        };
        let Ok(fd) = nix::fcntl::openat(parent, name, walk_flags(), Mode::empty()) else {
            return;
        };
        let Ok(st) = fstat(&fd) else {
            return;
        };
        if st.st_dev != self.device {
            return;
        }
        let Some(frame) = Frame::open(fd, (st.st_dev, st.st_ino)) else {
            return;
        };
        self.stack.push(frame);
        self.open_tail += 1;
        if self.open_tail >= LAYER_WALK_OPEN_DIRS {
            self.close(self.stack.len() - self.open_tail);
            self.open_tail -= 1;
        }
    }

    /// Closes `stack[at]` after reading the rest of it: its entries are counted now, its
    /// subdirectories kept by name for when the walk comes back up.
    fn close(&mut self, at: usize) {
        if let Some(entries) = self.stack[at].entries.take() {
            for entry in entries {
                let Ok(entry) = entry else {
                    break;
                };
                let name = entry.file_name();
                if name == c"." || name == c".." || !self.count(at, name) {
                    if self.cut.is_some_and(Cut::stops) {
                        break;
                    }
                    continue;
                }
                let name = name.to_owned();
                self.pending_bytes += name.as_bytes_with_nul().len();
                self.stack[at].pending.push(name);
                if self.pending_bytes > MAX_LAYER_WALK_PENDING_BYTES {
                    self.note(Cut::Pending);
                    break;
                }
            }
        }
        self.stack[at].fd = None;
    }

    /// Leaves the directory walked, all of it walked; opens its parent again when it was
    /// closed.
    fn leave(&mut self) {
        let Some(done) = self.stack.pop() else {
            return;
        };
        let Some(parent) = self.stack.last_mut() else {
            return;
        };
        self.open_tail = self.open_tail.saturating_sub(1);
        if parent.fd.is_some() {
            return;
        }
        let reopened = done
            .fd
            .as_ref()
            .and_then(|fd| nix::fcntl::openat(fd, c"..", walk_flags(), Mode::empty()).ok())
            .filter(|fd| fstat(fd).is_ok_and(|st| (st.st_dev, st.st_ino) == parent.id));
        if let Some(fd) = reopened {
            parent.fd = Some(fd);
            self.open_tail = 1;
            return;
        }
        // `done` was moved out of its parent while the walk was below it: the closed
        // directories above it cannot be found again from here. What is left of them is
        // abandoned; the walk goes on in the upper directory, always open.
        self.note(Cut::Moved);
        while self.stack.len() > 1 && self.stack.last().is_some_and(|f| f.fd.is_none()) {
            if let Some(abandoned) = self.stack.pop() {
                self.pending_bytes -= abandoned
                    .pending
                    .iter()
                    .map(|n| n.as_bytes_with_nul().len())
                    .sum::<usize>();
            }
        }
        self.open_tail = 0;
    }
}

/// Threads a list call measures on at once: a walk of one large or slow writable layer (up
/// to [`LAYER_WALK_TIME_BUDGET`]) does not hold up the others' stats behind it.
const STATS_THREADS: usize = 4;

/// `measure` of each item, in order, on up to [`STATS_THREADS`] threads (call it off the
/// async workers).
pub fn map_in_parallel<T: Sync, R: Send>(items: &[T], measure: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 {
        return items.iter().map(&measure).collect();
    }
    let chunk = items.len().div_ceil(STATS_THREADS);
    std::thread::scope(|scope| {
        let measure = &measure;
        let running: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(measure).collect::<Vec<R>>()))
            .collect();
        running
            .into_iter()
            .flat_map(|thread| match thread.join() {
                Ok(part) => part,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
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

    fn bounds() -> WalkBounds {
        WalkBounds {
            deadline: Instant::now() + Duration::from_secs(30),
            max_entries: MAX_LAYER_WALK,
            max_depth: MAX_LAYER_WALK_DEPTH,
        }
    }

    fn walk(upper: &Path) -> Measurement {
        disk_usage_bounded(upper, bounds()).m
    }

    #[test]
    fn list_calls_measure_in_parallel_and_keep_the_order() {
        let items: Vec<u32> = (0..10).collect();
        let started = Instant::now();
        let out = map_in_parallel(&items, |i| {
            std::thread::sleep(Duration::from_millis(200));
            i * 2
        });
        assert_eq!(out, (0..10).map(|i| i * 2).collect::<Vec<_>>());
        // 10 items of 200 ms on 4 threads: 3 rounds, not 10.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(map_in_parallel(&[7u32], |i| *i), vec![7]);
        assert!(map_in_parallel(&Vec::<u32>::new(), |i| *i).is_empty());
    }

    fn measured(n: u64) -> Measurement {
        Measurement {
            bytes: n,
            inodes: n,
        }
    }

    fn complete(n: u64) -> Walked {
        Walked {
            m: measured(n),
            cut: None,
        }
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
        let whole = disk_usage_bounded(&l.upper, bounds());
        assert_eq!((whole.m.inodes, whole.cut), (103, None));
        let few = disk_usage_bounded(
            &l.upper,
            WalkBounds {
                max_entries: 10,
                ..bounds()
            },
        );
        assert_eq!((few.m.inodes, few.cut), (10, Some(Cut::Entries)));
        // Out of time: what it counted (nothing yet), marked as cut short.
        let late = disk_usage_bounded(
            &l.upper,
            WalkBounds {
                deadline: Instant::now(),
                ..bounds()
            },
        );
        assert_eq!((late.m.inodes, late.cut), (0, Some(Cut::Time)));
        // Nested past the depth bound: the deepest directory entered is counted with its
        // entries, nothing below them.
        let deep_root = l.upper.with_file_name("deep");
        let mut dir = deep_root.clone();
        for _ in 0..70 {
            dir.push("d");
        }
        std::fs::create_dir_all(&dir).expect("mkdir deep");
        let shallow = disk_usage_bounded(
            &deep_root,
            WalkBounds {
                max_depth: 50,
                ..bounds()
            },
        );
        assert_eq!((shallow.m.inodes, shallow.cut), (51, Some(Cut::Depth)));
        let whole = disk_usage_bounded(&deep_root, bounds());
        assert_eq!((whole.m.inodes, whole.cut), (70, None));
    }

    /// The names of the empty directories beside the `d` of `level`.
    fn siblings(level: usize) -> [String; 3] {
        [0, 1, 2].map(|k| format!("s{level}-{k}"))
    }

    /// `levels` directories `d` nested under `top`, each directory from `top` down holding
    /// three empty directories (named by level, so that the `d`s are not read at the same
    /// place in every directory) and a one-byte file `f`. Returns the deepest `d`.
    fn nest(top: &Path, levels: usize) -> PathBuf {
        let mut dir = top.to_owned();
        for level in 0..levels {
            for s in siblings(level) {
                std::fs::create_dir(dir.join(s)).expect("mkdir sibling");
            }
            std::fs::write(dir.join("f"), b"f").expect("write");
            dir.push("d");
            std::fs::create_dir(&dir).expect("mkdir d");
        }
        dir
    }

    fn open_dirs(walk: &LayerWalk) -> usize {
        walk.stack.iter().filter(|f| f.fd.is_some()).count()
    }

    /// A file 200 levels down (`mkdir -p $(printf 'd/%.0s' $(seq 200))`) is counted, and the
    /// walk never holds more than its few directories open to get there.
    #[test]
    fn anchor_c_stats_walk_counts_a_file_200_levels_deep_with_few_directories_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let upper = tmp.path().join("upper");
        std::fs::create_dir(&upper).expect("mkdir");
        let bottom = nest(&upper, 200);
        std::fs::write(bottom.join("big"), vec![3u8; 1 << 20]).expect("write");
        let mut walk = LayerWalk::start(&upper, bounds()).expect("walk");
        let (mut most_open, mut deepest) = (0, 0);
        while walk.step() {
            most_open = most_open.max(open_dirs(&walk));
            deepest = deepest.max(walk.stack.len());
        }
        assert!(most_open <= LAYER_WALK_OPEN_DIRS, "{most_open} open");
        assert_eq!(deepest, 201, "the upper dir and 200 levels");
        assert_eq!(walk.pending_bytes, 0);
        let walked = walk.finish();
        assert_eq!(walked.cut, None);
        // 200 levels of d, s0, s1, s2 and f, and the big file.
        assert_eq!(walked.m.inodes, 200 * 5 + 1);
        assert!(walked.m.bytes >= 1 << 20, "{walked:?}");
    }

    /// While the walk is below a directory it closed, the directory under it is moved into
    /// a host directory holding names like the closed one's: coming back up through `..`
    /// leads there, and the walk abandons what it had left rather than count it.
    #[test]
    fn anchor_c_stats_walk_abandons_what_a_directory_moved_under_it_leads_to() {
        let l = layout();
        nest(&l.upper, 200);
        // What the closed directories' remaining names would find in the host directory.
        for s in (0..200).flat_map(siblings) {
            std::fs::create_dir(l.canary.join(&s)).expect("mkdir");
            std::fs::hard_link(l.canary.join("deep/big"), l.canary.join(&s).join("big"))
                .expect("link");
        }
        let mut walk = LayerWalk::start(&l.upper, bounds()).expect("walk");
        // Below a closed directory that still has subdirectories to walk, with the highest
        // open directory under it (not the upper dir) one of the `d`s.
        let moved = loop {
            assert!(walk.step(), "the walk ended before it was deep enough");
            let lowest = walk.stack.len() - walk.open_tail;
            if walk.open_tail < 2 || lowest < 2 || walk.stack[lowest - 1].pending.is_empty() {
                continue;
            }
            let path = (0..lowest).fold(l.upper.clone(), |p, _| p.join("d"));
            let st = nix::sys::stat::lstat(&path).expect("lstat");
            if (st.st_dev, st.st_ino) == walk.stack[lowest].id {
                break path;
            }
        };
        std::fs::rename(&moved, l.canary.join("moved")).expect("move");
        while walk.step() {}
        let walked = walk.finish();
        assert!(
            walked.m.bytes < CANARY_BYTES as u64,
            "counted the host directory: {walked:?}"
        );
        assert_eq!(walked.cut, Some(Cut::Moved));
        // The upper directory's other entries were walked on.
        assert!(walked.m.inodes >= 3, "{walked:?}");
    }

    /// A walk cut short is reported, not taken for the layer's size: with no complete walk
    /// before it the next call walks again; with one, the larger of the two counts is
    /// reported (a container cannot shrink its reported usage by making walks stop early).
    #[test]
    fn anchor_c_a_walk_cut_short_is_not_taken_for_the_layers_size() {
        let usage = LayerUsage::default();
        let cut = |n, cut| Walked {
            m: measured(n),
            cut: Some(cut),
        };
        let stale = |usage: &LayerUsage| {
            let mut entries = usage.lock();
            let last = entries
                .get_mut("c")
                .and_then(|e| e.last.as_mut())
                .expect("last");
            last.at = Instant::now() - LAYER_USAGE_MAX_AGE;
        };
        assert_eq!(usage.measure("c", || cut(5, Cut::Time)), Some(measured(5)));
        assert_eq!(usage.measure("c", || complete(7)), Some(measured(7)));
        assert_eq!(
            usage.measure("c", || panic!("walked a fresh measurement again")),
            Some(measured(7))
        );
        stale(&usage);
        assert_eq!(
            usage.measure("c", || cut(3, Cut::Entries)),
            Some(measured(7))
        );
        assert_eq!(
            usage.measure("c", || panic!(
                "walked again though a complete count backs it"
            )),
            Some(measured(7))
        );
        stale(&usage);
        assert_eq!(usage.measure("c", || cut(9, Cut::Moved)), Some(measured(9)));
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
                    complete(1)
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
                    complete(2)
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
        usage
            .lock()
            .get_mut("c1")
            .and_then(|e| e.last.as_mut())
            .expect("measured")
            .at = Instant::now() - LAYER_USAGE_MAX_AGE;
        let (release, released) = std::sync::mpsc::channel::<()>();
        let third = {
            let (usage, walks) = (usage.clone(), walks.clone());
            std::thread::spawn(move || {
                usage.measure("c1", || {
                    walks.fetch_add(1, Ordering::SeqCst);
                    released.recv().expect("release");
                    complete(3)
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
                    complete(0)
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
