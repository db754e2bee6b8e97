//! Hostile images: whatever a registry sends (manifests, configs, layers) stays inside crid's
//! store, is bounded while it streams, and is refused with FAILED_PRECONDITION (or
//! INVALID_ARGUMENT) naming the image. Each test is named for the CVE or anchor it stands for
//! (`../shared/reference/style-and-security-anchors.md` §2.4–2.5).
//!
//! Most images here are crafted in memory and served by a small fake registry on loopback:
//! a real registry (and skopeo) would refuse to store ids like `sha256:../../x` or blobs
//! longer than their descriptors, which is exactly what a hostile or compromised registry, or
//! a man in the middle of an insecure one, can send. Every test also checks that crid is still
//! answering, that nothing was written outside its root and that no temporary directory, layer
//! or image record is left behind.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crid_proto::cri;
use crid_proto::cri::image_service_client::ImageServiceClient;
use crid_tests::harness::crid::{CridOptions, CridProcess};
use crid_tests::harness::image::{build_oci_busybox, raw_tar, umoci};
use crid_tests::harness::pods::PodFixture;
use sha2::Digest;
use tonic::transport::Channel;

type Images = ImageServiceClient<Channel>;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// How long a refused pull may take: bounds apply while streaming, so refusals are quick.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// A fake registry that serves whatever the test puts in it.

/// A response body.
#[derive(Clone)]
enum Body {
    Bytes(Vec<u8>),
    /// `prefix`, then `fill` bytes until the client goes away.
    Endless {
        prefix: Vec<u8>,
        fill: u8,
    },
    /// `bytes` (with their length announced), a KiB at a time, one KiB per `pause`.
    Trickle {
        bytes: Vec<u8>,
        pause: Duration,
    },
}

struct Route {
    content_type: String,
    body: Body,
    /// Bytes written for this route so far.
    sent: Arc<AtomicU64>,
}

/// A registry API v2 on loopback: `/v2/` answers 200; other paths answer what was put there,
/// or 404 with a registry error. One thread per connection, `Connection: close`.
struct FakeRegistry {
    addr: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
}

fn respond(stream: &mut std::net::TcpStream, route: Option<(String, Body, Arc<AtomicU64>)>) {
    let Some((content_type, body, sent)) = route else {
        let error = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            error.len()
        );
        let _ = stream.write_all(error);
        return;
    };
    match body {
        Body::Bytes(bytes) => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            if stream.write_all(&bytes).is_ok() {
                sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        Body::Trickle { bytes, pause } => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            for chunk in bytes.chunks(1024) {
                if stream.write_all(chunk).is_err() {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                std::thread::sleep(pause);
            }
        }
        Body::Endless { prefix, fill } => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n"
            );
            if stream.write_all(&prefix).is_err() {
                return;
            }
            sent.fetch_add(prefix.len() as u64, Ordering::Relaxed);
            let chunk = vec![fill; 64 << 10];
            while stream.write_all(&chunk).is_ok() {
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

impl FakeRegistry {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let table = routes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let table = table.clone();
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                    let mut request = String::new();
                    if reader.read_line(&mut request).is_err() {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let path = request.split(' ').nth(1).unwrap_or_default();
                    let path = path.split('?').next().unwrap_or_default().to_owned();
                    if path == "/v2/" {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                        );
                        return;
                    }
                    let route = table
                        .lock()
                        .expect("routes")
                        .get(&path)
                        .map(|r| (r.content_type.clone(), r.body.clone(), r.sent.clone()));
                    respond(&mut stream, route);
                });
            }
        });
        FakeRegistry { addr, routes }
    }

    /// Serves `body` at `path`; returns the counter of bytes sent there.
    fn put(&self, path: &str, content_type: &str, body: Body) -> Arc<AtomicU64> {
        let sent = Arc::new(AtomicU64::new(0));
        self.routes.lock().expect("routes").insert(
            path.to_owned(),
            Route {
                content_type: content_type.to_owned(),
                body,
                sent: sent.clone(),
            },
        );
        sent
    }

    fn put_blob(&self, repo: &str, digest: &str, body: Body) -> Arc<AtomicU64> {
        self.put(
            &format!("/v2/{repo}/blobs/{digest}"),
            "application/octet-stream",
            body,
        )
    }

    fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, json: &[u8]) {
        self.put(
            &format!("/v2/{repo}/manifests/{reference}"),
            media_type,
            Body::Bytes(json.to_vec()),
        );
        self.put(
            &format!("/v2/{repo}/manifests/{}", sha256(json)),
            media_type,
            Body::Bytes(json.to_vec()),
        );
    }

    /// The reference crid pulls for `repo:tag`.
    fn image(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }
}

// ---------------------------------------------------------------------------------------------
// Images crafted in memory.

/// A layer as the registry serves it.
#[derive(Clone)]
struct Layer {
    media_type: &'static str,
    blob: Vec<u8>,
    /// The digest of the uncompressed tar (what the config says).
    diff_id: String,
}

impl Layer {
    fn gzip(tar: &[u8]) -> Layer {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).expect("gzip");
        Layer {
            media_type: LAYER_GZIP,
            blob: gz.finish().expect("gzip"),
            diff_id: sha256(tar),
        }
    }

    fn plain(tar: &[u8]) -> Layer {
        Layer {
            media_type: LAYER_TAR,
            blob: tar.to_vec(),
            diff_id: sha256(tar),
        }
    }

    /// A zstd layer whose blob is `frames` (the config's diff id says `diff_id`).
    fn zstd(frames: Vec<u8>, diff_id: String) -> Layer {
        Layer {
            media_type: LAYER_ZSTD,
            blob: frames,
            diff_id,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": sha256(&self.blob),
            "size": self.blob.len(),
        })
    }
}

/// A zstd frame of `len` bytes of `byte`, made of RLE blocks: 4 bytes per 128 KiB, so a
/// bomb of gigabytes is a few hundred KiB.
fn zstd_rle(byte: u8, len: u64) -> Vec<u8> {
    // Magic, frame header descriptor (no content size, no checksum), window 128 KiB.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    let mut left = len;
    while left > 0 {
        let n = left.min(128 << 10);
        left -= n;
        // Block header: last-block bit, type 1 (RLE), size (the repeat count).
        let header = (n as u32) << 3 | 1 << 1 | u32::from(left == 0);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(byte);
    }
    frame
}

/// An image config with `diff_ids` and `runtime` as its `config`.
fn config_json(diff_ids: &[String], runtime: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": runtime,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("config")
}

