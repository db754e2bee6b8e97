//! The new mount API, for the mount trees crid stages itself (recursive read-only binds in
//! `rro`, id-mapped layers and volumes in `idmap`): clone a tree detached (nothing reaches
//! the host's mount table until it is ready), change its attributes, attach it. The raw
//! system calls nix does not wrap live here, once.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

pub(crate) fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains NUL", path.display()),
        )
    })
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A detached copy of the mount at `source` (with `recursive`, of its whole tree).
pub fn clone_tree(source: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let source_c = c_path(source)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `source_c` is NUL-terminated; open_tree returns a new fd (which we own) or -1.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            flags,
        )
    })?;
    // SAFETY: open_tree succeeded, so `fd` is a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Attributes to set on a detached tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    /// Read-only mounts.
    pub read_only: bool,
    /// Private propagation.
    pub private: bool,
    /// Id-mapped with this user namespace.
    pub idmap: Option<BorrowedFd<'a>>,
}

/// Sets `attributes` on the detached tree `tree` (on every mount of it, with `recursive`).
pub fn set_attributes(
    tree: &OwnedFd,
    attributes: Attributes<'_>,
    recursive: bool,
) -> io::Result<()> {
    let mut attr_set = 0;
    if attributes.read_only {
        attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    if attributes.idmap.is_some() {
        attr_set |= libc::MOUNT_ATTR_IDMAP;
    }
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: if attributes.private {
            libc::MS_PRIVATE
        } else {
            0
        },
        userns_fd: attributes.idmap.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `tree` is an open mount fd, the path is an empty NUL-terminated string (with
    // AT_EMPTY_PATH), and `attr` is a valid mount_attr whose size is passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
    .map(drop)
}

/// Attaches the detached tree `tree` on `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let target_c = c_path(target)?;
    // SAFETY: moves the detached tree (AT_EMPTY_PATH on `tree`) onto the NUL-terminated target.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// Makes a mount point like `source` (a directory or a file) at `target`.
pub fn mount_point_like(source: &Path, target: &Path) -> io::Result<()> {
    if std::fs::metadata(source)?.is_dir() {
        std::fs::create_dir(target)
    } else {
        std::fs::File::create(target).map(drop)
    }
}

/// Takes the mount tree at `path` off at once (MNT_DETACH never blocks on busy mounts); what
/// is not mounted, or not there, is fine.
pub fn unmount(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Unmounts every entry of `dir` (a staging directory); a missing `dir` is fine.
pub fn unmount_entries(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        unmount(&entry?.path())?;
    }
    Ok(())
}

/// Whether the kernel has `mount_setattr` (Linux 5.12); asked once.
pub fn kernel_has_mount_setattr() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // SAFETY: a call with an invalid fd and null attributes only probes for the syscall:
        // it fails with EBADF/EINVAL where it exists and ENOSYS where it does not.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                c"".as_ptr(),
                0,
                std::ptr::null::<libc::mount_attr>(),
                0,
            )
        };
        rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
    })
}
