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
