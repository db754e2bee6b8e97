//! crid's configuration: defaults, `/etc/crid/crid.toml`, drop-ins in `/etc/crid/crid.conf.d`
//! (applied in name order, each overriding what came before), then command-line flags.
//!
//! Unknown keys are errors: a typo must not silently fall back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crid_cni::NetworkConfig;
pub use crid_image::settings::ImageConfig;

/// Default configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/crid/crid.toml";
/// Default drop-in directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/crid/crid.conf.d";
/// Largest configuration file we read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Which cgroup manager containers are placed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupManager {
    Cgroupfs,
    Systemd,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state: images, container metadata.
    pub root: PathBuf,
    /// Volatile state: sockets, monitors, exit records.
    pub runroot: PathBuf,
    /// The CRI gRPC socket.
    pub listen: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    pub log_level: String,
    pub runtime: RuntimeConfig,
    pub network: NetworkConfig,
    pub image: ImageConfig,
    pub streaming: StreamingConfig,
}

/// The streaming server behind Exec, Attach and PortForward URLs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Address the server listens on (`host:port`; port 0 picks a free one).
    pub address: String,
    /// PEM certificate and key for HTTPS; both empty: plain HTTP (then keep the address on
    /// loopback: a URL's token is all a client needs to exec).
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// Seconds an unused URL stays valid.
    pub token_ttl_secs: u64,
    /// Most URLs handed out and not yet used; more is ResourceExhausted.
    pub max_pending_tokens: usize,
    /// Most sessions at once; more get HTTP 429.
    pub max_sessions: usize,
    /// Seconds a session may stay without traffic before it is closed.
    pub idle_timeout_secs: u64,
    /// Exec enters the container itself, applying what `runc exec` would (falling back to
    /// `runc exec` where it cannot); false: always `runc exec`.
    pub exec_direct: bool,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        // containerd's and CRI-O's defaults (the kubelet library's): loopback, a free port,
        // one-minute single-use tokens, at most 1000 pending, four hours idle.
        StreamingConfig {
            address: "127.0.0.1:0".into(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            token_ttl_secs: 60,
            max_pending_tokens: 1000,
            max_sessions: 1000,
            idle_timeout_secs: 4 * 3600,
            exec_direct: true,
        }
    }
}

/// The OCI runtime and the monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path of the OCI runtime (runc or crun).
    pub runtime_path: PathBuf,
    /// The runtime's state directory (`--root`).
    pub runtime_root: PathBuf,
    /// Path of crimon; empty means next to the crid binary, then $PATH.
    pub monitor_path: PathBuf,
    /// cgroupfs or systemd.
    pub cgroup_manager: CgroupManager,
    /// Bound of each container log file in bytes; 0 means no bound.
    pub log_size_max: u64,
    /// Most processes (pids cgroup) per container; 0 means no limit of crid's own (kubelet's
    /// pod pids limit still applies).
    pub pids_limit: i64,
    /// Key prefixes of pod and container annotations that reach the OCI spec (CRI-O's
    /// per-handler `allowed_annotations`, matched as CRI-O does, by prefix). None by default:
    /// runtime-specific annotations (crun's `run.oci.*`, runc's `org.systemd.property.*`) can
    /// change how the runtime sets a container up, so only the operator may let them through.
    pub allowed_annotations: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: "/var/lib/crid".into(),
            runroot: "/run/crid".into(),
            listen: "/run/crid/crid.sock".into(),
            log_level: "info".into(),
            runtime: RuntimeConfig::default(),
            network: NetworkConfig::default(),
            image: ImageConfig::default(),
            streaming: StreamingConfig::default(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            runtime_path: "/usr/sbin/runc".into(),
            runtime_root: "/run/crid/runc".into(),
            monitor_path: PathBuf::new(),
            cgroup_manager: CgroupManager::Cgroupfs,
            log_size_max: 0,
            pids_limit: 0,
            allowed_annotations: Vec::new(),
        }
    }
}

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config {path} is not valid TOML")]
    Parse {
        path: PathBuf,
        #[source]
        err: toml::de::Error,
    },
    #[error("invalid configuration (after applying {sources})")]
    Invalid {
        sources: String,
        #[source]
        err: toml::de::Error,
    },
}

