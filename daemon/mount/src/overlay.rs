//! Overlay root filesystems: mount an overlay of lower directories with a private upper and
//! work directory, and take it off.
//!
//! The lower directories are passed in the mount options while they fit the kernel's
//! page-size limit; past it, one by one through the new mount API (`fsconfig` `lowerdir+`,
//! Linux 6.8).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::mount_api::c_path;
use crate::MountError;

/// Longest option string passed to mount(2) (the kernel copies one page).
const MAX_MOUNT_OPTIONS: usize = 4095;

/// Mounts the overlay of `lowers` (topmost first) with `upper`/`work` at `target`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), MountError> {
    let fail = |what, path: &Path| {
        let path = path.to_owned();
        move |err| MountError::Io { what, path, err }
    };
    let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() <= MAX_MOUNT_OPTIONS {
        let (source, fstype) = (c"overlay", c"overlay");
        let target_c = c_path(target).map_err(fail("mount overlay on", target))?;
        let data = CString::new(options)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            .map_err(fail("mount overlay on", target))?;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(fail("mount overlay on", target)(io::Error::last_os_error()));
        }
        return Ok(());
    }
    mount_with_fsconfig(lowers, upper, work, target)
        .map_err(fail("mount overlay (fsconfig) on", target))
}

fn syscall_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

fn fsconfig_string(fs: &OwnedFd, key: &std::ffi::CStr, value: &Path) -> io::Result<()> {
    let value = c_path(value)?;
    // SAFETY: key and value are NUL-terminated; FSCONFIG_SET_STRING takes aux = 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            1, /* FSCONFIG_SET_STRING */
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mount_with_fsconfig(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    // SAFETY: fsopen takes a NUL-terminated fs name and flags; returns a new fd or -1.
    let fs = syscall_fd(unsafe {
        libc::syscall(
            libc::SYS_fsopen,
            c"overlay".as_ptr(),
            1, /* FSOPEN_CLOEXEC */
        )
    })?;
    for lower in lowers {
        fsconfig_string(&fs, c"lowerdir+", lower)?;
    }
    fsconfig_string(&fs, c"upperdir", upper)?;
    fsconfig_string(&fs, c"workdir", work)?;
    fsconfig_string(&fs, c"index", Path::new("off"))?;
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            6, /* FSCONFIG_CMD_CREATE */
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsmount takes the configured fs fd and flags; returns a mount fd or -1.
    let mnt = syscall_fd(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            1, /* FSMOUNT_CLOEXEC */
            0,
        )
    })?;
    let target_c = c_path(target)?;
    // SAFETY: moves the detached mount (AT_EMPTY_PATH on mnt) onto the NUL-terminated target.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            4, /* MOVE_MOUNT_F_EMPTY_PATH */
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts a root filesystem; an unmounted target is fine.
pub fn unmount_rootfs(target: &Path) -> Result<(), MountError> {
    let target_c = c_path(target).map_err(|err| MountError::Io {
        what: "unmount",
        path: target.to_owned(),
        err,
    })?;
    // SAFETY: target_c is NUL-terminated; MNT_DETACH never blocks on busy mounts.
    let rc = unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT) {
            return Err(MountError::Io {
                what: "unmount",
                path: target.to_owned(),
                err,
            });
        }
    }
    Ok(())
}
