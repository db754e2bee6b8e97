//! A container: the CRI config kubelet sent (immutable) and crid's record of its life. Its
//! exit comes from the exit record its monitor writes; once read it is kept in the record.

use std::path::{Path, PathBuf};

use crid_common::exit_record::ExitRecord;
use crid_proto::cri;
use serde::{Deserialize, Serialize};

use super::persist;
use crate::error::DaemonError;

const RECORD_FILE: &str = "container.json";
const CONFIG_FILE: &str = "config.pb";
/// Resources set by UpdateContainerResources (protobuf), which replace the config's.
const RESOURCES_FILE: &str = "resources.pb";

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    pub exit_code: i32,
    pub finished_at: i64,
    pub oom_killed: bool,
    /// Set when crid, not the monitor, decided the outcome (the monitor was lost).
    pub lost: bool,
}

/// The process user, as resolved at create time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// What crid keeps about a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    /// The reserved name (`k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`).
    pub name: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished: Option<Finished>,
    /// `sha256:<hex>` of the image config.
    pub image_id: String,
    /// A repo digest of the image (or its id when it has none).
    pub image_ref: String,
    /// Absolute path of the CRI log (empty: no log path was asked for).
    pub log_path: PathBuf,
    pub pid: i32,
    /// The signal StopContainer sends first (the image's StopSignal, else SIGTERM).
    pub stop_signal: i32,
    pub user: ProcessUser,
    /// The container's overlay mount point.
    pub rootfs: PathBuf,
    /// The OCI `cgroupsPath`.
    #[serde(default)]
    pub cgroup_path: String,
    /// Whether the container has a PID namespace of its own (else killing its init does not
    /// end its other processes).
    #[serde(default)]
    pub own_pid_namespace: bool,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Exited,
}

/// The deadlines of a container's stops and removals, one entry per request while it lasts.
pub struct StopRequests {
    next: std::sync::atomic::AtomicU64,
    deadlines: std::sync::Mutex<std::collections::BTreeMap<u64, tokio::time::Instant>>,
    changed: tokio::sync::watch::Sender<()>,
}

/// A request's entry in [`StopRequests`], removed when dropped.
pub struct StopTicket<'a> {
    requests: &'a StopRequests,
    id: u64,
}

impl StopRequests {
    fn new() -> StopRequests {
        StopRequests {
            next: 0.into(),
            deadlines: Default::default(),
            changed: tokio::sync::watch::Sender::new(()),
        }
    }

    fn deadlines(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, tokio::time::Instant>> {
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a request that wants the container stopped by `deadline`.
    pub fn register(&self, deadline: tokio::time::Instant) -> StopTicket<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.deadlines().insert(id, deadline);
        self.changed.send_replace(());
        StopTicket { requests: self, id }
    }

    /// The earliest deadline of the requests other than `ticket`'s.
    pub fn earliest_but(&self, ticket: &StopTicket<'_>) -> Option<tokio::time::Instant> {
        self.deadlines()
            .iter()
            .filter(|(id, _)| **id != ticket.id)
            .map(|(_, deadline)| *deadline)
            .min()
    }

    /// Wakes when a request comes or goes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }
}

impl Drop for StopTicket<'_> {
    fn drop(&mut self) {
        self.requests.deadlines().remove(&self.id);
        self.requests.changed.send_replace(());
    }
}

/// A container.
pub struct Container {
    pub id: String,
    pub pod_id: String,
    pub dir: PathBuf,
    pub config: cri::ContainerConfig,
    /// Serialises lifecycle operations (start, stop, remove) on this container.
    pub lifecycle: tokio::sync::Mutex<()>,
    /// Its STOPPED event is out (or was, before a restart: the exit is on record). Set once,
    /// by whoever sees the exit first: the exit watch, StopContainer, RemoveContainer.
    pub stopped_event: std::sync::atomic::AtomicBool,
    /// The deadlines of the stops and removals under way or waiting for the lifecycle lock:
    /// the one under way sends SIGKILL by the earliest of the others' too (a long grace
    /// period is cut short by a later, shorter stop, as kubelet's force delete expects).
    pub stop_requests: StopRequests,
    record: persist::SavedRecord<ContainerRecord>,
}

impl Container {
    /// A new container; its record is written by the first [`Container::update`].
    pub fn new(dir: PathBuf, config: cri::ContainerConfig, record: ContainerRecord) -> Self {
        let record = persist::SavedRecord::new(dir.join(RECORD_FILE), record);
        Container::with_record(dir, config, record)
    }

    fn with_record(
        dir: PathBuf,
        config: cri::ContainerConfig,
        record: persist::SavedRecord<ContainerRecord>,
    ) -> Self {
        let ContainerRecord {
            id,
            pod_id,
            finished,
            ..
        } = record.get();
        Container {
            id,
            pod_id,
            dir,
            config,
            lifecycle: tokio::sync::Mutex::new(()),
            stopped_event: finished.is_some().into(),
            stop_requests: StopRequests::new(),
            record,
        }
    }

    pub fn load(dir: &Path) -> Result<Self, DaemonError> {
        let record = persist::SavedRecord::load(dir.join(RECORD_FILE))?;
        let config = persist::load_message(&dir.join(CONFIG_FILE))?;
        Ok(Container::with_record(dir.to_owned(), config, record))
    }

    pub fn save_config(&self) -> Result<(), DaemonError> {
        persist::save_message(&self.dir.join(CONFIG_FILE), &self.config)
    }

    pub fn record(&self) -> ContainerRecord {
        self.record.get()
    }

    pub fn update(&self, change: impl FnOnce(&mut ContainerRecord)) -> Result<(), DaemonError> {
        self.record.update(change)
    }

    /// The container's resources: the last update's, else the config's.
    pub fn resources(&self) -> Option<cri::LinuxContainerResources> {
        persist::load_message(&self.dir.join(RESOURCES_FILE))
            .ok()
            .or_else(|| self.config.linux.as_ref().and_then(|l| l.resources.clone()))
    }

    /// Records the resources of an update.
    pub fn save_resources(
        &self,
        resources: &cri::LinuxContainerResources,
    ) -> Result<(), DaemonError> {
        persist::save_message(&self.dir.join(RESOURCES_FILE), resources)
    }

    pub fn metadata(&self) -> cri::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// The exit, reading the monitor's exit record the first time it is there.
    pub fn finished(&self, exits: &Path) -> Option<Finished> {
        if let Some(finished) = self.record().finished {
            return Some(finished);
        }
        let path = crid_common::monitor_paths::exit_record(exits, &self.id);
        let exit = ExitRecord::read(&path).ok()?;
        let finished = Finished {
            exit_code: exit.exit_code,
            finished_at: persist::nanos_of(&exit.finished_at),
            oom_killed: exit.oom_killed,
            lost: false,
        };
        let cached = finished.clone();
        if let Err(err) = self.update(|r| r.finished = Some(cached)) {
            tracing::warn!(id = %self.id, error = %crid_common::error_chain::error_chain(&err), "cannot save the exit in the record");
        }
        Some(finished)
    }

    /// The container's phase now.
    pub fn phase(&self, exits: &Path) -> Phase {
        if self.finished(exits).is_some() {
            Phase::Exited
        } else if self.record().started_at.is_some() {
            Phase::Running
        } else {
            Phase::Created
        }
    }
}
