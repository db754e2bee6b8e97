//! crid's pods and containers as CRI messages, and the list filters.

use std::collections::HashMap;

use crid_proto::cri;

use crate::state::container::{Container, Phase};
use crate::state::pod::Pod;
use crate::state::State;

fn pod_state(ready: bool) -> i32 {
    if ready {
        cri::PodSandboxState::SandboxReady as i32
    } else {
        cri::PodSandboxState::SandboxNotready as i32
    }
}

pub fn pod_summary(pod: &Pod) -> cri::PodSandbox {
    let record = pod.record();
    cri::PodSandbox {
        id: pod.id.clone(),
        metadata: pod.config.metadata.clone(),
        state: pod_state(record.ready),
        created_at: record.created_at,
        labels: pod.config.labels.clone(),
        annotations: pod.config.annotations.clone(),
        runtime_handler: record.runtime_handler,
    }
}

pub fn pod_status(pod: &Pod) -> cri::PodSandboxStatus {
    let record = pod.record();
    let mut ips = record.ips.iter();
    let network = cri::PodSandboxNetworkStatus {
        ip: ips.next().cloned().unwrap_or_default(),
        additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
    };
    cri::PodSandboxStatus {
        id: pod.id.clone(),
        metadata: pod.config.metadata.clone(),
        state: pod_state(record.ready),
        created_at: record.created_at,
        network: Some(network),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(pod.namespace_options()),
            }),
        }),
        labels: pod.config.labels.clone(),
        annotations: pod.config.annotations.clone(),
        runtime_handler: record.runtime_handler,
    }
}

/// `info` of a verbose PodSandboxStatus: crid's record as JSON.
pub fn pod_info(pod: &Pod) -> HashMap<String, String> {
    let record = pod.record();
    let info = serde_json::json!({
        "id": pod.id,
        "name": record.name,
        "hostname": record.hostname,
        "namespaces": record.namespaces,
        "shm": record.shm,
        "cgroupParent": record.cgroup_parent,
        "cniResult": record.cni_result,
    });
    HashMap::from([("info".to_owned(), info.to_string())])
}

fn container_state(phase: Phase) -> i32 {
    match phase {
        Phase::Created => cri::ContainerState::ContainerCreated as i32,
        Phase::Running => cri::ContainerState::ContainerRunning as i32,
        Phase::Exited => cri::ContainerState::ContainerExited as i32,
    }
}

pub fn container_summary(state: &State, container: &Container) -> cri::Container {
    let record = container.record();
    cri::Container {
        id: container.id.clone(),
        pod_sandbox_id: container.pod_id.clone(),
        metadata: container.config.metadata.clone(),
        image: container.config.image.clone(),
        image_ref: record.image_ref,
        state: container_state(container.phase(&state.paths.exits)),
        created_at: record.created_at,
        labels: container.config.labels.clone(),
        annotations: container.config.annotations.clone(),
        image_id: record.image_id,
    }
}

pub fn container_status(state: &State, container: &Container) -> cri::ContainerStatus {
    let phase = container.phase(&state.paths.exits);
    let record = container.record();
    let (mut finished_at, mut exit_code, mut reason, mut message) = (0, 0, "", String::new());
    if let Some(finished) = &record.finished {
        finished_at = finished.finished_at;
        exit_code = finished.exit_code;
        reason = if finished.oom_killed {
            "OOMKilled"
        } else if finished.lost {
            message = "the container's monitor (crimon) died without recording an exit code; the exit code is unknown".into();
            "Unknown"
        } else if finished.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
    }
    cri::ContainerStatus {
        id: container.id.clone(),
        metadata: container.config.metadata.clone(),
        state: container_state(phase),
        created_at: record.created_at,
        started_at: record.started_at.unwrap_or(0),
        finished_at,
        exit_code,
        image: container.config.image.clone(),
        image_ref: record.image_ref,
        reason: reason.to_owned(),
        message,
        labels: container.config.labels.clone(),
        annotations: container.config.annotations.clone(),
        mounts: container.config.mounts.clone(),
        log_path: record.log_path.display().to_string(),
        resources: container.resources().map(|linux| cri::ContainerResources {
            linux: Some(linux),
            windows: None,
        }),
        image_id: record.image_id,
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(record.user.uid),
                gid: i64::from(record.user.gid),
                supplemental_groups: record
                    .user
                    .additional_gids
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect(),
            }),
        }),
    }
}

/// `info` of a verbose ContainerStatus: crid's record and the OCI spec, as CRI-O and
/// containerd give them.
pub fn container_info(container: &Container) -> HashMap<String, String> {
    let record = container.record();
    let spec: serde_json::Value = std::fs::read(container.dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let info = serde_json::json!({
        "sandboxID": container.pod_id,
        "pid": record.pid,
        "name": record.name,
        "rootfs": record.rootfs,
        "stopSignal": record.stop_signal,
        "runtimeSpec": spec,
    });
    HashMap::from([("info".to_owned(), info.to_string())])
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn pod_matches(pod: &cri::PodSandbox, filter: &cri::PodSandboxFilter) -> bool {
    (filter.id.is_empty() || pod.id.starts_with(&filter.id))
        && filter.state.as_ref().is_none_or(|s| s.state == pod.state)
        && labels_match(&pod.labels, &filter.label_selector)
}

pub fn container_matches(container: &cri::Container, filter: &cri::ContainerFilter) -> bool {
    (filter.id.is_empty() || container.id.starts_with(&filter.id))
        && (filter.pod_sandbox_id.is_empty()
            || container.pod_sandbox_id.starts_with(&filter.pod_sandbox_id))
        && filter
            .state
            .as_ref()
            .is_none_or(|s| s.state == container.state)
        && labels_match(&container.labels, &filter.label_selector)
}
