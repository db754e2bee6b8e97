//! The ImageService end to end: crid pulling from docker-registry on loopback (configured
//! through registries.conf), images built by the harness from busybox-static.

use std::path::{Path, PathBuf};

use crid_proto::cri;
use crid_tests::harness::crid::{CridOptions, CridProcess};
use crid_tests::harness::image::{
    add_index, add_random_layers, add_single_layer_image, build_oci_busybox, raw_tar,
    reencode_layers, umoci, LayerEncoding,
};
use crid_tests::harness::registry::{Registry, RegistryOptions};

struct Fixture {
    registry: Registry,
    crid: CridProcess,
    work: tempfile::TempDir,
    layout: PathBuf,
}

/// crid with its image configuration in `work`: `registries.conf`, `registries.conf.d/`,
/// `auth.json` and `certs.d/` (each may be absent).
fn crid_for(work: &Path) -> CridProcess {
    CridProcess::start(&CridOptions {
        extra_toml: format!(
            "[image]\nregistries_conf = \"{}\"\nregistries_conf_dir = \"{}\"\nauth_file = \"{}\"\ncerts_dir = \"{}\"\n",
            work.join("registries.conf").display(),
            work.join("registries.conf.d").display(),
            work.join("auth.json").display(),
            work.join("certs.d").display(),
        ),
        ..Default::default()
    })
}

/// A loopback port nothing listens on.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    addr
}

/// A registry holding busybox as library/busybox:latest and test/busybox:{v1,v2}; crid with a
/// registries.conf that sends docker.io to a dead mirror, then to the test registry (never to
/// the internet), and marks the test registry insecure (plain HTTP).
fn fixture(extra_registries: &str) -> Fixture {
    let registry = Registry::start();
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    build_oci_busybox(&layout, "latest", &["sh"]);
    umoci(&[
        "config",
        "--image",
        &format!("{}:latest", layout.display()),
        "--config.user",
        "1000",
    ]);
    registry.push_layout(&layout, "latest", "library/busybox");
    for tag in ["v1", "v2"] {
        umoci(&[
            "tag",
            "--image",
            &format!("{}:latest", layout.display()),
            tag,
        ]);
        registry.push_layout(&layout, tag, "test/busybox");
    }
    let conf = work.path().join("registries.conf");
    std::fs::create_dir_all(work.path().join("registries.conf.d")).expect("mkdir drop-ins");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"{dead}\"\n\
             [[registry.mirror]]\nlocation = \"{dead}\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"{addr}\"\ninsecure = true\n\n\
             [[registry]]\nprefix = \"{addr}\"\nlocation = \"{addr}\"\ninsecure = true\n{extra_registries}",
            dead = dead_address(),
            addr = registry.addr,
        ),
    )
    .expect("write registries.conf");
    let crid = crid_for(work.path());
    Fixture {
        registry,
        crid,
        work,
        layout,
    }
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

type Images = cri::image_service_client::ImageServiceClient<tonic::transport::Channel>;

