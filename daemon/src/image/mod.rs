//! Images: registry pulls into a content-addressed store of unpacked layers shared between
//! images (see `store` for the layout), and the lookups the ImageService and containers need.

pub mod auth;
mod fsops;
pub mod manifest;
pub mod overlay;
pub mod pull;
pub mod reference;
pub mod registries;
pub mod store;
pub mod unpack;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use store::{ImageRecord, StoreError, StorePaths};

use crate::config::ImageConfig;

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
    #[error("refused layer")]
    Unpack(#[source] unpack::UnpackError),
    #[error("layer i/o failed")]
    LayerIo(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("registry configuration")]
    Registries(#[source] registries::RegistriesError),
}

impl ImageError {
    fn layer_io(err: std::io::Error) -> Self {
        ImageError::LayerIo(err)
    }
}

/// The image store and its in-memory index.
pub struct ImageStore {
    pub paths: StorePaths,
    config: ImageConfig,
    images: RwLock<HashMap<String, ImageRecord>>,
    layer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    downloads: tokio::sync::Semaphore,
    /// Serialises record updates (tags move between images).
    records: Mutex<()>,
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

    /// Records a pulled image; its tags move off any other image that had them.
    fn add_image(&self, mut record: ImageRecord) -> Result<(), ImageError> {
        let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
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
        if let Some(record) = images.get(&as_id) {
            return Ok(Some((record.clone(), Lookup::Id)));
        }
        // A unique id prefix of at least 12 hex digits, as docker and crictl print them.
        let hex = store::hex_of(spec);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<_> = images
                .values()
                .filter(|r| store::hex_of(&r.id).starts_with(hex))
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

    /// Removes an image, or only one tag of it when it has others. Absent is fine.
    pub fn remove(&self, spec: &str) -> Result<(), ImageError> {
        let Some((record, how)) = self.lookup(spec)? else {
            return Ok(());
        };
        let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut images = self.images.write().unwrap_or_else(|e| e.into_inner());
        let Some(current) = images.get_mut(&record.id) else {
            return Ok(());
        };
        if let Lookup::Tag(tag) = &how {
            if current.repo_tags.len() > 1 {
                current.repo_tags.retain(|t| t != tag);
                let updated = current.clone();
                drop(images);
                self.paths.save_image(&updated)?;
                return Ok(());
            }
        }
        images.remove(&record.id);
        self.paths.delete_image(&record.id)?;
        // Layers no other image uses go too.
        let in_use: std::collections::HashSet<&String> =
            images.values().flat_map(|r| r.layers.iter()).collect();
        for layer in record.layers.iter().filter(|l| !in_use.contains(l)) {
            self.paths.delete_layer(layer)?;
        }
        Ok(())
    }

    /// Bytes and inodes used by the store (layers as recorded when unpacked, plus records).
    pub fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        if let Ok(entries) = std::fs::read_dir(self.paths.layers()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(meta) = self.paths.layer_meta(&format!("sha256:{name}")) {
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
    use super::user_of;

    #[test]
    fn user_from_image_config() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1000"), (Some(1000), String::new()));
        assert_eq!(user_of("1000:1000"), (Some(1000), String::new()));
        assert_eq!(user_of("tester"), (None, "tester".to_owned()));
        assert_eq!(user_of("tester:extra"), (None, "tester".to_owned()));
        assert_eq!(user_of("0"), (Some(0), String::new()));
    }
}
