//! State shared between the event loop (main thread) and the control server's threads.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crid_common::exit_record::ExitRecord;

use crate::error::{MonitorError, Result};
use crate::runtime::Runtime;
use crate::sys;

/// Counters reported by the Stats call.
#[derive(Default)]
pub struct Counters {
    pub log_bytes: AtomicU64,
    pub log_lines: AtomicU64,
    pub log_dropped_bytes: AtomicU64,
    pub attach_dropped_bytes: AtomicU64,
    pub attach_clients: AtomicU64,
    pub log_reopens: AtomicU64,
    pub exec_sync_calls: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A request the event loop must carry out (it owns the fds involved).
pub enum LoopCommand {
    ReopenLog(Sender<Result<()>>),
    CloseStdin(Sender<Result<()>>),
    Resize {
        width: u16,
        height: u16,
        reply: Sender<Result<()>>,
    },
}

/// Most wait statuses of unregistered children (orphans that landed on us) kept for a claim.
const MAX_UNCLAIMED: usize = 256;

/// Children forked by control threads (ExecSync): the event loop reaps every child, and hands
/// the wait status of a registered one to the thread that waits for it.
///
/// An ExecSync command (run with `<runtime> exec --detach`) becomes our child only when the
/// runtime exits, and its pid is known only from the runtime's pid file, so it may be reaped
/// before anyone registered it: the statuses of the last [`MAX_UNCLAIMED`] unregistered
/// children are kept, with when they were reaped, for [`ChildRegistry::claim`].
#[derive(Default)]
pub struct ChildRegistry {
    statuses: Mutex<Registry>,
    reaped: Condvar,
}

#[derive(Default)]
pub struct Registry {
    wanted: HashMap<libc::pid_t, Option<libc::c_int>>,
    unclaimed: VecDeque<(libc::pid_t, libc::c_int, Instant)>,
}

impl Registry {
    /// Registers `pid`: its status goes to [`ChildRegistry::take`].
    pub fn insert(&mut self, pid: libc::pid_t) {
        self.wanted.insert(pid, None);
    }
}

impl ChildRegistry {
    /// Locks the registry; hold the guard across spawning a child and registering it, so the
    /// event loop cannot reap it unseen.
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the event loop for each reaped pid; true if a control thread wanted it.
    pub fn offer(&self, pid: libc::pid_t, status: libc::c_int) -> bool {
        let mut registry = self.lock();
        match registry.wanted.get_mut(&pid) {
            Some(slot) => {
                *slot = Some(status);
                self.reaped.notify_all();
                true
            }
            None => {
                if registry.unclaimed.len() == MAX_UNCLAIMED {
                    registry.unclaimed.pop_front();
                }
                registry.unclaimed.push_back((pid, status, Instant::now()));
                false
            }
        }
    }

    /// Waits up to `timeout` for the status of `pid`, a process that became our child (an
    /// orphan) some time after `since`; a status of that pid reaped before `since` belongs to
    /// an earlier process and is ignored.
    pub fn claim(
        &self,
        pid: libc::pid_t,
        since: Instant,
        timeout: Duration,
    ) -> Option<libc::c_int> {
        {
            let mut registry = self.lock();
            let found = registry
                .unclaimed
                .iter()
                .rposition(|(p, _, at)| *p == pid && *at >= since);
            if let Some(index) = found {
                return registry
                    .unclaimed
                    .remove(index)
                    .map(|(_, status, _)| status);
            }
            registry.insert(pid);
        }
        self.take(pid, timeout)
    }

    /// Waits up to `timeout` for `pid`'s status and forgets the pid.
    pub fn take(&self, pid: libc::pid_t, timeout: Duration) -> Option<libc::c_int> {
        let registry = self.lock();
        let (mut registry, _) = self
            .reaped
            .wait_timeout_while(registry, timeout, |r| {
                matches!(r.wanted.get(&pid), Some(None))
            })
            .unwrap_or_else(|e| e.into_inner());
        registry.wanted.remove(&pid).flatten()
    }
}

/// The monitor's shared state.
pub struct Shared {
    pub id: String,
    pub pid: libc::pid_t,
    pub created_at: String,
    pub runtime: Runtime,
    pub socket_dir: std::path::PathBuf,
    pub counters: Counters,
    pub children: ChildRegistry,
    exit: Mutex<Option<ExitRecord>>,
    exited: Condvar,
    /// Wait calls currently blocked; the monitor lingers briefly at exit until they answered.
    pub active_waiters: AtomicUsize,
    commands: Mutex<Sender<LoopCommand>>,
    wake: OwnedFd,
}

impl Shared {
    /// Creates the shared state and the receiving end of the loop's command queue.
    pub fn new(
        id: String,
        pid: libc::pid_t,
        created_at: String,
        runtime: Runtime,
        socket_dir: std::path::PathBuf,
        wake: OwnedFd,
    ) -> (Self, mpsc::Receiver<LoopCommand>) {
        let (tx, rx) = mpsc::channel();
        let shared = Shared {
            id,
            pid,
            created_at,
            runtime,
            socket_dir,
            counters: Counters::default(),
            children: ChildRegistry::default(),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            active_waiters: AtomicUsize::new(0),
            commands: Mutex::new(tx),
            wake,
        };
        (shared, rx)
    }

    /// The exit record, once the container has exited.
    pub fn exit(&self) -> Option<ExitRecord> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes the exit (after the record is on disk) and wakes every waiter.
    pub fn publish_exit(&self, record: ExitRecord) {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
        self.exited.notify_all();
    }

    /// Blocks until the container has exited.
    pub fn wait_exit(&self) -> ExitRecord {
        let mut guard = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(record) = guard.as_ref() {
                return record.clone();
            }
            guard = self.exited.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sends a command to the event loop and waits for its answer.
    pub fn ask_loop(&self, make: impl FnOnce(Sender<Result<()>>) -> LoopCommand) -> Result<()> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let sent = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(make(reply_tx));
        if sent.is_err() {
            return Err(MonitorError::Exited(self.id.clone()));
        }
        sys::eventfd_signal(std::os::fd::AsFd::as_fd(&self.wake));
        reply_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| MonitorError::Exited(self.id.clone()))?
    }
}