async fn pull(images: &mut Images, image: &str) -> Result<String, tonic::Status> {
    images
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// ListImages without a filter.
async fn all_images(images: &mut Images) -> Vec<cri::Image> {
    images
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

async fn status(images: &mut Images, image: &str) -> Option<cri::Image> {
    images
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
}

fn layer_dirs(root: &Path) -> usize {
    std::fs::read_dir(root.join("layers"))
        .expect("layers dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name() != "l"))
        .count()
}

#[tokio::test]
async fn pulls_by_tag_digest_and_short_name_through_a_mirror() {
    let f = fixture("");
    let mut images = f.crid.images().await;
    // A short name: docker.io/library/busybox:latest, through the second mirror.
    let id = pull(&mut images, "busybox").await.expect("pull busybox");
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let img = status(&mut images, "busybox").await.expect("present");
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert_eq!(img.uid.map(|u| u.value), Some(1000));
    assert!(img.size > 1_000_000, "size {}", img.size);
    let digest = img.repo_digests[0]
        .split_once('@')
        .expect("digest ref")
        .1
        .to_owned();

    // By tag and by digest from the registry itself: the same image, its layers fetched once.
    let by_tag = pull(&mut images, &format!("{}/test/busybox:v1", f.registry.addr))
        .await
        .expect("pull by tag");
    assert_eq!(by_tag, id);
    let by_digest = pull(
        &mut images,
        &format!("{}/test/busybox@{digest}", f.registry.addr),
    )
    .await
    .expect("pull by digest");
    assert_eq!(by_digest, id);
    let img = status(&mut images, &id).await.expect("by id");
    assert!(img
        .repo_tags
        .contains(&format!("{}/test/busybox:v1", f.registry.addr)));
    assert!(img
        .repo_digests
        .contains(&format!("{}/test/busybox@{digest}", f.registry.addr)));
    assert_eq!(layer_dirs(&f.crid.dir.path().join("root")), 1);

    // Listing, with and without a filter, and a verbose status.
    let all = all_images(&mut images).await;
    assert_eq!(all.len(), 1);
    let filtered = images
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("docker.io/library/nothere:1"),
            }),
        })
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    assert!(filtered.is_empty());
    let verbose = images
        .image_status(cri::ImageStatusRequest {
            image: spec("busybox"),
            verbose: true,
        })
        .await
        .expect("verbose")
        .into_inner();
    assert!(verbose.info["info"].contains("diff_ids"));

    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.as_ref().expect("bytes").value > 1_000_000);
    assert!(usage.inodes_used.as_ref().expect("inodes").value > 100);
}

#[tokio::test]
async fn errors_name_the_problem() {
    let f = fixture(&format!(
        "\n[[registry]]\nprefix = \"{}/blocked\"\nblocked = true\n",
        "127.0.0.9:5000"
    ));
    let mut images = f.crid.images().await;
    let err = pull(&mut images, &format!("{}/test/nothere:v1", f.registry.addr))
        .await
        .expect_err("missing");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("test/nothere"), "{err:?}");
    let err = pull(
        &mut images,
        &format!("{}/test/busybox:nosuchtag", f.registry.addr),
    )
    .await
    .expect_err("missing tag");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = pull(&mut images, "Bad Reference!")
        .await
        .expect_err("malformed");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let dead = dead_address();
    let err = pull(&mut images, &format!("{dead}/x/y:1"))
        .await
        .expect_err("unreachable");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&dead), "{err:?}");
    let err = pull(&mut images, "127.0.0.9:5000/blocked/x:1")
        .await
        .expect_err("blocked");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // Nothing half-stored.
    assert!(all_images(&mut images).await.is_empty());
    assert_eq!(layer_dirs(&f.crid.dir.path().join("root")), 0);
}

#[tokio::test]
async fn removing_one_tag_keeps_the_image_and_its_other_tags() {
    let f = fixture("");
    let mut images = f.crid.images().await;
    let v1 = format!("{}/test/busybox:v1", f.registry.addr);
    let v2 = format!("{}/test/busybox:v2", f.registry.addr);
    let id = pull(&mut images, &v1).await.expect("v1");
    assert_eq!(pull(&mut images, &v2).await.expect("v2"), id);
    let remove = |image: String| cri::RemoveImageRequest {
        image: spec(&image),
    };
    images
        .remove_image(remove(v1.clone()))
        .await
        .expect("remove v1");
    let img = status(&mut images, &v2).await.expect("still there");
    assert_eq!(img.repo_tags, vec![v2.clone()]);
    assert!(status(&mut images, &v1).await.is_none());
    images
        .remove_image(remove(v2.clone()))
        .await
        .expect("remove v2");
    assert!(status(&mut images, &id).await.is_none());
    assert_eq!(
        layer_dirs(&f.crid.dir.path().join("root")),
        0,
        "unused layers removed"
    );
    // Idempotent, and by id too.
    images.remove_image(remove(v2)).await.expect("remove again");
    let id = pull(&mut images, &v1).await.expect("pull again");
    images
        .remove_image(remove(id.clone()))
        .await
        .expect("remove by id");
    assert!(status(&mut images, &id).await.is_none());
}

