//! CNI: the network configuration list and the plugin calls (ADD, DEL) for one pod, following
//! the CNI specification. The first configuration file of the directory (by name) is used.
//! ADD runs the plugins in order, each receiving the previous one's result; DEL runs them in
//! reverse with the ADD result (cached on disk by crid) as `prevResult`, and succeeds when the
//! attachment is already gone, so it can be retried.
//!
//! Plugins are programs crid runs as root, with values from the pod's metadata in their
//! environment: every value is checked before a plugin runs (a `;` or `=` in a CNI_ARGS value
//! would add a key of its own), and every call runs through `crid_child`: output read
//! concurrently and bounded, a deadline, the plugin's process group killed past it.

#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crid_child::{self as child, ChildError};

/// Most bytes of a configuration file.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most bytes of a plugin's result (standard output; a CNI result is a few KiB) and of its
/// standard error. A plugin that writes more is killed and its call fails.
const MAX_PLUGIN_OUTPUT: usize = 1 << 20;
/// Most bytes of a plugin's own message kept in an error (it ends up in a gRPC status).
const MAX_PLUGIN_MESSAGE: usize = 4096;
/// How long one ADD or DEL of the whole list may take: CRI-O gives network setup two minutes,
/// "half of a RunPodSandbox request timeout" (`server/sandbox_network.go`); containerd has
/// no bound of its own. Configurable as `[network] plugin_timeout_secs`.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest CNI_ARGS value: the longest Kubernetes object name (a DNS subdomain, 253).
pub const MAX_ARG_VALUE: usize = 253;
/// The interface name inside the pod.
pub const POD_INTERFACE: &str = "eth0";

/// Errors of CNI calls.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network configuration in {0}")]
    NoConfig(PathBuf),
    #[error("CNI configuration {path} is invalid: {why}")]
    BadConfig { path: PathBuf, why: String },
    #[error("CNI plugin {plugin} not found in {dirs}")]
    PluginMissing { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} failed for {command}: {message}")]
    PluginFailed {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("CNI plugin {plugin} failed for {command}")]
    PluginRun {
        plugin: String,
        command: &'static str,
        #[source]
        err: ChildError,
    },
    #[error("CNI {command} of network {network} did not finish within {timeout:?}: plugin {plugin} was killed with its process group")]
    TimedOut {
        network: String,
        command: &'static str,
        plugin: String,
        timeout: Duration,
    },
    #[error("CNI plugin {plugin} returned an invalid result for {command}: {why}")]
    BadResult {
        plugin: String,
        command: &'static str,
        why: String,
    },
    #[error("{what} {value:?} cannot be passed to a CNI plugin: {why}")]
    InvalidValue {
        what: String,
        value: String,
        why: &'static str,
    },
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

impl CniError {
    /// Whether a call ran out of time (DeadlineExceeded for the client).
    pub fn timed_out(&self) -> bool {
        matches!(self, CniError::TimedOut { .. })
    }
}

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    /// How long one ADD or DEL of the whole list may take.
    pub timeout: Duration,
}

/// The pod a call is for.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    /// CNI_ARGS as `(key, value)` pairs (`K8S_POD_NAMESPACE`, …), joined by crid after each is
    /// checked with [`check_arg_value`].
    pub args: Vec<(&'static str, String)>,
    /// Runtime configuration offered to plugins that declare the capability (portMappings).
    pub runtime_config: Value,
}

/// Checks a value that becomes part of CNI_ARGS (`K=V;K=V`): a `;` or `=` would let it add a
/// key of its own (`name;IgnoreUnknown=0;K8S_POD_NAMESPACE=kube-system`), a NUL would cut the
/// environment string, other control characters have no place in a Kubernetes name; and no
/// Kubernetes name is longer than [`MAX_ARG_VALUE`]. The reason is returned.
pub fn check_arg_value(value: &str) -> Result<(), &'static str> {
    if value.len() > MAX_ARG_VALUE {
        return Err("longer than 253 bytes");
    }
    if value.contains([';', '=']) {
        return Err("it holds ';' or '=', which separate CNI_ARGS pairs");
    }
    if value.chars().any(char::is_control) {
        return Err("it holds a NUL byte or another control character");
    }
    Ok(())
}

