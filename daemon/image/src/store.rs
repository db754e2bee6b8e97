//! The image store on disk, under `<root>`:
//!
//! - `layers/<chain-id hex>/diff/`: an unpacked layer (an overlay lower directory), shared by
//!   every image that has it; `layers/<chain-id hex>/layer.json`: its size and short link;
//!   `layers/l/<short>` → `../<chain-id hex>/diff`, short names that keep overlay mount
//!   options under the page-size limit with many layers.
//! - `images/<config digest hex>.json`: an image record (tags, digests, layers, config).
//! - `tmp/`: work in progress (a layer being unpacked, a layer being deleted), each under a
//!   random name. Whatever is there at start is a leftover of interrupted work and is removed.
//!
//! A layer directory appears by rename once complete and verified; an image record appears
//! (atomically) after all its layers: no half-pulled image is ever visible.
//!
//! Every name below `layers/` and `images/` is made from a [`Digest`], which holds only
//! `sha256:` and 64 lowercase hex digits: no id from an image can name a path outside the store.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// An image as the store records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The digest of the image config.
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Chain ids of the layers, base first.
    pub layers: Vec<Digest>,
    /// Unpacked bytes of all layers.
    pub size: u64,
    /// The image config's `config.User`.
    pub user: String,
    /// The raw image config JSON.
    pub config: String,
    /// The raw manifest JSON.
    pub manifest: String,
}

/// A layer's recorded metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub bytes: u64,
    pub inodes: u64,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |err| StoreError::Io {
        what,
        path: path.to_owned(),
        err,
    }
}

/// Hex part of a `sha256:<hex>` string (for matching what a user typed; never for paths).
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// 128 random bits in hex: names under `tmp/` that nobody can predict or collide with.
fn random_name(kind: &str) -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{kind}-{hex}"))
}

/// Paths of the store.
#[derive(Debug, Clone)]
pub struct StorePaths {
    pub root: PathBuf,
}