#[tokio::test]
async fn concurrent_pulls_do_the_work_once() {
    let f = fixture("");
    let image = format!("{}/test/busybox:v1", f.registry.addr);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let socket = f.crid.socket.clone();
        let image = image.clone();
        tasks.push(tokio::spawn(async move {
            let mut images = Images::new(crid_tests::harness::crid::connect(&socket).await);
            pull(&mut images, &image).await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("join").expect("pull"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    let root = f.crid.dir.path().join("root");
    assert_eq!(layer_dirs(&root), 1);
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).expect("tmp").count(),
        0,
        "no leftovers"
    );
}

#[tokio::test]
async fn shared_layers_whiteouts_and_opaque_dirs_in_the_merged_overlay() {
    let f = fixture("");
    // derived = busybox + a layer adding /opt/app, removing /bin/ls and replacing /etc.
    let base = format!("{}:latest", f.layout.display());
    umoci(&["tag", "--image", &base, "derived"]);
    let derived = format!("{}:derived", f.layout.display());
    let extra = f.work.path().join("extra");
    std::fs::create_dir_all(extra.join("app")).expect("mkdir");
    std::fs::write(extra.join("app/hello"), "hello\n").expect("write");
    std::fs::create_dir_all(extra.join("etc")).expect("mkdir");
    std::fs::write(extra.join("etc/only"), "only\n").expect("write");
    umoci(&[
        "insert",
        "--image",
        &derived,
        &extra.join("app").display().to_string(),
        "/opt/app",
    ]);
    umoci(&["insert", "--image", &derived, "--whiteout", "/bin/ls"]);
    umoci(&[
        "insert",
        "--image",
        &derived,
        "--opaque",
        &extra.join("etc").display().to_string(),
        "/etc",
    ]);
    f.registry.push_layout(&f.layout, "derived", "test/derived");

    let mut images = f.crid.images().await;
    pull(&mut images, &format!("{}/test/busybox:v1", f.registry.addr))
        .await
        .expect("base");
    let id = pull(
        &mut images,
        &format!("{}/test/derived:derived", f.registry.addr),
    )
    .await
    .expect("derived");
    let root = f.crid.dir.path().join("root");
    assert_eq!(
        layer_dirs(&root),
        4,
        "the base layer is shared, three new ones"
    );

    // Mount the derived image's rootfs and check it file by file.
    let record: crid_image::store::ImageRecord = serde_json::from_slice(
        &std::fs::read(root.join("images").join(format!("{}.json", &id[7..]))).expect("record"),
    )
    .expect("record json");
    let paths = crid_image::store::StorePaths { root: root.clone() };
    let ctr = f.work.path().join("ctr");
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(ctr.join(d)).expect("mkdir");
    }
    let merged = ctr.join("merged");
    crid_image::overlay::mount_rootfs(
        &paths,
        &record.layers,
        &ctr.join("upper"),
        &ctr.join("work"),
        &merged,
    )
    .expect("mount overlay");
    // Unmount even when a check fails, so no mount outlives the test.
    let checks = std::panic::catch_unwind(|| {
        assert_eq!(
            std::fs::read_to_string(merged.join("opt/app/hello")).expect("new file"),
            "hello\n"
        );
        assert!(!merged.join("bin/ls").exists(), "whiteout hides /bin/ls");
        assert!(merged.join("bin/cat").exists(), "other applets stay");
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/only")).expect("opaque dir content"),
            "only\n"
        );
        assert!(
            !merged.join("etc/passwd").exists(),
            "opaque /etc hides the base's files"
        );
        let sh = std::fs::symlink_metadata(merged.join("bin/sh")).expect("sh");
        assert!(sh.file_type().is_symlink());
        // Writes land in the container's upper directory only.
        std::fs::write(merged.join("tmp/scratch"), "x").expect("write in container rootfs");
    });
    crid_image::overlay::unmount_rootfs(&merged).expect("unmount");
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
    assert!(ctr.join("upper/tmp/scratch").exists());
    for layer in &record.layers {
        assert!(!paths.layer_diff(layer).join("tmp/scratch").exists());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&merged.display().to_string()),
        "overlay left mounted"
    );
}

