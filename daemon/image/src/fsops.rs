//! File-system calls relative to directory fds, for unpacking untrusted layers. Every path
//! from a layer is opened below the layer's root with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so no entry can reach outside it, whatever
//! symlinks earlier entries created. This module holds all the `unsafe` of image handling.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path component or relative path as a C string.
pub fn c(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// Opens the directory `rel` below `root` without following any symlink and without leaving
/// `root`'s mount.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let path = if rel.as_os_str().is_empty() {
        CString::from(c".")
    } else {
        c(rel)?
    };
    let how = OpenHow {
        flags: (libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    // SAFETY: openat2 reads `how` (a valid open_how of the size passed) and a NUL-terminated
    // path; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// mkdirat; an existing entry of that name is left as it is.
pub fn mkdir(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: name is NUL-terminated; dir is a valid directory fd.
    match cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map(drop),
    }
}

/// What is at `name` in `dir`, without following a symlink; `None` if nothing.
pub fn lstat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: stat is plain data; zeroed is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: name is NUL-terminated and st is writable.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        return Ok(Some(st));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// Removes `name` in `dir` (a later tar entry replaces an earlier one); a directory only when
/// `dirs_too` and then recursively.
pub fn remove(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let Some(st) = lstat(dir, name)? else {
        return Ok(());
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = open_dir_beneath(dir, Path::new(std::ffi::OsStr::from_bytes(name.to_bytes())))?;
        let names: Vec<CString> = read_dir_names(sub.as_raw_fd())?;
        for child in names {
            remove(std::os::fd::AsFd::as_fd(&sub), &child)?;
        }
        // SAFETY: name is NUL-terminated; AT_REMOVEDIR removes an (now empty) directory.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })?;
    } else {
        // SAFETY: name is NUL-terminated; unlinkat never follows a final symlink.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
    }
    Ok(())
}

fn read_dir_names(fd: libc::c_int) -> io::Result<Vec<CString>> {
    // Read through /proc/self/fd so std's directory iterator can be used on our fd.
    let entries = std::fs::read_dir(format!("/proc/self/fd/{fd}"))?;
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        names.push(
            CString::new(name.as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?,
        );
    }
    Ok(names)
}

/// Creates a new regular file (never through a symlink, never an existing one).
pub fn create_file(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<std::fs::File> {
    // SAFETY: name is NUL-terminated; O_EXCL|O_NOFOLLOW creates a fresh file or fails.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    })?;
    // SAFETY: the fd was just created and is ours.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// symlinkat.
pub fn symlink(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// linkat without following symlinks.
pub fn hardlink(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; flags 0 means the source is not dereferenced.
    cvt(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// mknodat (device nodes, fifos, overlay whiteouts).
pub fn mknod(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let dev = libc::makedev(major, minor);
    // SAFETY: name is NUL-terminated.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

/// Sets owner, without following a final symlink.
pub fn chown(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: name is NUL-terminated.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Sets the mode (after chown, which clears setuid); never used on symlinks.
pub fn chmod(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: name is NUL-terminated; the caller checked it is not a symlink.
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

/// Sets access and modification times, without following a final symlink.
pub fn set_mtime(dir: BorrowedFd<'_>, name: &CStr, secs: i64) -> io::Result<()> {
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: name is NUL-terminated; times points at two timespecs.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Sets an extended attribute on an open file or directory.
pub fn set_xattr(fd: BorrowedFd<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: key is NUL-terminated; value is a valid buffer of its length.
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// Opens an entry (not a symlink) in `dir` for attribute changes.
pub fn open_entry(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: name is NUL-terminated; O_NOFOLLOW refuses a symlink.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    })?;
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory as an `O_PATH` handle without following a final symlink: `name` in
/// `dir`, or the path `name` when `dir` is `None`.
pub fn open_path_dir(dir: Option<BorrowedFd<'_>>, name: &CStr) -> io::Result<OwnedFd> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: name is NUL-terminated; O_PATH|O_NOFOLLOW opens no file content.
    let fd = cvt(unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The target of the symlink `name` in `dir`.
pub fn readlink(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: name is NUL-terminated; buf is writable for its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}
