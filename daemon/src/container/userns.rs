//! A container in a pod with a user namespace of its own (see `idmap`): it joins the pod's
//! user namespace, its image layers and volumes are id-mapped for it, its writable layer
//! belongs to container root's host ids, and the path to its root filesystem is searchable
//! by that unprivileged host user (the runtime mounts the rootfs from inside the namespace).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crid_proto::cri;

use super::invalid;
use super::spec::{self, UserNamespace};
use crate::error::DaemonError;
use crate::idmap::{self, IdmappedLayers, PodIdMappings};
use crate::state::container::{Container, ProcessUser};
use crate::state::pod::Pod;
use crate::state::State;
use crid_image::digest::Digest;
use crid_image::overlay;

/// Mode of the directories on the way to a user-namespaced container's rootfs: searchable
/// by every user (container root is one), listable by root only (containerd's state
/// directories have the same mode).
const SEARCHABLE_DIR_MODE: u32 = 0o711;
/// Mode of a user-namespaced container's own directory (it belongs to container root's host
/// ids): nobody else may enter it.
const CONTAINER_DIR_MODE: u32 = 0o700;

/// The pod's user namespace, open, for a container that joins it.
pub(super) struct PodUserns {
    pub mappings: PodIdMappings,
    pub path: PathBuf,
    fd: OwnedFd,
}

impl PodUserns {
    /// What the OCI spec says of it.
    pub fn spec(&self) -> UserNamespace {
        UserNamespace {
            path: self.path.clone(),
            mappings: self.mappings,
        }
    }
}

/// The pod's user namespace, if it has one; the container's `userns_options` (its pod's when
/// it gives no namespace options) must be the pod's.
pub(super) fn of_pod(
    pod: &Pod,
    config: &cri::ContainerConfig,
) -> Result<Option<PodUserns>, DaemonError> {
    let record = pod.record();
    let options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_else(|| pod.namespace_options());
    idmap::check_container(
        options.userns_options.as_ref(),
        record.user_namespace.as_ref(),
    )
    .map_err(|e| {
        invalid(format!(
            "config.linux.security_context.namespace_options.userns_options: {e}"
        ))
    })?;
    let Some(mappings) = record.user_namespace else {
        return Ok(None);
    };
    let path = record.namespaces.user.ok_or_else(|| {
        DaemonError::FailedPrecondition(format!(
            "pod sandbox {} has no user namespace pinned",
            pod.id
        ))
    })?;
    let fd = idmap::open_userns(&path).map_err(|err| DaemonError::Io {
        what: "open the user namespace",
        path: path.clone(),
        err,
    })?;
    Ok(Some(PodUserns { mappings, path, fd }))
}

/// Lets container root (an unprivileged host user) reach `rootfs`, and nobody else: crid's
/// root and containers directories become searchable (not listable), and the container's own
/// directory belongs to container root's host ids, mode 0700. Were it searchable by every
/// user (as these two are), any host user could reach the container's files and run its
/// setuid programs as the container's ids (containerd's CVE-2021-41103). Every other
/// directory above must already be searchable.
pub(super) fn make_rootfs_reachable(
    state: &State,
    userns: &PodUserns,
    container_dir: &Path,
    rootfs: &Path,
) -> Result<(), DaemonError> {
    for dir in [
        state.config.root.as_path(),
        state.paths.containers.as_path(),
    ] {
        let mode = std::fs::metadata(dir)
            .map_err(|err| DaemonError::Io {
                what: "stat",
                path: dir.to_path_buf(),
                err,
            })?
            .permissions()
            .mode();
        if mode & 0o111 != 0o111 {
            std::fs::set_permissions(
                dir,
                std::fs::Permissions::from_mode((mode & 0o7777) | SEARCHABLE_DIR_MODE),
            )
            .map_err(|err| DaemonError::Io {
                what: "chmod",
                path: dir.to_path_buf(),
                err,
            })?;
        }
    }
    let (uid, gid) = userns.mappings.host_root();
    std::os::unix::fs::chown(container_dir, Some(uid), Some(gid)).map_err(|err| {
        DaemonError::Io {
            what: "chown",
            path: container_dir.to_path_buf(),
            err,
        }
    })?;
    std::fs::set_permissions(
        container_dir,
        std::fs::Permissions::from_mode(CONTAINER_DIR_MODE),
    )
    .map_err(|err| DaemonError::Io {
        what: "chmod",
        path: container_dir.to_path_buf(),
        err,
    })?;
    for dir in rootfs.ancestors().skip(1) {
        if dir == container_dir {
            continue;
        }
        let searchable = std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
        if !searchable {
            return Err(DaemonError::FailedPrecondition(format!(
                "{} is not searchable by other users (o+x): root of a user namespace, an unprivileged host user, cannot reach the container's root filesystem {}",
                dir.display(),
                rootfs.display()
            )));
        }
    }
    Ok(())
}

