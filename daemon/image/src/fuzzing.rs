//! The image parts of crid's fuzz targets (`crid_daemon::fuzzing` dispatches to them): a
//! layer's tar stream, manifests and indexes, image configs, digests and references, as a
//! registry or a request sends them. They must not panic, allocate without bound or touch
//! anything outside a scratch directory. Not an API: hidden from the docs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::digest::Digest;

/// A layer's tar stream: every entry and all its data, as the unpacker reads them.
pub fn tar_stream(bytes: &[u8]) {
    let mut archive = crate::tarstream::Archive::new(bytes);
    let mut sink = [0u8; 4096];
    while let Ok(Some(entry)) = archive.next_entry() {
        assert!(entry.mode <= 0o7777, "mode bits only");
        // A PAX or GNU size cannot make the reader claim more data than the input holds.
        let mut data = archive.data();
        let mut read = 0u64;
        loop {
            match data.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n as u64,
            }
        }
        assert!(read <= bytes.len() as u64);
    }
    assert!(archive.headers() <= bytes.len() as u64 / 512 + 1);
}

/// A manifest or index body from a registry, and the descriptors it names.
pub fn manifest(bytes: &[u8], content_type: &str) {
    use crate::manifest::{parse_document, Blob, Document};
    match parse_document(
        bytes,
        content_type,
        "https://registry.invalid/v2/x/manifests/y",
    ) {
        Ok(Document::Manifest(manifest)) => {
            let _ = Blob::check(&manifest.config, "fuzz", "config");
            for layer in &manifest.layers {
                if let Ok(blob) = Blob::check(layer, "fuzz", "layer") {
                    assert_eq!(blob.digest.as_str(), layer.digest);
                }
            }
        }
        Ok(Document::Index(chosen)) => {
            assert_eq!(Digest::parse(chosen.as_str()).ok().as_ref(), Some(&chosen));
        }
        Err(why) => assert!(!why.is_empty()),
    }
}

/// A scratch root filesystem with the symlinks a hostile image may hold, for the working
/// directory check: one directory for every fuzzing process (made if missing, only ever
/// read by the check), so runs leave no more than it behind.
fn scratch_rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("crid-fuzz-rootfs");
        let _ = std::fs::create_dir_all(root.join("usr/lib"));
        let _ = std::fs::create_dir_all(root.join("proc"));
        for (link, target) in [
            ("work", "/proc/self/fd"),
            ("up", "../../.."),
            ("usr/lib/loop", "../lib/loop"),
            ("home", "usr"),
        ] {
            let _ = std::os::unix::fs::symlink(target, root.join(link));
        }
        root
    })
}

/// An image config from a registry: the runtime config as CreateContainer parses it, the
/// diff ids as a pull checks them, and its working directory against a hostile rootfs.
pub fn image_config(bytes: &[u8]) {
    let Ok(json) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(parsed) = crate::config::ImageConfig::parse(json) {
        let working_dir = parsed.config.working_dir.clone();
        let checked = crate::config::check_working_dir(scratch_rootfs(), "", &working_dir, "fuzz");
        if checked.is_ok() && !working_dir.is_empty() {
            assert!(working_dir.starts_with('/') && !working_dir.contains('\0'));
        }
    }
    for layers in 0..3 {
        if let Ok(pulled) = crate::config::parse_pulled(json, layers) {
            assert_eq!(pulled.diff_ids.len(), layers);
            let chain = crate::digest::chain_ids(&pulled.diff_ids);
            assert_eq!(chain.len(), layers);
        }
    }
}

/// A digest as a registry, a config or a request writes it: valid ones are exactly
/// `sha256:` and 64 lowercase hex digits, and name store paths safely.
pub fn digest(raw: &str) {
    if let Ok(digest) = Digest::parse(raw) {
        assert_eq!(digest.as_str(), raw);
        let hex = digest.hex();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(!digest.short().contains(['/', '.']));
        assert_eq!(Digest::from_hex(hex).as_ref(), Some(&digest));
    }
}

/// An image reference from PullImage, ImageStatus or CreateContainer.
pub fn image_reference(raw: &str) {
    if let Ok(reference) = crate::reference::parse(raw) {
        let name = crate::reference::name(&reference);
        assert!(!name.is_empty());
        let _ = reference.whole();
    }
}

/// The tar seed of `tar_stream`: a header of every kind the reader handles.
pub fn seed_tar() -> Vec<u8> {
    fn add(
        builder: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o755);
        header.set_size(data.len() as u64);
        if let Some(link) = link {
            let _ = header.set_link_name(link);
        }
        let _ = builder.append_data(&mut header, path, data);
    }
    let mut builder = tar::Builder::new(Vec::new());
    let b = &mut builder;
    add(b, tar::EntryType::Directory, "etc/", None, b"");
    let passwd = b"root:x:0:0::/root:/bin/sh\n";
    add(b, tar::EntryType::Regular, "etc/passwd", None, passwd);
    add(
        b,
        tar::EntryType::Symlink,
        "etc/link",
        Some("../usr/lib"),
        b"",
    );
    add(b, tar::EntryType::Link, "etc/hard", Some("etc/passwd"), b"");
    add(b, tar::EntryType::Regular, "etc/.wh.removed", None, b"");
    let long = format!("usr/{}/long-name", "d".repeat(120));
    add(b, tar::EntryType::Regular, &long, None, b"GNU long name");
    let _ = b.append_pax_extensions([("path", &b"pax/path"[..]), ("SCHILY.xattr.user.a", b"b")]);
    add(b, tar::EntryType::Regular, "pax-replaced", None, b"pax");
    builder.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_seed_has_every_kind_of_header() {
        let tar = seed_tar();
        let mut archive = crate::tarstream::Archive::new(&tar[..]);
        let mut paths = Vec::new();
        while let Some(entry) = archive.next_entry().expect("valid tar") {
            paths.push(String::from_utf8_lossy(&entry.path).into_owned());
        }
        assert!(paths.iter().any(|p| p.ends_with("long-name")), "{paths:?}");
        assert!(paths.iter().any(|p| p == "pax/path"), "{paths:?}");
    }
}
