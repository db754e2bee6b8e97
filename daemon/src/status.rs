//! Runtime and network readiness, as reported by the Status RPC.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
/// namespaces: where the kernel id-maps overlay layers on the image store's filesystem (crid
/// makes the id-mapped mounts itself, so the runtime needs none). Blocking (may run
/// `runtime features` and the id-mapping probe once).
pub fn handler_features(config: &Config) -> crid_proto::cri::RuntimeHandlerFeatures {
    let runtime = &config.runtime.runtime_path;
    crid_proto::cri::RuntimeHandlerFeatures {
        recursive_read_only_mounts: crid_mount::rro::kernel_supports()
            || crate::container::mounts::runtime_supports_rro(runtime),
        user_namespaces: user_namespaces_supported(config),
    }
}

/// How long the id-mapping probe may take (it makes a user namespace and two mounts).
const IDMAP_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of the probe's error message kept.
const MAX_PROBE_MESSAGE: u64 = 4096;

/// Whether pods may have user namespaces of their own: `crid-pinns --probe-idmap` id-maps a
/// directory of the image store (so on the layers' filesystem) as an overlay lower layer,
/// as crid does for such pods. Asked once; blocking.
pub fn user_namespaces_supported(config: &Config) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| match probe_idmap(config) {
        Ok(()) => {
            tracing::info!("id-mapped overlay layers work: pods may have user namespaces");
            true
        }
        Err(why) => {
            tracing::warn!(%why, "pods cannot have user namespaces");
            false
        }
    })
}

fn probe_idmap(config: &Config) -> Result<(), String> {
    let pinns = crate::config::helper_binary("crid-pinns")
        .ok_or("crid-pinns not found next to crid or in $PATH")?;
    let store = crid_image::store::StorePaths {
        root: config.root.clone(),
    };
    let scratch = store
        .new_temp_dir("idmap-probe")
        .map_err(|e| crid_common::error_chain::error_chain(&e))?;
    let result = run_probe(&pinns, &scratch);
    if let Err(err) = std::fs::remove_dir_all(&scratch) {
        tracing::warn!(dir = %scratch.display(), error = %err, "cannot remove the id-mapping probe's directory");
    }
    result
}

fn run_probe(pinns: &Path, scratch: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut child = std::process::Command::new(pinns)
        .arg("--probe-idmap")
        .arg(scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", pinns.display()))?;
    let deadline = Instant::now() + IDMAP_PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} --probe-idmap took longer than {IDMAP_PROBE_TIMEOUT:?}",
                    pinns.display()
                ));
            }
            Err(e) => return Err(format!("wait for {}: {e}", pinns.display())),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut message = String::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = stderr.take(MAX_PROBE_MESSAGE).read_to_string(&mut message);
    }
    Err(message.trim().to_owned())
}
