//! CreateContainer: the rootfs, the user, the OCI spec, and the monitor that runs the
//! runtime's `create` and from then on owns the container's stdio, log and exit.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crid_proto::cri;

use super::invalid;
use super::lifecycle::dispose;
use super::spec::{self, ImageConfig, Namespaces, PidNamespace, PodFiles, SpecInputs};
use super::user::{self, UserRequest};
use crate::config::CgroupManager;
use crate::error::DaemonError;
use crate::monitor_client::MonitorSpec;
use crate::state::container::{Container, ContainerRecord, Phase};
use crate::state::pod::Pod;
use crate::state::{new_id, persist, Kind, State};
use crid_image::overlay;
use crid_mount::rro;

/// Mode of a container's root directory.
const ROOT_DIR_MODE: u32 = 0o755;
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
    let Some(file_name) = rel.file_name() else {
        return Err(invalid(format!(
            "config.log_path {relative:?} names no file"
        )));
    };
    std::fs::create_dir_all(&dir).map_err(|err| DaemonError::Io {
        what: "create log directory",
        path: dir.clone(),
        err,
    })?;
    // The directory is kubelet's, but a symlink in it must not take the log, or the
    // directories made for it, elsewhere.
    let parent =
        make_dirs_beneath(&dir, rel.parent().unwrap_or(Path::new(""))).map_err(
            |err| match err {
                nix::Error::ENOTDIR => invalid(format!(
                    "config.log_path {relative:?}: a directory of it in {} is not a directory",
                    dir.display()
                )),
                nix::Error::EXDEV | nix::Error::ELOOP => invalid(format!(
                    "config.log_path {relative:?} leads outside the pod's log directory {}",
                    dir.display()
                )),
                err => DaemonError::Io {
                    what: "create log directory",
                    path: dir.join(rel.parent().unwrap_or(Path::new(""))),
                    err: err.into(),
                },
            },
        )?;
    Ok(parent.join(file_name))
}

/// Makes the directories `rel` below `dir` (all normal components), one component at a time
/// with `openat2(RESOLVE_BENEATH)` so that no symlink can take a lookup, or a directory made,
/// outside `dir`; returns the real path of the last one (`/proc/self/fd` of its fd), so the
/// monitor opens the log through no symlink at all.
fn make_dirs_beneath(dir: &Path, rel: &Path) -> nix::Result<PathBuf> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    let root = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let mut current = openat2(&root, ".", how())?;
    let mut walked = PathBuf::new();
    for component in rel.components() {
        walked.push(component);
        current = match openat2(&root, &walked, how()) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => {
                match nix::sys::stat::mkdirat(
                    &current,
                    component.as_os_str(),
                    Mode::from_bits_truncate(0o777),
                ) {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(err) => return Err(err),
                }
                openat2(&root, &walked, how())?
            }
            Err(err) => return Err(err),
        };
    }
    std::fs::read_link(format!("/proc/self/fd/{}", current.as_raw_fd()))
        .map_err(|err| nix::Error::from_raw(err.raw_os_error().unwrap_or(libc::EIO)))
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

/// The namespaces a container joins: the pod's, or per its own PID option; with a TARGET
/// PID namespace, also the open namespace, to be kept until the runtime has joined it.
fn namespaces(
    state: &State,
    pod: &Pod,
    config: &cri::ContainerConfig,
) -> Result<(Namespaces, Option<HeldPidNamespace>), DaemonError> {
    let record = pod.record();
    let mut held = None;
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
            let namespace = target_pid_namespace(&target.id, target.record().pid)?;
            let path = namespace.path();
            held = Some(namespace);
            PidNamespace::Join(path)
        }
    };
    let namespaces = Namespaces {
        net: record.namespaces.net,
        ipc: record.namespaces.ipc,
        uts: record.namespaces.uts,
        pid,
        cgroup: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
    };
    Ok((namespaces, held))
}