/// Serves an image of `layers` and `config` as `repo:tag`; `tweak` edits the manifest first
/// (to put hostile values in it). Returns the reference to pull.
fn serve_image(
    registry: &FakeRegistry,
    repo: &str,
    tag: &str,
    layers: &[Layer],
    config: &[u8],
    tweak: impl FnOnce(&mut serde_json::Value),
) -> String {
    for layer in layers {
        registry.put_blob(repo, &sha256(&layer.blob), Body::Bytes(layer.blob.clone()));
    }
    registry.put_blob(repo, &sha256(config), Body::Bytes(config.to_vec()));
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": sha256(config), "size": config.len() },
        "layers": layers.iter().map(Layer::descriptor).collect::<Vec<_>>(),
    });
    tweak(&mut manifest);
    let json = serde_json::to_vec(&manifest).expect("manifest");
    registry.put_manifest(repo, tag, OCI_MANIFEST, &json);
    registry.image(repo, tag)
}

/// A small valid layer: one file.
fn small_tar() -> Vec<u8> {
    tar_of(&[Member::file("hello", 0o644, 0, 0, b"hello\n")])
}

/// One member of a tar built with full control over its header.
struct Member {
    name: &'static str,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    link: &'static str,
    device: (u32, u32),
    data: &'static [u8],
}

impl Member {
    fn file(name: &'static str, mode: u32, uid: u64, gid: u64, data: &'static [u8]) -> Member {
        Member {
            name,
            kind: tar::EntryType::Regular,
            mode,
            uid,
            gid,
            link: "",
            device: (0, 0),
            data,
        }
    }

    fn other(name: &'static str, kind: tar::EntryType, mode: u32, link: &'static str) -> Member {
        Member {
            kind,
            link,
            ..Member::file(name, mode, 0, 0, b"")
        }
    }
}

fn tar_of(members: &[Member]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for m in members {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(m.kind);
        header.set_mode(m.mode);
        header.set_uid(m.uid);
        header.set_gid(m.gid);
        header.set_mtime(1_600_000_000);
        header.set_size(m.data.len() as u64);
        if matches!(m.kind, tar::EntryType::Char | tar::EntryType::Block) {
            header.set_device_major(m.device.0).expect("major");
            header.set_device_minor(m.device.1).expect("minor");
        }
        if !m.link.is_empty() {
            header.set_link_name(m.link).expect("link");
        }
        header.set_path(m.name).expect("path");
        header.set_cksum();
        builder.append(&header, m.data).expect("append");
    }
    builder.into_inner().expect("finish tar")
}

// ---------------------------------------------------------------------------------------------
// crid and the checks every test makes.

struct Setup {
    registry: FakeRegistry,
    crid: CridProcess,
    work: tempfile::TempDir,
    /// A directory outside crid's root that hostile ids aim at: it must stay empty.
    canary: PathBuf,
    /// crid's own directory (but its root and runroot) as it was after start.
    before: Vec<String>,
    /// The top of crid's root as it was after start.
    root_before: Vec<String>,
}

/// crid with the fake registry configured as an insecure registry, and `image_toml` added
/// to its `[image]` section.
fn setup(image_toml: &str) -> Setup {
    let registry = FakeRegistry::start();
    let work = tempfile::tempdir().expect("tempdir");
    let canary = work.path().join("canary");
    std::fs::create_dir_all(&canary).expect("mkdir");
    let conf = work.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"{addr}\"\nlocation = \"{addr}\"\ninsecure = true\n",
            addr = registry.addr
        ),
    )
    .expect("write registries.conf");
    let crid = CridProcess::start(&CridOptions {
        extra_toml: format!(
            "[image]\nregistries_conf = \"{}\"\nregistries_conf_dir = \"{}\"\n{image_toml}",
            conf.display(),
            work.path().join("registries.conf.d").display(),
        ),
        ..Default::default()
    });
    let before = outside_root(&crid);
    let root_before = entries(&crid.dir.path().join("root"));
    Setup {
        registry,
        crid,
        work,
        canary,
        before,
        root_before,
    }
}

/// crid's directory, everything but its root and runroot (which crid writes in), listed.
fn outside_root(crid: &CridProcess) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(crid.dir.path())
        .expect("crid dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "root" && n != "run")
        .collect();
    out.sort();
    out
}

fn entries(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

impl Setup {
    fn root(&self) -> PathBuf {
        self.crid.dir.path().join("root")
    }

    /// crid answers; nothing outside its root changed; the store holds no image, layer, short
    /// link or temporary directory.
    async fn assert_clean(&self, images: &mut Images) {
        let listed = images
            .list_images(cri::ListImagesRequest::default())
            .await
            .unwrap_or_else(|e| panic!("crid stopped answering: {e}\n{}", self.crid.stderr()))
            .into_inner()
            .images;
        assert!(listed.is_empty(), "images left: {listed:?}");
        assert_eq!(
            entries(&self.canary),
            Vec::<String>::new(),
            "written outside"
        );
        assert_eq!(
            outside_root(&self.crid),
            self.before,
            "written outside the root"
        );
        let root = self.root();
        assert_eq!(
            entries(&root),
            self.root_before,
            "written at the top of the root"
        );
        assert_eq!(entries(&root.join("layers")), ["l"], "layers left");
        assert_eq!(entries(&root.join("layers/l")), Vec::<String>::new());
        assert_eq!(entries(&root.join("images")), Vec::<String>::new());
        assert_eq!(entries(&root.join("tmp")), Vec::<String>::new(), "tmp left");
    }
}

async fn pull(images: &mut Images, image: &str) -> Result<String, tonic::Status> {
    let request = images.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    });
    match tokio::time::timeout(PULL_TIMEOUT, request).await {
        Ok(result) => result.map(|r| r.into_inner().image_ref),
        Err(_) => panic!("pulling {image} took more than {PULL_TIMEOUT:?}: not bounded"),
    }
}

/// Pulls `image`, which must be refused with FAILED_PRECONDITION or INVALID_ARGUMENT, with a
/// message naming the image and containing `why`.
async fn refused(images: &mut Images, image: &str, why: &str) -> tonic::Status {
    let err = pull(images, image)
        .await
        .expect_err(&format!("{image} must be refused"));
    assert!(
        matches!(
            err.code(),
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
        ),
        "{image}: {err:?}"
    );
    assert!(err.message().contains(image), "names the image: {err:?}");
    assert!(
        err.message().contains(why),
        "{image}: want {why:?}: {err:?}"
    );
    err
}

/// Ids no store path may be made of: traversal aimed at `canary`, `/`, NUL, non-ASCII (a
/// multi-byte character across the 26th hex digit, where the short link name was cut), wrong
/// lengths, uppercase, other algorithms. Each with a name for the tag.
fn hostile_ids(canary: &Path) -> Vec<(&'static str, String)> {
    let hex = "0123456789abcdef".repeat(4);
    let aim = canary.display().to_string();
    vec![
        (
            "dotdot",
            format!(
                "sha256:{}{}/x",
                "../".repeat(24),
                aim.trim_start_matches('/')
            ),
        ),
        ("dotdot-short", format!("sha256:../{}", &hex[3..])),
        ("slash", format!("sha256:{}/{}", &hex[..31], &hex[32..])),
        ("nul", format!("sha256:{}\0{}", &hex[..31], &hex[32..])),
        ("non-ascii", format!("sha256:{}é{}", &hex[..25], &hex[27..])),
        ("short", format!("sha256:{}", &hex[..63])),
        ("long", format!("sha256:{hex}0")),
        ("upper", format!("sha256:{}", hex.to_uppercase())),
        ("empty", "sha256:".to_owned()),
        ("sha512", format!("sha512:{hex}{hex}")),
    ]
}