/// A TLS registry (with `options`) holding busybox as `<repo>:latest`, and a crid that trusts
/// its CA through `certs.d/<host:port>/ca.crt`, with an auth file at `work/auth.json`.
struct SecureSetup {
    registry: Registry,
    work: tempfile::TempDir,
    certs: PathBuf,
    crid: CridProcess,
}

fn secure_setup(options: RegistryOptions, repo: &str) -> SecureSetup {
    let registry = Registry::start_with(&RegistryOptions {
        tls: true,
        ..options
    });
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    build_oci_busybox(&layout, "latest", &["sh"]);
    registry.push_layout(&layout, "latest", repo);
    // The CA in certs.d/<host:port>/ca.crt; the registry is not marked insecure.
    let certs = work.path().join("certs.d").join(&registry.addr);
    std::fs::create_dir_all(&certs).expect("mkdir");
    std::fs::copy(registry.ca_cert.as_ref().expect("ca"), certs.join("ca.crt")).expect("copy ca");
    let crid = crid_for(work.path());
    SecureSetup {
        registry,
        work,
        certs,
        crid,
    }
}

#[tokio::test]
async fn tls_with_a_ca_from_certs_d_and_basic_auth() {
    let SecureSetup {
        registry,
        work,
        crid,
        ..
    } = secure_setup(
        RegistryOptions {
            credentials: Some(("puller".into(), "s3cret".into())),
            ..Default::default()
        },
        "private/busybox",
    );
    let auth_file = work.path().join("auth.json");
    let mut images = crid.images().await;
    let image = format!("{}/private/busybox:latest", registry.addr);
    let err = pull(&mut images, &image).await.expect_err("no credentials");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let with = |auth: cri::AuthConfig| cri::PullImageRequest {
        image: spec(&image),
        auth: Some(auth),
        ..Default::default()
    };
    let refused = [
        cri::AuthConfig {
            username: "puller".into(),
            password: "wrong".into(),
            ..Default::default()
        },
        // A registry token is sent as a bearer token; this registry wants Basic and refuses it.
        cri::AuthConfig {
            registry_token: "not-a-valid-token".into(),
            ..Default::default()
        },
    ];
    for auth in refused {
        let err = images
            .pull_image(with(auth))
            .await
            .expect_err("refused credentials");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    }
    let id = images
        .pull_image(with(cri::AuthConfig {
            username: "puller".into(),
            password: "s3cret".into(),
            ..Default::default()
        }))
        .await
        .expect("username and password")
        .into_inner()
        .image_ref;
    images
        .remove_image(cri::RemoveImageRequest { image: spec(&id) })
        .await
        .expect("remove");
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode("puller:s3cret");
    images
        .pull_image(with(cri::AuthConfig {
            auth: encoded.clone(),
            ..Default::default()
        }))
        .await
        .expect("base64 auth");
    images
        .remove_image(cri::RemoveImageRequest { image: spec(&id) })
        .await
        .expect("remove");
    // Credentials from the auth file when the request has none.
    std::fs::write(
        &auth_file,
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{encoded}\"}}}}}}",
            registry.addr
        ),
    )
    .expect("write auth.json");
    assert_eq!(pull(&mut images, &image).await.expect("auth file"), id);
}

