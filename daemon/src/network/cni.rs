//! CNI: the network configuration list and the plugin calls (ADD, DEL) for one pod, following
//! the CNI specification. The first configuration file of the directory (by name) is used.
//! ADD runs the plugins in order, each receiving the previous one's result; DEL runs them in
//! reverse with the ADD result (cached on disk by crid) as `prevResult`, and succeeds when the
//! attachment is already gone, so it can be retried.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes of a configuration file, and of a plugin's output.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
const MAX_PLUGIN_OUTPUT: u64 = 1 << 20;
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
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

/// The pod a call is for.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    /// `K8S_POD_NAMESPACE=…;K8S_POD_NAME=…`-style CNI_ARGS.
    pub args: String,
    /// Runtime configuration offered to plugins that declare the capability (portMappings).
    pub runtime_config: Value,
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
                .is_none_or(|t| t.is_empty() || t.contains('/'))
        }) {
            return Err(bad("a plugin has no valid \"type\""));
        }
        Ok(NetworkList {
            path,
            name,
            cni_version,
            plugins,
        })
    }

    /// Runs ADD for every plugin; returns the final result.
    pub async fn add(
        &self,
        plugin_dirs: &[PathBuf],
        pod: &Attachment<'_>,
    ) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &self.plugins {
            let result = self
                .call(plugin_dirs, plugin, "ADD", pod, prev.as_ref())
                .await?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// Runs DEL for every plugin in reverse order, with the ADD result if known.
    pub async fn del(
        &self,
        plugin_dirs: &[PathBuf],
        pod: &Attachment<'_>,
        added: Option<&Value>,
    ) -> Result<(), CniError> {
        for plugin in self.plugins.iter().rev() {
            self.call(plugin_dirs, plugin, "DEL", pod, added).await?;
        }
        Ok(())
    }

    async fn call(
        &self,
        plugin_dirs: &[PathBuf],
        plugin: &Value,
        command: &'static str,
        pod: &Attachment<'_>,
        prev: Option<&Value>,
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
        let cni_args = if pod.args.is_empty() {
            String::new()
        } else {
            format!("IgnoreUnknown=1;{}", pod.args)
        };
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.container_id)
            .env("CNI_NETNS", pod.netns)
            .env("CNI_IFNAME", POD_INTERFACE)
            .env("CNI_ARGS", &cni_args)
            .env("CNI_PATH", cni_path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| CniError::Io {
                what: "run",
                path: binary.clone(),
                err,
            })?;
        let input = serde_json::to_vec(&conf).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input).await;
        }
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(out) = child.stdout.take() {
            let _ = out.take(MAX_PLUGIN_OUTPUT).read_to_end(&mut stdout).await;
        }
        if let Some(err) = child.stderr.take() {
            let _ = err.take(MAX_PLUGIN_OUTPUT).read_to_end(&mut stderr).await;
        }
        let status = child.wait().await.map_err(|err| CniError::Io {
            what: "wait for",
            path: binary.clone(),
            err,
        })?;
        let output: Value = serde_json::from_slice(&stdout).unwrap_or(Value::Null);
        if !status.success() {
            let message = output["msg"]
                .as_str()
                .map(|m| match output["details"].as_str() {
                    Some(d) if !d.is_empty() => format!("{m}: {d}"),
                    _ => m.to_owned(),
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&stderr).trim().to_owned());
            return Err(CniError::PluginFailed {
                plugin: kind.to_owned(),
                command,
                message,
            });
        }
        Ok(output)
    }
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
