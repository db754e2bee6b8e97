//! Busybox images built from Debian's busybox-static: a root filesystem with the applets
//! linked in, /etc/passwd and /etc/group; as a directory (for bundles) or as an OCI image
//! layout (for the registry), built with umoci.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::require;

/// Users in the test images' /etc/passwd: root, a regular user and nobody.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
tester:x:1000:1000:tester:/home/tester:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// Groups in the test images' /etc/group (tester is also in `extra`).
pub const GROUP: &str = "root:x:0:\ntester:x:1000:\nextra:x:1500:tester\nnogroup:x:65534:\n";

/// Writes a busybox root filesystem into `rootfs`.
pub fn write_busybox_rootfs(rootfs: &Path) {
    let busybox = require::tool("busybox");
    let bin = rootfs.join("bin");
    for dir in [
        "bin",
        "etc",
        "tmp",
        "root",
        "home/tester",
        "proc",
        "sys",
        "dev",
    ] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("create rootfs dir");
    }
    std::fs::copy(&busybox, bin.join("busybox")).expect("copy busybox");
    // List applets with the host's binary: exec'ing the fresh copy could fail with ETXTBSY
    // while a child forked by another test thread still holds the copy's write fd.
    let out = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    assert!(out.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet == "busybox" || applet.is_empty() {
            continue;
        }
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).expect("link applet");
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), PASSWD).expect("write passwd");
    std::fs::write(rootfs.join("etc/group"), GROUP).expect("write group");
    std::fs::set_permissions(
        rootfs.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod tmp");
}

/// Runs umoci, panicking with its error text on failure.
pub fn umoci(args: &[&str]) {
    let out = Command::new(require::tool("umoci"))
        .args(args)
        .output()
        .expect("run umoci");
    assert!(
        out.status.success(),
        "umoci {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OCI image layout `<layout>:<tag>` holding a busybox image with `cmd` as its command.
pub fn build_oci_busybox(layout: &Path, tag: &str, cmd: &[&str]) -> PathBuf {
    let run = umoci;
    let image = format!("{}:{tag}", layout.display());
    if !layout.join("index.json").exists() {
        run(&["init", "--layout", &layout.display().to_string()]);
    }
    run(&["new", "--image", &image]);
    let staging = tempfile::tempdir().expect("tempdir");
    let rootfs = staging.path().join("rootfs");
    write_busybox_rootfs(&rootfs);
    run(&[
        "insert",
        "--image",
        &image,
        &rootfs.display().to_string(),
        "/",
    ]);
    let mut config = vec!["config", "--image", &image, "--config.workingdir", "/"];
    let cmd_flags: Vec<String> = cmd.iter().map(|c| format!("--config.cmd={c}")).collect();
    config.extend(cmd_flags.iter().map(String::as_str));
    config.extend([
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]);
    run(&config);
    layout.to_owned()
}

/// Layer encodings a layout can be rewritten to.
#[derive(Debug, Clone, Copy)]
pub enum LayerEncoding {
    Zstd,
    Uncompressed,
}

fn write_blob(layout: &Path, bytes: &[u8]) -> (String, u64) {
    use sha2::Digest;
    let hex = format!("{:x}", sha2::Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).expect("write blob");
    (format!("sha256:{hex}"), bytes.len() as u64)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read json")).expect("parse json")
}

/// The `index.json` entry tagged `tag`.
fn index_entry(layout: &Path, tag: &str) -> serde_json::Value {
    let index = read_json(&layout.join("index.json"));
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .cloned()
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()))
}

/// Adds an entry for a manifest or index blob to `index.json`, tagged `tag`.
fn tag_in_index(layout: &Path, media_type: &str, digest: &str, size: u64, tag: &str) {
    let index_path = layout.join("index.json");
    let mut index = read_json(&index_path);
    index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(serde_json::json!({
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }));
    std::fs::write(
        &index_path,
        serde_json::to_vec(&index).expect("encode index"),
    )
    .expect("write index");
}

