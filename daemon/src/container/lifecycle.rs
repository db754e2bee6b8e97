//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ExecSync and
//! ReopenContainerLog. A container is created by its monitor (crimon runs the runtime's
//! `create` and then owns the container's stdio, log and exit); crid starts, signals and
//! deletes it through the runtime, and learns of its exit from the monitor.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crid_proto::cri;

use super::spec::{self, ImageConfig, Namespaces, PidNamespace, PodFiles, SpecInputs};
use super::user::{self, UserRequest};
use crate::config::CgroupManager;
use crate::error::DaemonError;
use crate::image::overlay;
use crate::monitor_client::{self, MonitorConnection, MonitorSpec};
use crate::oci_runtime::OciRuntime;
use crate::state::container::{Container, ContainerRecord, Finished, Phase};
use crate::state::pod::Pod;
use crate::state::{new_id, persist, Kind, State};

/// Mode of a container's root directory.
const ROOT_DIR_MODE: u32 = 0o755;
/// How long a SIGKILLed container may take to be reaped before StopContainer gives up.
const KILL_GRACE: Duration = Duration::from_secs(30);
/// How often the exit record is looked for when the monitor cannot be asked.
const EXIT_POLL: Duration = Duration::from_millis(20);

fn invalid(message: impl Into<String>) -> DaemonError {
    DaemonError::InvalidArgument(message.into())
}

/// The configured OCI runtime.
pub fn runtime(state: &State) -> OciRuntime {
    OciRuntime {
        path: state.config.runtime.runtime_path.clone(),
        root: state.config.runtime.runtime_root.clone(),
        systemd_cgroup: state.config.runtime.cgroup_manager == CgroupManager::Systemd,
    }
}

/// The container's log file: `<pod log directory>/<log_path>`, never outside the directory.
/// Without a pod log directory, logs go to the pod's own directory.
fn log_path(pod: &Pod, config: &cri::ContainerConfig, id: &str) -> Result<PathBuf, DaemonError> {
    let dir = if pod.config.log_directory.is_empty() {
        pod.dir.join("logs")
    } else {
        PathBuf::from(&pod.config.log_directory)
    };
    let relative = if config.log_path.is_empty() {
        format!("{id}.log")
    } else {
        config.log_path.clone()
    };
    let rel = Path::new(&relative);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(invalid(format!(
            "config.log_path {relative:?} must be relative to the pod's log directory, without '..'"
        )));
    }
    let path = dir.join(rel);
    let parent = path.parent().unwrap_or(&dir).to_owned();
    std::fs::create_dir_all(&parent).map_err(|err| DaemonError::Io {
        what: "create log directory",
        path: parent.clone(),
        err,
    })?;
    // The directory is kubelet's, but a symlink in it must not take the log elsewhere.
    let io = |err| DaemonError::Io {
        what: "resolve",
        path: parent.clone(),
        err,
    };
    let real_dir = std::fs::canonicalize(&dir).map_err(io)?;
    let real_parent = std::fs::canonicalize(&parent).map_err(io)?;
    if !real_parent.starts_with(&real_dir) {
        return Err(invalid(format!(
            "config.log_path {relative:?} leads outside the pod's log directory {}",
            dir.display()
        )));
    }
    Ok(path)
}

fn cgroups_path(state: &State, pod: &Pod, id: &str) -> String {
    let parent = pod.record().cgroup_parent;
    match state.config.runtime.cgroup_manager {
        CgroupManager::Cgroupfs => {
            let parent = if parent.is_empty() { "/crid" } else { &parent };
            format!("{}/crid-{id}", parent.trim_end_matches('/'))
        }
        CgroupManager::Systemd => {
            let parent = if parent.is_empty() {
                "system.slice"
            } else {
                &parent
            };
            format!("{parent}:crid:{id}")
        }
    }
}

