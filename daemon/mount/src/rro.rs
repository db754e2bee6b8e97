//! Recursive read-only bind mounts made by crid itself, for runtimes that lack the `rro`
//! mount option (runc before 1.1.x-with-rro, such as Debian's 1.1.5).
//!
//! A plain read-only bind leaves every submount of the source writable. crid clones the
//! source's whole mount tree (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`, detached, so
//! nothing reaches the host's mount table until it is ready), makes every mount of the clone
//! read-only and private (`mount_setattr(AT_RECURSIVE)`, Linux 5.12), and attaches it at
//! `<container>/rro/<n>`. The runtime then binds that staged tree (`rbind,ro`): a bind copies
//! each mount's read-only flag, so the container sees the whole tree read-only. The staged
//! mounts are unmounted when the container's directory is emptied.

use std::io;
use std::path::{Path, PathBuf};

use crate::mount_api::{self, Attributes};

/// The directory under a container's directory that holds its staged trees.
const STAGING_DIR: &str = "rro";

/// Whether the kernel has `mount_setattr` (Linux 5.12); asked once.
pub fn kernel_supports() -> bool {
    mount_api::kernel_has_mount_setattr()
}

/// Stages a recursive read-only copy of the mount tree at `source` (an absolute host path,
/// symlinks already resolved) as `<container_dir>/rro/<index>`, and returns that path.
pub fn stage(container_dir: &Path, index: usize, source: &Path) -> io::Result<PathBuf> {
    let staging = container_dir.join(STAGING_DIR);
    std::fs::create_dir_all(&staging)?;
    let target = staging.join(index.to_string());
    // The mount point must be the same kind of file as the source.
    mount_api::mount_point_like(source, &target)?;
    let tree = mount_api::clone_tree(source, true)?;
    let read_only = Attributes {
        read_only: true,
        private: true,
        idmap: None,
    };
    mount_api::set_attributes(&tree, read_only, true)?;
    mount_api::attach(&tree, &target)?;
    Ok(target)
}

/// Unmounts every staged tree of a container (its directory is about to be removed); what is
/// not mounted is fine.
pub fn unstage_all(container_dir: &Path) -> io::Result<()> {
    mount_api::unmount_entries(&container_dir.join(STAGING_DIR))
}