/// Adds `<layout>:<to_tag>`: the image of `from_tag` with its gzip layers re-encoded. The
/// uncompressed tars (diff ids) and the config stay the same, so it is the same image.
pub fn reencode_layers(layout: &Path, from_tag: &str, to_tag: &str, encoding: LayerEncoding) {
    use std::io::Read;
    let source = index_entry(layout, from_tag);
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let mut manifest = read_json(&blob(source["digest"].as_str().expect("digest")));
    for layer in manifest["layers"].as_array_mut().expect("layers") {
        let gz = std::fs::read(blob(layer["digest"].as_str().expect("digest"))).expect("layer");
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut tar)
            .expect("gunzip");
        let (bytes, media) = match encoding {
            LayerEncoding::Zstd => (
                zstd::encode_all(&tar[..], 3).expect("zstd"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            LayerEncoding::Uncompressed => (tar, "application/vnd.oci.image.layer.v1.tar"),
        };
        let (digest, size) = write_blob(layout, &bytes);
        layer["mediaType"] = media.into();
        layer["digest"] = digest.into();
        layer["size"] = size.into();
    }
    let bytes = serde_json::to_vec(&manifest).expect("encode manifest");
    let (digest, size) = write_blob(layout, &bytes);
    tag_in_index(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        &digest,
        size,
        to_tag,
    );
}

/// Adds `layers` layers of `bytes_per_layer` random (incompressible) bytes each on top of
/// `<layout>:<base_tag>`, as `<layout>:<tag>`: a big multi-layer image for pull tests and the
/// pull benchmark.
pub fn add_random_layers(
    layout: &Path,
    base_tag: &str,
    tag: &str,
    layers: usize,
    bytes_per_layer: usize,
) {
    use std::io::Write;
    umoci(&[
        "tag",
        "--image",
        &format!("{}:{base_tag}", layout.display()),
        tag,
    ]);
    let image = format!("{}:{tag}", layout.display());
    let staging = tempfile::tempdir().expect("tempdir");
    let mut urandom = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    for n in 0..layers {
        let dir = staging.path().join(format!("layer{n}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut file = std::fs::File::create(dir.join("data.bin")).expect("create");
        let mut left = bytes_per_layer;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len());
            std::io::Read::read_exact(&mut urandom, &mut buf[..n]).expect("read urandom");
            file.write_all(&buf[..n]).expect("write");
            left -= n;
        }
        drop(file);
        umoci(&[
            "insert",
            "--image",
            &image,
            &dir.display().to_string(),
            &format!("/data/{n}"),
        ]);
    }
}

/// Adds `<layout>:<tag>`, a multi-platform image index over existing tags, given as
/// `(tag, architecture)` pairs (all linux).
pub fn add_index(layout: &Path, tag: &str, platforms: &[(&str, &str)]) {
    let mut entries = Vec::new();
    for (source, arch) in platforms {
        let found = index_entry(layout, source);
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": found["digest"],
            "size": found["size"],
            "platform": { "architecture": arch, "os": "linux" },
        }));
    }
    let image_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let bytes = serde_json::to_vec(&image_index).expect("encode index");
    let (digest, size) = write_blob(layout, &bytes);
    tag_in_index(
        layout,
        "application/vnd.oci.image.index.v1+json",
        &digest,
        size,
        tag,
    );
}

/// One entry of a hand-made layer: name (written as is, unchecked), type, link target, data.
pub type RawEntry<'a> = (&'a str, tar::EntryType, &'a str, &'a [u8]);

/// A tar stream with names written raw, so hostile ones (`..`, absolute) go in unchecked.
pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_ustar();
        {
            let raw = header.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder.into_inner().expect("finish tar")
}

/// Adds `<layout>:<tag>`: a single-layer image whose layer is `tar` (gzip-compressed).
pub fn add_single_layer_image(layout: &Path, tag: &str, tar: &[u8]) {
    use sha2::Digest;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let (layer_digest, layer_size) = write_blob(layout, &gz);
    let diff_id = format!("sha256:{:x}", sha2::Sha256::digest(tar));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let (config_digest, config_size) =
        write_blob(layout, &serde_json::to_vec(&config).expect("config"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size }],
    });
    let (digest, size) = write_blob(layout, &serde_json::to_vec(&manifest).expect("manifest"));
    tag_in_index(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        &digest,
        size,
        tag,
    );
}
