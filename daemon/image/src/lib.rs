//! Images: registry pulls into a content-addressed store of unpacked layers shared between
//! images (see `store` for the layout), and the lookups the ImageService and containers need.

#![deny(unsafe_code)]

pub mod auth;
pub mod config;
pub mod digest;
mod fsops;
#[doc(hidden)]
pub mod fuzzing;
mod manifest;
pub mod overlay;
mod pull;
mod reference;
mod registries;
pub mod settings;
pub mod store;
pub(crate) mod tarstream;
mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use digest::Digest;
use store::{ImageRecord, StoreError, StorePaths};

use crate::settings::ImageConfig;

/// Errors of the image service.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {why}")]
    InvalidReference { reference: String, why: String },
    #[error("invalid credentials: {0}")]
    InvalidAuth(String),
    #[error("registry {host} refused the credentials for {reference} (unauthorized)")]
    Unauthorized { reference: String, host: String },
    #[error("image {0} not found")]
    NotFound(String),
    #[error("pulling {reference} is blocked by the registry configuration (prefix {prefix})")]
    Blocked { reference: String, prefix: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("failed to pull {0}")]
    PullFailed(String),
    #[error("registry error for {reference}")]
    Registry {
        reference: String,
        #[source]
        err: oci_client::errors::OciDistributionError,
    },
    #[error("invalid image: {0}")]
    Invalid(String),
    /// The registry (or mirror) `host`, the last one tried, sent less than
    /// [`pull::MIN_PULL_PROGRESS_BYTES`] in a whole progress window while the pull waited on
    /// it; `tried` says how the endpoints tried before it failed.
    #[error(
        "pulling {reference}: registry {host} sent less than {min} bytes in {secs} s while crid waited for {waiting} (pull_progress_timeout_secs){tried_before}",
        min = pull::MIN_PULL_PROGRESS_BYTES,
        tried_before = tried_before(tried)
    )]
    Stalled {
        reference: String,
        host: String,
        waiting: String,
        secs: u64,
        tried: Vec<String>,
    },
    #[error(transparent)]
    Unpack(Box<LayerRefused>),
    #[error("layer i/o failed")]
    LayerIo(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("registry configuration")]
    Registries(#[source] registries::RegistriesError),
}

/// How the endpoints tried before the last one failed, for a message.
fn tried_before(tried: &[String]) -> String {
    if tried.is_empty() {
        String::new()
    } else {
        format!("; tried before: {}", tried.join("; "))
    }
}

impl ImageError {
    fn layer_io(err: std::io::Error) -> Self {
        ImageError::LayerIo(err)
    }
}

/// A layer whose content broke the extraction rules.
#[derive(Debug, thiserror::Error)]
#[error("image {image}: layer {layer} is refused")]
pub struct LayerRefused {
    pub image: String,
    pub layer: Digest,
    #[source]
    pub err: unpack::UnpackError,
}

/// What RemoveImage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// No such image (removal is idempotent).
    Absent,
    /// Only the tag went; the image keeps its others.
    Untagged,
    /// The image and the layers no other image uses are gone.
    Removed,
    /// Nothing was done: a container uses the image.
    InUse { id: Digest, container: String },
}

/// The image store and its in-memory index.
pub struct ImageStore {
    pub paths: StorePaths,
    config: ImageConfig,
    images: RwLock<HashMap<Digest, ImageRecord>>,
    layer_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Layers that pulls in progress will record, with how many pulls hold each: a layer
    /// held here is never removed, even when no recorded image uses it.
    held: Mutex<HashMap<Digest, usize>>,
    downloads: tokio::sync::Semaphore,
    /// Serialises record updates (tags move between images) and layer removal.
    records: Mutex<()>,
}

/// Layers held for a pull in progress; released on drop.
pub struct LayerHold<'a> {
    store: &'a ImageStore,
    layers: Vec<Digest>,
}

impl Drop for LayerHold<'_> {
    fn drop(&mut self) {
        let mut held = self.store.held.lock().unwrap_or_else(|e| e.into_inner());
        for layer in &self.layers {
            if let Some(count) = held.get_mut(layer) {
                *count -= 1;
                if *count == 0 {
                    held.remove(layer);
                }
            }
        }
    }
}

/// Bytes and inodes the store uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

impl ImageStore {
    /// Opens (creating) the store under `root`, cleaning leftovers of interrupted pulls.
    pub fn open(root: PathBuf, config: ImageConfig) -> Result<Self, ImageError> {
        let paths = StorePaths { root };
        paths.prepare()?;
        let images = paths.load_images()?;
        Ok(ImageStore {
            paths,
            downloads: tokio::sync::Semaphore::new(config.max_concurrent_downloads.max(1)),
            config,
            images: RwLock::new(images),
            layer_locks: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            records: Mutex::new(()),
        })
    }