// ---------------------------------------------------------------------------------------------
// Ids and digests.

/// Anchor: go-digest's `Digest.Validate` (containerd, CRI-O) and crid issue 10: ids from an
/// image config were joined onto store paths (`sha256:../../…` reached any host directory).
#[tokio::test]
async fn go_digest_validate_hostile_diff_ids_are_refused() {
    let s = setup("");
    let mut images = s.crid.images().await;
    let layer = Layer::gzip(&small_tar());
    for (tag, id) in hostile_ids(&s.canary) {
        let config = config_json(&[id], serde_json::json!({ "Cmd": ["sh"] }));
        let image = serve_image(
            &s.registry,
            "hostile/diffid",
            tag,
            std::slice::from_ref(&layer),
            &config,
            |_| {},
        );
        refused(&mut images, &image, "rootfs.diff_ids[0]").await;
    }
    // A second layer: its chain id is derived from a refused diff id, never computed.
    for (tag, id) in hostile_ids(&s.canary).into_iter().take(2) {
        let other = Layer::gzip(&tar_of(&[Member::file("b", 0o644, 0, 0, b"b")]));
        let config = config_json(&[layer.diff_id.clone(), id], serde_json::json!({}));
        let image = serve_image(
            &s.registry,
            "hostile/diffid2",
            tag,
            &[layer.clone(), other],
            &config,
            |_| {},
        );
        refused(&mut images, &image, "rootfs.diff_ids[1]").await;
    }
    s.assert_clean(&mut images).await;
}

/// Anchor: go-digest `Digest.Validate`; the config digest names the image id and its record.
#[tokio::test]
async fn go_digest_validate_hostile_config_digests_are_refused() {
    let s = setup("");
    let mut images = s.crid.images().await;
    let layer = Layer::gzip(&small_tar());
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    for (tag, id) in hostile_ids(&s.canary) {
        // Served under the hostile name too, in case a client asks for it.
        s.registry
            .put_blob("hostile/config", &id, Body::Bytes(config.clone()));
        let image = serve_image(
            &s.registry,
            "hostile/config",
            tag,
            std::slice::from_ref(&layer),
            &config,
            |m| {
                m["config"]["digest"] = id.clone().into();
            },
        );
        refused(&mut images, &image, "config descriptor").await;
    }
    s.assert_clean(&mut images).await;
}

/// Anchor: go-digest `Digest.Validate`; layer digests name blobs to fetch.
#[tokio::test]
async fn go_digest_validate_hostile_manifest_layer_digests_are_refused() {
    let s = setup("");
    let mut images = s.crid.images().await;
    let layer = Layer::gzip(&small_tar());
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    for (tag, id) in hostile_ids(&s.canary) {
        s.registry
            .put_blob("hostile/layer", &id, Body::Bytes(layer.blob.clone()));
        let image = serve_image(
            &s.registry,
            "hostile/layer",
            tag,
            std::slice::from_ref(&layer),
            &config,
            |m| {
                m["layers"][0]["digest"] = id.clone().into();
            },
        );
        refused(&mut images, &image, "layers[0] descriptor").await;
    }
    // A negative size is no better.
    let image = serve_image(
        &s.registry,
        "hostile/layer",
        "negative",
        std::slice::from_ref(&layer),
        &config,
        |m| {
            m["layers"][0]["size"] = (-1).into();
        },
    );
    refused(&mut images, &image, "negative size").await;
    // An index choosing a manifest by a hostile digest.
    for (tag, id) in hostile_ids(&s.canary).into_iter().take(5) {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": OCI_MANIFEST, "digest": id, "size": 100,
                "platform": { "architecture": "amd64", "os": "linux" },
            }],
        }))
        .expect("index");
        let index_tag = format!("index-{tag}");
        s.registry
            .put_manifest("hostile/index", &index_tag, OCI_INDEX, &index);
        let image = s.registry.image("hostile/index", &index_tag);
        refused(&mut images, &image, "names a manifest by digest").await;
    }
    s.assert_clean(&mut images).await;
}

// ---------------------------------------------------------------------------------------------
// Bounds while streaming.

/// CVE-2023-25153's class (unbounded reads of registry content): a blob longer than its
/// descriptor is cut at the descriptor's size, as it streams, not after it all arrived.
#[tokio::test]
async fn cve_2023_25153_blobs_longer_than_their_descriptors_stop_at_the_size() {
    let s = setup("");
    let mut images = s.crid.images().await;
    let tar = small_tar();
    // A layer that never ends: uncompressed, so nothing but the size can stop it.
    let layer = Layer::plain(&tar);
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "hostile/long",
        "layer",
        std::slice::from_ref(&layer),
        &config,
        |_| {},
    );
    let sent = s.registry.put_blob(
        "hostile/long",
        &sha256(&layer.blob),
        Body::Endless {
            prefix: layer.blob.clone(),
            fill: 0,
        },
    );
    let started = Instant::now();
    refused(&mut images, &image, "longer than its descriptor").await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // What was sent is what fits in the socket buffers, not an unbounded stream.
    assert!(
        sent.load(Ordering::Relaxed) < 64 << 20,
        "{} bytes sent",
        sent.load(Ordering::Relaxed)
    );

    // A config that never ends, with a small descriptor size.
    let layer = Layer::gzip(&tar);
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "hostile/long",
        "config",
        &[layer],
        &config,
        |_| {},
    );
    s.registry.put_blob(
        "hostile/long",
        &sha256(&config),
        Body::Endless {
            prefix: config.clone(),
            fill: b' ',
        },
    );
    refused(&mut images, &image, "longer than its descriptor").await;

    // Configs and layers keep their bounds: a config descriptor over 8 MiB, a layer
    // descriptor over max_layer_bytes are refused before anything is fetched.
    let layer = Layer::gzip(&tar);
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "hostile/long",
        "big-config",
        std::slice::from_ref(&layer),
        &config,
        |m| {
            m["config"]["size"] = (64u64 << 20).into();
        },
    );
    refused(&mut images, &image, "image config is 67108864 bytes").await;
    let image = serve_image(
        &s.registry,
        "hostile/long",
        "big-layer",
        &[layer],
        &config,
        |m| {
            m["layers"][0]["size"] = (1u64 << 40).into();
        },
    );
    refused(&mut images, &image, "more than max_layer_bytes").await;
    s.assert_clean(&mut images).await;
}