/// Mounts the rootfs: the image's layers id-mapped for the pod's user namespace under an
/// upper directory that belongs to container root's host ids.
pub(super) fn mount_rootfs(
    state: &State,
    userns: &PodUserns,
    container_dir: &Path,
    layers: &[Digest],
    upper: &Path,
    work: &Path,
    rootfs: &Path,
) -> Result<(), DaemonError> {
    let (uid, gid) = userns.mappings.host_root();
    std::os::unix::fs::chown(upper, Some(uid), Some(gid)).map_err(|err| DaemonError::Io {
        what: "chown",
        path: upper.to_owned(),
        err,
    })?;
    let lowers = overlay::lower_dirs(&state.images.paths, layers)?;
    let staged =
        IdmappedLayers::stage(container_dir, &lowers, userns.fd.as_fd()).map_err(|err| {
            DaemonError::Io {
                what: "id-map the image layers of",
                path: container_dir.to_owned(),
                err,
            }
        })?;
    overlay::mount_overlay(&staged.paths, upper, work, rootfs)?;
    // overlayfs holds its own clones of its layers.
    staged.release().map_err(|err| DaemonError::Io {
        what: "unmount the staged id-mapped layers of",
        path: container_dir.to_owned(),
        err,
    })
}

/// The process's ids must be mapped in the pod's user namespace (the runtime could not take
/// them otherwise).
pub(super) fn check_user(user: &ProcessUser, mappings: &PodIdMappings) -> Result<(), DaemonError> {
    let unmapped = |what: &str, id: u32, range: &idmap::IdMapping| {
        invalid(format!(
            "config.linux.security_context: {what} {id} is not mapped in the pod's user namespace (ids {}..{})",
            range.container_id,
            u64::from(range.container_id) + u64::from(range.length)
        ))
    };
    if mappings.uid.to_host(user.uid).is_none() {
        return Err(unmapped("user", user.uid, &mappings.uid));
    }
    for gid in std::iter::once(user.gid).chain(user.additional_gids.iter().copied()) {
        if mappings.gid.to_host(gid).is_none() {
            return Err(unmapped("group", gid, &mappings.gid));
        }
    }
    Ok(())
}

/// Staged volume sources by container path: those that are also recursively read-only, and
/// the others.
pub(super) type StagedVolumes = (HashMap<String, PathBuf>, HashMap<String, PathBuf>);

/// Id-maps every volume of the container for the pod's user namespace (see
/// `idmap::stage_volume`); recursively read-only ones are staged so too (whatever the
/// runtime knows). Mounts that break the recursive read-only rules are left for the spec to
/// refuse.
pub(super) fn stage_volumes(
    container: &Container,
    userns: &PodUserns,
) -> Result<StagedVolumes, DaemonError> {
    let (mut read_only, mut others) = (HashMap::new(), HashMap::new());
    for (index, m) in container.config.mounts.iter().enumerate() {
        let private = m.propagation == cri::MountPropagation::PropagationPrivate as i32;
        let rro = m.recursive_read_only && m.readonly && private;
        if m.recursive_read_only && !rro {
            continue;
        }
        let source = spec::host_source(&m.host_path)?;
        let target = idmap::stage_volume(&container.dir, index, &source, userns.fd.as_fd(), rro)
            .map_err(|err| DaemonError::Io {
                what: "id-map the volume",
                path: source.clone(),
                err,
            })?;
        if rro {
            read_only.insert(m.container_path.clone(), target);
        } else {
            others.insert(m.container_path.clone(), target);
        }
    }
    Ok((read_only, others))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_ids_must_be_mapped() {
        let range = idmap::IdMapping {
            container_id: 0,
            host_id: 100000,
            length: 65536,
        };
        let mappings = PodIdMappings {
            uid: range,
            gid: range,
        };
        let user = |uid, gid, additional_gids| ProcessUser {
            uid,
            gid,
            additional_gids,
        };
        assert!(check_user(&user(0, 0, vec![]), &mappings).is_ok());
        assert!(check_user(&user(65535, 65535, vec![10]), &mappings).is_ok());
        assert!(check_user(&user(65536, 0, vec![]), &mappings).is_err());
        assert!(check_user(&user(0, 70000, vec![]), &mappings).is_err());
        assert!(check_user(&user(0, 0, vec![1, 4000000]), &mappings).is_err());
    }
}
