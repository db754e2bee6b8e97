//! The `[image]` part of crid's configuration: where registry settings and credentials
//! are, and the bounds of a pull.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Images and registries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// containers-registries.conf(5) v2 file: mirrors, insecure and blocked registries.
    pub registries_conf: PathBuf,
    /// Drop-ins for it (`*.conf`, name order).
    pub registries_conf_dir: PathBuf,
    /// Global credentials (containers auth.json / docker config.json format).
    pub auth_file: PathBuf,
    /// Per-registry CA certificates: `<certs_dir>/<host:port>/*.crt` (containers-certs.d(5)).
    pub certs_dir: PathBuf,
    /// Layers fetched at once.
    pub max_concurrent_downloads: usize,
    /// Most bytes of file content one layer may unpack to (decompression-bomb bound).
    pub max_layer_bytes: u64,
    /// Most entries one layer may hold.
    pub max_layer_entries: u64,
    /// Seconds a pull may wait on its registry while receiving less than 64 KiB before it is
    /// cut off with DeadlineExceeded (containerd's `image_pull_progress_timeout`, also five
    /// minutes by default; 0: never). A registry that drips a byte now and then would
    /// otherwise hold a download slot for ever: kubelet sets no deadline on PullImage.
    pub pull_progress_timeout_secs: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            registries_conf: "/etc/containers/registries.conf".into(),
            registries_conf_dir: "/etc/containers/registries.conf.d".into(),
            auth_file: "/etc/crid/auth.json".into(),
            certs_dir: "/etc/containers/certs.d".into(),
            max_concurrent_downloads: 3,
            max_layer_bytes: 64 << 30,
            max_layer_entries: 4_000_000,
            pull_progress_timeout_secs: 300,
        }
    }
}