/// Anchor: containerd's `integration/image_pull_timeout_test.go` (a stalled registry) and
/// crid issue 10 ("no temporary directory is left"): a client that gives up on a pull (the
/// kubelet's deadline) stops the unpacking, and its temporary directory goes at once, not at
/// crid's next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_image_pull_timeout_an_abandoned_pull_leaves_no_temporary_directory() {
    static DATA: [u8; 1 << 20] = [0; 1 << 20];
    let s = setup("");
    let tar = tar_of(&[Member::file("data", 0o644, 0, 0, &DATA)]);
    let layer = Layer::plain(&tar);
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "slow/image",
        "latest",
        std::slice::from_ref(&layer),
        &config,
        |_| {},
    );
    // A KiB every 20 ms: a minute for the whole layer.
    s.registry.put_blob(
        "slow/image",
        &sha256(&layer.blob),
        Body::Trickle {
            bytes: layer.blob.clone(),
            pause: Duration::from_millis(20),
        },
    );
    let tmp = s.root().join("tmp");
    let socket = s.crid.socket.clone();
    let puller = tokio::spawn(async move {
        let mut images = Images::new(crid_tests::harness::crid::connect(&socket).await);
        pull(&mut images, &image).await
    });
    let busy = crid_tests::harness::wait_for(Duration::from_secs(20), || {
        std::fs::read_dir(&tmp).ok()?.next().map(drop)
    });
    assert!(busy.is_some(), "the pull never started unpacking");
    // The client gives up: the RPC is cancelled.
    puller.abort();
    let _ = puller.await;
    let gone = crid_tests::harness::wait_for(Duration::from_secs(10), || {
        (std::fs::read_dir(&tmp).ok()?.count() == 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "temporary directory left after the pull was abandoned: {:?}",
        entries(&tmp)
    );
    let mut images = s.crid.images().await;
    s.assert_clean(&mut images).await;
}

/// crid's peak resident memory (VmHWM), in bytes.
fn peak_rss(crid: &CridProcess) -> u64 {
    let pid = crid.child.as_ref().expect("crid is running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// CVE-2025-58183 (Go archive/tar through tar-split: a GNU sparse map read without bound)
/// and its class: tar metadata is bounded from its header, before it is buffered. A PAX
/// header, a GNU long name and a GNU long link that claim 1 GiB (and stream it: a few KiB of
/// zstd) are refused at once; crid's memory never grows by their size.
#[tokio::test]
async fn cve_2025_58183_huge_pax_headers_and_gnu_long_names_are_bounded_before_buffering() {
    let s = setup("");
    let mut images = s.crid.images().await;
    let claimed: u64 = 1 << 30;
    let cases = [
        ("pax", tar::EntryType::XHeader, "PAX header"),
        (
            "pax-global",
            tar::EntryType::XGlobalHeader,
            "PAX global header",
        ),
        (
            "gnu-long-name",
            tar::EntryType::GNULongName,
            "GNU long name",
        ),
        (
            "gnu-long-link",
            tar::EntryType::GNULongLink,
            "GNU long link",
        ),
    ];
    for (tag, kind, what) in cases {
        let mut header = tar::Header::new_gnu();
        header.set_path("././@LongLink").expect("path");
        header.set_entry_type(kind);
        header.set_size(claimed);
        header.set_mode(0o644);
        header.set_cksum();
        let mut blob = zstd::encode_all(header.as_bytes().as_slice(), 3).expect("zstd");
        blob.extend(zstd_rle(b'a', claimed));
        let layer = Layer::zstd(blob, sha256(header.as_bytes()));
        let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
        let image = serve_image(&s.registry, "hostile/meta", tag, &[layer], &config, |_| {});
        let err = refused(&mut images, &image, what).await;
        assert!(err.message().contains("more than the bound"), "{err:?}");
        assert!(err.message().contains("1073741824"), "{err:?}");
    }
    // A GNU sparse file (the CVE's own vector) is refused outright.
    let mut header = tar::Header::new_gnu();
    header.set_path("sparse").expect("path");
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_size(0);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(&[0u8; 1024]);
    let layer = Layer::gzip(&tar);
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "hostile/meta",
        "sparse",
        &[layer],
        &config,
        |_| {},
    );
    refused(&mut images, &image, "GNU sparse file").await;
    let peak = peak_rss(&s.crid);
    assert!(peak < 512 << 20, "crid's peak RSS grew to {peak} bytes");
    s.assert_clean(&mut images).await;
}

/// Anchor §2.5 A5 (decompression bombs; containerd's FuzzDecompressStream): what follows the
/// end of the tar (read for the diff id) is bounded. 4 GiB of zeros behind a valid tar, in a
/// few hundred KiB of zstd, are refused at once.
#[tokio::test]
async fn anchor_a5_a_decompressed_tail_bomb_after_the_tar_end_is_refused() {
    let s = setup("");
    let mut images = s.crid.images().await;
    let tar = small_tar();
    let mut blob = zstd::encode_all(&tar[..], 3).expect("zstd");
    blob.extend(zstd_rle(0, 4 << 30));
    let layer = Layer::zstd(blob, sha256(&tar));
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "hostile/tail",
        "bomb",
        &[layer],
        &config,
        |_| {},
    );
    let started = Instant::now();
    refused(&mut images, &image, "follow the end of its tar archive").await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    s.assert_clean(&mut images).await;
}

/// Anchor §2.5 A5: decompression and entry-count bombs stop at `max_layer_bytes` and
/// `max_layer_entries`, as they stream; data of members that are not files counts too.
#[tokio::test]
async fn anchor_a5_decompression_and_entry_count_bombs_stop_at_their_bounds() {
    let s = setup("max_layer_bytes = 16777216\nmax_layer_entries = 1000\n");
    let mut images = s.crid.images().await;
    // 64 GiB of file content in a few MiB of zstd.
    let mut header = tar::Header::new_gnu();
    header.set_path("bomb").expect("path");
    header.set_size(64 << 30);
    header.set_mode(0o644);
    header.set_cksum();
    let mut blob = zstd::encode_all(header.as_bytes().as_slice(), 3).expect("zstd");
    blob.extend(zstd_rle(0, 1 << 30));
    let layer = Layer::zstd(blob, sha256(header.as_bytes()));
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "hostile/bomb",
        "bytes",
        &[layer],
        &config,
        |_| {},
    );
    refused(&mut images, &image, "unpack bound of 16777216 bytes").await;
    // A directory "with" 1 GiB of data.
    let mut header = tar::Header::new_gnu();
    header.set_path("d/").expect("path");
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(1 << 30);
    header.set_mode(0o755);
    header.set_cksum();
    let mut blob = zstd::encode_all(header.as_bytes().as_slice(), 3).expect("zstd");
    blob.extend(zstd_rle(0, 1 << 30));
    let layer = Layer::zstd(blob, sha256(header.as_bytes()));
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "hostile/bomb",
        "skipped",
        &[layer],
        &config,
        |_| {},
    );
    refused(&mut images, &image, "unpack bound of 16777216 bytes").await;
    // 1001 empty directories.
    let names: Vec<String> = (0..1001).map(|i| format!("d{i}/")).collect();
    let members: Vec<_> = names
        .iter()
        .map(|n| (n.as_str(), tar::EntryType::Directory, "", &b""[..]))
        .collect();
    let layer = Layer::gzip(&raw_tar(&members));
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "hostile/bomb",
        "entries",
        &[layer],
        &config,
        |_| {},
    );
    refused(&mut images, &image, "unpack bound of 1000 entries").await;
    s.assert_clean(&mut images).await;
}

