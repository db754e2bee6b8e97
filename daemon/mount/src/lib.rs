//! crid's own mounts, the raw mount system calls in one place: the new mount API
//! ([`mount_api`]), id-mapped layers and volumes for pods with a user namespace ([`idmap`]),
//! recursive read-only binds for runtimes without `rro` ([`rro`]), and overlay root
//! filesystems ([`overlay`]). Used by the daemon and by `crid-pinns` (which probes id-mapped
//! overlays); it knows nothing of images, CRI or containers' state.
//!
//! Paths given here are host paths crid chose (under its state and image directories) or
//! sources already resolved by the caller; nothing here resolves container-controlled paths.

#![deny(unsafe_code)]

pub mod idmap;
pub mod mount_api;
pub mod overlay;
pub mod rro;

use std::io;
use std::path::PathBuf;

/// Errors mounting or unmounting a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: io::Error,
    },
}