/// The PID namespace of a TARGET container, held open by crid until the runtime has joined
/// it. The runtime is given `/proc/<crid>/fd/<n>`, which names this namespace for as long as
/// the fd is open, never `/proc/<pid>/ns/pid`: by the time the runtime opens that, the target
/// may have exited and its pid may name another process (a host process, whose namespace the
/// new container would then join).
pub(super) struct HeldPidNamespace {
    fd: OwnedFd,
}

impl HeldPidNamespace {
    /// The path the runtime opens (valid while `self` lives, from any process of the host).
    fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }
}

/// Most bytes of `/proc/<pid>/cgroup` read (a line per hierarchy).
const MAX_PROC_CGROUP_BYTES: u64 = 64 * 1024;

/// Opens the PID namespace of `pid`, the recorded init of container `id`, and proves the
/// namespace is that container's: a pidfd is taken first, the namespace file is opened and
/// the process's cgroups are read, then the pidfd shows the process still holds its pid (so
/// both were read from the process the pidfd names, not from a later one that reused the
/// pid), and the cgroups show that process is a process of container `id` (so the pid was not
/// reused before the pidfd was taken either).
fn target_pid_namespace(id: &str, pid: i32) -> Result<HeldPidNamespace, DaemonError> {
    use std::io::Read;
    let gone = || {
        DaemonError::FailedPrecondition(format!(
            "target container {id} is not running (its init {pid} is gone)"
        ))
    };
    if pid <= 0 {
        return Err(gone());
    }
    let pidfd = crid_enter::sys::pidfd_open(pid).map_err(|_| gone())?;
    let ns_path = PathBuf::from(format!("/proc/{pid}/ns/pid"));
    let fd: OwnedFd = std::fs::File::open(&ns_path)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => gone(),
            _ => DaemonError::Io {
                what: "open",
                path: ns_path.clone(),
                err,
            },
        })?
        .into();
    let cgroup_path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let mut cgroups = String::new();
    std::fs::File::open(&cgroup_path)
        .and_then(|f| f.take(MAX_PROC_CGROUP_BYTES).read_to_string(&mut cgroups))
        .map_err(|_| gone())?;
    // Signal 0 checks existence only; a zombie still holds its pid, and a process whose
    // pid was reaped (and so perhaps reused) fails with ESRCH.
    crid_enter::sys::pidfd_send_signal(pidfd.as_fd(), 0).map_err(|_| gone())?;
    if !in_container_cgroup(&cgroups, id) {
        return Err(DaemonError::FailedPrecondition(format!(
            "process {pid} is no longer the init of target container {id} (its pid was reused)"
        )));
    }
    Ok(HeldPidNamespace { fd })
}