/// The namespaces a container joins: the pod's, or per its own PID option.
fn namespaces(
    state: &State,
    pod: &Pod,
    config: &cri::ContainerConfig,
) -> Result<Namespaces, DaemonError> {
    let record = pod.record();
    let options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_else(|| pod.namespace_options());
    check_namespace_modes(&options, &pod.namespace_options())?;
    let pid = match cri::NamespaceMode::try_from(options.pid).unwrap_or(cri::NamespaceMode::Pod) {
        cri::NamespaceMode::Node => PidNamespace::Host,
        cri::NamespaceMode::Container => PidNamespace::New,
        cri::NamespaceMode::Pod => record
            .namespaces
            .pid
            .clone()
            .map_or(PidNamespace::New, PidNamespace::Join),
        cri::NamespaceMode::Target => {
            let target = state.container(&options.target_id).map_err(|_| {
                DaemonError::NotFound(format!(
                    "target container {} of the pid namespace not found",
                    options.target_id
                ))
            })?;
            if target.pod_id != pod.id || target.phase(&state.paths.exits) != Phase::Running {
                return Err(DaemonError::FailedPrecondition(format!(
                    "target container {} is not running in pod {}",
                    target.id, pod.id
                )));
            }
            PidNamespace::Join(format!("/proc/{}/ns/pid", target.record().pid).into())
        }
    };
    Ok(Namespaces {
        net: record.namespaces.net,
        ipc: record.namespaces.ipc,
        uts: record.namespaces.uts,
        pid,
        cgroup: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
    })
}

/// A container's namespace modes must fit its pod's: network and IPC are the pod's (TARGET
/// is for PID only), a POD PID namespace needs the pod to have one, TARGET needs a target.
fn check_namespace_modes(
    container: &cri::NamespaceOption,
    pod: &cri::NamespaceOption,
) -> Result<(), DaemonError> {
    use cri::NamespaceMode as M;
    let mode = |m: i32| M::try_from(m).unwrap_or(M::Pod);
    let field = |name: &str| format!("config.linux.security_context.namespace_options.{name}");
    for (name, c, p) in [
        ("network", container.network, pod.network),
        ("ipc", container.ipc, pod.ipc),
    ] {
        if mode(c) == M::Target || mode(c) == M::Container {
            return Err(invalid(format!(
                "{}: {:?} is not a mode for the {name} namespace (POD or NODE)",
                field(name),
                mode(c)
            )));
        }
        if mode(c) != mode(p) {
            return Err(invalid(format!(
                "{}: {:?} differs from the pod's {:?}",
                field(name),
                mode(c),
                mode(p)
            )));
        }
    }
    match (mode(container.pid), mode(pod.pid)) {
        (M::Target, _) if container.target_id.is_empty() => {
            Err(invalid(format!("{}: TARGET needs target_id", field("pid"))))
        }
        (M::Pod, pod_mode) if pod_mode != M::Pod => Err(invalid(format!(
            "{}: POD needs the pod to share a PID namespace (its mode is {pod_mode:?})",
            field("pid")
        ))),
        _ => Ok(()),
    }
}

/// Creates a container in a pod; returns its id. On failure nothing of it remains.
pub async fn create(
    state: &State,
    pod_id: &str,
    config: cri::ContainerConfig,
) -> Result<String, DaemonError> {
    let pod = state.pod(pod_id)?;
    let _pod_guard = pod.lifecycle.lock().await;
    if !pod.record().ready {
        return Err(DaemonError::FailedPrecondition(format!(
            "pod sandbox {} is not ready",
            pod.id
        )));
    }
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| invalid("config.metadata is missing"))?;
    if meta.name.is_empty() {
        return Err(invalid("config.metadata.name is empty"));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image_name.is_empty() {
        return Err(invalid("config.image.image is empty"));
    }
    let _image_in_use = state.image_use.read().await;
    let (image, _) = state
        .images
        .lookup(&image_name)?
        .ok_or_else(|| DaemonError::NotFound(format!("image {image_name} not found")))?;
    let image_config = ImageConfig::parse(&image.config).config;
    let stop_signal = spec::stop_signal(&image_config.stop_signal)?;

    let id = new_id();
    let pod_meta = pod.metadata();
    let name = format!(
        "k8s_{}_{}_{}_{}_{}",
        meta.name, pod_meta.name, pod_meta.namespace, pod_meta.uid, meta.attempt
    );
    let log = log_path(&pod, &config, &id)?;
    state.reserve_name(&name, &id, Kind::Container)?;
    let dir = state.paths.containers.join(&id);
    let record = ContainerRecord {
        id: id.clone(),
        pod_id: pod.id.clone(),
        name: name.clone(),
        created_at: persist::now_nanos(),
        image_id: image.id.clone(),
        image_ref: image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.clone()),
        log_path: log,
        stop_signal,
        rootfs: dir.join("rootfs"),
        ..Default::default()
    };
    let container = Arc::new(Container::new(dir.clone(), config, record));
    let made = async {
        std::fs::create_dir(&dir).map_err(|err| DaemonError::Io {
            what: "create",
            path: dir.clone(),
            err,
        })?;
        container.save_config()?;
        container.update(|_| {})?;
        setup(state, &pod, &container, &image.layers, &image_config).await
    };
    match made.await {
        Ok(()) => {
            state.insert_container(container);
            Ok(id)
        }
        Err(err) => {
            if let Err(undo) = dispose(state, &container).await {
                tracing::error!(container = %id, error = %undo.chain(), "cleaning up after a failed CreateContainer failed");
            }
            state.release_name(&name, &id);
            Err(err)
        }
    }
}