// ---------------------------------------------------------------------------------------------
// Layer content.

/// containerd's `pkg/archive/tar_test.go::TestBreakouts` (WhiteoutRootParent,
/// WhiteoutCurrentDirectory and whiteouts out of the layer): a whiteout naming `.`, `..`,
/// nothing, an absolute path or a parent is refused, and removes nothing on the way.
#[tokio::test]
async fn containerd_test_breakouts_whiteouts_naming_dotdot_or_absolute_paths_are_refused() {
    use tar::EntryType::{Directory, Regular};
    let s = setup("");
    let mut images = s.crid.images().await;
    let cases = [
        ("wh-dot", ".wh..", "whiteout of '.', '..'"),
        ("wh-dotdot", ".wh...", "whiteout of '.', '..'"),
        ("etc-wh-dot", "etc/.wh..", "whiteout of '.', '..'"),
        ("etc-wh-dotdot", "etc/.wh...", "whiteout of '.', '..'"),
        ("wh-nothing", ".wh.", "whiteout of '.', '..'"),
        ("wh-absolute", "/.wh.etc", "absolute"),
        ("wh-parent", "../.wh.etc", "'..'"),
        ("wh-up", "etc/../../.wh.x", "'..'"),
    ];
    for (tag, name, why) in cases {
        let tar = raw_tar(&[
            ("etc/", Directory, "", b""),
            ("etc/keep", Regular, "", b"k"),
            (name, Regular, "", b""),
        ]);
        let layer = Layer::gzip(&tar);
        let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
        let image = serve_image(
            &s.registry,
            "hostile/whiteout",
            tag,
            &[layer],
            &config,
            |_| {},
        );
        let err = refused(&mut images, &image, why).await;
        assert!(err.message().contains("layer entry"), "{err:?}");
    }
    s.assert_clean(&mut images).await;
}

/// Anchor: RUSTSEC-2026-0067 / TestBreakouts HardlinkSymlinkChmod, and §2.5 A "device nodes
/// and setuid files kept only as the image says": owners, modes (setuid, setgid, sticky),
/// device numbers and fifos land exactly as the layer declares them, a hard link to a symlink
/// changes no host file, and an owner crid cannot give as declared (past u32, or u32::MAX,
/// which chown takes as "unchanged" and which left a setuid file root's) is refused.
#[tokio::test]
async fn rustsec_2026_0067_setuid_files_and_device_nodes_kept_only_as_the_image_says() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::EntryType::{Block, Char, Directory, Fifo, Link, Symlink};
    let s = setup("");
    let mut images = s.crid.images().await;
    let host_file = s.work.path().join("host-file");
    std::fs::write(&host_file, "host").expect("write");
    std::fs::set_permissions(
        &host_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let host_link: &'static str = Box::leak(host_file.display().to_string().into_boxed_str());
    let mut char_dev = Member::other("dev/null", Char, 0o666, "");
    char_dev.device = (1, 3);
    let mut block_dev = Member::other("dev/loop9", Block, 0o660, "");
    block_dev.device = (7, 9);
    block_dev.gid = 6;
    let tar = tar_of(&[
        Member::other("bin/", Directory, 0o755, ""),
        Member::file("bin/su", 0o4755, 0, 0, b"\x7fELF su"),
        Member::file("bin/sg", 0o2750, 1000, 1000, b"\x7fELF sg"),
        Member::file("bin/plain", 0o755, 1000, 1000, b"\x7fELF"),
        Member::other("bin/su-link", Link, 0o644, "bin/su"),
        Member::other("tmp/", Directory, 0o1777, ""),
        Member::other("dev/", Directory, 0o755, ""),
        char_dev,
        block_dev,
        Member::other("run/fifo", Fifo, 0o620, ""),
        Member::other("lnk", Symlink, 0o777, host_link),
        Member::other("hl", Link, 0o4777, "lnk"),
    ]);
    let layer = Layer::gzip(&tar);
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "hostile/modes",
        "ok",
        std::slice::from_ref(&layer),
        &config,
        |_| {},
    );
    let id = pull(&mut images, &image)
        .await
        .expect("a plain image pulls");
    let diff = s
        .root()
        .join("layers")
        .join(layer.diff_id.trim_start_matches("sha256:"))
        .join("diff");
    let meta = |name: &str| std::fs::symlink_metadata(diff.join(name)).expect(name);
    let owner_mode = |name: &str| {
        let m = meta(name);
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner_mode("bin/su"), (0, 0, 0o4755));
    assert_eq!(owner_mode("bin/sg"), (1000, 1000, 0o2750));
    assert_eq!(owner_mode("bin/plain"), (1000, 1000, 0o755));
    assert_eq!(meta("bin/su-link").ino(), meta("bin/su").ino());
    assert_eq!(owner_mode("tmp"), (0, 0, 0o1777));
    let null = meta("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let loop9 = meta("dev/loop9");
    assert!(loop9.file_type().is_block_device());
    assert_eq!(loop9.rdev(), nix::sys::stat::makedev(7, 9));
    assert_eq!((loop9.gid(), loop9.mode() & 0o7777), (6, 0o660));
    assert!(meta("run/fifo").file_type().is_fifo());
    assert_eq!(meta("run/fifo").mode() & 0o7777, 0o620);
    assert!(
        meta("hl").file_type().is_symlink(),
        "a link to the symlink itself"
    );
    // No other file in the layer has a setuid or setgid bit, and the host file is untouched.
    let host = std::fs::metadata(&host_file).expect("host file");
    assert_eq!(host.mode() & 0o7777, 0o600, "host file mode changed");
    assert_eq!(
        std::fs::read_to_string(&host_file).expect("host file"),
        "host"
    );
    images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: id,
                ..Default::default()
            }),
        })
        .await
        .expect("remove");

    for (tag, uid, gid) in [
        ("uid-max", u64::from(u32::MAX), 0),
        ("gid-max", 0, u64::from(u32::MAX)),
        ("uid-past-u32", 1 << 32, 0),
    ] {
        let tar = tar_of(&[Member::file("su", 0o4755, uid, gid, b"\x7fELF")]);
        let layer = Layer::gzip(&tar);
        let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
        let image = serve_image(&s.registry, "hostile/modes", tag, &[layer], &config, |_| {});
        refused(&mut images, &image, "owner or group").await;
    }
    s.assert_clean(&mut images).await;
}

