//! A pod's network through CNI: the attachment kubelet's pod metadata and port mappings make,
//! ADD on run, DEL on stop (retried: DEL succeeds when the attachment is already gone).

use std::path::Path;
use std::time::Duration;

use crid_proto::cri;
use serde_json::{json, Value};

use crate::config::NetworkConfig;
use crid_cni::{Attachment, CniError, NetworkList};

/// DEL attempts before StopPodSandbox gives up (kubelet calls it again).
const DEL_ATTEMPTS: u32 = 3;
const DEL_RETRY_PAUSE: Duration = Duration::from_millis(200);

fn protocol(p: i32) -> &'static str {
    match cri::Protocol::try_from(p) {
        Ok(cri::Protocol::Udp) => "udp",
        Ok(cri::Protocol::Sctp) => "sctp",
        _ => "tcp",
    }
}

fn attachment<'a>(id: &'a str, netns: &'a Path, config: &cri::PodSandboxConfig) -> Attachment<'a> {
    let meta = config.metadata.clone().unwrap_or_default();
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let mut port = json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": protocol(p.protocol),
            });
            if !p.host_ip.is_empty() {
                port["hostIP"] = p.host_ip.clone().into();
            }
            port
        })
        .collect();
    Attachment {
        container_id: id,
        netns,
        // Checked again (each value alone) before any plugin runs; RunPodSandbox refuses such
        // metadata first, naming the field.
        args: vec![
            ("K8S_POD_NAMESPACE", meta.namespace),
            ("K8S_POD_NAME", meta.name),
            ("K8S_POD_INFRA_CONTAINER_ID", id.to_owned()),
            ("K8S_POD_UID", meta.uid),
        ],
        runtime_config: json!({ "portMappings": ports }),
    }
}

/// Attaches the pod's network namespace; returns the CNI result.
pub async fn attach(
    network: &NetworkConfig,
    id: &str,
    netns: &Path,
    config: &cri::PodSandboxConfig,
) -> Result<Value, CniError> {
    let list = NetworkList::load(&network.cni_config_dir)?.with_timeout(network.plugin_timeout());
    list.add(&network.cni_plugin_dirs, &attachment(id, netns, config))
        .await
}

/// Detaches the pod, with the ADD result when known; retried a few times.
pub async fn detach(
    network: &NetworkConfig,
    id: &str,
    netns: &Path,
    config: &cri::PodSandboxConfig,
    added: Option<&Value>,
) -> Result<(), CniError> {
    let list = NetworkList::load(&network.cni_config_dir)?.with_timeout(network.plugin_timeout());
    let pod = attachment(id, netns, config);
    let mut attempt = 1;
    loop {
        match list.del(&network.cni_plugin_dirs, &pod, added).await {
            Ok(()) => return Ok(()),
            // A DEL that ran out of time would only hang again: kubelet retries later.
            Err(err) if attempt >= DEL_ATTEMPTS || err.timed_out() => return Err(err),
            Err(err) => {
                tracing::warn!(pod = id, attempt, error = %crid_common::error_chain::error_chain(&err), "CNI DEL failed; retrying");
                attempt += 1;
                tokio::time::sleep(DEL_RETRY_PAUSE).await;
            }
        }
    }
}