fn read_toml(path: &Path) -> Result<toml::Table, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|err| ConfigError::Read {
        path: path.to_owned(),
        err,
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_owned(),
        err,
    })?;
    text.parse::<toml::Table>()
        .map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            err,
        })
}

/// Overlays `top` onto `base`, table by table.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl Config {
    /// Loads `file` (if it exists, or must exist when `file_required`), then every `*.toml` and
    /// `*.conf` in `dir` in name order.
    pub fn load(file: &Path, file_required: bool, dir: &Path) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        let mut sources = Vec::new();
        if file_required || file.exists() {
            merge(&mut table, read_toml(file)?);
            sources.push(file.display().to_string());
        }
        let mut dropins: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("toml" | "conf")
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        dropins.sort();
        for path in dropins {
            merge(&mut table, read_toml(&path)?);
            sources.push(path.display().to_string());
        }
        let sources = if sources.is_empty() {
            "defaults only".to_owned()
        } else {
            sources.join(", ")
        };
        toml::Value::Table(table)
            .try_into()
            .map_err(|err| ConfigError::Invalid { sources, err })
    }

    /// The default configuration as commented TOML: every key, its default, and why.
    pub fn default_toml() -> String {
        let d = Config::default();
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let dirs: Vec<String> = d.network.cni_plugin_dirs.iter().map(|p| q(p)).collect();
        format!(
            r#"# crid configuration. Drop-ins in {DEFAULT_CONFIG_DIR}/*.toml override this file in
# name order; command-line flags override both.

# Persistent state: images, container and pod metadata.
root = {root}
# Volatile state (tmpfs): sockets, monitor sockets, exit records.
runroot = {runroot}
# The CRI gRPC socket kubelet and crictl connect to (created mode 0600).
listen = {listen}
# Log filter: error, warn, info, debug, trace, or a tracing directive such as "crid=debug".
log_level = "{log_level}"

[runtime]
# The OCI runtime binary (runc or crun).
runtime_path = {runtime_path}
# The runtime's state directory, passed as --root.
runtime_root = {runtime_root}
# The per-container monitor; empty means next to the crid binary, then $PATH.
monitor_path = {monitor_path}
# How containers are placed in cgroups: "cgroupfs" or "systemd" (reported by RuntimeConfig).
cgroup_manager = "cgroupfs"
# Bound of each container log file in bytes (the file is truncated at the bound); 0 means
# none: kubelet rotates logs through ReopenContainerLog.
log_size_max = {log_size_max}
# Most processes per container (pids cgroup); 0: no limit of crid's own.
pids_limit = {pids_limit}
# Annotation key prefixes (e.g. "run.oci.", "org.systemd.property.") whose pod and container
# annotations are copied into the OCI spec. Others stay out of it (they are still reported by
# the status calls); crid's own io.kubernetes.cri.* keys are always set.
allowed_annotations = []

[network]
# Directory of CNI network configurations; the first (by name) is used.
cni_config_dir = {cni_config_dir}
# Directories searched for CNI plugin binaries, in order.
cni_plugin_dirs = [{plugin_dirs}]
# Seconds one CNI ADD or DEL of the whole list may take (CRI-O's two minutes); past it the
# running plugin is killed with its process group and the call fails with DeadlineExceeded.
plugin_timeout_secs = {plugin_timeout_secs}

[image]
# Registries in the containers-registries.conf(5) v2 format: mirrors (tried in order, then the
# registry), insecure (plain HTTP allowed) and blocked registries.
registries_conf = {registries_conf}
# Drop-ins for it, applied in name order.
registries_conf_dir = {registries_conf_dir}
# Credentials used when a PullImage request carries none (auth.json / config.json format).
auth_file = {auth_file}
# Per-registry CA certificates: <certs_dir>/<host:port>/*.crt.
certs_dir = {certs_dir}
# Layers fetched and unpacked at once.
max_concurrent_downloads = {max_concurrent_downloads}
# Most bytes one layer may unpack to: a decompression bomb stops here with an error.
max_layer_bytes = {max_layer_bytes}
# Most entries one layer may hold.
max_layer_entries = {max_layer_entries}
# Seconds a pull may wait on its registry while receiving less than 64 KiB before it fails
# with DeadlineExceeded (containerd's image_pull_progress_timeout); 0: never.
pull_progress_timeout_secs = {pull_progress_timeout_secs}

[streaming]
# The server behind Exec, Attach and PortForward URLs (SPDY/3.1 and WebSocket), host:port;
# port 0 picks a free port. Without TLS keep it on loopback: a URL is all a client needs.
address = "{stream_address}"
# PEM certificate and key for HTTPS (both, or neither for plain HTTP).
tls_cert_file = {tls_cert_file}
tls_key_file = {tls_key_file}
# Seconds an unused URL stays valid (each is good for one session).
token_ttl_secs = {token_ttl_secs}
# Most URLs handed out and not yet used (more: ResourceExhausted).
max_pending_tokens = {max_pending_tokens}
# Most sessions at once (more: HTTP 429).
max_sessions = {max_sessions}
# Seconds without traffic after which a session is closed.
idle_timeout_secs = {idle_timeout_secs}
# Exec enters the container itself with exactly what `runc exec` would apply (namespaces,
# cgroups, the init's seccomp filter, user, capabilities...), and runs `runc exec` where it
# cannot; false: always `runc exec`.
exec_direct = {exec_direct}
"#,
            root = q(&d.root),
            runroot = q(&d.runroot),
            listen = q(&d.listen),
            log_level = d.log_level,
            runtime_path = q(&d.runtime.runtime_path),
            runtime_root = q(&d.runtime.runtime_root),
            monitor_path = q(&d.runtime.monitor_path),
            log_size_max = d.runtime.log_size_max,
            pids_limit = d.runtime.pids_limit,
            cni_config_dir = q(&d.network.cni_config_dir),
            plugin_dirs = dirs.join(", "),
            plugin_timeout_secs = d.network.plugin_timeout_secs,
            registries_conf = q(&d.image.registries_conf),
            registries_conf_dir = q(&d.image.registries_conf_dir),
            auth_file = q(&d.image.auth_file),
            certs_dir = q(&d.image.certs_dir),
            max_concurrent_downloads = d.image.max_concurrent_downloads,
            max_layer_bytes = d.image.max_layer_bytes,
            max_layer_entries = d.image.max_layer_entries,
            pull_progress_timeout_secs = d.image.pull_progress_timeout_secs,
            stream_address = d.streaming.address,
            tls_cert_file = q(&d.streaming.tls_cert_file),
            tls_key_file = q(&d.streaming.tls_key_file),
            token_ttl_secs = d.streaming.token_ttl_secs,
            max_pending_tokens = d.streaming.max_pending_tokens,
            max_sessions = d.streaming.max_sessions,
            idle_timeout_secs = d.streaming.idle_timeout_secs,
            exec_direct = d.streaming.exec_direct,
        )
    }

    /// The crimon binary to run.
    pub fn monitor_binary(&self) -> Option<PathBuf> {
        if !self.runtime.monitor_path.as_os_str().is_empty() {
            return Some(self.runtime.monitor_path.clone());
        }
        helper_binary("crimon")
    }
}

