//! The pods and containers crid knows: an in-memory index over records kept on disk
//! (`<root>/pods/<id>/`, `<root>/containers/<id>/`), so a restarted crid finds everything
//! again. Names are reserved here (kubelet's `k8s_…` names are unique per pod and container).

pub mod container;
pub mod persist;
pub mod pod;
pub mod trash;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use container::Container;
pub use pod::Pod;

use crate::config::Config;
use crate::error::DaemonError;
use crate::host::Host;
use crid_image::ImageStore;

/// Where records and runtime files live.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// `<root>/pods`: one directory per pod (record, config, resolv.conf, hosts, shm).
    pub pods: PathBuf,
    /// `<root>/containers`: one directory per container (record, config, OCI bundle, rootfs).
    pub containers: PathBuf,
    /// `<root>/exits`: exit records written by the monitors; they outlive crid and a reboot.
    pub exits: PathBuf,
    /// `<root>/trash`: removed containers whose files are still being cleaned up.
    pub trash: PathBuf,
    /// `<runroot>/m`: monitor sockets (short, for the 108-byte socket path limit).
    pub monitors: PathBuf,
    /// `<runroot>/ns`: pinned pod namespaces.
    pub namespaces: PathBuf,
    /// `<runroot>/x`: streaming exec sessions' pid files and console sockets (short, for the
    /// socket path limit); emptied at start.
    pub exec_sessions: PathBuf,
}

impl StatePaths {
    pub fn new(config: &Config) -> Self {
        StatePaths {
            pods: config.root.join("pods"),
            containers: config.root.join("containers"),
            exits: config.root.join("exits"),
            trash: config.root.join("trash"),
            monitors: config.runroot.join("m"),
            namespaces: config.runroot.join("ns"),
            exec_sessions: config.runroot.join("x"),
        }
    }

    fn create(&self) -> Result<(), DaemonError> {
        for dir in [
            &self.pods,
            &self.containers,
            &self.exits,
            &self.trash,
            &self.monitors,
            &self.namespaces,
            &self.exec_sessions,
        ] {
            std::fs::create_dir_all(dir).map_err(|err| DaemonError::Io {
                what: "create",
                path: dir.clone(),
                err,
            })?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Index {
    pods: HashMap<String, Arc<Pod>>,
    containers: HashMap<String, Arc<Container>>,
    /// Reserved name → the id holding it.
    names: HashMap<String, String>,
}

impl Index {
    /// Frees `name` if `id` holds it.
    fn release_name(&mut self, name: &str, id: &str) {
        if self.names.get(name).is_some_and(|holder| holder == id) {
            self.names.remove(name);
        }
    }
}

/// An image a CreateContainer uses; released on drop.
pub struct ImageInCreation<'a> {
    state: &'a State,
    image_id: String,
}

impl Drop for ImageInCreation<'_> {
    fn drop(&mut self) {
        let mut creations = self.state.creations();
        if let Some(count) = creations.get_mut(&self.image_id) {
            *count -= 1;
            if *count == 0 {
                creations.remove(&self.image_id);
            }
        }
    }
}

/// Everything the runtime service works on.
pub struct State {
    pub config: Arc<Config>,
    pub images: Arc<ImageStore>,
    pub paths: StatePaths,
    /// The runtime, monitor launcher, network and namespace pinner crid drives.
    pub host: Host,
    /// Images a CreateContainer in progress uses (id → how many creates), from image lookup
    /// until the container is recorded: RemoveImage refuses them as it refuses an image a
    /// container uses. A count per image, not a lock: a slow `runc create` holds back no
    /// RemoveImage of another image and no other create.
    images_in_creation: Mutex<HashMap<String, usize>>,
    /// Container and pod events for GetContainerEvents.
    pub events: crate::events::EventHub,
    index: Mutex<Index>,
}

/// Which kind of object an id or name belongs to (for messages).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Pod,
    Container,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Pod => "pod sandbox",
            Kind::Container => "container",
        }
    }
}

/// Finds the one entry whose id is `id` or starts with it (crictl prints 13-digit prefixes).
fn find<'a, T>(
    map: &'a HashMap<String, Arc<T>>,
    id: &str,
    kind: Kind,
) -> Result<&'a Arc<T>, DaemonError> {
    if id.is_empty() {
        return Err(DaemonError::InvalidArgument(format!(
            "{} id is empty",
            kind.noun()
        )));
    }
    if let Some(found) = map.get(id) {
        return Ok(found);
    }
    let mut matches = map.iter().filter(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, found)), None) => Ok(found),
        (Some(_), Some(_)) => Err(DaemonError::InvalidArgument(format!(
            "{} id prefix {id} is ambiguous",
            kind.noun()
        ))),
        _ => Err(DaemonError::NotFound(format!(
            "{} {id} not found",
            kind.noun()
        ))),
    }
}