/// Whether `/proc/<pid>/cgroup` text places the process in container `id`'s cgroup: a path
/// component `crid-<id>` (cgroupfs) or `crid-<id>.scope` (systemd), in any hierarchy.
fn in_container_cgroup(proc_cgroup: &str, id: &str) -> bool {
    let leaf = format!("crid-{id}");
    let scope = format!("{leaf}.scope");
    proc_cgroup.lines().any(|line| {
        line.splitn(3, ':')
            .nth(2)
            .is_some_and(|path| path.split('/').any(|c| c == leaf || c == scope))
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
    if !config.cdi_devices.is_empty() {
        return Err(invalid(
            "config.cdi_devices: CDI devices are not supported by crid yet",
        ));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image_name.is_empty() {
        return Err(invalid("config.image.image is empty"));
    }
    let (image, _) = state
        .images
        .lookup(&image_name)?
        .ok_or_else(|| DaemonError::NotFound(format!("image {image_name} not found")))?;
    // Held until the container is recorded (RemoveImage refuses a held image). A RemoveImage
    // that checked before the hold may have removed it since the lookup: look again by id.
    let image_id = image.id.to_string();
    let _image_in_use = state.hold_image_for_create(&image_id);
    if state.images.lookup(&image_id)?.is_none() {
        return Err(DaemonError::NotFound(format!(
            "image {image_name} ({image_id}) was removed"
        )));
    }
    let image_config = ImageConfig::parse(&image.config)
        .map_err(|e| {
            let why = crid_common::error_chain::error_chain(&e);
            DaemonError::FailedPrecondition(format!("image {image_name}: {why}"))
        })?
        .config;
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
        image_id: image.id.to_string(),
        image_ref: image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.to_string()),
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

/// Stages the recursive read-only mounts the runtime cannot make itself (see `rro`), by
/// container path. Mounts that break the rules (not read-only, not private) are left for the
/// spec to refuse.
fn stage_recursive_read_only(
    state: &State,
    container: &Container,
) -> Result<HashMap<String, PathBuf>, DaemonError> {
    let mut staged = HashMap::new();
    let runtime = &state.config.runtime.runtime_path;
    for (index, m) in container.config.mounts.iter().enumerate() {
        let private = m.propagation == cri::MountPropagation::PropagationPrivate as i32;
        if !(m.recursive_read_only && m.readonly && private)
            || super::mounts::runtime_supports_rro(runtime)
            || !rro::kernel_supports()
        {
            continue;
        }
        let source = spec::host_source(&m.host_path)?;
        let target = rro::stage(&container.dir, index, &source).map_err(|err| DaemonError::Io {
            what: "stage a recursive read-only mount of",
            path: source.clone(),
            err,
        })?;
        staged.insert(m.container_path.clone(), target);
    }
    Ok(staged)
}

async fn setup(
    state: &State,
    pod: &Pod,
    container: &Container,
    layers: &[crid_image::digest::Digest],
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
    let userns = super::userns::of_pod(pod, config)?;
    match &userns {
        Some(userns) => {
            super::userns::make_rootfs_reachable(state, userns, &container.dir, &record.rootfs)?;
            super::userns::mount_rootfs(
                state,
                userns,
                &container.dir,
                layers,
                &upper,
                &work,
                &record.rootfs,
            )?;
        }
        None => overlay::mount_rootfs(&state.images.paths, layers, &upper, &work, &record.rootfs)?,
    }
    // CVE-2024-21626's class: no working directory under /proc or /dev (whose /dev/fd links
    // to /proc/self/fd), through the image's symlinks too, whatever the runtime does.
    let image_name = config.image.as_ref().map_or("", |i| i.image.as_str());
    crid_image::config::check_working_dir(
        &record.rootfs,
        &config.working_dir,
        &image.working_dir,
        image_name,
    )
    .map_err(invalid)?;
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
    if let Some(userns) = &userns {
        super::userns::check_user(&process_user, &userns.mappings)?;
    }
    let pod_record = pod.record();
    let cgroup_path = cgroups_path(state, pod, &container.id);
    // Held until the monitor reports the container created (the runtime has joined it then).
    let (namespaces, _target_pid_namespace) = namespaces(state, pod, config)?;
    let own_pid_namespace = matches!(namespaces.pid, PidNamespace::New);
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
    let container_name = container.metadata().name;
    let (annotations, dropped) = spec::spec_annotations(
        &pod.config.annotations,
        &config.annotations,
        &state.config.runtime.allowed_annotations,
        &[
            ("io.kubernetes.cri.sandbox-id", &pod.id),
            ("io.kubernetes.cri.container-name", &container_name),
        ],
    );
    if !dropped.is_empty() {
        tracing::debug!(container = %container.id, ?dropped, "annotations not in [runtime] allowed_annotations left out of the OCI spec");
    }
    let (staged_rro, staged_idmap) = match &userns {
        Some(userns) => super::userns::stage_volumes(container, userns)?,
        None => (stage_recursive_read_only(state, container)?, HashMap::new()),
    };
    let spec = spec::build(SpecInputs {
        config,
        image,
        rootfs: &record.rootfs,
        user: &process_user,
        hostname: Some(&pod_record.hostname),
        namespaces,
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
        staged_rro,
        user_namespace: userns.as_ref().map(|u| u.spec()),
        staged_idmap,
    })?;
    let bundle_config = container.dir.join("config.json");
    let json = serde_json::to_vec(&spec)
        .map_err(|e| DaemonError::Internal(format!("encode OCI spec: {e}")))?;
    persist::write_volatile(&bundle_config, &json)?;
    // What StopContainer, stats and updates need later, saved before the monitor runs.
    container.update(|r| {
        r.user = process_user.clone();
        r.cgroup_path = cgroup_path.clone();
        r.own_pid_namespace = own_pid_namespace;
    })?;
    let monitor = state.config.monitor_binary().ok_or_else(|| {
        DaemonError::FailedPrecondition("crimon not found next to crid or in $PATH".into())
    })?;
    let spec = MonitorSpec {
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
    };
    let pid = state.host.monitors.create(&spec).await?;
    container.update(|r| r.pid = pid)?;
    let id = container.id.clone();
    let checked = tokio::task::spawn_blocking(move || check_init_working_directory(&id, pid))
        .await
        .map_err(|e| DaemonError::Internal(format!("the working directory check ended: {e}")))
        .and_then(|checked| checked);
    if checked.is_err() {
        super::lifecycle::end_created(state, container).await;
    }
    checked
}

/// The id of the mount an open file is on (`mnt_id` of its /proc/self/fdinfo entry).
fn mount_id(fd: &OwnedFd) -> Result<u64, nix::errno::Errno> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(nix::errno::Errno::EINVAL)
}

/// Most steps up from a working directory to its root (deeper is refused).
const MAX_WORKING_DIRECTORY_DEPTH: usize = 4096;

/// The created init's working directory must be inside its root filesystem: runc's own check
/// since CVE-2024-21626, made again by crid whatever the runtime (distributions backport
/// runc's fixes without changing its version). crid refuses a working directory under /proc
/// or /dev when it checks the image, but one under a volume may be a symlink another
/// container planted (to `/proc/self/fd/N`: an fd the runtime leaked). Walks `..` up from the
/// init's working directory, in its own mount tree, until its root (inside) or the top of
/// the tree (outside). Directories are compared with their mount too: the host's own mount of
/// the container's root filesystem has the same device and inode as the container's root,
/// and `..` from it leads to the host's directories.
fn check_init_working_directory(id: &str, pid: i32) -> Result<(), DaemonError> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{fstat, Mode};
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let failed = |what: &'static str, path: &str| {
        let path = PathBuf::from(path);
        move |e: nix::errno::Errno| DaemonError::Io {
            what,
            path,
            err: e.into(),
        }
    };
    // A directory as (mount, device, inode): read once per directory.
    let identity = |fd: &OwnedFd, path: &str| -> Result<(u64, u64, u64), DaemonError> {
        let stat = fstat(fd).map_err(|e| failed("stat", path)(e))?;
        let mount = mount_id(fd).map_err(|e| failed("read the mount of", path)(e))?;
        Ok((mount, stat.st_dev, stat.st_ino))
    };
    let root_path = format!("/proc/{pid}/root");
    let root = open(root_path.as_str(), flags, Mode::empty())
        .map_err(|e| failed("open", &root_path)(e))?;
    let root = identity(&root, &root_path)?;
    let cwd_path = format!("/proc/{pid}/cwd");
    let mut dir =
        open(cwd_path.as_str(), flags, Mode::empty()).map_err(|e| failed("open", &cwd_path)(e))?;
    let mut here = identity(&dir, &cwd_path)?;
    for _ in 0..MAX_WORKING_DIRECTORY_DEPTH {
        if here == root {
            return Ok(());
        }
        let parent = openat(&dir, "..", flags, Mode::empty())
            .map_err(|e| failed("open a parent of", &cwd_path)(e))?;
        let up = identity(&parent, &cwd_path)?;
        // The top of the tree: its `..` is itself.
        if up == here {
            break;
        }
        (dir, here) = (parent, up);
    }
    Err(invalid(format!(
        "container {id}: its working directory is outside its root filesystem (a symlink to /proc/self/fd or another magic link on the way, CVE-2024-21626)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose root is a chroot: with its working directory left outside (refused),
    /// and inside.
    #[test]
    fn cve_2024_21626_an_init_working_directory_outside_its_root_is_refused() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1));
        assert_eq!(
            euid,
            Some("0"),
            "this test needs root (it chroots a process)"
        );
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("sub")).expect("mkdir");
        let chrooted = |before: &str, then: &str| {
            let script = format!(
                "import os, sys, time\n{before}\nos.chroot(sys.argv[1])\n{then}\nprint('ready', flush=True)\ntime.sleep(30)"
            );
            let mut child = std::process::Command::new("/usr/bin/python3")
                .args(["-c", &script])
                .arg(root.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python3 (install python3)");
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
                &mut line,
            )
            .expect("ready");
            assert_eq!(line.trim(), "ready");
            child
        };
        for (then, inside) in [
            ("pass", false),
            ("os.chdir('/')", true),
            ("os.chdir('/sub')", true),
        ] {
            let mut child = chrooted("", then);
            let checked = check_init_working_directory("c", child.id() as i32);
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(checked.is_ok(), inside, "{then}: {checked:?}");
        }
        // A working directory on another mount of the same directory (the host's mount of a
        // container's root filesystem): same device and inode as the root, yet `..` leaves.
        let other = tempfile::tempdir().expect("tempdir");
        let bind = |args: &[&std::ffi::OsStr]| {
            let status = std::process::Command::new("mount")
                .args(args)
                .status()
                .expect("mount");
            assert!(status.success(), "mount {args:?}");
        };
        bind(&[
            "--bind".as_ref(),
            root.path().as_os_str(),
            other.path().as_os_str(),
        ]);
        let mut child = chrooted(&format!("os.chdir({:?})", other.path()), "pass");
        let checked = check_init_working_directory("c", child.id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::process::Command::new("umount")
            .arg(other.path())
            .status();
        assert!(checked.is_err(), "another mount of the root passed");
    }

    #[test]
    fn a_process_is_placed_in_a_container_by_a_whole_cgroup_component() {
        let v1 = "12:pids:/crid/crid-abc\n11:memory:/crid/crid-abc\n0::/\n";
        assert!(in_container_cgroup(v1, "abc"));
        assert!(!in_container_cgroup(v1, "ab"));
        assert!(!in_container_cgroup("0::/crid/crid-abcd\n", "abc"));
        assert!(in_container_cgroup(
            "0::/system.slice/crid-abc.scope\n",
            "abc"
        ));
        assert!(!in_container_cgroup(
            "0::/user.slice/session-1.scope\n",
            "abc"
        ));
    }

    #[test]
    fn log_directories_are_made_beneath_the_log_directory_only() {
        let base = tempfile::tempdir().expect("tempdir");
        let (dir, outside) = (base.path().join("logs"), base.path().join("outside"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, dir.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("a", dir.join("inside")).expect("symlink");
        assert_eq!(
            make_dirs_beneath(&dir, Path::new("escape/sub")),
            Err(nix::Error::EXDEV)
        );
        assert!(!outside.join("sub").exists(), "made a directory outside");
        let real = std::fs::canonicalize(&dir).expect("canonical");
        assert_eq!(
            make_dirs_beneath(&dir, Path::new("a/b")),
            Ok(real.join("a/b"))
        );
        // A symlink that stays inside is followed, and the real path returned.
        assert_eq!(
            make_dirs_beneath(&dir, Path::new("inside/c")),
            Ok(real.join("a/c"))
        );
        assert_eq!(make_dirs_beneath(&dir, Path::new("")), Ok(real));
    }

    #[test]
    fn a_target_that_is_not_a_containers_init_is_refused() {
        // This test process is in no crid container's cgroup.
        let err = target_pid_namespace("not-a-container", std::process::id() as i32)
            .err()
            .expect("refused");
        assert!(matches!(err, DaemonError::FailedPrecondition(_)), "{err:?}");
        assert!(matches!(
            target_pid_namespace("x", 0).err(),
            Some(DaemonError::FailedPrecondition(_))
        ));
    }
}