// ---------------------------------------------------------------------------------------------
// Image config values.

/// Anchor §1.9 anti-pattern 1 and crid issue 10: an image config that does not parse was read
/// as the default, a container of an image that said `User: "1000"` then ran as root, without
/// its environment. Such a config is refused at pull, naming the image.
#[tokio::test]
async fn issue_10_an_image_config_that_does_not_parse_is_refused_never_a_silent_root() {
    let s = setup("");
    let mut images = s.crid.images().await;
    let layer = Layer::gzip(&small_tar());
    for (tag, runtime) in [
        (
            "env-not-strings",
            serde_json::json!({ "User": "1000", "Env": [1] }),
        ),
        (
            "workdir-number",
            serde_json::json!({ "User": "1000", "WorkingDir": 5 }),
        ),
        (
            "cmd-string",
            serde_json::json!({ "User": "1000", "Cmd": "sh" }),
        ),
        ("user-number", serde_json::json!({ "User": 1000 })),
        ("config-string", serde_json::json!("root")),
    ] {
        let config = config_json(std::slice::from_ref(&layer.diff_id), runtime);
        let image = serve_image(
            &s.registry,
            "hostile/config",
            tag,
            std::slice::from_ref(&layer),
            &config,
            |_| {},
        );
        refused(&mut images, &image, "image config does not parse").await;
    }
    s.assert_clean(&mut images).await;
}

/// One hostile WorkingDir: a tag of the test image, its WorkingDir, what the refusal says, and
/// a tree inserted at `/` first (none: the base image as built).
struct WorkdirCase<'a> {
    tag: &'a str,
    dir: &'a str,
    why: &'a str,
    insert: Option<&'a Path>,
}

/// Pushes one busybox image per case to `repo` and checks that CreateContainer refuses each
/// with INVALID_ARGUMENT naming the image, the directory and why. Returns the pod it used
/// (its id and config).
async fn working_dirs_are_refused(
    f: &mut PodFixture,
    repo: &str,
    cases: &[WorkdirCase<'_>],
) -> (String, cri::PodSandboxConfig) {
    let layout = f.work.path().join(format!("{repo}-layout"));
    build_oci_busybox(&layout, "base", &["sleep", "3600"]);
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    for case in cases {
        umoci(&["tag", "--image", &image("base"), case.tag]);
        if let Some(insert) = case.insert {
            umoci(&[
                "insert",
                "--image",
                &image(case.tag),
                &insert.display().to_string(),
                "/",
            ]);
        }
        umoci(&[
            "config",
            "--image",
            &image(case.tag),
            "--config.workingdir",
            case.dir,
        ]);
        f.registry.push_layout(&layout, case.tag, repo);
    }
    let pod_config = f.pod_config(&repo.replace('/', "-"));
    let pod = f.run_pod(pod_config.clone()).await;
    let mut images = f.crid.images().await;
    for case in cases {
        let (tag, dir, why) = (case.tag, case.dir, case.why);
        let reference = format!("{}/{repo}:{tag}", f.registry.addr);
        pull(&mut images, &reference)
            .await
            .unwrap_or_else(|e| panic!("pull {reference}: {e:?}"));
        let mut config = f.container_config(&format!("c-{tag}"), &[]);
        config.image = Some(cri::ImageSpec {
            image: reference.clone(),
            ..Default::default()
        });
        let err = f.create_container_err(&pod, &pod_config, config).await;
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{tag} {dir}: {err:?}"
        );
        assert!(
            err.message().contains(&reference),
            "names the image: {err:?}"
        );
        assert!(err.message().contains(dir), "names the directory: {err:?}");
        assert!(err.message().contains(why), "{tag}: {err:?}");
    }
    (pod, pod_config)
}

/// CVE-2024-21626 (runc: a leaked host fd reached through `cwd=/proc/self/fd/N`): a working
/// directory under `/proc` — the image's WorkingDir as written, through a symlink in the
/// image, or the request's `working_dir` — is refused at CreateContainer with
/// INVALID_ARGUMENT, whatever the runtime does; so are relative ones and ones with `..`.
#[tokio::test]
async fn cve_2024_21626_working_dirs_under_proc_are_refused_at_create() {
    let mut f = PodFixture::start("").await;
    let staging = f.work.path().join("link");
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::os::unix::fs::symlink("/proc/self/fd/7", staging.join("w")).expect("symlink");
    let case = |tag, dir, why| WorkdirCase {
        tag,
        dir,
        why,
        insert: None,
    };
    let cases = [
        case("fd", "/proc/self/fd/7", "under /proc"),
        case("cwd", "/proc/self/cwd", "under /proc"),
        WorkdirCase {
            insert: Some(&staging),
            ..case("link", "/w", "under /proc")
        },
        case("relative", "work", "not an absolute path"),
        case("dotdot", "/tmp/../proc/self/fd/7", "'..'"),
    ];
    let (pod, pod_config) = working_dirs_are_refused(&mut f, "hostile/workdir", &cases).await;
    // The request's working_dir is checked the same way.
    let mut config = f.container_config("c-request", &["sleep", "3600"]);
    config.working_dir = "/proc/1/root".into();
    let err = f.create_container_err(&pod, &pod_config, config).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("config.working_dir"), "{err:?}");
    // An ordinary working directory still works.
    let mut config = f.container_config("c-ok", &["sleep", "3600"]);
    config.working_dir = "/tmp".into();
    f.start_container(&pod, &pod_config, config).await;
    f.finish().await;
}