async fn setup(
    state: &State,
    pod: &Pod,
    container: &Container,
    layers: &[String],
    image: &spec::ImageRuntimeConfig,
) -> Result<(), DaemonError> {
    let config = &container.config;
    let record = container.record();
    let (upper, work) = (container.dir.join("upper"), container.dir.join("work"));
    for dir in [&upper, &work, &record.rootfs] {
        std::fs::create_dir(dir).map_err(|err| DaemonError::Io {
            what: "create",
            path: dir.clone(),
            err,
        })?;
    }
    // The merged root directory takes the upper directory's mode: 0755 as every runtime
    // gives a container's root (layers do not set it), not what crid's umask 077 made.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(ROOT_DIR_MODE)).map_err(
            |err| DaemonError::Io {
                what: "chmod",
                path: upper.clone(),
                err,
            },
        )?;
    }
    overlay::mount_rootfs(&state.images.paths, layers, &upper, &work, &record.rootfs)?;
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let process_user = user::resolve(
        &record.rootfs,
        &UserRequest {
            run_as_user: security.run_as_user.map(|v| v.value),
            run_as_group: security.run_as_group.map(|v| v.value),
            run_as_username: &security.run_as_username,
            image_user: &image.user,
            supplemental_groups: &security.supplemental_groups,
            image_groups: security.supplemental_groups_policy
                != cri::SupplementalGroupsPolicy::Strict as i32,
        },
    )
    .map_err(|e| invalid(format!("config.linux.security_context: {e}")))?;
    let pod_record = pod.record();
    let cgroup_path = cgroups_path(state, pod, &container.id);
    container.update(|r| r.cgroup_path = cgroup_path.clone())?;
    let privileged = security.privileged;
    let pod_privileged = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged && !pod_privileged {
        return Err(invalid(
            "config.linux.security_context.privileged: the pod sandbox is not privileged",
        ));
    }
    let mut annotations = config.annotations.clone();
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), pod.id.clone());
    annotations.insert(
        "io.kubernetes.cri.container-name".into(),
        container.metadata().name,
    );
    let spec = spec::build(SpecInputs {
        config,
        image,
        rootfs: &record.rootfs,
        user: &process_user,
        hostname: Some(&pod_record.hostname),
        namespaces: namespaces(state, pod, config)?,
        files: PodFiles {
            resolv_conf: pod.dir.join("resolv.conf"),
            hosts: pod.dir.join("hosts"),
            hostname: pod.dir.join("hostname"),
            shm: pod_record.shm.clone().unwrap_or_else(|| "/dev/shm".into()),
        },
        cgroups_path: cgroup_path.clone(),
        annotations,
        privileged,
        pids_limit: state.config.runtime.pids_limit,
        runtime: state.config.runtime.runtime_path.clone(),
    })?;
    let bundle_config = container.dir.join("config.json");
    let json = serde_json::to_vec(&spec)
        .map_err(|e| DaemonError::Internal(format!("encode OCI spec: {e}")))?;
    persist::write(&bundle_config, &json)?;
    container.update(|r| r.user = process_user.clone())?;
    let monitor = state.config.monitor_binary().ok_or_else(|| {
        DaemonError::FailedPrecondition("crimon not found next to crid or in $PATH".into())
    })?;
    let pid = monitor_client::create(&MonitorSpec {
        monitor,
        id: container.id.clone(),
        bundle: container.dir.clone(),
        runtime: state.config.runtime.runtime_path.clone(),
        runtime_root: state.config.runtime.runtime_root.clone(),
        log_path: record.log_path.clone(),
        log_size_max: state.config.runtime.log_size_max,
        exit_dir: state.paths.exits.clone(),
        socket_dir: state.paths.monitors.clone(),
        terminal: config.tty,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        delete_after_exit: true,
        systemd_cgroup: state.config.runtime.cgroup_manager == CgroupManager::Systemd,
    })
    .await?;
    container.update(|r| r.pid = pid)
}

