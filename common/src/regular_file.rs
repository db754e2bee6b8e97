//! Reading a file that someone else names: a container's `/etc/passwd`, a seccomp profile path
//! from a CRI request. crid runs as the host's root, outside any device cgroup, so opening
//! such a path for reading is not harmless: a device node there is the host's device (opening
//! and closing `/dev/watchdog` without its magic close reboots some hosts; a block device would
//! be read), a FIFO makes crid a reader its writer sees, and a kernel file (`/proc/kmsg`, a
//! root-only sysfs file) answers crid as the host's root. So the path is located first with
//! `O_PATH`, which opens nothing; its type (`fstat`: a regular file) and file system (`fstatfs`:
//! not one whose files the kernel makes) are checked on that handle; only then is the very file
//! the handle names opened for reading, through `/proc/self/fd/N` (a path that cannot be
//! swapped for another file in between), and read up to a bound.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// File systems whose files the kernel makes (linux/magic.h): procfs, sysfs, debugfs,
/// securityfs, cgroup, cgroup2, tracefs, bpffs, configfs, pstore, efivarfs.
pub const KERNEL_FILE_SYSTEMS: [i64; 11] = [
    0x9fa0,
    0x6265_6572,
    0x6462_6720,
    0x7363_6673,
    0x0027_e0eb,
    0x6367_7270,
    0x7472_6163,
    0xcafe_4a11,
    0x6265_6570,
    0x6165_676c,
    0xde5e_81e4,
];

/// Why a file was not read. The messages leave the path out: the caller names it (it knows
/// whose file it is: "the container's /etc/passwd", "localhost profile ...").
#[derive(Debug, thiserror::Error)]
pub enum RegularFileError {
    #[error("cannot open: {0}")]
    Open(#[source] Errno),
    #[error("cannot stat: {0}")]
    Stat(#[source] Errno),
    #[error("not a regular file (a {0})")]
    NotRegular(&'static str),
    #[error("on a kernel file system (magic {0:#x})")]
    KernelFileSystem(i64),
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
}

/// An `O_PATH` handle on `relative` inside the directory `root`, resolved as if `root` were
/// `/` (`RESOLVE_IN_ROOT`: neither `..` nor an absolute symlink leads out of it) and without
/// magic links (`/proc/self/...` in the tree). `None`: there is no such file (a component is
/// missing or not a directory). Nothing is opened for reading.
pub fn locate_in_root(
    root: BorrowedFd<'_>,
    relative: &str,
) -> Result<Option<OwnedFd>, RegularFileError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match nix::fcntl::openat2(root, relative, how) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(RegularFileError::Open(e)),
    }
}

/// An `O_PATH` handle on the host path `path` (symlinks followed: the path is the host's,
/// named by whoever may name host paths to crid). Nothing is opened for reading.
pub fn locate_on_host(path: &Path) -> Result<OwnedFd, RegularFileError> {
    nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(RegularFileError::Open)
}

/// Checks that `located` is a regular file on a file system whose files are not the kernel's.
pub fn check_regular(located: BorrowedFd<'_>) -> Result<(), RegularFileError> {
    let stat = nix::sys::stat::fstat(located).map_err(RegularFileError::Stat)?;
    let kind = match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFDIR => Some("directory"),
        libc::S_IFCHR => Some("character device"),
        libc::S_IFBLK => Some("block device"),
        libc::S_IFIFO => Some("fifo"),
        libc::S_IFSOCK => Some("socket"),
        libc::S_IFLNK => Some("symlink"),
        _ => Some("file of unknown type"),
    };
    if let Some(kind) = kind {
        return Err(RegularFileError::NotRegular(kind));
    }
    // A regular file of procfs or sysfs may be root-only or consumed by reading (/proc/kmsg):
    // crid would read it as the host's root.
    let fs = nix::sys::statfs::fstatfs(located).map_err(RegularFileError::Stat)?;
    let magic = fs.filesystem_type().0 as i64;
    if KERNEL_FILE_SYSTEMS.contains(&magic) {
        return Err(RegularFileError::KernelFileSystem(magic));
    }
    Ok(())
}