/// The container id a plugin gets (CNI spec: alphanumerics, `_`, `.`, `-`, starting with an
/// alphanumeric).
fn check_container_id(id: &str) -> Result<(), &'static str> {
    let mut bytes = id.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        Ok(())
    } else {
        Err("a CNI container id is alphanumerics, '_', '.' and '-', starting alphanumeric")
    }
}

/// The interface name (CNI spec, as Linux allows it: 1–15 bytes, no `/`, `:` or whitespace,
/// not `.` or `..`).
fn check_ifname(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err("not a valid Linux interface name")
    }
}

impl Attachment<'_> {
    /// The environment values of a call, checked: (CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
    /// CNI_ARGS).
    fn checked(&self) -> Result<String, CniError> {
        let invalid = |what: &str, value: &str, why| CniError::InvalidValue {
            what: what.to_owned(),
            value: value.to_owned(),
            why,
        };
        check_container_id(self.container_id)
            .map_err(|why| invalid("CNI_CONTAINERID", self.container_id, why))?;
        let netns = self.netns.to_string_lossy();
        if !self.netns.is_absolute() || netns.contains('\0') {
            return Err(invalid(
                "CNI_NETNS",
                &netns,
                "a network namespace path is absolute and holds no NUL byte",
            ));
        }
        check_ifname(POD_INTERFACE).map_err(|why| invalid("CNI_IFNAME", POD_INTERFACE, why))?;
        let mut pairs = Vec::with_capacity(self.args.len());
        for (key, value) in &self.args {
            let key_ok =
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !key_ok {
                return Err(invalid("CNI_ARGS key", key, "not [A-Za-z0-9_]+"));
            }
            check_arg_value(value)
                .map_err(|why| invalid(&format!("CNI_ARGS {key}"), value, why))?;
            pairs.push(format!("{key}={value}"));
        }
        Ok(pairs.join(";"))
    }
}

