//! The CRI RuntimeService: version and status, the pod and container lifecycle, ExecSync and
//! ReopenContainerLog. RPCs whose issue has not landed answer UNIMPLEMENTED (see the README's
//! table).

use std::collections::HashMap;
use std::sync::Arc;

use crid_common::limits::EXEC_SYNC_MAX_OUTPUT;
use crid_proto::cri::{self, runtime_service_server::RuntimeService};
use tonic::{Request, Response, Status};

use super::cri_views;
use super::stats;
use super::unimplemented::unimplemented_rpcs;
use crate::config::{CgroupManager, Config};
use crate::container::{create, lifecycle as containers, running};
use crate::error::DaemonError;
use crate::sandbox::lifecycle as pods;

use super::requests::{detached, Creations};
use crate::state::State;
use crate::status::{self, Condition};
use crate::streaming::server::StreamingServer;

// An ExecSync reply (both outputs at their bound, plus the rest) fits in a CRI message.
const _: () = assert!(
    EXEC_SYNC_MAX_OUTPUT as usize + crid_common::limits::EXEC_SYNC_RESPONSE_OVERHEAD
        <= super::MAX_MESSAGE_BYTES
);

/// The runtime name reported by Version.
pub const RUNTIME_NAME: &str = "crid";
/// The CRI API version crid speaks.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The kubelet runtime API version field of VersionResponse (fixed by the CRI).
const KUBE_RUNTIME_API_VERSION: &str = "0.1.0";

/// The runtime service.
pub struct Runtime {
    config: Arc<Config>,
    state: Arc<State>,
    stats: Arc<stats::StatsCache>,
    creations: Arc<Creations>,
    streaming: Arc<StreamingServer>,
}

impl Runtime {
    pub fn new(config: Arc<Config>, state: Arc<State>, streaming: Arc<StreamingServer>) -> Self {
        Runtime {
            config,
            state,
            stats: Arc::default(),
            creations: Arc::default(),
            streaming,
        }
    }
}

impl Runtime {
    /// Runs a stats computation (cgroup files, writable-layer walks) on a blocking thread.
    async fn blocking_stats<T: Send + 'static>(
        &self,
        compute: impl FnOnce(&State, &stats::StatsCache) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let (state, cache) = (self.state.clone(), self.stats.clone());
        tokio::task::spawn_blocking(move || compute(&state, &cache))
            .await
            .map_err(|err| DaemonError::Internal(format!("stats task failed: {err}")).into())
    }
}

fn ok<T>(value: T) -> Result<Response<T>, Status> {
    Ok(Response::new(value))
}