/// CVE-2024-21626's class through /dev: crid mounts its own tmpfs on /dev, where the runtime
/// links `/dev/fd -> /proc/self/fd`, `/dev/stdin -> /proc/self/fd/0` and `/dev/core ->
/// /proc/kcore`, so `/dev/fd/7` is `/proc/self/fd/7` by another name. A working directory
/// through those links — written so, with `.` components, through a symlink in the image, or
/// where the image's own /dev symlink leads (the runtime mounts /dev through it) — and the
/// request's `working_dir` so are refused at CreateContainer with INVALID_ARGUMENT naming it;
/// the rest of /dev (/dev/shm) is an ordinary working directory.
#[tokio::test]
async fn cve_2024_21626_working_dirs_under_dev_are_refused_at_create() {
    let mut f = PodFixture::start("").await;
    let staging = f.work.path().join("link");
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::os::unix::fs::symlink("/dev/fd/7", staging.join("w")).expect("symlink");
    let moved = f.work.path().join("moved");
    std::fs::create_dir_all(moved.join("srv/devices")).expect("mkdir");
    std::os::unix::fs::symlink("/srv/devices", moved.join("dev")).expect("symlink");
    let case = |tag, dir, why| WorkdirCase {
        tag,
        dir,
        why,
        insert: None,
    };
    let cases = [
        case("fd", "/dev/fd/7", "under /dev"),
        case("dot", "/dev/./fd/7", "under /dev"),
        case("stdin", "/dev/stdin", "under /dev"),
        WorkdirCase {
            insert: Some(&staging),
            ..case("link", "/w", "under /dev")
        },
        // A layer whose `dev` is a symlink, over the base's /dev directory.
        WorkdirCase {
            insert: Some(&moved),
            ..case(
                "moved",
                "/srv/devices/fd/7",
                "the image's /dev resolves to /srv/devices",
            )
        },
    ];
    let (pod, pod_config) = working_dirs_are_refused(&mut f, "hostile/devdir", &cases).await;
    // The request's working_dir is checked the same way.
    for dir in ["/dev/fd/3", "/dev/stderr"] {
        let mut config = f.container_config("c-request", &["sleep", "3600"]);
        config.working_dir = dir.into();
        let err = f.create_container_err(&pod, &pod_config, config).await;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{dir}: {err:?}");
        assert!(
            err.message()
                .contains(&format!("config.working_dir {dir:?} is under /dev")),
            "{err:?}"
        );
    }
    // A directory merely named like /dev elsewhere, and /dev/shm, still work.
    for (name, dir) in [("c-ok", "/srv/dev"), ("c-shm", "/dev/shm")] {
        let mut config = f.container_config(name, &["sleep", "3600"]);
        config.working_dir = dir.into();
        f.start_container(&pod, &pod_config, config).await;
    }
    f.finish().await;
}

/// Anchor D33 (containerd's `integration/image_pull_timeout_test.go`, CRI-O's "pull progress
/// timeout should trigger"): a registry that stops sending, or drips too slowly to matter,
/// cannot hold a download slot for ever. With `pull_progress_timeout_secs = 2` and a single
/// slot, both pulls fail with DEADLINE_EXCEEDED naming the image and the layer, leave no
/// temporary directory, and a good image pulls at once afterwards (the slot is free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchor_d33_a_stalling_registry_is_cut_off_and_releases_its_permit() {
    static DATA: [u8; 1 << 20] = [0; 1 << 20];
    let s = setup("pull_progress_timeout_secs = 2\nmax_concurrent_downloads = 1\n");
    let tar = tar_of(&[Member::file("data", 0o644, 0, 0, &DATA)]);
    let layer = Layer::plain(&tar);
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    // One KiB, then nothing for a minute (past crid's 60 s read timeout); and a KiB every
    // 100 ms (10 KiB/s: progress by containerd's any-byte rule, a drip by crid's).
    for (repo, pause) in [
        ("stall/silent", Duration::from_secs(70)),
        ("stall/drip", Duration::from_millis(100)),
    ] {
        let image = serve_image(
            &s.registry,
            repo,
            "latest",
            std::slice::from_ref(&layer),
            &config,
            |_| {},
        );
        s.registry.put_blob(
            repo,
            &sha256(&layer.blob),
            Body::Trickle {
                bytes: layer.blob.clone(),
                pause,
            },
        );
        let mut images = s.crid.images().await;
        let started = Instant::now();
        let err = pull(&mut images, &image)
            .await
            .expect_err("a stalling registry is cut off");
        assert_eq!(
            err.code(),
            tonic::Code::DeadlineExceeded,
            "{image}: {err:?}"
        );
        assert!(err.message().contains(&image), "names the image: {err:?}");
        assert!(
            err.message().contains(&sha256(&layer.blob)),
            "names the layer: {err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{image}: cut off after {:?}",
            started.elapsed()
        );
        let tmp = s.root().join("tmp");
        let gone = crid_tests::harness::wait_for(Duration::from_secs(5), || {
            (std::fs::read_dir(&tmp).ok()?.count() == 0).then_some(())
        });
        assert!(gone.is_some(), "{image}: tmp left: {:?}", entries(&tmp));
        s.assert_clean(&mut images).await;
    }
    // The only download slot is free: a good image pulls.
    let good = Layer::plain(&small_tar());
    let config = config_json(std::slice::from_ref(&good.diff_id), serde_json::json!({}));
    let image = serve_image(
        &s.registry,
        "good/image",
        "latest",
        std::slice::from_ref(&good),
        &config,
        |_| {},
    );
    let mut images = s.crid.images().await;
    let started = Instant::now();
    pull(&mut images, &image)
        .await
        .unwrap_or_else(|e| panic!("{image} after the stalls: {e:?}"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Anchor D33 behind a mirror: a mirror that drips (a KiB every 100 ms) in front of a good
/// registry (registries.conf.d: `[[registry]]` with a `[[registry.mirror]]`) is cut off
/// after `pull_progress_timeout_secs` and the pull goes on from the registry behind it, as
/// it does when a mirror answers with an error (CRI-O tries its pull sources in turn). When
/// the registry drips too, the pull fails with DEADLINE_EXCEEDED naming both endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchor_d33_a_dripping_mirror_falls_back_to_the_registry_behind_it() {
    static DATA: [u8; 1 << 20] = [0; 1 << 20];
    let s = setup("pull_progress_timeout_secs = 2\n");
    let mirror = FakeRegistry::start();
    let tar = tar_of(&[Member::file("data", 0o644, 0, 0, &DATA)]);
    let layer = Layer::plain(&tar);
    let digest = sha256(&layer.blob);
    let config = config_json(std::slice::from_ref(&layer.diff_id), serde_json::json!({}));
    let drip = || Body::Trickle {
        bytes: layer.blob.clone(),
        pause: Duration::from_millis(100),
    };
    let mut dripped = Vec::new();
    for repo in ["mirrored/good", "mirrored/both"] {
        let layers = std::slice::from_ref(&layer);
        serve_image(&s.registry, repo, "latest", layers, &config, |_| {});
        serve_image(&mirror, repo, "latest", layers, &config, |_| {});
        dripped.push(mirror.put_blob(repo, &digest, drip()));
    }
    s.registry.put_blob("mirrored/both", &digest, drip());
    let dropins = s.work.path().join("registries.conf.d");
    std::fs::create_dir_all(&dropins).expect("mkdir registries.conf.d");
    std::fs::write(
        dropins.join("mirror.conf"),
        format!(
            "[[registry]]\nprefix = \"{addr}/mirrored\"\nlocation = \"{addr}/mirrored\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"{mirror}/mirrored\"\ninsecure = true\n",
            addr = s.registry.addr,
            mirror = mirror.addr,
        ),
    )
    .expect("write mirror.conf");
    let mut images = s.crid.images().await;

    let image = s.registry.image("mirrored/good", "latest");
    let started = Instant::now();
    let id = pull(&mut images, &image)
        .await
        .unwrap_or_else(|e| panic!("{image} from the registry behind the mirror: {e:?}"));
    assert!(
        dripped[0].load(Ordering::Relaxed) > 0,
        "the mirror was not tried first"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "pulled after {:?}",
        started.elapsed()
    );
    images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: id,
                ..Default::default()
            }),
        })
        .await
        .expect("remove");

    let image = s.registry.image("mirrored/both", "latest");
    let err = pull(&mut images, &image)
        .await
        .expect_err("both endpoints drip");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    for named in [&image, &digest, &mirror.addr, &s.registry.addr] {
        assert!(
            err.message().contains(named.as_str()),
            "names {named}: {err:?}"
        );
    }
    let tmp = s.root().join("tmp");
    let gone = crid_tests::harness::wait_for(Duration::from_secs(5), || {
        (std::fs::read_dir(&tmp).ok()?.count() == 0).then_some(())
    });
    assert!(gone.is_some(), "tmp left: {:?}", entries(&tmp));
    s.assert_clean(&mut images).await;
}

