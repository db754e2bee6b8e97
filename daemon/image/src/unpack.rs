//! Unpacks one (decompressed) layer tar into an empty directory, as an overlay lower layer.
//!
//! The layer is untrusted: entry paths with `..` or an absolute path are refused, no entry is
//! created through a symlink (parents are opened with RESOLVE_NO_SYMLINKS below the layer
//! root), hard links must point at files of the same layer, and the unpacked size and entry
//! count are bounded (a decompression bomb stops with an error; data of members that are not
//! files and metadata headers count too). The tar is read by crid's own reader
//! (`tarstream`), which bounds PAX headers and GNU long names before buffering them.
//! OCI whiteouts become overlay whiteouts: `.wh.<name>` a 0:0 character device, `.wh..wh..opq`
//! the `trusted.overlay.opaque` xattr on its directory; a whiteout of `.`, `..` or nothing is
//! refused. Owners (within `0..=u32::MAX - 1`, else refused), modes (setuid too), mtimes,
//! xattrs (not `trusted.*`), device nodes, fifos and hard links are kept as the layer says.

use std::ffi::{CStr, CString, OsStr};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::fsops;
use super::tarstream::{Archive, Entry, Kind, TarError};

/// Bounds for one layer.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Most bytes of file content.
    pub max_bytes: u64,
    /// Most entries.
    pub max_entries: u64,
}

/// What a layer holds once unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackedSize {
    pub bytes: u64,
    pub inodes: u64,
}

/// Why a layer was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} {why}")]
    Hostile { path: String, why: &'static str },
    #[error("layer exceeds the unpack bound of {limit} {what}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("failed to unpack layer entry {path:?}")]
    Io {
        path: String,
        #[source]
        err: io::Error,
    },
    #[error("layer is not a valid tar stream")]
    Tar(#[source] TarError),
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// The components of an entry path, refusing escapes. `./a/b` and `a/b/` are fine, and so is
/// `/` alone (umoci writes the layer root so); any other absolute path is refused.
fn clean_components(raw: &[u8]) -> Result<Vec<&OsStr>, UnpackError> {
    if raw.iter().all(|b| *b == b'/' || *b == b'.') && !raw.windows(2).any(|w| w == b"..") {
        return Ok(Vec::new());
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let hostile = |why| UnpackError::Hostile {
        path: String::from_utf8_lossy(raw).into_owned(),
        why,
    };
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(hostile("has a '..' component")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(hostile("is an absolute path"))
            }
        }
    }
    Ok(parts)
}

fn io_err(path: &[u8]) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |err| {
        if err.raw_os_error() == Some(libc::ELOOP) || err.raw_os_error() == Some(libc::EXDEV) {
            UnpackError::Hostile {
                path: String::from_utf8_lossy(path).into_owned(),
                why: "goes through a symlink",
            }
        } else {
            UnpackError::Io {
                path: String::from_utf8_lossy(path).into_owned(),
                err,
            }
        }
    }
}

/// Opens (creating missing directories, mode 0755) the parent directory of an entry.
fn open_parent(root: BorrowedFd<'_>, parents: &[&OsStr]) -> io::Result<OwnedFd> {
    let rel: PathBuf = parents.iter().collect();
    match fsops::open_dir_beneath(root, &rel) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
        Err(_) => {}
    }
    let mut dir = fsops::open_dir_beneath(root, Path::new(""))?;
    for part in parents {
        let name = fsops::c(Path::new(part))?;
        fsops::mkdir(dir.as_fd(), &name, 0o755)?;
        dir = fsops::open_dir_beneath(dir.as_fd(), Path::new(part))?;
    }
    Ok(dir)
}