impl State {
    /// Loads every record under the root; objects whose record cannot be read are logged and
    /// left alone (never deleted: an operator may want to look).
    pub fn load(config: Arc<Config>, images: Arc<ImageStore>) -> Result<Self, DaemonError> {
        let host = Host::real(&config);
        State::load_with(config, images, host)
    }

    /// [`State::load`] driving `host` (fakes, in unit tests).
    pub fn load_with(
        config: Arc<Config>,
        images: Arc<ImageStore>,
        host: Host,
    ) -> Result<Self, DaemonError> {
        let paths = StatePaths::new(&config);
        paths.create()?;
        trash::empty(&paths.trash);
        // Exec sessions do not survive crid: their pid files and console sockets are stale.
        if let Ok(entries) = std::fs::read_dir(&paths.exec_sessions) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut index = Index::default();
        for dir in persist::subdirectories(&paths.pods) {
            match Pod::load(&dir) {
                Ok(pod) => {
                    index
                        .names
                        .insert(pod.record().name.clone(), pod.id.clone());
                    index.pods.insert(pod.id.clone(), Arc::new(pod));
                }
                Err(err) => {
                    tracing::error!(dir = %dir.display(), error = %crid_common::error_chain::error_chain(&err), "skipping unreadable pod record")
                }
            }
        }
        for dir in persist::subdirectories(&paths.containers) {
            match Container::load(&dir) {
                Ok(container) => {
                    index
                        .names
                        .insert(container.record().name.clone(), container.id.clone());
                    index
                        .containers
                        .insert(container.id.clone(), Arc::new(container));
                }
                Err(err) => {
                    tracing::error!(dir = %dir.display(), error = %crid_common::error_chain::error_chain(&err), "skipping unreadable container record")
                }
            }
        }
        tracing::info!(
            pods = index.pods.len(),
            containers = index.containers.len(),
            "loaded pod and container records"
        );
        Ok(State {
            config,
            images,
            paths,
            host,
            images_in_creation: Mutex::default(),
            events: crate::events::EventHub::default(),
            index: Mutex::new(index),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `name` for `id`; AlreadyExists names the holder.
    pub fn reserve_name(&self, name: &str, id: &str, kind: Kind) -> Result<(), DaemonError> {
        let mut index = self.index();
        if let Some(holder) = index.names.get(name) {
            return Err(DaemonError::AlreadyExists(format!(
                "{} name {name} is reserved by {holder}",
                kind.noun()
            )));
        }
        index.names.insert(name.to_owned(), id.to_owned());
        Ok(())
    }

    /// Releases `name` if `id` holds it.
    pub fn release_name(&self, name: &str, id: &str) {
        self.index().release_name(name, id);
    }

    pub fn pod(&self, id: &str) -> Result<Arc<Pod>, DaemonError> {
        find(&self.index().pods, id, Kind::Pod).cloned()
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, DaemonError> {
        find(&self.index().containers, id, Kind::Container).cloned()
    }

    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.index().pods.values().cloned().collect()
    }

    pub fn containers(&self) -> Vec<Arc<Container>> {
        self.index().containers.values().cloned().collect()
    }

    /// A container whose image is `image_id`, if any.
    pub fn container_using_image(&self, image_id: &str) -> Option<String> {
        let recorded = self
            .index()
            .containers
            .values()
            .find(|c| c.record().image_id == image_id)
            .map(|c| c.id.clone());
        recorded.or_else(|| {
            self.creations()
                .contains_key(image_id)
                .then(|| "(one being created)".to_owned())
        })
    }

    /// Marks an image as used by a CreateContainer until the returned guard drops.
    pub fn hold_image_for_create(&self, image_id: &str) -> ImageInCreation<'_> {
        *self.creations().entry(image_id.to_owned()).or_default() += 1;
        ImageInCreation {
            state: self,
            image_id: image_id.to_owned(),
        }
    }

    fn creations(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.images_in_creation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The containers of one pod.
    pub fn containers_of(&self, pod_id: &str) -> Vec<Arc<Container>> {
        self.index()
            .containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .cloned()
            .collect()
    }

    pub fn insert_pod(&self, pod: Arc<Pod>) {
        self.index().pods.insert(pod.id.clone(), pod);
    }

    pub fn insert_container(&self, container: Arc<Container>) {
        self.index()
            .containers
            .insert(container.id.clone(), container);
    }

    pub fn forget_pod(&self, id: &str) {
        let mut index = self.index();
        if let Some(pod) = index.pods.remove(id) {
            index.release_name(&pod.record().name, id);
        }
    }

    pub fn forget_container(&self, id: &str) {
        let mut index = self.index();
        if let Some(container) = index.containers.remove(id) {
            index.release_name(&container.record().name, id);
        }
    }
}

/// A new 64-hex-digit id.
pub fn new_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // Unique enough without the kernel's randomness: time, pid and a counter.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = crate::state::persist::now_nanos() as u64;
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        bytes[12..20].copy_from_slice(&seq.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