/// How long RemoveContainer waits for an exited container's monitor to finish (it deletes the
/// container from the runtime, then ends).
const MONITOR_EXIT_WAIT: Duration = Duration::from_secs(5);

/// Removes everything of a container that exists: runtime state, rootfs mount, directory,
/// exit record. The directory is moved to the trash at once (its name and id are free when
/// this returns); its rootfs unmount and removal, and the runtime's delete when the monitor
/// has not done it, finish in the background (the trash is emptied again at startup).
async fn dispose(state: &State, container: &Container) -> Result<(), DaemonError> {
    let exit = crid_common::monitor_paths::exit_record(&state.paths.exits, &container.id);
    match std::fs::remove_file(&exit) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(DaemonError::Io {
                what: "remove",
                path: exit,
                err,
            })
        }
        _ => {}
    }
    let trashed = state.paths.trash.join(&container.id);
    match std::fs::rename(&container.dir, &trashed) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(DaemonError::Io {
                what: "move to the trash",
                path: container.dir.clone(),
                err,
            })
        }
        _ => {}
    }
    let socket = crid_common::monitor_paths::control_socket(&state.paths.monitors, &container.id);
    let rt = runtime(state);
    let id = container.id.clone();
    tokio::spawn(async move {
        // The monitor deletes the container from the runtime after its exit; let it finish
        // rather than race it, and only call the runtime when something is left (a failed
        // create, a monitor that was killed).
        let deadline = tokio::time::Instant::now() + MONITOR_EXIT_WAIT;
        while socket.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if rt.root.join(&id).exists() {
            if let Err(err) = rt.delete(&id).await {
                tracing::error!(container = %id, error = %crid_common::error_chain::error_chain(&err), "deleting the container from the runtime failed");
            }
        }
        let emptied =
            tokio::task::spawn_blocking(move || crate::state::trash::empty_one(&trashed)).await;
        if let Ok(Err(err)) = emptied {
            tracing::error!(container = %id, error = %err.chain(), "removing the container's files failed");
        }
    });
    Ok(())
}

/// Starts a created container.
pub async fn start(state: &State, container: &Container) -> Result<(), DaemonError> {
    let _guard = container.lifecycle.lock().await;
    match container.phase(&state.paths.exits) {
        Phase::Created => {}
        Phase::Running => {
            return Err(DaemonError::FailedPrecondition(format!(
                "container {} is already running",
                container.id
            )))
        }
        Phase::Exited => {
            return Err(DaemonError::FailedPrecondition(format!(
                "container {} has exited; it cannot be started again",
                container.id
            )))
        }
    }
    // The process runs from within `runc start`; a container that exits at once must not
    // show a start after its finish.
    let starting = persist::now_nanos();
    runtime(state).start(&container.id).await?;
    container.update(|r| r.started_at = Some(starting))
}

/// Whether the container shares a PID namespace, so that killing its init would not end the
/// rest of its processes.
fn shares_pid_namespace(container: &Container) -> bool {
    let options = container
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    options.is_none_or(|o| o.pid != cri::NamespaceMode::Container as i32)
}

