//! Container root filesystems from the layer store: many layers still mount (past the
//! page-size limit of mount options), and unmount cleanly.

use crid_image::digest::Digest;
use crid_image::overlay::{mount_rootfs, unmount_rootfs};
use crid_image::store::{LayerMeta, StorePaths};

#[test]
fn a_hundred_and_twenty_layers_mount_and_stack_in_order() {
    crid_tests::harness::require::root();
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = StorePaths {
        root: dir
            .path()
            .join("a-rather-long-store-root-to-push-the-mount-options-over-the-limit"),
    };
    paths.prepare().expect("prepare");
    let mut layers = Vec::new();
    for n in 0..120u32 {
        let chain = Digest::of(&n.to_be_bytes());
        let tmp = paths.tmp().join(format!("l{n}"));
        std::fs::create_dir_all(tmp.join("diff")).expect("mkdir");
        std::fs::write(tmp.join("diff").join(format!("file{n}")), n.to_string()).expect("write");
        // Every layer also writes /top: the highest layer must win.
        std::fs::write(tmp.join("diff/top"), n.to_string()).expect("write");
        paths
            .commit_layer(
                &tmp,
                &chain,
                LayerMeta {
                    bytes: 1,
                    inodes: 2,
                },
            )
            .expect("commit");
        layers.push(chain);
    }
    let options_len: usize = layers
        .iter()
        .map(|l| paths.layers().join(paths.short_link(l)).as_os_str().len() + 1)
        .sum();
    assert!(
        options_len > 4096,
        "the test must exceed the page limit ({options_len} bytes)"
    );
    let ctr = dir.path().join("ctr");
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(ctr.join(d)).expect("mkdir");
    }
    let merged = ctr.join("merged");
    mount_rootfs(
        &paths,
        &layers,
        &ctr.join("upper"),
        &ctr.join("work"),
        &merged,
    )
    .expect("mount 120 layers");
    let result = std::panic::catch_unwind(|| {
        assert_eq!(
            std::fs::read_to_string(merged.join("top")).expect("top"),
            "119"
        );
        assert_eq!(
            std::fs::read_to_string(merged.join("file0")).expect("base"),
            "0"
        );
        assert_eq!(
            std::fs::read_to_string(merged.join("file77")).expect("middle"),
            "77"
        );
    });
    unmount_rootfs(&merged).expect("unmount");
    unmount_rootfs(&merged).expect("unmounting twice is fine");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&merged.display().to_string()));
    // A layer that is not in the store is an error, not a partial mount.
    let missing = vec![Digest::of(b"not in the store")];
    assert!(mount_rootfs(
        &paths,
        &missing,
        &ctr.join("upper"),
        &ctr.join("work"),
        &merged
    )
    .is_err());
}