#[tokio::test]
async fn zstd_and_docker_schema2_images() {
    let f = fixture("");
    reencode_layers(&f.layout, "latest", "zstd", LayerEncoding::Zstd);
    // (skopeo always compresses on the way to a registry; uncompressed layers are covered by
    // the daemon's unit tests of the streaming unpack.)
    let cases: [(&str, &[&str], &str); 2] = [
        ("zstd", &[], "tar+zstd"),
        ("latest", &["--format", "v2s2"], "rootfs.diff.tar.gzip"),
    ];
    let mut images = f.crid.images().await;
    let mut ids = Vec::new();
    for (tag, flags, media) in cases {
        f.registry
            .push_layout_with(&f.layout, tag, "formats/busybox", flags);
        let (_, manifest) = crid_tests::harness::registry::http_get(
            &f.registry.addr,
            &format!("/v2/formats/busybox/manifests/{tag}"),
        )
        .expect("manifest");
        assert!(manifest.contains(media), "{tag}: {manifest}");
        let id = pull(
            &mut images,
            &format!("{}/formats/busybox:{tag}", f.registry.addr),
        )
        .await
        .unwrap_or_else(|e| panic!("pull {tag}: {e:?}"));
        ids.push(id);
    }
    // Whatever the transport encoding, the image (config) and its layer are the same.
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(layer_dirs(&f.crid.dir.path().join("root")), 1);
}

// Multi-threaded: the test blocks while it watches the pull that another task drives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crid_killed_during_a_pull_leaks_nothing_and_the_next_pull_works() {
    let mut f = fixture("");
    add_random_layers(&f.layout, "latest", "big", 3, 48 << 20);
    f.registry.push_layout(&f.layout, "big", "test/big");
    let image = format!("{}/test/big:big", f.registry.addr);
    let root = f.crid.dir.path().join("root");
    let socket = f.crid.socket.clone();
    let puller = {
        let image = image.clone();
        tokio::spawn(async move {
            let mut images = Images::new(crid_tests::harness::crid::connect(&socket).await);
            pull(&mut images, &image).await
        })
    };
    // Kill crid once a layer is being unpacked.
    let tmp = root.join("tmp");
    let busy = crid_tests::harness::wait_for(std::time::Duration::from_secs(30), || {
        std::fs::read_dir(&tmp).ok()?.next().map(drop)
    });
    if busy.is_none() {
        panic!("the pull never started unpacking: {:?}", puller.await);
    }
    f.crid.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert!(
        puller.await.expect("join").is_err(),
        "the interrupted pull must fail"
    );

    f.crid.restart();
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "leftovers removed at start"
    );
    let mut images = f.crid.images().await;
    assert!(
        status(&mut images, &image).await.is_none(),
        "no half-pulled image is visible"
    );
    let id = pull(&mut images, &image).await.expect("pull after restart");
    let img = status(&mut images, &id).await.expect("present");
    assert!(img.size > 3 * (48 << 20), "size {}", img.size);
    assert_eq!(layer_dirs(&root), 4);
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
}

#[tokio::test]
async fn a_multi_arch_index_resolves_to_the_host_platform() {
    let f = fixture("");
    let image = |tag: &str| format!("{}:{tag}", f.layout.display());
    // An arm64 variant that differs in config (so in id) from the host's amd64 one.
    umoci(&["tag", "--image", &image("latest"), "arm"]);
    umoci(&[
        "config",
        "--image",
        &image("arm"),
        "--architecture",
        "arm64",
        "--config.env",
        "VARIANT=arm",
    ]);
    add_index(&f.layout, "multi", &[("arm", "arm64"), ("latest", "amd64")]);
    f.registry
        .push_layout_with(&f.layout, "multi", "test/multi", &["--all"]);
    let mut images = f.crid.images().await;
    let id = pull(
        &mut images,
        &format!("{}/test/multi:multi", f.registry.addr),
    )
    .await
    .expect("pull index");
    let host = pull(&mut images, &format!("{}/test/busybox:v1", f.registry.addr))
        .await
        .expect("pull amd64");
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "this test assumes an amd64 host"
    );
    assert_eq!(id, host, "the index resolved to the amd64 image");
}