/// Absent objects are fine for Stop and Remove (the CRI says so).
fn absent_ok(result: Result<(), DaemonError>) -> Result<(), DaemonError> {
    match result {
        Err(DaemonError::NotFound(_)) => Ok(()),
        other => other,
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

use super::events::{self, EventStream};
use crid_proto::cri::ContainerEventType as Event;

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
        let config = self.config.clone();
        let handler_features =
            tokio::task::spawn_blocking(move || status::handler_features(&config))
                .await
                .map_err(|e| Status::internal(format!("runtime features: {e}")))?;
        // crid has one runtime handler: the default (""), also known by the runtime's name.
        let runtime_handlers = [String::new(), status::handler_name(&self.config)]
            .into_iter()
            .map(|name| cri::RuntimeHandler {
                name,
                features: Some(handler_features),
            })
            .collect();
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers,
            features: Some(cri::RuntimeFeatures {
                // Both policies (Merge, Strict) are implemented (container/user.rs).
                supplemental_groups_policy: true,
            }),
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

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        let config = request
            .config
            .ok_or_else(|| DaemonError::InvalidArgument("config is missing".into()))?;
        // The pod's name (kubelet retries with the same one): the key of the creation.
        let key = config.metadata.as_ref().map(|m| {
            format!(
                "pod {}/{} uid {} attempt {}",
                m.namespace, m.name, m.uid, m.attempt
            )
        });
        let state = self.state.clone();
        let create = async move {
            let id = pods::run(&state, config, &request.runtime_handler).await?;
            events::publish(&state, Event::ContainerCreatedEvent, &id, &id);
            events::publish(&state, Event::ContainerStartedEvent, &id, &id);
            Ok::<_, DaemonError>(id)
        };
        let pod_sandbox_id = match key {
            None => detached(create).await?,
            Some(key) => {
                let state = self.state.clone();
                let undo = move |id: String| -> futures_util::future::BoxFuture<'static, ()> {
                    Box::pin(async move {
                        let _ = pods::stop(&state, &id).await;
                        if let Err(err) = pods::remove(&state, &id).await {
                            tracing::warn!(pod = %id, error = %err, "removing an unclaimed pod failed");
                        }
                    })
                };
                let create = async move { create.await.map_err(Status::from) };
                self.creations.run(key, create, undo).await?
            }
        };
        ok(cri::RunPodSandboxResponse { pod_sandbox_id })
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let state = self.state.clone();
        detached(async move {
            let known = state.pod(&id).ok().map(|p| p.id.clone());
            pods::stop(&state, &id).await?;
            if let Some(id) = known {
                // Containers that have exited get their STOPPED event now, while the pod
                // still lists them, if the exit watch has not sent it yet.
                for container in state.containers_of(&id) {
                    let record = container.record();
                    if record.started_at.is_some() && record.finished.is_some() {
                        events::publish_stopped(&state, &container);
                    }
                }
                events::publish(&state, Event::ContainerStoppedEvent, &id, &id);
            }
            Ok(())
        })
        .await?;
        ok(cri::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let state = self.state.clone();
        detached(async move {
            let known = state.pod(&id).ok().map(|p| p.id.clone());
            let containers = known
                .as_ref()
                .map(|id| state.containers_of(id))
                .unwrap_or_default();
            pods::remove(&state, &id).await?;
            if let Some(id) = known {
                for container in containers {
                    if container.record().started_at.is_some() {
                        events::publish_stopped(&state, &container);
                    }
                    events::publish(&state, Event::ContainerDeletedEvent, &container.id, &id);
                }
                events::publish(&state, Event::ContainerDeletedEvent, &id, &id);
            }
            Ok(())
        })
        .await?;
        ok(cri::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let pod = self.state.pod(&request.pod_sandbox_id)?;
        let info = if request.verbose {
            cri_views::pod_info(&pod)
        } else {
            HashMap::new()
        };
        ok(cri::PodSandboxStatusResponse {
            status: Some(cri_views::pod_status(&pod)),
            info,
            // What kubelet's evented PLEG reads along with the pod's status.
            containers_statuses: self
                .state
                .containers_of(&pod.id)
                .iter()
                .map(|c| cri_views::container_status(&self.state, c))
                .collect(),
            timestamp: crate::state::persist::now_nanos(),
        })
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut items: Vec<cri::PodSandbox> = self
            .state
            .pods()
            .iter()
            .map(|p| cri_views::pod_summary(p))
            .filter(|p| cri_views::pod_matches(p, &filter))
            .collect();
        items.sort_by_key(|p| p.created_at);
        ok(cri::ListPodSandboxResponse { items })
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        let config = request
            .config
            .ok_or_else(|| DaemonError::InvalidArgument("config is missing".into()))?;
        // The container's name in its pod (kubelet retries with the same one).
        let key = config.metadata.as_ref().map(|m| {
            format!(
                "container {} attempt {} in pod {}",
                m.name, m.attempt, request.pod_sandbox_id
            )
        });
        let state = self.state.clone();
        let create = async move {
            let id = create::create(&state, &request.pod_sandbox_id, config).await?;
            if let Ok(container) = state.container(&id) {
                super::monitors::watch(state.clone(), container.clone());
                events::publish(&state, Event::ContainerCreatedEvent, &id, &container.pod_id);
            }
            Ok::<_, DaemonError>(id)
        };
        let container_id = match key {
            None => detached(create).await?,
            Some(key) => {
                let state = self.state.clone();
                let undo = move |id: String| -> futures_util::future::BoxFuture<'static, ()> {
                    Box::pin(async move {
                        let Ok(container) = state.container(&id) else {
                            return;
                        };
                        if let Err(err) = containers::remove(&state, &container).await {
                            tracing::warn!(container = %id, error = %err, "removing an unclaimed container failed");
                        }
                    })
                };
                let create = async move { create.await.map_err(Status::from) };
                self.creations.run(key, create, undo).await?
            }
        };
        ok(cri::CreateContainerResponse { container_id })
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let container = self.state.container(&request.get_ref().container_id)?;
        let state = self.state.clone();
        detached(async move {
            state.events.begin_start(&container.id);
            let started = containers::start(&state, &container).await;
            events::start_finished(&state, &container.id, &container.pod_id, started.is_ok());
            started
        })
        .await?;
        ok(cri::StartContainerResponse {})
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let request = request.into_inner();
        let state = self.state.clone();
        let result = detached(async move {
            let container = state.container(&request.container_id)?;
            containers::stop(&state, &container, request.timeout).await?;
            if container.record().finished.is_some() {
                events::publish_stopped(&state, &container);
            }
            Ok(())
        });
        absent_ok(result.await)?;
        ok(cri::StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let state = self.state.clone();
        let id = request.into_inner().container_id;
        let result = detached(async move {
            let container = state.container(&id)?;
            containers::remove(&state, &container).await?;
            // A container that never started has no STOPPED event.
            if container.record().started_at.is_some() {
                events::publish_stopped(&state, &container);
            }
            events::publish(
                &state,
                Event::ContainerDeletedEvent,
                &container.id,
                &container.pod_id,
            );
            Ok(())
        });
        absent_ok(result.await)?;
        ok(cri::RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut containers: Vec<cri::Container> = self
            .state
            .containers()
            .iter()
            .map(|c| cri_views::container_summary(&self.state, c))
            .filter(|c| cri_views::container_matches(c, &filter))
            .collect();
        containers.sort_by_key(|c| c.created_at);
        ok(cri::ListContainersResponse { containers })
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let container = self.state.container(&request.container_id)?;
        let info = if request.verbose {
            cri_views::container_info(&container)
        } else {
            HashMap::new()
        };
        ok(cri::ContainerStatusResponse {
            status: Some(cri_views::container_status(&self.state, &container)),
            info,
        })
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let container = self.state.container(&request.container_id)?;
        let output =
            running::exec_sync(&self.state, &container, &request.cmd, request.timeout).await?;
        // Reported as CRI-O reports it: in the log (the CRI reply has no field for it).
        if output.stdout_truncated || output.stderr_truncated {
            tracing::warn!(
                container = %container.id,
                cmd = ?request.cmd,
                stdout_bytes = output.stdout.len(),
                stderr_bytes = output.stderr.len(),
                "exec sync output truncated: stdout and stderr together are bounded at {EXEC_SYNC_MAX_OUTPUT} bytes"
            );
        }
        ok(cri::ExecSyncResponse {
            stdout: output.stdout,
            stderr: output.stderr,
            exit_code: output.exit_code,
        })
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let container = self.state.container(&request.get_ref().container_id)?;
        running::reopen_log(&self.state, &container).await?;
        ok(cri::ReopenContainerLogResponse {})
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        let container = self.state.container(&request.container_id)?;
        // Nothing for Linux (a Windows-only update): nothing to change, as CRI-O and
        // containerd answer.
        if let Some(linux) = request.linux {
            running::update_resources(&self.state, &container, linux).await?;
        }
        ok(cri::UpdateContainerResourcesResponse {})
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let container = self.state.container(&request.get_ref().container_id)?;
        if !stats::live(&self.state, &container) {
            return Err(DaemonError::FailedPrecondition(format!(
                "container {} has exited; it has no stats",
                container.id
            ))
            .into());
        }
        let stats = self
            .blocking_stats(move |state, cache| stats::container_stats(state, cache, &container))
            .await?;
        ok(cri::ContainerStatsResponse { stats: Some(stats) })
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let as_filter = cri::ContainerFilter {
            id: filter.id,
            state: None,
            pod_sandbox_id: filter.pod_sandbox_id,
            label_selector: filter.label_selector,
        };
        let stats = self
            .blocking_stats(move |state, cache| {
                let containers = state.containers();
                cache
                    .layers
                    .retain(|id| containers.iter().any(|c| c.id == id));
                let chosen: Vec<_> = containers
                    .iter()
                    .filter(|c| stats::live(state, c))
                    .filter(|c| {
                        cri_views::container_matches(
                            &cri_views::container_summary(state, c),
                            &as_filter,
                        )
                    })
                    .collect();
                stats::map_in_parallel(&chosen, |c| stats::container_stats(state, cache, c))
            })
            .await?;
        ok(cri::ListContainerStatsResponse { stats })
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let pod = self.state.pod(&request.get_ref().pod_sandbox_id)?;
        let stats = self
            .blocking_stats(move |state, cache| stats::pod_stats(state, cache, &pod))
            .await?;
        ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let as_filter = cri::PodSandboxFilter {
            id: filter.id,
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            label_selector: filter.label_selector,
        };
        let stats = self
            .blocking_stats(move |state, cache| {
                let pods = state.pods();
                let chosen: Vec<_> = pods
                    .iter()
                    .filter(|p| cri_views::pod_matches(&cri_views::pod_summary(p), &as_filter))
                    .collect();
                stats::map_in_parallel(&chosen, |p| stats::pod_stats(state, cache, p))
            })
            .await?;
        ok(cri::ListPodSandboxStatsResponse { stats })
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Ok(Response::new(events::stream(&self.state)))
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let url = self.streaming.exec_url(request.into_inner())?;
        ok(cri::ExecResponse { url })
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let url = self.streaming.attach_url(request.into_inner())?;
        ok(cri::AttachResponse { url })
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let url = self.streaming.port_forward_url(request.into_inner())?;
        ok(cri::PortForwardResponse { url })
    }

    unimplemented_rpcs! {
        update_runtime_config("UpdateRuntimeConfig"): cri::UpdateRuntimeConfigRequest => cri::UpdateRuntimeConfigResponse;
        checkpoint_container("CheckpointContainer"): cri::CheckpointContainerRequest => cri::CheckpointContainerResponse;
        list_metric_descriptors("ListMetricDescriptors"): cri::ListMetricDescriptorsRequest => cri::ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics("ListPodSandboxMetrics"): cri::ListPodSandboxMetricsRequest => cri::ListPodSandboxMetricsResponse;
    }
}
