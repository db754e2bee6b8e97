//! A pod's own /dev/shm: a tmpfs shared by its containers (64 MiB, kubelet's and CRI-O's
//! default size).

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// Size of a pod's /dev/shm.
pub const SHM_SIZE_BYTES: u64 = 64 << 20;

/// Mounts a pod's /dev/shm at `target`, its root owned by `owner` (container root's host ids
/// in a pod with a user namespace) or by root.
pub fn mount(target: &Path, owner: Option<(u32, u32)>) -> Result<(), nix::Error> {
    std::fs::create_dir_all(target)
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let mut options = format!("mode=1777,size={SHM_SIZE_BYTES}");
    if let Some((uid, gid)) = owner {
        options.push_str(&format!(",uid={uid},gid={gid}"));
    }
    nix::mount::mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
}

/// Unmounts (absent is fine).
pub fn unmount(target: &Path) -> Result<(), nix::Error> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(err) => Err(err),
    }
}