#[tokio::test]
async fn hostile_layers_are_refused_with_a_clear_error_and_nothing_written_outside() {
    use tar::EntryType::{Link, Regular, Symlink};
    let f = fixture("");
    let outside = f.work.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let outside_str = outside.display().to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            raw_tar(&[("../../../escape", Regular, "", b"x")]),
            "'..'",
        ),
        (
            "absolute",
            raw_tar(&[("/etc/escape", Regular, "", b"x")]),
            "absolute",
        ),
        (
            "symlink",
            raw_tar(&[
                ("evil", Symlink, &outside_str, b""),
                ("evil/owned", Regular, "", b"x"),
            ]),
            "symlink",
        ),
        (
            "hardlink",
            raw_tar(&[("pw", Link, "../../../../etc/passwd", b"")]),
            "'..'",
        ),
    ];
    let mut images = f.crid.images().await;
    for (tag, tar, why) in &cases {
        add_single_layer_image(&f.layout, tag, tar);
        f.registry.push_layout(&f.layout, tag, "hostile/image");
        let err = pull(
            &mut images,
            &format!("{}/hostile/image:{tag}", f.registry.addr),
        )
        .await
        .expect_err("hostile layer must be refused");
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "{tag}: {err:?}"
        );
        assert!(err.message().contains(why), "{tag}: {err:?}");
        assert!(err.message().contains("layer entry"), "{tag}: {err:?}");
    }
    assert_eq!(
        std::fs::read_dir(&outside).expect("outside").count(),
        0,
        "nothing written outside"
    );
    let root = f.crid.dir.path().join("root");
    assert!(!root.join("escape").exists() && !f.crid.dir.path().join("escape").exists());
    assert_eq!(layer_dirs(&root), 0, "no layer kept");
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).expect("tmp").count(),
        0,
        "no leftovers"
    );
    assert!(all_images(&mut images).await.is_empty());
}

/// A fake registry on loopback: `/v2/` answers 200, every other request gets a 200 response
/// streaming `body_bytes` of JSON-looking filler. Serves `connections` connections, then ends.
fn endless_manifest_server(body_bytes: usize, connections: usize) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            if request_line.starts_with("GET /v2/ ") {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
                continue;
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n",
            );
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < body_bytes && stream.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
        }
    });
    addr
}

#[tokio::test]
async fn an_oversized_manifest_is_refused_while_it_streams() {
    let f = fixture("");
    // 64 MiB of manifest: crid must stop reading at its 4 MiB bound.
    let addr = endless_manifest_server(64 << 20, 8);
    std::fs::write(
        f.work.path().join("registries.conf.d").join("fake.conf"),
        format!("[[registry]]\nprefix = \"{addr}\"\nlocation = \"{addr}\"\ninsecure = true\n"),
    )
    .expect("write drop-in");
    let mut images = f.crid.images().await;
    let err = pull(&mut images, &format!("{addr}/huge/manifest:latest"))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("larger than 4194304 bytes"),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_certificates_from_certs_d() {
    // `_work` holds certs.d: it must live as long as the test.
    let SecureSetup {
        registry,
        work: _work,
        certs,
        crid,
    } = secure_setup(
        RegistryOptions {
            client_certs: true,
            ..Default::default()
        },
        "mtls/busybox",
    );
    let mut images = crid.images().await;
    let image = format!("{}/mtls/busybox:latest", registry.addr);
    // Without a client certificate the registry refuses the handshake.
    pull(&mut images, &image)
        .await
        .expect_err("no client certificate");
    let client_dir = registry.certs_dir.as_ref().expect("client certs");
    for name in ["client.cert", "client.key"] {
        std::fs::copy(client_dir.join(name), certs.join(name)).expect("copy client cert");
    }
    if let Err(e) = pull(&mut images, &image).await {
        panic!(
            "pull with client certificate: {e:?}\nregistry log:\n{}\ncrid log:\n{}",
            registry.log(),
            crid.stderr()
        );
    }
}
