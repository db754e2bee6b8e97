//! A pod sandbox: the CRI config kubelet sent (immutable) and crid's record of what it made
//! for it (namespaces, network, files), saved after every change.

use std::path::{Path, PathBuf};

use crid_proto::cri;
use serde::{Deserialize, Serialize};

use super::persist;
use crate::error::DaemonError;
pub use crate::namespaces::PodNamespaces;

const RECORD_FILE: &str = "pod.json";
const CONFIG_FILE: &str = "config.pb";

/// What crid keeps about a pod.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    /// The reserved name (`k8s_POD_<name>_<namespace>_<uid>_<attempt>`).
    pub name: String,
    pub created_at: i64,
    pub ready: bool,
    pub runtime_handler: String,
    pub namespaces: PodNamespaces,
    /// The per-pod /dev/shm tmpfs (absent with host IPC).
    pub shm: Option<PathBuf>,
    /// The CNI ADD result, kept for DEL (`prevResult`).
    pub cni_result: Option<serde_json::Value>,
    pub ips: Vec<String>,
    pub hostname: String,
    pub cgroup_parent: String,
    /// The id mappings of the pod's own user namespace (absent: the host's).
    #[serde(default)]
    pub user_namespace: Option<crate::idmap::PodIdMappings>,
}

/// A pod sandbox.
pub struct Pod {
    pub id: String,
    pub dir: PathBuf,
    pub config: cri::PodSandboxConfig,
    /// Serialises lifecycle operations (run, stop, remove) on this pod.
    pub lifecycle: tokio::sync::Mutex<()>,
    record: persist::SavedRecord<PodRecord>,
}

impl Pod {
    /// A new pod; its record is written by the first [`Pod::update`].
    pub fn new(dir: PathBuf, config: cri::PodSandboxConfig, record: PodRecord) -> Self {
        let record = persist::SavedRecord::new(dir.join(RECORD_FILE), record);
        Pod::with_record(dir, config, record)
    }

    fn with_record(
        dir: PathBuf,
        config: cri::PodSandboxConfig,
        record: persist::SavedRecord<PodRecord>,
    ) -> Self {
        Pod {
            id: record.get().id,
            dir,
            config,
            lifecycle: tokio::sync::Mutex::new(()),
            record,
        }
    }

    pub fn load(dir: &Path) -> Result<Self, DaemonError> {
        let record = persist::SavedRecord::load(dir.join(RECORD_FILE))?;
        let config = persist::load_message(&dir.join(CONFIG_FILE))?;
        Ok(Pod::with_record(dir.to_owned(), config, record))
    }

    /// Writes the config (once) and the record.
    pub fn save_config(&self) -> Result<(), DaemonError> {
        persist::save_message(&self.dir.join(CONFIG_FILE), &self.config)
    }

    /// A copy of the current record.
    pub fn record(&self) -> PodRecord {
        self.record.get()
    }

    /// Changes the record and saves it.
    pub fn update(&self, change: impl FnOnce(&mut PodRecord)) -> Result<(), DaemonError> {
        self.record.update(change)
    }

    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// The namespace options kubelet asked for (defaults when absent: all POD).
    pub fn namespace_options(&self) -> cri::NamespaceOption {
        namespace_options(&self.config)
    }
}

/// The namespace options of a pod config.
pub fn namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}
