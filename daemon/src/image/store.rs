//! The image store on disk, under `<root>`:
//!
//! - `layers/<chain-id hex>/diff/`: an unpacked layer (an overlay lower directory), shared by
//!   every image that has it; `layers/<chain-id hex>/layer.json`: its size and short link;
//!   `layers/l/<short>` → `../<chain-id hex>/diff`, short names that keep overlay mount
//!   options under the page-size limit with many layers.
//! - `images/<config digest hex>.json`: an image record (tags, digests, layers, config).
//! - `tmp/`: work in progress (a layer being unpacked). Whatever is there at start is a
//!   leftover of an interrupted pull and is removed.
//!
//! A layer directory appears by rename once complete and verified; an image record appears
//! (atomically) after all its layers: no half-pulled image is ever visible.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An image as the store records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<hex>` of the image config.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Chain ids (`sha256:<hex>`) of the layers, base first.
    pub layers: Vec<String>,
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

/// Hex part of a `sha256:<hex>` digest.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
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
    pub fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.layers().join(hex_of(chain_id))
    }
    pub fn layer_diff(&self, chain_id: &str) -> PathBuf {
        self.layer_dir(chain_id).join("diff")
    }
    pub fn links(&self) -> PathBuf {
        self.layers().join("l")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
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

    /// Whether a complete layer is present.
    pub fn has_layer(&self, chain_id: &str) -> bool {
        self.layer_dir(chain_id).join("layer.json").is_file()
    }

    /// Reads a layer's metadata.
    pub fn layer_meta(&self, chain_id: &str) -> Option<LayerMeta> {
        let text = std::fs::read(self.layer_dir(chain_id).join("layer.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Loads every image record.
    pub fn load_images(&self) -> Result<HashMap<String, ImageRecord>, StoreError> {
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
        let path = self.images().join(format!("{}.json", hex_of(&record.id)));
        let json = serde_json::to_vec(record).map_err(|e| StoreError::Io {
            what: "encode",
            path: path.clone(),
            err: std::io::Error::other(e),
        })?;
        write_atomically(&path, &json)
    }

    /// Removes an image record.
    pub fn delete_image(&self, id: &str) -> Result<(), StoreError> {
        let path = self.images().join(format!("{}.json", hex_of(id)));
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
        chain_id: &str,
        meta: LayerMeta,
    ) -> Result<(), StoreError> {
        let meta_json = serde_json::to_vec(&meta).map_err(|e| StoreError::Io {
            what: "encode",
            path: tmp_dir.to_owned(),
            err: std::io::Error::other(e),
        })?;
        let short = &hex_of(chain_id)[..26.min(hex_of(chain_id).len())];
        let link = self.links().join(short);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../{}/diff", hex_of(chain_id)), &link)
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

    /// Removes a layer and its short link.
    pub fn delete_layer(&self, chain_id: &str) -> Result<(), StoreError> {
        let short = &hex_of(chain_id)[..26.min(hex_of(chain_id).len())];
        let _ = std::fs::remove_file(self.links().join(short));
        let dir = self.layer_dir(chain_id);
        // Move aside first so a half-removed layer never looks complete.
        let doomed = self.tmp().join(format!("del-{}", hex_of(chain_id)));
        if std::fs::rename(&dir, &doomed).is_ok() {
            std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))?;
        }
        Ok(())
    }

    /// The short lower-dir name of a layer (relative to `layers/`).
    pub fn short_link(&self, chain_id: &str) -> String {
        format!("l/{}", &hex_of(chain_id)[..26.min(hex_of(chain_id).len())])
    }
}

/// Writes `bytes` to `path` via a temp file, fsync and rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}
