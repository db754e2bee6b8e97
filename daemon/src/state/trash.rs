//! Removed containers' directories on their way out: moved here by RemoveContainer (so the
//! call does not wait on an overlay unmount and a tree removal), emptied in the background,
//! and again at startup for whatever a crash left.

use std::path::Path;

use super::persist;
use crate::error::DaemonError;

/// Unmounts a trashed container's rootfs and staged mounts (recursive read-only, id-mapped),
/// and removes its directory.
pub fn empty_one(dir: &Path) -> Result<(), DaemonError> {
    crid_image::overlay::unmount_rootfs(&dir.join("rootfs"))?;
    crid_mount::rro::unstage_all(dir).map_err(|err| DaemonError::Io {
        what: "unmount the staged recursive read-only mounts of",
        path: dir.to_owned(),
        err,
    })?;
    crid_mount::idmap::unstage_all(dir).map_err(|err| DaemonError::Io {
        what: "unmount the id-mapped mounts of",
        path: dir.to_owned(),
        err,
    })?;
    persist::remove_dir(dir)
}

/// Empties the whole trash, logging what cannot be removed.
pub fn empty(trash: &Path) {
    for dir in persist::subdirectories(trash) {
        if let Err(err) = empty_one(&dir) {
            tracing::error!(dir = %dir.display(), error = %err.chain(), "cannot empty the trash");
        }
    }
}
