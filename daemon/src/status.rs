//! Runtime and network readiness, as reported by the Status RPC.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::Config;

/// One readiness condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    fn ready() -> Self {
        Condition {
            ready: true,
            reason: String::new(),
            message: String::new(),
        }
    }

    fn not_ready(reason: &str, message: String) -> Self {
        Condition {
            ready: false,
            reason: reason.to_owned(),
            message,
        }
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// RuntimeReady: the OCI runtime and crimon are present and executable.
pub fn runtime_condition(config: &Config) -> Condition {
    const REASON: &str = "RuntimeNotReady";
    let runtime = &config.runtime.runtime_path;
    if !is_executable(runtime) {
        return Condition::not_ready(
            REASON,
            format!(
                "OCI runtime {} is missing or not executable",
                runtime.display()
            ),
        );
    }
    match config.monitor_binary() {
        Some(monitor) if is_executable(&monitor) => Condition::ready(),
        Some(monitor) => Condition::not_ready(
            REASON,
            format!("monitor {} is not executable", monitor.display()),
        ),
        None => Condition::not_ready(
            REASON,
            "monitor crimon not found beside crid or in $PATH".to_owned(),
        ),
    }
}

/// NetworkReady: a CNI network configuration exists and its plugin directory does.
pub fn network_condition(config: &Config) -> Condition {
    const REASON: &str = "NetworkPluginNotReady";
    let dir = &config.network.cni_config_dir;
    let has_config = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            matches!(
                e.path().extension().and_then(|x| x.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
    });
    if !has_config {
        return Condition::not_ready(
            REASON,
            format!(
                "no CNI network configuration (.conf, .conflist, .json) in {}",
                dir.display()
            ),
        );
    }
    if !config.network.cni_plugin_dirs.iter().any(|d| d.is_dir()) {
        let dirs: Vec<String> = config
            .network
            .cni_plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        return Condition::not_ready(
            REASON,
            format!(
                "no CNI plugin directory exists (looked in {})",
                dirs.join(", ")
            ),
        );
    }
    Condition::ready()
}

/// The runtime handler name crid answers to besides the default `""`: its OCI runtime's
/// binary name (`runc`), as CRI-O and containerd name theirs.
pub fn handler_name(config: &Config) -> String {
    config
        .runtime
        .runtime_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What crid's runtime handler supports. Recursive read-only mounts: from the runtime's
/// `rro` mount option, or crid's own staging on a kernel with `mount_setattr`. User
/// namespaces: not yet. Blocking (may run `runtime features` once).
pub fn handler_features(runtime: &Path) -> crid_proto::cri::RuntimeHandlerFeatures {
    crid_proto::cri::RuntimeHandlerFeatures {
        recursive_read_only_mounts: crate::rro::kernel_supports()
            || crate::container::mounts::runtime_supports_rro(runtime),
        user_namespaces: false,
    }
}
