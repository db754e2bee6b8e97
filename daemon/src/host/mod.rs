//! What crid asks of the host through other programs, behind traits: the OCI runtime (runc),
//! the monitor launcher (crimon), the pod network (CNI) and the namespace pinner
//! (crid-pinns). [`State`](crate::state::State) holds one [`Host`]; the daemon uses the real
//! implementations ([`Host::real`]), which call today's code unchanged, and unit tests hand
//! in fakes, so that pod and container lifecycles run without root (as youki's `Syscall`).

mod cni;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crid_cni::CniError;
use crid_proto::cri;
use serde_json::Value;

use crate::config::{CgroupManager, Config, NetworkConfig};
use crate::monitor_client::{MonitorClientError, MonitorSpec};
use crate::namespaces::{NamespaceError, PinRequest, PodNamespaces};
use crate::oci_runtime::{OciRuntime, RuntimeError};

/// A boxed, sendable future (what the traits' async methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The OCI runtime's commands crid runs itself (`create` is the monitor's).
pub trait OciRuntimeOps: Send + Sync {
    /// Starts a created container.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Applies the OCI resources in `file` (JSON) to a container.
    fn update<'a>(&'a self, id: &'a str, file: &'a Path)
        -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Sends `signal` to the container's init (with `all`, to every process in it); a
    /// container that is gone is not an error.
    fn kill<'a>(
        &'a self,
        id: &'a str,
        signal: i32,
        all: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Deletes the container's runtime state, killing what still runs; absent is fine.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Whether the runtime still keeps state for `id`.
    fn has_state(&self, id: &str) -> bool;
}

impl OciRuntimeOps for OciRuntime {
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(OciRuntime::start(self, id))
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        file: &'a Path,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(OciRuntime::update(self, id, file))
    }

    fn kill<'a>(
        &'a self,
        id: &'a str,
        signal: i32,
        all: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(OciRuntime::kill(self, id, signal, all))
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(OciRuntime::delete(self, id))
    }

    fn has_state(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }
}

/// Launches a container's monitor (which creates the container) and tells whether one
/// answers.
pub trait MonitorLauncher: Send + Sync {
    /// Launches the monitor; returns the container's pid once it is created.
    fn create<'a>(
        &'a self,
        spec: &'a MonitorSpec,
    ) -> BoxFuture<'a, Result<i32, MonitorClientError>>;
    /// Whether the monitor of `id` listens on its control socket in `socket_dir`.
    fn answers(&self, socket_dir: &Path, id: &str) -> bool;
}

/// crimon, as `monitor_client` runs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crimon;

impl MonitorLauncher for Crimon {
    fn create<'a>(
        &'a self,
        spec: &'a MonitorSpec,
    ) -> BoxFuture<'a, Result<i32, MonitorClientError>> {
        Box::pin(crate::monitor_client::create(spec))
    }

    fn answers(&self, socket_dir: &Path, id: &str) -> bool {
        let socket = crid_common::monitor_paths::control_socket(socket_dir, id);
        // A socket file nobody listens on is what a killed monitor leaves.
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    }
}

/// A pod's network attachment (CNI ADD and DEL).
pub trait PodNetwork: Send + Sync {
    /// Attaches the pod's network namespace; returns the CNI result.
    fn attach<'a>(
        &'a self,
        network: &'a NetworkConfig,
        id: &'a str,
        netns: &'a Path,
        config: &'a cri::PodSandboxConfig,
    ) -> BoxFuture<'a, Result<Value, CniError>>;
    /// Detaches the pod, with the ADD result when known.
    fn detach<'a>(
        &'a self,
        network: &'a NetworkConfig,
        id: &'a str,
        netns: &'a Path,
        config: &'a cri::PodSandboxConfig,
        added: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<(), CniError>>;
}

/// The CNI plugins of the configuration (`host::cni`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cni;

impl PodNetwork for Cni {
    fn attach<'a>(
        &'a self,
        network: &'a NetworkConfig,
        id: &'a str,
        netns: &'a Path,
        config: &'a cri::PodSandboxConfig,
    ) -> BoxFuture<'a, Result<Value, CniError>> {
        Box::pin(cni::attach(network, id, netns, config))
    }

    fn detach<'a>(
        &'a self,
        network: &'a NetworkConfig,
        id: &'a str,
        netns: &'a Path,
        config: &'a cri::PodSandboxConfig,
        added: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<(), CniError>> {
        Box::pin(cni::detach(network, id, netns, config, added))
    }
}

/// Makes and removes a pod's pinned namespaces.
pub trait NamespacePinner: Send + Sync {
    /// Creates and pins the requested namespaces under `dir`.
    fn pin<'a>(
        &'a self,
        dir: &'a Path,
        id: &'a str,
        request: &'a PinRequest,
    ) -> BoxFuture<'a, Result<PodNamespaces, NamespaceError>>;
    /// Kills the PID namespace holder and removes every pin; missing pieces are fine.
    fn unpin(&self, namespaces: &PodNamespaces) -> Result<(), NamespaceError>;
}

/// crid-pinns (`namespaces`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pinns;

impl NamespacePinner for Pinns {
    fn pin<'a>(
        &'a self,
        dir: &'a Path,
        id: &'a str,
        request: &'a PinRequest,
    ) -> BoxFuture<'a, Result<PodNamespaces, NamespaceError>> {
        Box::pin(crate::namespaces::pin(dir, id, request))
    }

    fn unpin(&self, namespaces: &PodNamespaces) -> Result<(), NamespaceError> {
        crate::namespaces::unpin(namespaces)
    }
}

/// The programs crid drives, one of each.
#[derive(Clone)]
pub struct Host {
    pub runtime: Arc<dyn OciRuntimeOps>,
    pub monitors: Arc<dyn MonitorLauncher>,
    pub network: Arc<dyn PodNetwork>,
    pub pinner: Arc<dyn NamespacePinner>,
}

impl Host {
    /// The real programs, as `config` names them.
    pub fn real(config: &Config) -> Self {
        Host {
            runtime: Arc::new(oci_runtime(config)),
            monitors: Arc::new(Crimon),
            network: Arc::new(Cni),
            pinner: Arc::new(Pinns),
        }
    }
}

/// The configured OCI runtime's command line.
pub fn oci_runtime(config: &Config) -> OciRuntime {
    OciRuntime {
        path: config.runtime.runtime_path.clone(),
        root: config.runtime.runtime_root.clone(),
        systemd_cgroup: config.runtime.cgroup_manager == CgroupManager::Systemd,
    }
}
