//! State shared between the event loop (main thread) and the control server's threads.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

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

/// Children forked by control threads (ExecSync): the event loop reaps every child, and hands
/// the wait status of a registered one to the thread that waits for it.
#[derive(Default)]
pub struct ChildRegistry {
    statuses: Mutex<HashMap<libc::pid_t, Option<libc::c_int>>>,
    reaped: Condvar,
}

impl ChildRegistry {
    /// Locks the registry; hold the guard across spawning a child and registering it, so the
    /// event loop cannot reap it unseen.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<libc::pid_t, Option<libc::c_int>>> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the event loop for each reaped pid; true if a control thread wanted it.
    pub fn offer(&self, pid: libc::pid_t, status: libc::c_int) -> bool {
        let mut map = self.lock();
        match map.get_mut(&pid) {
            Some(slot) => {
                *slot = Some(status);
                self.reaped.notify_all();
                true
            }
            None => false,
        }
    }

    /// Waits up to `timeout` for `pid`'s status and forgets the pid.
    pub fn take(&self, pid: libc::pid_t, timeout: Duration) -> Option<libc::c_int> {
        let map = self.lock();
        let (mut map, _) = self
            .reaped
            .wait_timeout_while(map, timeout, |m| matches!(m.get(&pid), Some(None)))
            .unwrap_or_else(|e| e.into_inner());
        map.remove(&pid).flatten()
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