impl StorePaths {
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.layers().join(chain_id.hex())
    }
    pub fn layer_diff(&self, chain_id: &Digest) -> PathBuf {
        self.layer_dir(chain_id).join("diff")
    }
    pub fn links(&self) -> PathBuf {
        self.layers().join("l")
    }
    fn link(&self, chain_id: &Digest) -> PathBuf {
        self.links().join(chain_id.short())
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    fn image_record(&self, id: &Digest) -> PathBuf {
        self.images().join(format!("{}.json", id.hex()))
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Creates the directories and removes leftovers of interrupted work.
    pub fn prepare(&self) -> Result<(), StoreError> {
        let tmp = self.tmp();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io("remove leftovers in", &tmp))?;
        }
        for dir in [self.layers(), self.links(), self.images(), tmp] {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        Ok(())
    }

    /// Creates a fresh directory `tmp/<kind>-<random>` (never an existing one).
    pub fn new_temp_dir(&self, kind: &'static str) -> Result<PathBuf, StoreError> {
        let tmp = self.tmp();
        loop {
            let name = random_name(kind).map_err(io("make a name in", &tmp))?;
            let dir = tmp.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create", &dir)(e)),
            }
        }
    }

    /// Whether a complete layer is present.
    pub fn has_layer(&self, chain_id: &Digest) -> bool {
        self.layer_dir(chain_id).join("layer.json").is_file()
    }

    /// Reads a layer's metadata.
    pub fn layer_meta(&self, chain_id: &Digest) -> Option<LayerMeta> {
        let text = std::fs::read(self.layer_dir(chain_id).join("layer.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Loads every image record (a record whose ids are not digests is ignored).
    pub fn load_images(&self) -> Result<HashMap<Digest, ImageRecord>, StoreError> {
        let dir = self.images();
        let mut out = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let path = entry.map_err(io("read", &dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match serde_json::from_slice::<ImageRecord>(&bytes) {
                Ok(record) => {
                    out.insert(record.id.clone(), record);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable image record")
                }
            }
        }
        Ok(out)
    }

    /// Writes an image record atomically.
    pub fn save_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let path = self.image_record(&record.id);
        let json = serde_json::to_vec(record).map_err(|e| StoreError::Io {
            what: "encode",
            path: path.clone(),
            err: std::io::Error::other(e),
        })?;
        write_atomically(&path, &json)
    }

    /// Removes an image record.
    pub fn delete_image(&self, id: &Digest) -> Result<(), StoreError> {
        let path = self.image_record(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Moves an unpacked layer from `tmp_dir/diff` into place and records its metadata and
    /// short link. Idempotent when the layer already exists.
    pub fn commit_layer(
        &self,
        tmp_dir: &Path,
        chain_id: &Digest,
        meta: LayerMeta,
    ) -> Result<(), StoreError> {
        let meta_json = serde_json::to_vec(&meta).map_err(|e| StoreError::Io {
            what: "encode",
            path: tmp_dir.to_owned(),
            err: std::io::Error::other(e),
        })?;
        let link = self.link(chain_id);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../{}/diff", chain_id.hex()), &link)
            .map_err(io("create link", &link))?;
        write_atomically(&tmp_dir.join("layer.json"), &meta_json)?;
        let dest = self.layer_dir(chain_id);
        match std::fs::rename(tmp_dir, &dest) {
            Ok(()) => Ok(()),
            // Someone else committed it first: theirs is as good as ours.
            Err(_) if self.has_layer(chain_id) => {
                let _ = std::fs::remove_dir_all(tmp_dir);
                Ok(())
            }
            Err(e) => Err(io("move layer into", &dest)(e)),
        }
    }

    /// Takes a layer out of the store: its short link goes and its directory moves to a fresh
    /// name under `tmp/` (so a half-removed layer never looks complete). Returns that
    /// directory, for [`remove_detached`] to delete, or `None` when the layer was absent.
    pub fn detach_layer(&self, chain_id: &Digest) -> Result<Option<PathBuf>, StoreError> {
        let _ = std::fs::remove_file(self.link(chain_id));
        let dir = self.layer_dir(chain_id);
        let doomed = self
            .tmp()
            .join(random_name("del").map_err(io("remove", &dir))?);
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => Ok(Some(doomed)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("move aside", &dir)(e)),
        }
    }

    /// Removes a layer and its short link.
    pub fn delete_layer(&self, chain_id: &Digest) -> Result<(), StoreError> {
        match self.detach_layer(chain_id)? {
            Some(doomed) => remove_detached(&doomed),
            None => Ok(()),
        }
    }

    /// The short lower-dir name of a layer (relative to `layers/`).
    pub fn short_link(&self, chain_id: &Digest) -> String {
        format!("l/{}", chain_id.short())
    }
}

/// Deletes a directory [`StorePaths::detach_layer`] moved aside.
pub fn remove_detached(doomed: &Path) -> Result<(), StoreError> {
    std::fs::remove_dir_all(doomed).map_err(io("remove", doomed))
}

/// Writes `bytes` to `path` via a temp file, fsync and rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_random_and_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = StorePaths {
            root: dir.path().to_owned(),
        };
        paths.prepare().expect("prepare");
        let a = paths.new_temp_dir("layer").expect("temp");
        let b = paths.new_temp_dir("layer").expect("temp");
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert_eq!(p.parent(), Some(paths.tmp().as_path()));
            let name = p.file_name().and_then(|n| n.to_str()).expect("name");
            assert_eq!(name.len(), "layer-".len() + 32, "{name}");
        }
    }

    #[test]
    fn a_layer_is_committed_linked_and_detached_under_its_digest_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = StorePaths {
            root: dir.path().join("root"),
        };
        paths.prepare().expect("prepare");
        let chain = Digest::of(b"layer");
        let tmp = paths.new_temp_dir("layer").expect("temp");
        std::fs::create_dir(tmp.join("diff")).expect("mkdir");
        let meta = LayerMeta {
            bytes: 1,
            inodes: 1,
        };
        paths.commit_layer(&tmp, &chain, meta).expect("commit");
        assert!(paths.has_layer(&chain));
        assert_eq!(paths.layer_meta(&chain), Some(meta));
        let link = paths.layers().join(paths.short_link(&chain));
        assert_eq!(
            std::fs::canonicalize(&link).expect("link resolves"),
            std::fs::canonicalize(paths.layer_diff(&chain)).expect("diff")
        );
        let doomed = paths
            .detach_layer(&chain)
            .expect("detach")
            .expect("present");
        assert!(doomed.starts_with(paths.tmp()));
        assert!(!paths.has_layer(&chain) && !link.exists());
        remove_detached(&doomed).expect("remove");
        assert_eq!(paths.detach_layer(&chain).expect("absent"), None);
        assert_eq!(std::fs::read_dir(paths.tmp()).expect("tmp").count(), 0);
    }
}
