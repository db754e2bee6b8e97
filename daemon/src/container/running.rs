//! What is done to a running container through its monitor or the runtime: ExecSync,
//! ReopenContainerLog, UpdateContainerResources.

use crid_proto::cri;

use super::invalid;
use crate::error::DaemonError;
use crate::monitor_client::{self, MonitorConnection};
use crate::state::container::{Container, Phase};
use crate::state::{persist, State};

fn require_running(state: &State, container: &Container) -> Result<(), DaemonError> {
    match container.phase(&state.paths.exits) {
        Phase::Running => Ok(()),
        phase => Err(DaemonError::FailedPrecondition(format!(
            "container {} is not running ({})",
            container.id,
            if phase == Phase::Created {
                "created"
            } else {
                "exited"
            }
        ))),
    }
}

/// Runs a command in a running container through its monitor.
pub async fn exec_sync(
    state: &State,
    container: &Container,
    cmd: &[String],
    timeout_secs: i64,
) -> Result<monitor_client::ExecOutput, DaemonError> {
    if cmd.is_empty() {
        return Err(invalid("cmd is empty"));
    }
    require_running(state, container)?;
    let conn = MonitorConnection::connect(&state.paths.monitors, &container.id).await?;
    let timeout = super::request_timeout(timeout_secs);
    let output = conn.exec_sync(cmd, timeout).await?;
    if output.timed_out {
        return Err(DaemonError::DeadlineExceeded(format!(
            "command {cmd:?} in container {} timed out after {timeout_secs} s",
            container.id
        )));
    }
    Ok(output)
}

/// Applies new resources to a created or running container (`runc update`), refusing a
/// memory limit below what it uses now.
pub async fn update_resources(
    state: &State,
    container: &Container,
    requested: cri::LinuxContainerResources,
) -> Result<(), DaemonError> {
    let _guard = container.lifecycle.lock().await;
    if container.phase(&state.paths.exits) == Phase::Exited {
        return Err(DaemonError::FailedPrecondition(format!(
            "container {} has exited",
            container.id
        )));
    }
    let oci = super::resources::linux_resources(
        Some(&requested),
        Vec::new(),
        state.config.runtime.pids_limit,
    )?;
    let record = container.record();
    if requested.memory_limit_in_bytes > 0 {
        let usage = super::cgroup::Cgroup::new(&record.cgroup_path).memory_usage();
        if let Some(usage) = usage.filter(|u| *u > requested.memory_limit_in_bytes as u64) {
            return Err(DaemonError::FailedPrecondition(format!(
                "memory limit {} of container {} is below its current usage {usage}",
                requested.memory_limit_in_bytes, container.id
            )));
        }
    }
    let file = container.dir.join("resources.json");
    let json = serde_json::to_vec(&oci)
        .map_err(|e| DaemonError::Internal(format!("encode resources: {e}")))?;
    persist::write_volatile(&file, &json)?;
    let updated = state.host.runtime.update(&container.id, &file).await;
    let _ = std::fs::remove_file(&file);
    updated?;
    // A field left 0 (or empty) means "not given": the runtime kept its value, so the
    // resources in force are the earlier ones with the given fields replaced (crictl sends
    // only what it was told; kubelet sends them all).
    let in_force = merge_resources(container.resources().unwrap_or_default(), requested);
    container.save_resources(&in_force)
}

/// `earlier` with every field `update` gives (non-zero, non-empty) replaced.
fn merge_resources(
    mut earlier: cri::LinuxContainerResources,
    update: cri::LinuxContainerResources,
) -> cri::LinuxContainerResources {
    fn take<T: PartialEq + Default>(into: &mut T, from: T) {
        if from != T::default() {
            *into = from;
        }
    }
    take(&mut earlier.cpu_period, update.cpu_period);
    take(&mut earlier.cpu_quota, update.cpu_quota);
    take(&mut earlier.cpu_shares, update.cpu_shares);
    take(
        &mut earlier.memory_limit_in_bytes,
        update.memory_limit_in_bytes,
    );
    take(&mut earlier.oom_score_adj, update.oom_score_adj);
    take(&mut earlier.cpuset_cpus, update.cpuset_cpus);
    take(&mut earlier.cpuset_mems, update.cpuset_mems);
    take(&mut earlier.hugepage_limits, update.hugepage_limits);
    take(&mut earlier.unified, update.unified);
    take(
        &mut earlier.memory_swap_limit_in_bytes,
        update.memory_swap_limit_in_bytes,
    );
    earlier
}

/// Asks the monitor to reopen the container's log file (after kubelet rotated it).
pub async fn reopen_log(state: &State, container: &Container) -> Result<(), DaemonError> {
    // The monitor owns the log from create on, so a created container's log reopens too
    // (as CRI-O allows); an exited one's monitor is gone.
    if container.phase(&state.paths.exits) == Phase::Exited {
        return require_running(state, container);
    }
    let conn = MonitorConnection::connect(&state.paths.monitors, &container.id).await?;
    conn.reopen_log().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_update_keeps_what_it_does_not_name() {
        let earlier = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        };
        let update = cri::LinuxContainerResources {
            cpu_quota: 20_000,
            ..Default::default()
        };
        let merged = merge_resources(earlier.clone(), update);
        assert_eq!(merged.cpu_quota, 20_000);
        assert_eq!(merged.cpu_period, earlier.cpu_period);
        assert_eq!(merged.cpu_shares, earlier.cpu_shares);
        assert_eq!(merged.memory_limit_in_bytes, earlier.memory_limit_in_bytes);
    }
}