/// Unpacks `tar` into `dest` (an empty directory).
pub fn unpack_layer<R: Read>(
    tar: R,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<UnpackedSize, UnpackError> {
    let root = std::fs::File::open(dest).map_err(io_err(dest.as_os_str().as_bytes()))?;
    let root: OwnedFd = root.into();
    let mut archive = Archive::new(PadToArchiveEnd {
        inner: tar,
        read: 0,
        pad: None,
    });
    let mut size = UnpackedSize::default();
    // Data of members that are not regular files is read past, never written; it counts
    // toward the byte bound all the same, so no member can make crid read without end.
    let mut skipped: u64 = 0;
    // Directory mtimes are set last: creating their children changes them.
    let mut dir_times: Vec<(Vec<u8>, i64)> = Vec::new();
    while let Some(entry) = archive.next_entry().map_err(UnpackError::Tar)? {
        // Every header counts, metadata ones (PAX, GNU long names) included.
        if archive.headers() > limits.max_entries {
            return Err(UnpackError::TooLarge {
                what: "entries",
                limit: limits.max_entries,
            });
        }
        size.inodes += 1;
        if entry.kind != Kind::File {
            skipped = skipped.saturating_add(entry.size);
            if size.bytes.saturating_add(skipped) > limits.max_bytes {
                return Err(UnpackError::TooLarge {
                    what: "bytes",
                    limit: limits.max_bytes,
                });
            }
        }
        let raw = entry.path.clone();
        let parts = clean_components(&raw)?;
        let Some((name, parents)) = parts.split_last() else {
            continue; // the layer root itself
        };
        let hostile = |why| UnpackError::Hostile {
            path: String::from_utf8_lossy(&raw).into_owned(),
            why,
        };
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_WHITEOUT.as_bytes() {
            let parent = open_parent(root.as_fd(), parents).map_err(io_err(&raw))?;
            fsops::set_xattr(parent.as_fd(), c"trusted.overlay.opaque", b"y")
                .map_err(io_err(&raw))?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.*` names are AUFS bookkeeping (`.wh..wh.plnk`): skipped, as
            // containerd and docker skip them.
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                continue;
            }
            // `.wh.` alone, `.wh..` and `.wh...` would white out the directory itself or
            // its parent (containerd's TestBreakouts: WhiteoutRootParent,
            // WhiteoutCurrentDirectory).
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(hostile("is a whiteout of '.', '..' or nothing"));
            }
            let parent = open_parent(root.as_fd(), parents).map_err(io_err(&raw))?;
            let hidden = fsops::c(Path::new(OsStr::from_bytes(hidden))).map_err(io_err(&raw))?;
            fsops::remove(parent.as_fd(), &hidden).map_err(io_err(&raw))?;
            fsops::mknod(parent.as_fd(), &hidden, libc::S_IFCHR, 0, 0).map_err(io_err(&raw))?;
            continue;
        }
        let kind = entry.kind;
        if let Kind::Other(_) = kind {
            continue; // vendor and archival types: nothing to create
        }
        // Owners as the image says them, or refused: a uid past u32 would be truncated, and
        // u32::MAX means "unchanged" to chown (the file would stay root's, setuid bits and all).
        let id = |n: u64| u32::try_from(n).ok().filter(|n| *n != u32::MAX);
        let (Some(uid), Some(gid)) = (id(entry.uid), id(entry.gid)) else {
            return Err(hostile("has an owner or group outside 0..=4294967294"));
        };
        let parent = open_parent(root.as_fd(), parents).map_err(io_err(&raw))?;
        let cname = fsops::c(Path::new(name)).map_err(io_err(&raw))?;
        let mode = entry.mode;
        let mtime = entry.mtime;
        let xattrs = entry_xattrs(&entry);

        // A later entry replaces an earlier one, except directory over directory.
        let existing = fsops::lstat(parent.as_fd(), &cname).map_err(io_err(&raw))?;
        let existing_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        if existing.is_some() && !(kind == Kind::Dir && existing_dir) {
            fsops::remove(parent.as_fd(), &cname).map_err(io_err(&raw))?;
        }

        match kind {
            Kind::Dir => {
                fsops::mkdir(parent.as_fd(), &cname, 0o700).map_err(io_err(&raw))?;
                apply_owner_mode_xattrs(parent.as_fd(), &cname, uid, gid, mode, &xattrs)
                    .map_err(io_err(&raw))?;
                dir_times.push((raw.clone(), mtime));
                continue;
            }
            Kind::File => {
                let mut file = fsops::create_file(parent.as_fd(), &cname).map_err(io_err(&raw))?;
                let room = limits
                    .max_bytes
                    .saturating_sub(size.bytes.saturating_add(skipped));
                let copied = io::copy(&mut archive.data().take(room.saturating_add(1)), &mut file)
                    .map_err(io_err(&raw))?;
                if copied > room {
                    return Err(UnpackError::TooLarge {
                        what: "bytes",
                        limit: limits.max_bytes,
                    });
                }
                size.bytes += copied;
                drop(file);
                apply_owner_mode_xattrs(parent.as_fd(), &cname, uid, gid, mode, &xattrs)
                    .map_err(io_err(&raw))?;
            }
            Kind::Symlink => {
                let target = CString::new(entry.link).map_err(|_| UnpackError::Hostile {
                    path: String::from_utf8_lossy(&raw).into_owned(),
                    why: "has a NUL byte in its link target",
                })?;
                if target.is_empty() {
                    return Err(hostile("is a symlink without a target"));
                }
                fsops::symlink(&target, parent.as_fd(), &cname).map_err(io_err(&raw))?;
                fsops::chown(parent.as_fd(), &cname, uid, gid).map_err(io_err(&raw))?;
            }
            Kind::HardLink => {
                let target_parts = clean_components(&entry.link)?;
                let Some((tname, tparents)) = target_parts.split_last() else {
                    return Err(hostile("is a hard link to the layer root"));
                };
                let tpath: PathBuf = tparents.iter().collect();
                let tdir = fsops::open_dir_beneath(root.as_fd(), &tpath).map_err(io_err(&raw))?;
                let tcname = fsops::c(Path::new(tname)).map_err(io_err(&raw))?;
                match fsops::lstat(tdir.as_fd(), &tcname).map_err(io_err(&raw))? {
                    Some(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {}
                    _ => return Err(hostile("is a hard link to nothing earlier in its layer")),
                }
                fsops::hardlink(tdir.as_fd(), &tcname, parent.as_fd(), &cname)
                    .map_err(io_err(&raw))?;
                continue; // a link shares the target's inode and metadata
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (ftype, major, minor) = match kind {
                    Kind::Char => (libc::S_IFCHR, entry.dev_major, entry.dev_minor),
                    Kind::Block => (libc::S_IFBLK, entry.dev_major, entry.dev_minor),
                    _ => (libc::S_IFIFO, 0, 0),
                };
                let (Ok(major), Ok(minor)) = (u32::try_from(major), u32::try_from(minor)) else {
                    return Err(hostile("has a device number out of range"));
                };
                fsops::mknod(parent.as_fd(), &cname, ftype | 0o600, major, minor)
                    .map_err(io_err(&raw))?;
                fsops::chown(parent.as_fd(), &cname, uid, gid).map_err(io_err(&raw))?;
                fsops::chmod(parent.as_fd(), &cname, mode).map_err(io_err(&raw))?;
            }
            Kind::Other(_) => continue,
        }
        fsops::set_mtime(parent.as_fd(), &cname, mtime).map_err(io_err(&raw))?;
    }
    for (raw, mtime) in dir_times.iter().rev() {
        let parts = clean_components(raw)?;
        if let Some((name, parents)) = parts.split_last() {
            let rel: PathBuf = parents.iter().collect();
            if let Ok(dir) = fsops::open_dir_beneath(root.as_fd(), &rel) {
                if let Ok(cname) = fsops::c(Path::new(name)) {
                    let _ = fsops::set_mtime(dir.as_fd(), &cname, *mtime);
                }
            }
        }
    }
    Ok(size)
}

/// Some writers (umoci 0.4) end a layer right after the last entry's data, without the block
/// padding and the two zero blocks that close a tar archive. At the end of the stream this
/// supplies them, so such layers unpack. It adds nothing to the digests: the layer's blob
/// digest and diff id are computed over the real bytes, and a stream cut short fails those.
struct PadToArchiveEnd<R> {
    inner: R,
    read: u64,
    pad: Option<u64>,
}

impl<R: Read> Read for PadToArchiveEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = self.pad.as_mut() {
            let n = (*left).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            *left -= n as u64;
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let to_block = (512 - self.read % 512) % 512;
            self.pad = Some(to_block + 1024);
            return self.read(buf);
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// Extended attributes carried by an entry (`SCHILY.xattr.*`), without `trusted.*`: those
/// would let an image forge overlay metadata (redirects, opaque markers) on the host.
fn entry_xattrs(entry: &Entry) -> Vec<(CString, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, value) in &entry.xattrs {
        if name.starts_with(b"trusted.") {
            continue;
        }
        if let Ok(cname) = CString::new(name.clone()) {
            out.push((cname, value.clone()));
        }
    }
    out
}

fn apply_owner_mode_xattrs(
    parent: BorrowedFd<'_>,
    name: &CStr,
    uid: u32,
    gid: u32,
    mode: u32,
    xattrs: &[(CString, Vec<u8>)],
) -> io::Result<()> {
    fsops::chown(parent, name, uid, gid)?;
    // After chown: chown clears setuid/setgid.
    fsops::chmod(parent, name, mode)?;
    if !xattrs.is_empty() {
        let fd = fsops::open_entry(parent, name)?;
        for (key, value) in xattrs {
            fsops::set_xattr(fd.as_fd(), key, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    /// A tar built by hand, so hostile names go in unchecked.
    struct RawTar(Vec<u8>);

    impl RawTar {
        fn new() -> Self {
            RawTar(Vec::new())
        }
        fn entry(
            mut self,
            name: &str,
            kind: tar::EntryType,
            mode: u32,
            link: &str,
            data: &[u8],
        ) -> Self {
            let mut header = tar::Header::new_ustar();
            {
                let raw = header.as_old_mut();
                raw.name[..name.len()].copy_from_slice(name.as_bytes());
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(1000);
            header.set_gid(1000);
            header.set_mtime(1_600_000_000);
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.0.extend_from_slice(header.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
            self
        }
        fn file(self, name: &str, data: &[u8]) -> Self {
            self.entry(name, tar::EntryType::Regular, 0o644, "", data)
        }
        fn dir(self, name: &str) -> Self {
            self.entry(name, tar::EntryType::Directory, 0o755, "", b"")
        }
        fn finish(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0u8, 1024));
            self.0
        }
    }

    const LIMITS: UnpackLimits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 1000,
    };

    fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackedSize, UnpackError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("layer")).expect("mkdir");
        let result = unpack_layer(tar, &dir.path().join("layer"), LIMITS);
        (dir, result)
    }

    #[test]
    fn unpacks_files_dirs_links_modes_and_owners() {
        let tar = RawTar::new()
            .dir("./etc/")
            .file("etc/passwd", b"root:x:0:0::/:/bin/sh\n")
            .entry("bin/su", tar::EntryType::Regular, 0o4755, "", b"\x7fELF")
            .entry(
                "bin/sh",
                tar::EntryType::Symlink,
                0o777,
                "/bin/busybox",
                b"",
            )
            .entry(
                "etc/passwd-",
                tar::EntryType::Link,
                0o644,
                "etc/passwd",
                b"",
            )
            .entry("dev/null", tar::EntryType::Char, 0o666, "", b"")
            .entry("run/fifo", tar::EntryType::Fifo, 0o600, "", b"")
            .finish();
        let (dir, result) = unpack(&tar);
        let size = result.expect("unpacks");
        assert_eq!(size.inodes, 7);
        let root = dir.path().join("layer");
        assert_eq!(
            std::fs::read(root.join("etc/passwd")).expect("read"),
            b"root:x:0:0::/:/bin/sh\n"
        );
        let su = std::fs::metadata(root.join("bin/su")).expect("stat");
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!((su.uid(), su.gid()), (1000, 1000));
        assert_eq!(su.mtime(), 1_600_000_000);
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).expect("link"),
            Path::new("/bin/busybox")
        );
        let a = std::fs::metadata(root.join("etc/passwd")).expect("stat");
        let b = std::fs::metadata(root.join("etc/passwd-")).expect("stat");
        assert_eq!(a.ino(), b.ino(), "hard link shares the inode");
        let etc = std::fs::metadata(root.join("etc")).expect("stat");
        assert_eq!(
            etc.mtime(),
            1_600_000_000,
            "directory mtime set after its children"
        );
        assert!(std::fs::metadata(root.join("dev/null"))
            .expect("stat")
            .file_type()
            .is_char_device_like());
    }

    trait CharDevice {
        fn is_char_device_like(&self) -> bool;
    }

    impl CharDevice for std::fs::FileType {
        fn is_char_device_like(&self) -> bool {
            std::os::unix::fs::FileTypeExt::is_char_device(self)
        }
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let tar = RawTar::new()
            .dir("etc/")
            .file("etc/.wh.motd", b"")
            .dir("var/cache/")
            .file("var/cache/.wh..wh..opq", b"")
            .finish();
        let (dir, result) = unpack(&tar);
        result.expect("unpacks");
        let root = dir.path().join("layer");
        let motd = std::fs::symlink_metadata(root.join("etc/motd")).expect("whiteout");
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &motd.file_type()
        ));
        assert_eq!(motd.rdev(), 0);
        assert!(!root.join("etc/.wh.motd").exists());
        let mut value = [0u8; 4];
        let path =
            std::ffi::CString::new(root.join("var/cache").as_os_str().as_bytes()).expect("c");
        // SAFETY: path is NUL-terminated and value is a writable buffer of its length.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert_eq!(n, 1, "opaque xattr set");
        assert_eq!(value[0], b'y');
    }

    fn refused(tar: Vec<u8>, expect: &str) {
        let (dir, result) = unpack(&tar);
        let err = result.expect_err("hostile layer refused");
        let text = crid_common::error_chain::error_chain(&err);
        assert!(text.contains(expect), "{text}");
        // Nothing was written outside the layer directory.
        let outside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(outside, vec![std::ffi::OsString::from("layer")]);
    }

    #[test]
    fn refuses_path_traversal_and_absolute_paths() {
        refused(RawTar::new().file("../escape", b"x").finish(), "'..'");
        refused(RawTar::new().file("a/../../escape", b"x").finish(), "'..'");
        refused(RawTar::new().file("/escape", b"x").finish(), "absolute");
        // The layer root itself may be named "/" or "./".
        let (_dir, result) = unpack(&RawTar::new().dir("/").dir("./").file("ok", b"x").finish());
        result.expect("root entries are fine");
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let target = tempfile::tempdir().expect("tempdir");
        let tar = RawTar::new()
            .entry(
                "evil",
                tar::EntryType::Symlink,
                0o777,
                target.path().to_str().expect("utf8"),
                b"",
            )
            .file("evil/owned", b"x")
            .finish();
        refused(tar, "symlink");
        assert!(!target.path().join("owned").exists());
        let tar = RawTar::new()
            .entry("up", tar::EntryType::Symlink, 0o777, "../..", b"")
            .file("up/owned", b"x")
            .finish();
        refused(tar, "symlink");
    }

    #[test]
    fn refuses_hardlinks_out_of_the_layer() {
        refused(
            RawTar::new()
                .entry(
                    "passwd",
                    tar::EntryType::Link,
                    0o644,
                    "../../etc/passwd",
                    b"",
                )
                .finish(),
            "'..'",
        );
        refused(
            RawTar::new()
                .entry("passwd", tar::EntryType::Link, 0o644, "/etc/passwd", b"")
                .finish(),
            "absolute",
        );
        refused(
            RawTar::new()
                .entry("x", tar::EntryType::Link, 0o644, "missing", b"")
                .finish(),
            "nothing earlier",
        );
        let tar = RawTar::new()
            .entry("etcdir", tar::EntryType::Symlink, 0o777, "/etc", b"")
            .entry("pw", tar::EntryType::Link, 0o644, "etcdir/passwd", b"")
            .finish();
        refused(tar, "symlink");
    }

    #[test]
    fn stops_a_decompression_bomb() {
        let big = vec![0u8; (LIMITS.max_bytes + 1) as usize];
        refused(RawTar::new().file("bomb", &big).finish(), "unpack bound");
        let mut many = RawTar::new();
        for i in 0..=LIMITS.max_entries {
            many = many.dir(&format!("d{i}/"));
        }
        refused(many.finish(), "entries");
    }

    #[test]
    fn tolerates_a_missing_trailer() {
        let mut tar = RawTar::new().file("a", b"xy").file("b", b"z").0;
        tar.truncate(3 * 512 + 1); // no padding after "z", no end-of-archive blocks
        let (dir, result) = unpack(&tar);
        result.expect("complete entries are kept");
        assert_eq!(
            std::fs::read(dir.path().join("layer/a")).expect("read"),
            b"xy"
        );
        assert_eq!(
            std::fs::read(dir.path().join("layer/b")).expect("read"),
            b"z"
        );
    }

    #[test]
    fn whiteouts_of_dot_dotdot_or_nothing_are_refused() {
        // containerd's TestBreakouts: WhiteoutRootParent (`.wh...`), WhiteoutCurrentDirectory
        // (`etc/.wh..`), and a whiteout of nothing.
        for name in [".wh..", ".wh...", "etc/.wh..", "etc/.wh...", ".wh."] {
            let tar = RawTar::new()
                .dir("etc/")
                .file("etc/keep", b"k")
                .file("keep", b"k")
                .file(name, b"")
                .finish();
            let (dir, result) = unpack(&tar);
            let err = result.expect_err(name);
            assert!(
                crid_common::error_chain::error_chain(&err).contains("whiteout of '.', '..'"),
                "{name}: {err}"
            );
            assert!(dir.path().join("layer/keep").exists(), "{name}");
            assert!(dir.path().join("layer/etc/keep").exists(), "{name}");
        }
        refused(RawTar::new().file("../.wh.x", b"").finish(), "'..'");
        refused(RawTar::new().file("/.wh.etc", b"").finish(), "absolute");
        // AUFS bookkeeping is skipped, not turned into whiteouts.
        let (dir, result) = unpack(&RawTar::new().file(".wh..wh.plnk", b"").finish());
        result.expect("aufs metadata");
        assert_eq!(
            std::fs::read_dir(dir.path().join("layer"))
                .expect("read")
                .count(),
            0
        );
    }

    #[test]
    fn owners_past_u32_or_chowns_unchanged_marker_are_refused() {
        for (uid, gid) in [
            (u64::from(u32::MAX), 0),
            (0, u64::from(u32::MAX)),
            (1 << 32, 0),
        ] {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o4755);
            header.set_uid(uid);
            header.set_gid(gid);
            builder
                .append_data(&mut header, "su", &b"x"[..])
                .expect("append");
            refused(builder.into_inner().expect("tar"), "owner or group");
        }
    }

    #[test]
    fn data_of_members_that_are_not_files_counts_toward_the_bound() {
        let big = vec![0u8; (LIMITS.max_bytes + 1) as usize];
        refused(
            RawTar::new()
                .entry("d/", tar::EntryType::Directory, 0o755, "", &big)
                .finish(),
            "unpack bound",
        );
    }

    #[test]
    fn the_tar_rs_238_poc_creates_nothing_outside() {
        // `symlink -> ..`, then `symlink/exploit/foo/bar`: tar-rs created `exploit/` outside.
        let tar = RawTar::new()
            .entry("symlink", tar::EntryType::Symlink, 0o777, "..", b"")
            .file("symlink/exploit/foo/bar", b"x")
            .finish();
        refused(tar, "symlink");
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let tar = RawTar::new().file("f", b"one").file("f", b"two").finish();
        let (dir, result) = unpack(&tar);
        result.expect("unpacks");
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut std::fs::File::open(dir.path().join("layer/f")).expect("open"),
            &mut s,
        )
        .expect("read");
        assert_eq!(s, "two");
        let _ = std::io::sink().write(b"");
    }
}