/// Opens, with `flags` (plus `O_CLOEXEC | O_NOCTTY`), the very file an `O_PATH` handle names,
/// through its `/proc/self/fd` link. Check the handle first ([`check_regular`]).
pub fn reopen(located: BorrowedFd<'_>, flags: OFlag) -> Result<OwnedFd, RegularFileError> {
    let link = format!("/proc/self/fd/{}", located.as_raw_fd());
    nix::fcntl::open(
        link.as_str(),
        flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(RegularFileError::Open)
}

/// Reads the file an `O_PATH` handle names: checked to be a regular file not of the kernel's,
/// then opened (`O_NONBLOCK`: a lease another process holds on it does not hang the open)
/// and read; more than `max` bytes is an error.
pub fn read_located(located: BorrowedFd<'_>, max: u64) -> Result<Vec<u8>, RegularFileError> {
    check_regular(located)?;
    let file = std::fs::File::from(reopen(located, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?);
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(RegularFileError::Read)?;
    if bytes.len() as u64 > max {
        return Err(RegularFileError::TooLarge(max));
    }
    Ok(bytes)
}

/// Reads the regular file `relative` inside the directory `root` (see [`locate_in_root`]), at
/// most `max` bytes. `None`: there is no such file.
pub fn read_in_root(
    root: BorrowedFd<'_>,
    relative: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, RegularFileError> {
    match locate_in_root(root, relative)? {
        Some(located) => read_located(located.as_fd(), max).map(Some),
        None => Ok(None),
    }
}

/// Reads the regular file at the host path `path`, at most `max` bytes.
pub fn read_host_file(path: &Path, max: u64) -> Result<Vec<u8>, RegularFileError> {
    read_located(locate_on_host(path)?.as_fd(), max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_fifo_is_refused_without_being_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        let fifo = dir.path().join("etc/passwd");
        let probe = crate::test_util::FifoProbe::new(&fifo);
        let root = nix::fcntl::open(
            dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .expect("root");
        let err = read_in_root(root.as_fd(), "etc/passwd", 1024).expect_err("in root");
        assert!(matches!(err, RegularFileError::NotRegular("fifo")), "{err}");
        let err = read_host_file(&fifo, 1024).expect_err("host");
        assert_eq!(err.to_string(), "not a regular file (a fifo)");
        assert!(
            !probe.was_opened(Duration::from_millis(300)),
            "the fifo was opened for reading"
        );
    }

    #[test]
    fn devices_directories_and_kernel_files_are_refused() {
        for (path, want) in [
            ("/dev/null", "not a regular file (a character device)"),
            ("/tmp", "not a regular file (a directory)"),
        ] {
            let err = read_host_file(Path::new(path), 1024).expect_err(path);
            assert_eq!(err.to_string(), want, "{path}");
        }
        let err = read_host_file(Path::new("/proc/self/status"), 1 << 20).expect_err("procfs");
        assert!(
            matches!(err, RegularFileError::KernelFileSystem(0x9fa0)),
            "{err}"
        );
    }

    #[test]
    fn regular_files_are_read_up_to_the_bound_and_missing_ones_are_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\n").expect("write");
        std::os::unix::fs::symlink("/../../etc/group", dir.path().join("up")).expect("symlink");
        let root = nix::fcntl::open(
            dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .expect("root");
        let read = |relative: &str, max: u64| read_in_root(root.as_fd(), relative, max);
        assert_eq!(
            read("etc/group", 10).expect("read").as_deref(),
            Some(&b"root:x:0:\n"[..])
        );
        // A symlink leading up and out stays inside the root.
        assert_eq!(
            read("up", 10).expect("read").as_deref(),
            Some(&b"root:x:0:\n"[..])
        );
        assert!(matches!(
            read("etc/group", 9),
            Err(RegularFileError::TooLarge(9))
        ));
        assert!(read("etc/passwd", 10).expect("missing").is_none());
        assert!(read("etc/group/x", 10).expect("not a dir").is_none());
        let host = dir.path().join("etc/group");
        assert_eq!(read_host_file(&host, 10).expect("host"), b"root:x:0:\n");
        assert!(matches!(
            read_host_file(&dir.path().join("none"), 10),
            Err(RegularFileError::Open(Errno::ENOENT))
        ));
    }
}
