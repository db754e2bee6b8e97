//! OCI bundles for monitor tests: a busybox root filesystem and a config.json made by
//! `runc spec`, adjusted per test.

use std::path::Path;
use std::process::Command;

use super::{image, require};

/// What a test wants of its container.
#[derive(Debug, Clone, Default)]
pub struct BundleSpec {
    pub args: Vec<String>,
    pub terminal: bool,
    /// Memory limit in bytes (cgroup), if any.
    pub memory_limit: Option<i64>,
    /// Share the host's PID namespace (so the container's init is not a namespace init and
    /// dies of signals it has no handler for, like SIGTERM).
    pub host_pid: bool,
    /// Read-only bind mounts: (host path, container path).
    pub bind_mounts: Vec<(std::path::PathBuf, String)>,
}

impl BundleSpec {
    /// A container running `sh -c <script>`.
    pub fn sh(script: &str) -> Self {
        BundleSpec {
            args: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }
}

/// Writes a bundle (rootfs + config.json) into `dir`.
pub fn write_bundle(dir: &Path, spec: &BundleSpec) {
    image::write_busybox_rootfs(&dir.join("rootfs"));
    let runc = require::tool("runc");
    let _ = std::fs::remove_file(dir.join("config.json"));
    let out = Command::new(runc)
        .arg("spec")
        .arg("--bundle")
        .arg(dir)
        .output()
        .expect("run runc spec");
    assert!(
        out.status.success(),
        "runc spec failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).expect("read config.json");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("parse config.json");
    config["root"]["readonly"] = false.into();
    config["process"]["terminal"] = spec.terminal.into();
    config["process"]["args"] = spec.args.clone().into();
    if let Some(limit) = spec.memory_limit {
        config["linux"]["resources"]["memory"] = serde_json::json!({ "limit": limit });
    }
    if let Some(mounts) = config["mounts"].as_array_mut() {
        for (host, dest) in &spec.bind_mounts {
            mounts.push(serde_json::json!({
                "destination": dest,
                "type": "bind",
                "source": host,
                "options": ["rbind", "ro"],
            }));
        }
    }
    if spec.host_pid {
        if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
            namespaces.retain(|ns| ns["type"] != "pid");
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("encode"))
        .expect("write config.json");
}