    fn registries(&self) -> Result<registries::Registries, ImageError> {
        registries::Registries::load(
            &self.config.registries_conf,
            &self.config.registries_conf_dir,
        )
        .map_err(ImageError::Registries)
    }

    /// Holds `layers` for a pull: from now until the hold is dropped, RemoveImage leaves
    /// them in place. A pull holds its layers before it looks for them in the store, so a
    /// layer it finds present stays present until its image is recorded.
    pub fn hold_layers(&self, layers: &[Digest]) -> LayerHold<'_> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for layer in layers {
            *held.entry(layer.clone()).or_default() += 1;
        }
        LayerHold {
            store: self,
            layers: layers.to_vec(),
        }
    }

    /// Records a pulled image (whose layers the caller holds); its tags move off any other
    /// image that had them.
    pub fn add_image(&self, mut record: ImageRecord) -> Result<(), ImageError> {
        let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(missing) = record.layers.iter().find(|l| !self.paths.has_layer(l)) {
            return Err(ImageError::LayerIo(std::io::Error::other(format!(
                "layer {missing} of image {} is not in the store",
                record.id
            ))));
        }
        let mut images = self.images.write().unwrap_or_else(|e| e.into_inner());
        let mut touched = Vec::new();
        for other in images.values_mut().filter(|o| o.id != record.id) {
            let before = other.repo_tags.len();
            other.repo_tags.retain(|t| !record.repo_tags.contains(t));
            if other.repo_tags.len() != before {
                touched.push(other.clone());
            }
        }
        if let Some(existing) = images.get(&record.id) {
            for tag in &existing.repo_tags {
                if !record.repo_tags.contains(tag) {
                    record.repo_tags.push(tag.clone());
                }
            }
            for digest in &existing.repo_digests {
                if !record.repo_digests.contains(digest) {
                    record.repo_digests.push(digest.clone());
                }
            }
        }
        for other in &touched {
            self.paths.save_image(other)?;
        }
        self.paths.save_image(&record)?;
        images.insert(record.id.clone(), record);
        Ok(())
    }

    /// Every image.
    pub fn list(&self) -> Vec<ImageRecord> {
        let images = self.images.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = images.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Finds an image by id (`sha256:<hex>` or the bare hex), tag or digest reference (short
    /// names normalised). `Ok(None)` when absent; `Err` when `spec` is malformed.
    pub fn lookup(&self, spec: &str) -> Result<Option<(ImageRecord, Lookup)>, ImageError> {
        let images = self.images.read().unwrap_or_else(|e| e.into_inner());
        let as_id = if spec.starts_with("sha256:") {
            spec.to_owned()
        } else {
            format!("sha256:{spec}")
        };
        if let Some(record) = images.get(as_id.as_str()) {
            return Ok(Some((record.clone(), Lookup::Id)));
        }
        // A unique id prefix of at least 12 hex digits, as docker and crictl print them.
        let hex = store::hex_of(spec);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<_> = images
                .values()
                .filter(|r| r.id.hex().starts_with(hex))
                .collect();
            if matches.len() == 1 {
                return Ok(Some((matches[0].clone(), Lookup::Id)));
            }
        }
        let reference = reference::parse(spec)?;
        let name = reference::name(&reference);
        if let Some(digest) = reference.digest() {
            let wanted = format!("{name}@{digest}");
            let found = images.values().find(|r| r.repo_digests.contains(&wanted));
            return Ok(found.map(|r| (r.clone(), Lookup::Digest(wanted))));
        }
        let wanted = format!("{name}:{}", reference.tag().unwrap_or("latest"));
        let found = images.values().find(|r| r.repo_tags.contains(&wanted));
        Ok(found.map(|r| (r.clone(), Lookup::Tag(wanted))))
    }

    /// Removes an image, or only one tag of it when it has others; absent is fine. The whole
    /// image is kept when `in_use` names a container that uses it (asked under the store's
    /// lock, so no pull can move tags between the answer and the removal). Layers no other
    /// image uses and no pull holds go with it.
    pub fn remove(
        &self,
        spec: &str,
        in_use: impl Fn(&Digest) -> Option<String>,
    ) -> Result<Removal, ImageError> {
        let guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let Some((record, how)) = self.lookup(spec)? else {
            return Ok(Removal::Absent);
        };
        let mut images = self.images.write().unwrap_or_else(|e| e.into_inner());
        let Some(current) = images.get_mut(&record.id) else {
            return Ok(Removal::Absent);
        };
        if let Lookup::Tag(tag) = &how {
            if current.repo_tags.len() > 1 {
                let mut updated = current.clone();
                updated.repo_tags.retain(|t| t != tag);
                self.paths.save_image(&updated)?;
                *current = updated;
                return Ok(Removal::Untagged);
            }
        }
        if let Some(container) = in_use(&record.id) {
            return Ok(Removal::InUse {
                id: record.id,
                container,
            });
        }
        self.paths.delete_image(&record.id)?;
        images.remove(&record.id);
        let doomed = self.detach_unused(&images, &record.layers)?;
        drop(images);
        drop(guard);
        for dir in doomed {
            store::remove_detached(&dir)?;
        }
        Ok(Removal::Removed)
    }

    /// Takes out of the store those of `layers` that no image in `images` uses and no pull
    /// holds (the caller holds `records`); returns the directories to delete.
    fn detach_unused(
        &self,
        images: &HashMap<Digest, ImageRecord>,
        layers: &[Digest],
    ) -> Result<Vec<PathBuf>, ImageError> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let used: HashSet<&Digest> = images.values().flat_map(|r| r.layers.iter()).collect();
        let mut doomed = Vec::new();
        for layer in layers {
            if used.contains(layer) || held.contains_key(layer) {
                continue;
            }
            if let Some(dir) = self.paths.detach_layer(layer)? {
                doomed.push(dir);
            }
        }
        Ok(doomed)
    }

    /// After a refused pull: removes those of its layers that nothing uses or holds (layers
    /// it unpacked before another was refused). Failures are logged: the pull's own error is
    /// what the client hears.
    fn drop_unused_layers(&self, layers: &[Digest]) {
        let doomed = {
            let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let images = self.images.read().unwrap_or_else(|e| e.into_inner());
            self.detach_unused(&images, layers)
        };
        let doomed = doomed.and_then(|dirs| {
            dirs.iter()
                .try_for_each(|d| store::remove_detached(d))
                .map_err(ImageError::from)
        });
        if let Err(err) = doomed {
            tracing::warn!(error = %crid_common::error_chain::error_chain(&err), "removing the layers of a refused pull failed");
        }
    }

    /// Bytes and inodes used by the store (layers as recorded when unpacked, plus records).
    pub fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        if let Ok(entries) = std::fs::read_dir(self.paths.layers()) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(layer) = name.to_str().and_then(Digest::from_hex) else {
                    continue; // `l/`
                };
                if let Some(meta) = self.paths.layer_meta(&layer) {
                    usage.bytes += meta.bytes;
                    usage.inodes += meta.inodes + 3;
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.paths.images()) {
            for entry in entries.flatten() {
                usage.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                usage.inodes += 1;
            }
        }
        usage
    }
}