/// Waits up to `limit` for the container's exit; true once it has exited.
async fn wait_exit(state: &State, container: &Container, limit: Duration) -> bool {
    let exits = &state.paths.exits;
    if container.finished(exits).is_some() {
        return true;
    }
    let deadline = tokio::time::Instant::now() + limit;
    if let Ok(conn) = MonitorConnection::connect(&state.paths.monitors, &container.id).await {
        match tokio::time::timeout_at(deadline, conn.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {} // The monitor went away; the exit record tells.
            Err(_) => return container.finished(exits).is_some(),
        }
    }
    loop {
        if container.finished(exits).is_some() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// Stops a container: its stop signal, then SIGKILL after `timeout_secs` (at once when 0 or
/// when it never started). An exited container is fine.
pub async fn stop(
    state: &State,
    container: &Container,
    timeout_secs: i64,
) -> Result<(), DaemonError> {
    let _guard = container.lifecycle.lock().await;
    stop_locked(state, container, timeout_secs).await
}

async fn stop_locked(
    state: &State,
    container: &Container,
    timeout_secs: i64,
) -> Result<(), DaemonError> {
    if container.finished(&state.paths.exits).is_some() {
        return Ok(());
    }
    let record = container.record();
    let rt = runtime(state);
    let all = shares_pid_namespace(container);
    // A signal may race with the container's own exit (and the monitor's delete of it from
    // the runtime); a failed kill of a container that has exited is no failure. What an
    // exited init left behind in a shared PID namespace is killed by that delete.
    let exited = |result: Result<(), crate::oci_runtime::RuntimeError>| match result {
        Err(_) if container.finished(&state.paths.exits).is_some() => Ok(()),
        other => other,
    };
    if record.started_at.is_some() && timeout_secs > 0 && record.stop_signal != libc::SIGKILL {
        exited(rt.kill(&container.id, record.stop_signal, false).await)?;
        let limit = Duration::from_secs(timeout_secs.unsigned_abs());
        if wait_exit(state, container, limit).await {
            return Ok(());
        }
        tracing::info!(container = %container.id, timeout_secs, "stop signal did not end the container; sending SIGKILL");
    }
    exited(rt.kill(&container.id, libc::SIGKILL, all).await)?;
    if wait_exit(state, container, KILL_GRACE).await {
        return Ok(());
    }
    Err(DaemonError::DeadlineExceeded(format!(
        "container {} did not exit within {KILL_GRACE:?} of SIGKILL",
        container.id
    )))
}

/// Removes a container, killing it first if it runs.
pub async fn remove(state: &State, container: &Container) -> Result<(), DaemonError> {
    let _guard = container.lifecycle.lock().await;
    stop_locked(state, container, 0).await?;
    dispose(state, container).await?;
    state.forget_container(&container.id);
    Ok(())
}

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
    let timeout = (timeout_secs > 0).then(|| Duration::from_secs(timeout_secs.unsigned_abs()));
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
    persist::write(&file, &json)?;
    let updated = runtime(state).update(&container.id, &file).await;
    let _ = std::fs::remove_file(&file);
    updated?;
    container.save_resources(&requested)
}

/// Asks the monitor to reopen the container's log file (after kubelet rotated it).
pub async fn reopen_log(state: &State, container: &Container) -> Result<(), DaemonError> {
    require_running(state, container)?;
    let conn = MonitorConnection::connect(&state.paths.monitors, &container.id).await?;
    conn.reopen_log().await?;
    Ok(())
}

/// After a restart: containers whose monitor is gone without an exit record (the host
/// rebooted, or the monitor was killed) are recorded as exited with an unknown code.
pub fn recover(state: &State) {
    for container in state.containers() {
        if container.finished(&state.paths.exits).is_some() {
            continue;
        }
        let socket =
            crid_common::monitor_paths::control_socket(&state.paths.monitors, &container.id);
        if socket.exists() {
            continue;
        }
        tracing::warn!(container = %container.id, "monitor gone without an exit record; marking the container exited");
        let lost = Finished {
            exit_code: 255,
            finished_at: persist::now_nanos(),
            oom_killed: false,
            lost: true,
        };
        if let Err(err) = container.update(|r| r.finished = Some(lost)) {
            tracing::error!(container = %container.id, error = %err.chain(), "cannot record the lost exit");
        }
    }
}
