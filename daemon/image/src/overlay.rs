//! A container's root filesystem: an overlay of its image's layers (read-only, shared) and a
//! private upper and work directory.
//!
//! Lower directories are named by their short links (`layers/l/<26 chars>`), which keeps the
//! mount options of many-layer images under the kernel's page-size limit; past it, the layers
//! are passed one by one through the new mount API (`fsconfig` `lowerdir+`, Linux 6.8).
//! The mounting itself is `crid_mount::overlay`'s.

use std::path::{Path, PathBuf};

pub use crid_mount::overlay::{mount_overlay, unmount_rootfs};

use super::digest::Digest;
use super::store::StorePaths;

/// Errors mounting or unmounting a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("layer {0} is not in the store")]
    MissingLayer(Digest),
    #[error(transparent)]
    Mount(#[from] crid_mount::MountError),
}

/// Mounts the overlay of `layers` (base first) with `upper`/`work` at `target`.
pub fn mount_rootfs(
    paths: &StorePaths,
    layers: &[Digest],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), OverlayError> {
    Ok(mount_overlay(
        &lower_dirs(paths, layers)?,
        upper,
        work,
        target,
    )?)
}

/// The lower directories of an overlay of `layers` (base first): topmost first, as overlayfs
/// takes them.
pub fn lower_dirs(paths: &StorePaths, layers: &[Digest]) -> Result<Vec<PathBuf>, OverlayError> {
    let mut lowers = Vec::with_capacity(layers.len());
    for chain in layers.iter().rev() {
        if !paths.has_layer(chain) {
            return Err(OverlayError::MissingLayer(chain.clone()));
        }
        lowers.push(paths.layers().join(paths.short_link(chain)));
    }
    Ok(lowers)
}