/// How a lookup matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Id,
    Tag(String),
    Digest(String),
}

/// uid or user name from an image config's `User` (`uid`, `uid:gid`, `name`, `name:group`).
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let user_part = user.split(':').next().unwrap_or_default();
    if user_part.is_empty() {
        return (None, String::new());
    }
    match user_part.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user_part.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_from_image_config() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1000"), (Some(1000), String::new()));
        assert_eq!(user_of("1000:1000"), (Some(1000), String::new()));
        assert_eq!(user_of("tester"), (None, "tester".to_owned()));
        assert_eq!(user_of("tester:extra"), (None, "tester".to_owned()));
        assert_eq!(user_of("0"), (Some(0), String::new()));
    }

    fn store() -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            ImageStore::open(dir.path().join("root"), ImageConfig::default()).expect("open store");
        (dir, store)
    }

    /// What a pull does for a layer it does not find: unpack into tmp/, commit.
    fn commit_fake_layer(store: &ImageStore, chain: &Digest) {
        let tmp = store.paths.new_temp_dir("layer").expect("temp");
        std::fs::create_dir(tmp.join("diff")).expect("mkdir");
        std::fs::write(tmp.join("diff/file"), "x").expect("write");
        let meta = store::LayerMeta {
            bytes: 1,
            inodes: 1,
        };
        store.paths.commit_layer(&tmp, chain, meta).expect("commit");
    }

    fn record(name: &str, layers: &[Digest]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(name.as_bytes()),
            repo_tags: vec![format!("example.com/{name}:latest")],
            repo_digests: Vec::new(),
            layers: layers.to_vec(),
            size: 1,
            user: String::new(),
            config: "{}".into(),
            manifest: "{}".into(),
        }
    }

    #[test]
    fn a_pull_reusing_a_layer_keeps_it_through_the_removal_of_its_last_image() {
        let (_dir, store) = store();
        let shared = Digest::of(b"shared layer");
        commit_fake_layer(&store, &shared);
        let a = record("a", std::slice::from_ref(&shared));
        store.add_image(a.clone()).expect("add a");
        // A pull of b starts: it holds its layers, then finds `shared` present and reuses it.
        let hold = store.hold_layers(std::slice::from_ref(&shared));
        assert!(store.paths.has_layer(&shared));
        // RemoveImage of a, the last image with the layer, comes in before b is recorded.
        assert_eq!(
            store.remove(&a.id, |_| None).expect("remove a"),
            Removal::Removed
        );
        assert!(store.paths.has_layer(&shared), "a held layer stays");
        let b = record("b", std::slice::from_ref(&shared));
        store
            .add_image(b.clone())
            .expect("b is recorded with its layer");
        drop(hold);
        assert!(store.paths.has_layer(&shared), "b uses it now");
        // When b goes, nothing holds or uses the layer any more.
        assert_eq!(
            store.remove(&b.id, |_| None).expect("remove b"),
            Removal::Removed
        );
        assert!(!store.paths.has_layer(&shared));
        assert_eq!(
            std::fs::read_dir(store.paths.tmp()).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn an_image_is_never_recorded_with_a_missing_layer() {
        let (_dir, store) = store();
        let layer = Digest::of(b"layer");
        commit_fake_layer(&store, &layer);
        let a = record("a", std::slice::from_ref(&layer));
        store.add_image(a.clone()).expect("add a");
        // Without a hold (what the store did before), the removal takes the layer; recording
        // an image that counted on it is then an error, not a broken image.
        store.remove(&a.id, |_| None).expect("remove a");
        assert!(!store.paths.has_layer(&layer));
        let b = record("b", std::slice::from_ref(&layer));
        assert!(store.add_image(b).is_err());
        assert!(store.list().is_empty());
    }

    #[test]
    fn racing_pulls_and_removals_never_lose_a_recorded_image_layer() {
        let (_dir, store) = store();
        let store = Arc::new(store);
        let shared = Digest::of(b"shared");
        // The per-layer lock a pull takes around unpacking.
        let unpacking = Arc::new(Mutex::new(()));
        let pull_and_remove = |name: &'static str| {
            let (store, shared, unpacking) = (store.clone(), shared.clone(), unpacking.clone());
            std::thread::spawn(move || {
                for _ in 0..300 {
                    let layers = [shared.clone()];
                    let hold = store.hold_layers(&layers);
                    if !store.paths.has_layer(&shared) {
                        let _lock = unpacking.lock().unwrap_or_else(|e| e.into_inner());
                        if !store.paths.has_layer(&shared) {
                            commit_fake_layer(&store, &shared);
                        }
                    }
                    let image = record(name, &layers);
                    store
                        .add_image(image.clone())
                        .expect("recorded with its layer");
                    drop(hold);
                    // Recorded: its layer stays whatever the other thread removes.
                    assert!(store.paths.has_layer(&shared), "{name} lost its layer");
                    assert_eq!(
                        store.remove(&image.id, |_| None).expect("remove"),
                        Removal::Removed
                    );
                }
            })
        };
        let threads = [pull_and_remove("a"), pull_and_remove("b")];
        for thread in threads {
            thread.join().expect("no lost layer");
        }
        assert!(store.list().is_empty());
        assert!(!store.paths.has_layer(&shared));
    }

    #[test]
    fn an_image_in_use_is_kept_and_a_tag_is_resolved_under_the_lock() {
        let (_dir, store) = store();
        let layer = Digest::of(b"layer");
        commit_fake_layer(&store, &layer);
        let mut a = record("a", std::slice::from_ref(&layer));
        a.repo_tags.push("example.com/a:other".into());
        store.add_image(a.clone()).expect("add");
        // One of two tags: untagged, whoever uses the image.
        assert_eq!(
            store
                .remove("example.com/a:other", |_| Some("c1".into()))
                .expect("untag"),
            Removal::Untagged
        );
        // The last tag: the image would go, but a container uses it.
        assert_eq!(
            store
                .remove("example.com/a:latest", |id| (*id == a.id)
                    .then(|| "c1".into()))
                .expect("in use"),
            Removal::InUse {
                id: a.id.clone(),
                container: "c1".into()
            }
        );
        assert!(store.paths.has_layer(&layer));
        assert_eq!(store.list().len(), 1);
        assert_eq!(
            store
                .remove("example.com/nothere:1", |_| None)
                .expect("absent"),
            Removal::Absent
        );
    }
}