/// A helper program (crimon, crid-pinns) next to the running crid, else on $PATH.
pub fn helper_binary(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_default_parses_to_default() {
        let parsed: Config = toml::from_str(&Config::default_toml()).expect("parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn dropins_override_in_name_order_and_unknown_keys_fail() {
        let dir = std::env::temp_dir().join(format!("crid-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d")).expect("mkdir");
        std::fs::write(
            dir.join("crid.toml"),
            "log_level = \"debug\"\n[runtime]\nlog_size_max = 5\n",
        )
        .expect("write");
        std::fs::write(dir.join("d/20-b.toml"), "[runtime]\nlog_size_max = 7\n").expect("write");
        std::fs::write(
            dir.join("d/10-a.toml"),
            "[runtime]\nlog_size_max = 6\ncgroup_manager = \"systemd\"\n",
        )
        .expect("write");
        let cfg = Config::load(&dir.join("crid.toml"), true, &dir.join("d")).expect("loads");
        assert_eq!(cfg.log_level, "debug");
        assert_eq!(cfg.runtime.log_size_max, 7);
        assert_eq!(cfg.runtime.cgroup_manager, CgroupManager::Systemd);
        assert_eq!(cfg.root, PathBuf::from("/var/lib/crid"));

        std::fs::write(dir.join("d/30-typo.toml"), "[runtime]\nlog_sise_max = 1\n").expect("write");
        let err = Config::load(&dir.join("crid.toml"), true, &dir.join("d")).expect_err("typo");
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(text.contains("log_sise_max"), "{text}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