fn read_config(path: &Path) -> Result<Value, CniError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES).read_to_string(&mut text))
        .map_err(|err| CniError::Io {
            what: "read",
            path: path.to_owned(),
            err,
        })?;
    serde_json::from_str(&text).map_err(|e| CniError::BadConfig {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

impl NetworkList {
    /// The first `.conflist`/`.conf`/`.json` of `dir` by name; a single `.conf` becomes a
    /// one-plugin list.
    pub fn load(dir: &Path) -> Result<Self, CniError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|_| CniError::NoConfig(dir.to_owned()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let path = files
            .into_iter()
            .next()
            .ok_or_else(|| CniError::NoConfig(dir.to_owned()))?;
        let doc = read_config(&path)?;
        let bad = |why: &str| CniError::BadConfig {
            path: path.clone(),
            why: why.to_owned(),
        };
        let name = doc["name"]
            .as_str()
            .ok_or_else(|| bad("no \"name\""))?
            .to_owned();
        let cni_version = doc["cniVersion"].as_str().unwrap_or("1.0.0").to_owned();
        let plugins = match doc.get("plugins") {
            Some(Value::Array(list)) if !list.is_empty() => list.clone(),
            Some(_) => return Err(bad("\"plugins\" is not a non-empty list")),
            None => vec![doc.clone()],
        };
        if plugins.iter().any(|p| {
            p["type"]
                .as_str()
                .is_none_or(|t| t.is_empty() || t == ".." || t.contains(['/', '\0']))
        }) {
            return Err(bad("a plugin has no valid \"type\""));
        }
        Ok(NetworkList {
            path,
            name,
            cni_version,
            plugins,
            timeout: DEFAULT_PLUGIN_TIMEOUT,
        })
    }

    /// The list with another bound on one ADD or DEL.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs ADD for every plugin; returns the final result. The whole list shares one
    /// deadline ([`NetworkList::timeout`]).
    pub async fn add(
        &self,
        plugin_dirs: &[PathBuf],
        pod: &Attachment<'_>,
    ) -> Result<Value, CniError> {
        let cni_args = pod.checked()?;
        let deadline = Instant::now() + self.timeout;
        let mut prev: Option<Value> = None;
        for plugin in &self.plugins {
            let result = self
                .call(
                    plugin_dirs,
                    plugin,
                    "ADD",
                    pod,
                    &cni_args,
                    prev.as_ref(),
                    deadline,
                )
                .await?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// Runs DEL for every plugin in reverse order, with the ADD result if known, within a
    /// deadline of its own.
    pub async fn del(
        &self,
        plugin_dirs: &[PathBuf],
        pod: &Attachment<'_>,
        added: Option<&Value>,
    ) -> Result<(), CniError> {
        let cni_args = pod.checked()?;
        let deadline = Instant::now() + self.timeout;
        for plugin in self.plugins.iter().rev() {
            self.call(plugin_dirs, plugin, "DEL", pod, &cni_args, added, deadline)
                .await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        plugin_dirs: &[PathBuf],
        plugin: &Value,
        command: &'static str,
        pod: &Attachment<'_>,
        pod_args: &str,
        prev: Option<&Value>,
        deadline: Instant,
    ) -> Result<Value, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default();
        let binary = plugin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginMissing {
                plugin: kind.to_owned(),
                dirs: plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })?;
        let mut conf = plugin.clone();
        conf["name"] = self.name.clone().into();
        conf["cniVersion"] = self.cni_version.clone().into();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        if let Some(caps) = plugin["capabilities"].as_object() {
            let mut runtime = serde_json::Map::new();
            for (cap, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(value) = pod.runtime_config.get(cap) {
                        runtime.insert(cap.clone(), value.clone());
                    }
                }
            }
            if !runtime.is_empty() {
                conf["runtimeConfig"] = Value::Object(runtime);
            }
        }
        let cni_path = std::env::join_paths(plugin_dirs).unwrap_or_default();
        // Plugins refuse CNI_ARGS keys they do not know unless told to ignore them (the
        // K8S_POD_* keys are for the plugins that want them); containerd and CRI-O do the same.
        let cni_args = if pod_args.is_empty() {
            String::new()
        } else {
            format!("IgnoreUnknown=1;{pod_args}")
        };
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.container_id)
            .env("CNI_NETNS", pod.netns)
            .env("CNI_IFNAME", POD_INTERFACE)
            .env("CNI_ARGS", &cni_args)
            .env("CNI_PATH", cni_path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let input = serde_json::to_vec(&conf).unwrap_or_default();
        let bounds = child::Bounds {
            stdout: MAX_PLUGIN_OUTPUT,
            stderr: MAX_PLUGIN_OUTPUT,
            timeout: deadline.saturating_duration_since(Instant::now()),
        };
        let finished = child::run(cmd, Some(&input), bounds).await.map_err(|err| {
            if err.timed_out() {
                CniError::TimedOut {
                    network: self.name.clone(),
                    command,
                    plugin: kind.to_owned(),
                    timeout: self.timeout,
                }
            } else {
                CniError::PluginRun {
                    plugin: kind.to_owned(),
                    command,
                    err,
                }
            }
        })?;
        let output = serde_json::from_slice::<Value>(&finished.stdout);
        if !finished.status.success() {
            // The CNI error result ({"code", "msg", "details"}), else what it said on stderr.
            let message = output
                .as_ref()
                .ok()
                .and_then(|o| {
                    let msg = o["msg"].as_str()?;
                    Some(match o["details"].as_str() {
                        Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                        _ => msg.to_owned(),
                    })
                })
                .unwrap_or_else(|| finished.stderr_text());
            let message = match finished.status.code() {
                Some(_) if !message.is_empty() => message,
                Some(code) => format!("exit status {code} and no message"),
                None => format!("killed by a signal ({})", finished.status),
            };
            return Err(CniError::PluginFailed {
                plugin: kind.to_owned(),
                command,
                message: clip(message),
            });
        }
        match command {
            // DEL prints nothing on success (CNI spec); whatever it prints is not used.
            "DEL" => Ok(Value::Null),
            _ => match output {
                Ok(result @ Value::Object(_)) => Ok(result),
                Ok(_) => Err(CniError::BadResult {
                    plugin: kind.to_owned(),
                    command,
                    why: "not a JSON object".into(),
                }),
                Err(e) => Err(CniError::BadResult {
                    plugin: kind.to_owned(),
                    command,
                    why: format!("not JSON ({e})"),
                }),
            },
        }
    }
}

/// A plugin's message cut to [`MAX_PLUGIN_MESSAGE`] bytes (on a character boundary).
fn clip(mut message: String) -> String {
    if message.len() > MAX_PLUGIN_MESSAGE {
        let mut end = MAX_PLUGIN_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// Every IP address of a CNI result (CNI >= 0.3 `ips[].address`, CIDR suffix stripped), the
/// pod's primary one first.
pub fn ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .map(|cidr| cidr.split('/').next().unwrap_or(cidr).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// CNI networking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Directory of CNI network configurations (.conf, .conflist, .json).
    pub cni_config_dir: PathBuf,
    /// Directories searched for CNI plugin binaries.
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// Seconds one CNI ADD or DEL (every plugin of the list) may take; past it the plugin is
    /// killed with its process group and the call fails with DeadlineExceeded.
    pub plugin_timeout_secs: u64,
}

impl NetworkConfig {
    /// [`NetworkConfig::plugin_timeout_secs`] as a duration.
    pub fn plugin_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.plugin_timeout_secs)
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            cni_config_dir: "/etc/cni/net.d".into(),
            cni_plugin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            plugin_timeout_secs: DEFAULT_PLUGIN_TIMEOUT.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A network list of one fake plugin `name` (a shell script with `body`) in `dir`.
    fn fake(dir: &Path, name: &str, body: &str) -> NetworkList {
        child::test_script(dir, name, body);
        NetworkList {
            path: dir.join("fake.conflist"),
            name: "fake-net".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![serde_json::json!({ "type": name })],
            timeout: Duration::from_secs(5),
        }
    }

    fn pod(args: Vec<(&'static str, String)>) -> Attachment<'static> {
        Attachment {
            container_id: "0123abcd",
            netns: Path::new("/run/netns/fake"),
            args,
            runtime_config: Value::Null,
        }
    }

    fn k8s_args(name: &str) -> Vec<(&'static str, String)> {
        vec![
            ("K8S_POD_NAMESPACE", "default".into()),
            ("K8S_POD_NAME", name.into()),
        ]
    }

    #[test]
    fn cni_args_values_cannot_add_keys() {
        assert!(check_arg_value("web-0").is_ok());
        assert!(check_arg_value("PodSandbox-for-test_1.x").is_ok());
        for bad in [
            "a;K8S_POD_NAMESPACE=kube-system",
            "a=b",
            "a\0b",
            "a\nb",
            &"x".repeat(254),
        ] {
            assert!(check_arg_value(bad).is_err(), "{bad:?}");
        }
        let err = pod(k8s_args("x;IgnoreUnknown=0"))
            .checked()
            .expect_err("refused");
        assert!(
            err.to_string().contains("CNI_ARGS K8S_POD_NAME"),
            "names the key: {err}"
        );
    }

    #[test]
    fn container_id_netns_and_ifname_are_checked() {
        let mut bad_id = pod(Vec::new());
        bad_id.container_id = "-x";
        assert!(
            matches!(bad_id.checked(), Err(CniError::InvalidValue { what, .. }) if what == "CNI_CONTAINERID")
        );
        let mut relative = pod(Vec::new());
        relative.netns = Path::new("netns");
        assert!(
            matches!(relative.checked(), Err(CniError::InvalidValue { what, .. }) if what == "CNI_NETNS")
        );
        assert!(check_ifname(POD_INTERFACE).is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn plugins_get_the_checked_environment_and_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seen = dir.path().join("seen");
        let list = fake(
            dir.path(),
            "recorder",
            &format!(
                "env > {s}.env; cat > {s}.stdin; echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.1.2.3/24\"}}]}}'",
                s = seen.display()
            ),
        );
        let result = list
            .add(&[dir.path().to_owned()], &pod(k8s_args("web-0")))
            .await
            .expect("ADD");
        assert_eq!(ips(&result), vec!["10.1.2.3"]);
        let env = std::fs::read_to_string(seen.with_extension("env")).expect("env");
        assert!(
            env.lines()
                .any(|l| l
                    == "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
            "{env}"
        );
        assert!(env.lines().any(|l| l == "CNI_IFNAME=eth0"), "{env}");
        let input: Value =
            serde_json::from_slice(&std::fs::read(seen.with_extension("stdin")).expect("stdin"))
                .expect("json input");
        assert_eq!(input["name"], "fake-net");
    }

    #[tokio::test]
    async fn a_plugin_that_sleeps_forever_times_out_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list =
            fake(dir.path(), "sleepy", "exec sleep 1000").with_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let err = list
            .add(&[dir.path().to_owned()], &pod(k8s_args("p")))
            .await
            .expect_err("times out");
        assert!(err.timed_out(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = err.to_string();
        assert!(
            text.contains("plugin sleepy") && text.contains("fake-net"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_plugin_flooding_stderr_is_killed_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = fake(
            dir.path(),
            "noisy",
            "head -c 104857600 /dev/zero >&2; echo '{}'",
        );
        let err = list
            .add(&[dir.path().to_owned()], &pod(k8s_args("p")))
            .await
            .expect_err("too much");
        match &err {
            CniError::PluginRun {
                plugin,
                err: ChildError::TooMuchOutput { stream, .. },
                ..
            } => {
                assert_eq!(plugin, "noisy");
                assert_eq!(*stream, "stderr");
            }
            other => panic!("expected PluginRun(TooMuchOutput), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_huge_result_is_an_error_naming_the_plugin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = fake(
            dir.path(),
            "huge",
            "printf '{\"x\":\"'; head -c 10485760 /dev/zero | tr '\\0' a; printf '\"}'",
        );
        let err = list
            .add(&[dir.path().to_owned()], &pod(k8s_args("p")))
            .await
            .expect_err("too much");
        assert!(
            matches!(&err, CniError::PluginRun { plugin, err: ChildError::TooMuchOutput { stream: "stdout", .. }, .. } if plugin == "huge"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn garbage_from_a_successful_add_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = fake(dir.path(), "garbage", "echo 'not json at all'");
        let err = list
            .add(&[dir.path().to_owned()], &pod(k8s_args("p")))
            .await
            .expect_err("garbage");
        assert!(
            matches!(&err, CniError::BadResult { plugin, command: "ADD", .. } if plugin == "garbage"),
            "{err:?}"
        );
        // DEL prints nothing on success; whatever it prints is ignored.
        list.del(&[dir.path().to_owned()], &pod(k8s_args("p")), None)
            .await
            .expect("DEL ignores output");
    }

    #[tokio::test]
    async fn a_failing_plugin_reports_its_message_clipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = fake(
            dir.path(),
            "failing",
            "echo '{\"code\":11,\"msg\":\"no addresses\",\"details\":\"range full\"}'; exit 1",
        );
        let err = list
            .add(&[dir.path().to_owned()], &pod(k8s_args("p")))
            .await
            .expect_err("fails");
        assert_eq!(
            err.to_string(),
            "CNI plugin failing failed for ADD: no addresses: range full"
        );
        let chatty = fake(
            dir.path(),
            "chatty",
            "head -c 100000 /dev/zero | tr '\\0' e >&2; exit 1",
        );
        let err = chatty
            .add(&[dir.path().to_owned()], &pod(k8s_args("p")))
            .await
            .expect_err("fails");
        assert!(err.to_string().len() < MAX_PLUGIN_MESSAGE + 100, "clipped");
    }
}
