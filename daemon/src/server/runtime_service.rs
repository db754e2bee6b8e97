//! The CRI RuntimeService. Version, Status and RuntimeConfig are real; every other RPC answers
//! UNIMPLEMENTED until its issue lands (see the README's table).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use crid_proto::cri::{self, runtime_service_server::RuntimeService};
use tonic::{Request, Response, Status};

use super::unimplemented::unimplemented_rpcs;
use crate::config::{CgroupManager, Config};
use crate::status::{self, Condition};

/// The runtime name reported by Version.
pub const RUNTIME_NAME: &str = "crid";
/// The CRI API version crid speaks.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The kubelet runtime API version field of VersionResponse (fixed by the CRI).
const KUBE_RUNTIME_API_VERSION: &str = "0.1.0";

/// The runtime service.
pub struct Runtime {
    config: Arc<Config>,
}

impl Runtime {
    pub fn new(config: Arc<Config>) -> Self {
        Runtime { config }
    }
}

fn condition(kind: &str, c: Condition) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: kind.to_owned(),
        status: c.ready,
        reason: c.reason,
        message: c.message,
    }
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: KUBE_RUNTIME_API_VERSION.to_owned(),
            runtime_name: RUNTIME_NAME.to_owned(),
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
            runtime_api_version: RUNTIME_API_VERSION.to_owned(),
        }))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let conditions = vec![
            condition("RuntimeReady", status::runtime_condition(&self.config)),
            condition("NetworkReady", status::network_condition(&self.config)),
        ];
        let mut info = HashMap::new();
        if request.get_ref().verbose {
            let config = serde_json::to_string(&*self.config)
                .map_err(|e| Status::internal(e.to_string()))?;
            info.insert("config".to_owned(), config);
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            ..Default::default()
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        let driver = match self.config.runtime.cgroup_manager {
            CgroupManager::Systemd => cri::CgroupDriver::Systemd,
            CgroupManager::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver.into(),
            }),
        }))
    }

    type GetContainerEventsStream = EventStream;

    unimplemented_rpcs! {
        run_pod_sandbox("RunPodSandbox"): cri::RunPodSandboxRequest => cri::RunPodSandboxResponse;
        stop_pod_sandbox("StopPodSandbox"): cri::StopPodSandboxRequest => cri::StopPodSandboxResponse;
        remove_pod_sandbox("RemovePodSandbox"): cri::RemovePodSandboxRequest => cri::RemovePodSandboxResponse;
        pod_sandbox_status("PodSandboxStatus"): cri::PodSandboxStatusRequest => cri::PodSandboxStatusResponse;
        list_pod_sandbox("ListPodSandbox"): cri::ListPodSandboxRequest => cri::ListPodSandboxResponse;
        create_container("CreateContainer"): cri::CreateContainerRequest => cri::CreateContainerResponse;
        start_container("StartContainer"): cri::StartContainerRequest => cri::StartContainerResponse;
        stop_container("StopContainer"): cri::StopContainerRequest => cri::StopContainerResponse;
        remove_container("RemoveContainer"): cri::RemoveContainerRequest => cri::RemoveContainerResponse;
        list_containers("ListContainers"): cri::ListContainersRequest => cri::ListContainersResponse;
        container_status("ContainerStatus"): cri::ContainerStatusRequest => cri::ContainerStatusResponse;
        update_container_resources("UpdateContainerResources"): cri::UpdateContainerResourcesRequest => cri::UpdateContainerResourcesResponse;
        reopen_container_log("ReopenContainerLog"): cri::ReopenContainerLogRequest => cri::ReopenContainerLogResponse;
        exec_sync("ExecSync"): cri::ExecSyncRequest => cri::ExecSyncResponse;
        exec("Exec"): cri::ExecRequest => cri::ExecResponse;
        attach("Attach"): cri::AttachRequest => cri::AttachResponse;
        port_forward("PortForward"): cri::PortForwardRequest => cri::PortForwardResponse;
        container_stats("ContainerStats"): cri::ContainerStatsRequest => cri::ContainerStatsResponse;
        list_container_stats("ListContainerStats"): cri::ListContainerStatsRequest => cri::ListContainerStatsResponse;
        pod_sandbox_stats("PodSandboxStats"): cri::PodSandboxStatsRequest => cri::PodSandboxStatsResponse;
        list_pod_sandbox_stats("ListPodSandboxStats"): cri::ListPodSandboxStatsRequest => cri::ListPodSandboxStatsResponse;
        update_runtime_config("UpdateRuntimeConfig"): cri::UpdateRuntimeConfigRequest => cri::UpdateRuntimeConfigResponse;
        checkpoint_container("CheckpointContainer"): cri::CheckpointContainerRequest => cri::CheckpointContainerResponse;
        get_container_events("GetContainerEvents"): cri::GetEventsRequest => EventStream;
        list_metric_descriptors("ListMetricDescriptors"): cri::ListMetricDescriptorsRequest => cri::ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics("ListPodSandboxMetrics"): cri::ListPodSandboxMetricsRequest => cri::ListPodSandboxMetricsResponse;
    }
}
