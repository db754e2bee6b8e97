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
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The directory under a container's directory that holds its staged trees.
const STAGING_DIR: &str = "rro";

fn c_path(path: &Path) -> io::Result<CString> {
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

/// Makes every mount of the tree at `fd` read-only and private.
fn set_recursive_read_only(fd: &OwnedFd) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: `fd` is an open mount fd, the path is an empty NUL-terminated string (with
    // AT_EMPTY_PATH), and `attr` is a valid mount_attr whose size is passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
    .map(drop)
}

/// Whether the kernel has `mount_setattr` (Linux 5.12); asked once.
pub fn kernel_supports() -> bool {
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

/// Stages a recursive read-only copy of the mount tree at `source` (an absolute host path,
/// symlinks already resolved) as `<container_dir>/rro/<index>`, and returns that path.
pub fn stage(container_dir: &Path, index: usize, source: &Path) -> io::Result<PathBuf> {
    let staging = container_dir.join(STAGING_DIR);
    std::fs::create_dir_all(&staging)?;
    let target = staging.join(index.to_string());
    // The mount point must be the same kind of file as the source.
    if std::fs::metadata(source)?.is_dir() {
        std::fs::create_dir(&target)?;
    } else {
        std::fs::File::create(&target)?;
    }
    let source_c = c_path(source)?;
    // SAFETY: `source_c` is NUL-terminated; open_tree returns a new fd (which we own) or -1.
    let tree = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint,
        )
    })?;
    // SAFETY: open_tree succeeded, so `tree` is a new fd owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    set_recursive_read_only(&tree)?;
    let target_c = c_path(&target)?;
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
    })?;
    Ok(target)
}

/// Unmounts every staged tree of a container (its directory is about to be removed); what is
/// not mounted is fine.
pub fn unstage_all(container_dir: &Path) -> io::Result<()> {
    let staging = container_dir.join(STAGING_DIR);
    let entries = match std::fs::read_dir(&staging) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let path = entry?.path();
        let path_c = c_path(&path)?;
        // SAFETY: `path_c` is NUL-terminated; MNT_DETACH takes the whole tree off at once
        // and never blocks on busy mounts.
        let rc = unsafe { libc::umount2(path_c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT)
            {
                return Err(err);
            }
        }
    }
    Ok(())
}
