//! User namespaces for pods (CRI `userns_options` mode POD, KEP-127): the id mappings a pod
//! asks for, checked, and the id-mapped mounts crid makes itself.
//!
//! A pod with mode POD gets a user namespace of its own, made and pinned by `crid-pinns`
//! with the pod's other namespaces inside it; its containers join it. Container root is then
//! host id `host_id` and has no privilege over anything of the host's. Files still have
//! their host owners, so crid shows them to the container through id-mapped mounts
//! (`mount_setattr(MOUNT_ATTR_IDMAP)`, Linux 5.12; overlay layers 5.19), which it makes
//! itself because the runtime may not (runc 1.1 has no id-mapped mounts):
//!
//! - the image's layers, as CRI-O and containerd 2 do: each lower directory is cloned
//!   (`open_tree(OPEN_TREE_CLONE)`, detached), id-mapped with the pod's user namespace and
//!   given to overlayfs as a lower layer; the upper directory belongs to container root's
//!   host ids, so what the container writes is owned by the pod's host ids on disk;
//! - each volume: its mount tree is cloned, id-mapped and attached at
//!   `<container>/idmap/v<n>`, and the runtime binds that (host root's files are container
//!   root's, as without a user namespace).
//!
//! The daemon checks the mappings kubelet sends (`crid_daemon::idmap`) before they reach
//! here.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mount_api::{self, Attributes};

/// The directory under a container's directory holding its id-mapped mounts.
const STAGING_DIR: &str = "idmap";

/// One range of ids: `length` ids from `container_id` in the namespace are `host_id`… on the
/// host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

impl IdMapping {
    /// The host id of `id`, if the range maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container_id)?;
        (offset < self.length).then(|| self.host_id + offset)
    }

    /// A line of `/proc/<pid>/uid_map`, and of `crid-pinns --uid-map`.
    pub fn to_arg(&self) -> String {
        format!("{}:{}:{}", self.container_id, self.host_id, self.length)
    }
}

/// The mappings of a pod's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdMappings {
    pub uid: IdMapping,
    pub gid: IdMapping,
}

impl PodIdMappings {
    /// The host uid and gid of container root.
    pub fn host_root(&self) -> (u32, u32) {
        (self.uid.host_id, self.gid.host_id)
    }
}

/// Opens a user namespace (a pinned namespace file) for id-mapping mounts.
pub fn open_userns(path: &Path) -> io::Result<OwnedFd> {
    Ok(std::fs::File::open(path)?.into())
}

/// Id-maps the mount tree at `source` (an absolute host path, symlinks already resolved)
/// with `userns` at `<container_dir>/idmap/v<index>` and returns that path; with
/// `recursive_read_only` every mount of the copy is also read-only and private (what `rro`
/// stages for containers without a user namespace).
pub fn stage_volume(
    container_dir: &Path,
    index: usize,
    source: &Path,
    userns: BorrowedFd<'_>,
    recursive_read_only: bool,
) -> io::Result<PathBuf> {
    let staging = container_dir.join(STAGING_DIR);
    std::fs::create_dir_all(&staging)?;
    let target = staging.join(format!("v{index}"));
    mount_api::mount_point_like(source, &target)?;
    let tree = mount_api::clone_tree(source, true)?;
    let attributes = Attributes {
        read_only: recursive_read_only,
        private: recursive_read_only,
        idmap: Some(userns),
    };
    mount_api::set_attributes(&tree, attributes, true)?;
    mount_api::attach(&tree, &target)?;
    Ok(target)
}

/// Id-mapped copies of a container's image layers, attached under its directory while
/// overlayfs is mounted on them (it keeps private clones of its layers, so they are
/// unmounted right after, by [`IdmappedLayers::release`] or on drop).
#[derive(Debug)]
pub struct IdmappedLayers {
    pub paths: Vec<PathBuf>,
}

impl IdmappedLayers {
    /// Id-maps each of `lowers` with `userns` at `<container_dir>/idmap/l<n>`.
    pub fn stage(
        container_dir: &Path,
        lowers: &[PathBuf],
        userns: BorrowedFd<'_>,
    ) -> io::Result<Self> {
        let staging = container_dir.join(STAGING_DIR);
        std::fs::create_dir_all(&staging)?;
        let mut staged = IdmappedLayers {
            paths: Vec::with_capacity(lowers.len()),
        };
        for (n, lower) in lowers.iter().enumerate() {
            let target = staging.join(format!("l{n}"));
            std::fs::create_dir(&target)?;
            let tree = mount_api::clone_tree(lower, false)?;
            let attributes = Attributes {
                idmap: Some(userns),
                ..Attributes::default()
            };
            mount_api::set_attributes(&tree, attributes, false)?;
            mount_api::attach(&tree, &target)?;
            staged.paths.push(target);
        }
        Ok(staged)
    }

    /// Unmounts and removes the staged layers.
    pub fn release(mut self) -> io::Result<()> {
        self.unmount_all()
    }

    fn unmount_all(&mut self) -> io::Result<()> {
        for path in self.paths.drain(..) {
            mount_api::unmount(&path)?;
            std::fs::remove_dir(&path)?;
        }
        Ok(())
    }
}

impl Drop for IdmappedLayers {
    fn drop(&mut self) {
        // An error here leaves mounts that `unstage_all` takes off with the container.
        let _ = self.unmount_all();
    }
}

/// Unmounts every id-mapped mount of a container (its directory is about to be removed);
/// what is not mounted is fine.
pub fn unstage_all(container_dir: &Path) -> io::Result<()> {
    mount_api::unmount_entries(&container_dir.join(STAGING_DIR))
}
