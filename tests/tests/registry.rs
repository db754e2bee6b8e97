//! The harness's image builder and registry: busybox images from busybox-static, pushed to a
//! docker-registry on loopback. Later issues pull these.

use crid_tests::harness::image::build_oci_busybox;
use crid_tests::harness::registry::{http_get, Registry};

#[test]
fn builds_busybox_images_and_pushes_them_to_a_local_registry() {
    let registry = Registry::start();
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    build_oci_busybox(&layout, "latest", &["sh"]);
    registry.push_layout(&layout, "latest", "library/busybox");

    let (status, body) = http_get(&registry.addr, "/v2/library/busybox/tags/list").expect("tags");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("latest"), "{body}");
    let (status, _) =
        http_get(&registry.addr, "/v2/library/busybox/manifests/latest").expect("manifest");
    assert_eq!(status, 200);

    // The image carries the users and groups tests rely on.
    let unpacked = work.path().join("unpacked");
    let out = std::process::Command::new(crid_tests::harness::require::tool("umoci"))
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&unpacked)
        .output()
        .expect("umoci unpack");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(unpacked.join("rootfs/etc/passwd")).expect("passwd");
    assert!(passwd.contains("tester:x:1000:1000"));
    let group = std::fs::read_to_string(unpacked.join("rootfs/etc/group")).expect("group");
    assert!(group.contains("extra:x:1500:tester"));
    assert!(unpacked.join("rootfs/bin/sh").exists());
}