// ---------------------------------------------------------------------------------------------
// Files of the image crid reads itself.

/// strace attached to every thread of `pid`, tracing opens and closes into a file.
struct Strace {
    child: std::process::Child,
    output: PathBuf,
}

impl Strace {
    fn attach(pid: u32, dir: &Path) -> Strace {
        let strace = crid_tests::harness::require::tool("strace");
        let output = dir.join("strace.out");
        let log = dir.join("strace.err");
        let child = std::process::Command::new(strace)
            .args(["-f", "-e", "trace=open,openat,openat2,close", "-o"])
            .arg(&output)
            .args(["-p", &pid.to_string()])
            .stderr(std::fs::File::create(&log).expect("strace log"))
            .spawn()
            .expect("run strace");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("attached")
        {
            assert!(
                Instant::now() < deadline,
                "strace did not attach to crid: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Strace { child, output }
    }

    /// Detaches and returns the trace.
    fn finish(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("stop strace");
        self.child.wait().expect("wait for strace");
        std::fs::read_to_string(&self.output).expect("strace output")
    }
}

/// Checks a trace for `name` (a path crid resolves in a container's root): crid looked it up
/// (at least once, so the trace is not empty by mistake), only ever with O_PATH, and never
/// reopened such a handle (`/proc/self/fd/N`) before closing it.
fn assert_only_located(trace: &str, name: &str) {
    let quoted = format!("\"{name}\"");
    let lines: Vec<(&str, &str)> = trace.lines().filter_map(|l| l.split_once(' ')).collect();
    let mut located = 0;
    for (i, (tid, call)) in lines.iter().enumerate() {
        if !call.contains(&quoted) {
            continue;
        }
        located += 1;
        assert!(
            call.contains("O_PATH"),
            "crid opened {name} for real: {tid} {call}"
        );
        // The handle's number: on this line, or on the line resuming it.
        let result = if call.contains("<unfinished") {
            lines[i + 1..]
                .iter()
                .find(|(t, c)| t == tid && c.contains("resumed>"))
                .map(|(_, c)| *c)
                .unwrap_or_default()
        } else {
            call
        };
        let Some(fd) = result
            .rsplit_once(") = ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|r| r.parse::<u32>().ok())
        else {
            continue;
        };
        let reopen = format!("\"/proc/self/fd/{fd}\"");
        for (t, c) in lines[i + 1..].iter().filter(|(t, _)| t == tid) {
            if c.starts_with(&format!("close({fd})")) {
                break;
            }
            assert!(
                !c.contains(&reopen),
                "crid reopened its handle on {name}: {t} {c}"
            );
        }
    }
    assert!(located > 0, "the trace shows no lookup of {name}:\n{trace}");
}

/// Anchor A8 (crid reads an image's files as the host's root, outside any device cgroup): an
/// image whose /etc/passwd is a FIFO or a device node (`c 10 130` would be the host's
/// watchdog, which reboots some hosts when opened and closed; here `c 1 7`, /dev/full) makes
/// CreateContainer with run_as_username answer at once with INVALID_ARGUMENT naming the file
/// and its type, and crid never opens it: a trace of crid's opens shows it located with O_PATH
/// only (the old code opened it O_RDONLY|O_NONBLOCK, then checked its type).
#[tokio::test]
async fn anchor_a8_an_etc_passwd_device_node_is_never_opened() {
    use tar::EntryType::{Char, Directory, Fifo};
    let mut f = PodFixture::start("").await;
    let layout = f.work.path().join("hostile-layout");
    build_oci_busybox(&layout, "base", &["sleep", "3600"]);
    let mut full = Member::other("etc/passwd", Char, 0o644, "");
    full.device = (1, 7);
    let images_of = [
        (
            "fifo",
            Member::other("etc/passwd", Fifo, 0o644, ""),
            "a fifo",
        ),
        ("device", full, "a character device"),
    ];
    let mut cases = Vec::new();
    for (tag, passwd, kind) in images_of {
        let tar = tar_of(&[
            Member::other("etc/", Directory, 0o755, ""),
            passwd,
            Member::file("etc/group", 0o644, 0, 0, b"root:x:0:\n"),
        ]);
        crid_tests::harness::image::add_single_layer_image(&layout, tag, &tar);
        f.registry.push_layout(&layout, tag, "hostile/passwd");
        cases.push((tag, kind));
    }
    let pod_config = f.pod_config("passwd");
    let pod = f.run_pod(pod_config.clone()).await;
    let mut images = f.crid.images().await;
    let crid_pid = f.crid.child.as_ref().expect("crid runs").id();
    for (tag, kind) in cases {
        let reference = format!("{}/hostile/passwd:{tag}", f.registry.addr);
        pull(&mut images, &reference)
            .await
            .unwrap_or_else(|e| panic!("pull {reference}: {e:?}"));
        let mut config = f.container_config(&format!("c-{tag}"), &["sh"]);
        config.image = Some(cri::ImageSpec {
            image: reference.clone(),
            ..Default::default()
        });
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_username: "tester".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let trace_dir = f.work.path().join(format!("trace-{tag}"));
        std::fs::create_dir_all(&trace_dir).expect("mkdir");
        let strace = Strace::attach(crid_pid, &trace_dir);
        let started = Instant::now();
        let err = f.create_container_err(&pod, &pod_config, config).await;
        let took = started.elapsed();
        let trace = strace.finish();
        assert_only_located(&trace, "etc/passwd");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{tag}: {err:?}");
        assert!(
            err.message().contains(&format!(
                "the container's /etc/passwd: not a regular file ({kind})"
            )),
            "{tag}: {err:?}"
        );
        assert!(took < Duration::from_secs(20), "{tag}: took {took:?}");
    }
    f.finish().await;
}
