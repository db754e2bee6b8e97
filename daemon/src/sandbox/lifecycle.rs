//! RunPodSandbox, StopPodSandbox and RemovePodSandbox: a pod is its pinned namespaces, its
//! network attachment, its /dev/shm and its files; no infra container. Every step is
//! recorded as it is made, so teardown (after a failed run, on stop, after a crash) undoes
//! exactly what exists, and can be repeated.

use std::path::Path;
use std::sync::Arc;

use crid_proto::cri;

use super::{files, shm};
use crate::config::CgroupManager;
use crate::error::DaemonError;
use crate::namespaces::{self, PinRequest};
use crate::state::pod::{namespace_options, Pod, PodRecord};
use crate::state::{new_id, persist, Kind, State};
use crid_common::sysctl;

/// Most bytes of the host's resolv.conf copied into a pod without a DNS config.
const MAX_HOST_RESOLV_BYTES: u64 = 64 * 1024;

fn invalid(message: impl Into<String>) -> DaemonError {
    DaemonError::InvalidArgument(message.into())
}

/// The runtime handlers crid answers to: the default ("") and the runtime's own name.
pub fn check_handler(state: &State, handler: &str) -> Result<(), DaemonError> {
    let runtime = crate::status::handler_name(&state.config);
    if handler.is_empty() || handler == runtime {
        Ok(())
    } else {
        Err(invalid(format!(
            "runtime handler {handler:?} is not configured (crid serves \"\" and {runtime:?})"
        )))
    }
}

fn check_cgroup_parent(manager: CgroupManager, parent: &str) -> Result<(), DaemonError> {
    if parent.is_empty() {
        return Ok(());
    }
    let ok = match manager {
        CgroupManager::Cgroupfs => {
            parent.starts_with('/')
                && !Path::new(parent)
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
        }
        CgroupManager::Systemd => parent.ends_with(".slice") && !parent.contains('/'),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "config.linux.cgroup_parent {parent:?} is not a valid {manager:?} cgroup parent"
        )))
    }
}

/// How much of the pod id a pod without a hostname gets as its hostname (CRI-O's choice).
const DEFAULT_HOSTNAME_LEN: usize = 12;

fn host_resolv_conf() -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open("/etc/resolv.conf") {
        let _ = f.take(MAX_HOST_RESOLV_BYTES).read_to_string(&mut text);
    }
    text
}

/// What a pod needs made, worked out (and checked) before anything is made.
struct Plan {
    pins: PinRequest,
    host_network: bool,
    resolv_conf: String,
}

/// Every check RunPodSandbox makes on its request before anything is made, under
/// `cgroup_manager` (what `fuzz/`'s pod_request target runs).
pub(crate) fn check_request(
    cgroup_manager: CgroupManager,
    id: &str,
    config: &cri::PodSandboxConfig,
) -> Result<(), DaemonError> {
    plan(cgroup_manager, id, config).map(drop)
}

fn plan(
    cgroup_manager: CgroupManager,
    id: &str,
    config: &cri::PodSandboxConfig,
) -> Result<(Plan, PodRecord), DaemonError> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata is missing"))?;
    if meta.name.is_empty() {
        return Err(invalid("config.metadata.name is empty"));
    }
    if meta.namespace.is_empty() {
        return Err(invalid("config.metadata.namespace is empty"));
    }
    // These become CNI_ARGS values (`K8S_POD_NAME=…;…`): a `;` or `=` would add a key of its
    // own. Kubernetes' name rules never allow them; crictl and critest names pass.
    for (field, value) in [
        ("config.metadata.name", &meta.name),
        ("config.metadata.namespace", &meta.namespace),
        ("config.metadata.uid", &meta.uid),
    ] {
        crid_cni::check_arg_value(value)
            .map_err(|why| invalid(format!("{field} {value:?} is invalid: {why}")))?;
    }
    let options = namespace_options(config);
    const USERNS_FIELD: &str = "config.linux.security_context.namespace_options.userns_options";
    let user_namespace = crate::idmap::pod_mappings(options.userns_options.as_ref())
        .map_err(|e| invalid(format!("{USERNS_FIELD}: {e}")))?;
    let mode = |m: i32| cri::NamespaceMode::try_from(m).unwrap_or(cri::NamespaceMode::Pod);
    let host_network = mode(options.network) == cri::NamespaceMode::Node;
    let host_ipc = mode(options.ipc) == cri::NamespaceMode::Node;
    let pid = match mode(options.pid) {
        cri::NamespaceMode::Pod => true,
        cri::NamespaceMode::Node | cri::NamespaceMode::Container => false,
        cri::NamespaceMode::Target => {
            return Err(invalid(
                "config.linux.security_context.namespace_options.pid: TARGET is for containers, not pods",
            ))
        }
    };
    // Kubernetes' own rule (hostUsers: false is refused with hostNetwork, hostIPC and
    // hostPID): a host namespace is owned by the host's user namespace, where container root
    // has no capability, so the runtime could not set it up.
    if user_namespace.is_some() {
        for (shared, kind) in [
            (host_network, "network"),
            (host_ipc, "IPC"),
            (mode(options.pid) == cri::NamespaceMode::Node, "PID"),
        ] {
            if shared {
                return Err(invalid(format!(
                    "{USERNS_FIELD}: {}",
                    crate::idmap::UsernsError::HostNamespace(kind)
                )));
            }
        }
    }
    let linux = config.linux.clone().unwrap_or_default();
    let mut sysctls = Vec::new();
    for (key, value) in &linux.sysctls {
        let (key, _) = sysctl::validate(key, value, host_network, host_ipc)
            .map_err(|e| invalid(format!("config.linux.sysctls: {e}")))?;
        sysctls.push((key, value.clone()));
    }
    sysctls.sort();
    let hostname = if host_network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else if config.hostname.is_empty() {
        // CRI-O's default: the first 12 characters of the pod id (the metadata name may be
        // longer than a hostname can be).
        id[..DEFAULT_HOSTNAME_LEN.min(id.len())].to_owned()
    } else {
        files::check_hostname(&config.hostname)
            .map_err(|e| invalid(format!("config.hostname: {e}")))?;
        config.hostname.clone()
    };
    let resolv_conf = match &config.dns_config {
        Some(dns)
            if !(dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty()) =>
        {
            files::resolv_conf(dns).map_err(|e| invalid(format!("config.dns_config: {e}")))?
        }
        _ => host_resolv_conf(),
    };
    if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
        return Err(invalid(format!(
            "config.log_directory {:?} is not absolute",
            config.log_directory
        )));
    }
    // kubelet sends a clean path; one with `..` names another directory than it seems to.
    if Path::new(&config.log_directory)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(invalid(format!(
            "config.log_directory {:?} contains '..'",
            config.log_directory
        )));
    }
    check_cgroup_parent(cgroup_manager, &linux.cgroup_parent)?;
    let record = PodRecord {
        name: format!(
            "k8s_POD_{}_{}_{}_{}",
            meta.name, meta.namespace, meta.uid, meta.attempt
        ),
        hostname: hostname.clone(),
        cgroup_parent: linux.cgroup_parent.clone(),
        user_namespace,
        ..Default::default()
    };
    let pins = PinRequest {
        net: !host_network,
        ipc: !host_ipc,
        uts: !host_network,
        pid,
        user: user_namespace,
        hostname: (!host_network).then_some(hostname),
        sysctls,
    };
    Ok((
        Plan {
            pins,
            host_network,
            resolv_conf,
        },
        record,
    ))
}

/// Runs a pod; returns its id. On failure nothing of it remains.
pub async fn run(
    state: &State,
    config: cri::PodSandboxConfig,
    handler: &str,
) -> Result<String, DaemonError> {
    check_handler(state, handler)?;
    let id = new_id();
    let (plan, mut record) = plan(state.config.runtime.cgroup_manager, &id, &config)?;
    if record.user_namespace.is_some() {
        let crid_config = state.config.clone();
        let supported = tokio::task::spawn_blocking(move || {
            crate::status::user_namespaces_supported(&crid_config)
        })
        .await
        .map_err(|e| DaemonError::Internal(format!("id-mapping probe: {e}")))?;
        if !supported {
            return Err(DaemonError::FailedPrecondition(
                "config.linux.security_context.namespace_options.userns_options: this host cannot id-map overlay layers (see crid's log), so pods cannot have user namespaces".into(),
            ));
        }
    }
    if !config.log_directory.is_empty() {
        let dir = Path::new(&config.log_directory);
        std::fs::create_dir_all(dir).map_err(|err| DaemonError::Io {
            what: "create log directory",
            path: dir.to_owned(),
            err,
        })?;
    }
    record.id = id.clone();
    record.created_at = persist::now_nanos();
    record.runtime_handler = handler.to_owned();
    state.reserve_name(&record.name, &id, Kind::Pod)?;
    let name = record.name.clone();
    let dir = state.paths.pods.join(&id);
    let pod = Arc::new(Pod::new(dir.clone(), config, record));
    let made = async {
        std::fs::create_dir(&dir).map_err(|err| DaemonError::Io {
            what: "create",
            path: dir.clone(),
            err,
        })?;
        pod.save_config()?;
        setup(state, &pod, &plan).await
    };
    match made.await {
        Ok(()) => {
            state.insert_pod(pod);
            Ok(id)
        }
        Err(err) => {
            if let Err(undo) = teardown(state, &pod).await {
                tracing::error!(pod = %id, error = %undo.chain(), "cleaning up after a failed RunPodSandbox failed");
                // Nothing can retry a pod that is forgotten: what does not need the network
                // plugin goes anyway (the plugin's own state, such as a lease, may stay, as
                // with CRI-O, which logs the failed DEL and removes the sandbox).
                release_local(state, &pod);
            }
            let _ = persist::remove_dir(&dir);
            state.release_name(&name, &id);
            Err(err)
        }
    }
}

async fn setup(state: &State, pod: &Pod, plan: &Plan) -> Result<(), DaemonError> {
    let namespaces = state
        .host
        .pinner
        .pin(&state.paths.namespaces, &pod.id, &plan.pins)
        .await?;
    pod.update(|r| r.namespaces = namespaces)?;
    // With a user namespace, the pod's shared files belong to container root.
    let owner = plan.pins.user.map(|m| m.host_root());
    if plan.pins.ipc {
        let target = pod.dir.join("shm");
        shm::mount(&target, owner).map_err(|err| DaemonError::Io {
            what: "mount /dev/shm tmpfs on",
            path: target.clone(),
            err: err.into(),
        })?;
        pod.update(|r| r.shm = Some(target))?;
    }
    let hostname = pod.record().hostname;
    write_pod_file(pod, "resolv.conf", plan.resolv_conf.as_bytes(), owner)?;
    write_pod_file(pod, "hostname", format!("{hostname}\n").as_bytes(), owner)?;
    let mut ips = Vec::new();
    if !plan.host_network {
        let netns = pod.record().namespaces.net.ok_or_else(|| {
            DaemonError::Internal(format!("pod {}: no network namespace", pod.id))
        })?;
        let result = state
            .host
            .network
            .attach(&state.config.network, &pod.id, &netns, &pod.config)
            .await?;
        ips = crid_cni::ips(&result);
        let kept = ips.clone();
        pod.update(|r| {
            r.cni_result = Some(result);
            r.ips = kept;
        })?;
    }
    let hosts = if plan.host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        files::hosts(&hostname, ips.first().map(String::as_str))
            .map_err(|e| invalid(format!("config.hostname: {e}")))?
    };
    write_pod_file(pod, "hosts", hosts.as_bytes(), owner)?;
    pod.update(|r| r.ready = true)
}

/// Writes one of the files a pod's containers share (`/etc/hosts`…), owned by `owner`
/// (container root's host ids with a user namespace, so container root may change it as
/// it may without one).
fn write_pod_file(
    pod: &Pod,
    name: &str,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), DaemonError> {
    let path = pod.dir.join(name);
    persist::write_volatile_readable(&path, bytes)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|err| DaemonError::Io {
            what: "chown",
            path,
            err,
        })?;
    }
    Ok(())
}

/// Undoes what does not involve the network plugin: namespaces (the network one with
/// whatever the plugin left in it), /dev/shm. Errors are logged.
fn release_local(state: &State, pod: &Pod) {
    let record = pod.record();
    if let Err(err) = state.host.pinner.unpin(&record.namespaces) {
        tracing::error!(pod = %pod.id, error = %crid_common::error_chain::error_chain(&err), "removing the namespaces of a failed pod failed");
    }
    if let Some(target) = &record.shm {
        if let Err(err) = shm::unmount(target) {
            tracing::error!(pod = %pod.id, path = %target.display(), error = %err, "unmounting the /dev/shm of a failed pod failed");
        }
    }
}

/// Undoes what the record says exists: network attachment, namespaces, /dev/shm. The network
/// goes first and, if DEL fails, the namespace stays pinned so that DEL can be retried.
pub async fn teardown(state: &State, pod: &Pod) -> Result<(), DaemonError> {
    let record = pod.record();
    if let Some(netns) = &record.namespaces.net {
        let detached = state
            .host
            .network
            .detach(
                &state.config.network,
                &pod.id,
                netns,
                &pod.config,
                record.cni_result.as_ref(),
            )
            .await;
        match detached {
            Ok(()) => {}
            // No configuration, and no ADD ever ran with one: nothing was attached.
            Err(crid_cni::CniError::NoConfig(_)) if record.cni_result.is_none() => {}
            Err(err) => return Err(err.into()),
        }
        pod.update(|r| {
            r.cni_result = None;
            r.ips.clear();
        })?;
    }
    state.host.pinner.unpin(&record.namespaces)?;
    pod.update(|r| r.namespaces = Default::default())?;
    if let Some(target) = &record.shm {
        shm::unmount(target).map_err(|err| DaemonError::Io {
            what: "unmount",
            path: target.clone(),
            err: err.into(),
        })?;
        pod.update(|r| r.shm = None)?;
    }
    Ok(())
}

/// Stops a pod: kills its containers, then tears down its network and namespaces. Absent is
/// fine.
pub async fn stop(state: &State, id: &str) -> Result<(), DaemonError> {
    let pod = match state.pod(id) {
        Ok(pod) => pod,
        Err(DaemonError::NotFound(_)) => return Ok(()),
        Err(err) => return Err(err),
    };
    let _guard = pod.lifecycle.lock().await;
    stop_locked(state, &pod).await
}

async fn stop_locked(state: &State, pod: &Pod) -> Result<(), DaemonError> {
    for container in state.containers_of(&pod.id) {
        crate::container::lifecycle::stop(state, &container, 0).await?;
    }
    teardown(state, pod).await?;
    pod.update(|r| r.ready = false)
}

/// Removes a pod with its containers. Absent is fine.
pub async fn remove(state: &State, id: &str) -> Result<(), DaemonError> {
    let pod = match state.pod(id) {
        Ok(pod) => pod,
        Err(DaemonError::NotFound(_)) => return Ok(()),
        Err(err) => return Err(err),
    };
    let _guard = pod.lifecycle.lock().await;
    stop_locked(state, &pod).await?;
    for container in state.containers_of(&pod.id) {
        crate::container::lifecycle::remove(state, &container).await?;
    }
    persist::remove_dir(&pod.dir)?;
    state.forget_pod(&pod.id);
    Ok(())
}

/// After a restart: a ready pod whose namespaces are gone (the host rebooted, or someone
/// unmounted them) is not ready any more.
pub fn recover(state: &State) {
    for pod in state.pods() {
        let record = pod.record();
        if !record.ready {
            continue;
        }
        let ns = &record.namespaces;
        let pins_gone = [&ns.net, &ns.ipc, &ns.uts, &ns.pid, &ns.user]
            .into_iter()
            .flatten()
            .any(|p| !p.exists());
        let holder_gone = ns
            .pid_holder
            .is_some_and(|(pid, started)| namespaces::start_time(pid) != Some(started));
        if pins_gone || holder_gone {
            tracing::warn!(pod = %pod.id, "pod namespaces are gone; marking the pod not ready");
            if let Err(err) = pod.update(|r| r.ready = false) {
                tracing::error!(pod = %pod.id, error = %err.chain(), "cannot record the pod's state");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crid_proto::cri;

    use crate::fake_host::Fakes;
    use crate::state::State;

    /// A pod with its own network, UTS and PID namespaces and the host's IPC namespace (a
    /// pod IPC namespace would mount a tmpfs, which needs root).
    fn pod_config(name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        ipc: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Nothing of any pod is left: no record, directory, pin or network attachment, and the
    /// name is free.
    fn assert_nothing_left(fakes: &Fakes, state: &State) {
        assert!(state.pods().is_empty(), "a pod is still known");
        let dirs = crate::state::persist::subdirectories(&state.paths.pods);
        assert!(dirs.is_empty(), "pod directories left: {dirs:?}");
        let pinned = fakes.pinner.pinned.lock().expect("lock").clone();
        assert!(pinned.is_empty(), "namespaces left pinned: {pinned:?}");
        let attached = fakes.network.attached.lock().expect("lock").clone();
        assert!(attached.is_empty(), "pods left attached: {attached:?}");
    }

    #[tokio::test]
    async fn a_pod_whose_namespaces_cannot_be_pinned_leaves_nothing() {
        let fakes = Fakes::new();
        let state = fakes.state();
        fakes.pinner.fail.store(true, Ordering::SeqCst);
        let err = super::run(&state, pod_config("p"), "")
            .await
            .expect_err("run fails");
        assert!(
            matches!(err, crate::error::DaemonError::Namespace(_)),
            "{err:?}"
        );
        assert!(
            fakes.calls.of("add").is_empty(),
            "CNI ADD without namespaces"
        );
        assert!(
            fakes.calls.of("del").is_empty(),
            "CNI DEL without a network namespace"
        );
        assert_nothing_left(&fakes, &state);
        // The name was released: the retry runs.
        fakes.pinner.fail.store(false, Ordering::SeqCst);
        super::run(&state, pod_config("p"), "")
            .await
            .expect("retry runs");
    }

    #[tokio::test]
    async fn a_failed_cni_add_unpins_the_namespaces() {
        let fakes = Fakes::new();
        let state = fakes.state();
        fakes.network.fail_add.store(true, Ordering::SeqCst);
        let err = super::run(&state, pod_config("p"), "")
            .await
            .expect_err("run fails");
        assert!(matches!(err, crate::error::DaemonError::Cni(_)), "{err:?}");
        // DEL after a failed ADD (the plugin may have made part of it), without a result.
        let dels = fakes.calls.of("del");
        assert_eq!(dels.len(), 1, "{dels:?}");
        assert!(dels[0].ends_with("with_result=false"), "{dels:?}");
        assert_eq!(fakes.calls.of("unpin").len(), 1);
        assert_nothing_left(&fakes, &state);
        fakes.network.fail_add.store(false, Ordering::SeqCst);
        super::run(&state, pod_config("p"), "")
            .await
            .expect("retry runs");
    }

    #[tokio::test]
    async fn a_step_after_cni_add_failing_detaches_and_unpins() {
        let fakes = Fakes::new();
        let state = fakes.state();
        fakes.network.break_hosts.store(true, Ordering::SeqCst);
        let err = super::run(&state, pod_config("p"), "")
            .await
            .expect_err("run fails");
        assert!(
            matches!(err, crate::error::DaemonError::Io { .. }),
            "{err:?}"
        );
        let calls = fakes.calls.all();
        let verbs: Vec<&str> = calls.iter().filter_map(|c| c.split(' ').next()).collect();
        // The network goes before the namespace it lives in.
        assert_eq!(verbs, ["pin", "add", "del", "unpin"], "{calls:?}");
        assert!(
            calls[2].ends_with("with_result=true"),
            "DEL without ADD's result: {calls:?}"
        );
        assert_nothing_left(&fakes, &state);
    }

    #[tokio::test]
    async fn a_failed_cni_del_keeps_the_network_namespace_for_the_retry() {
        let fakes = Fakes::new();
        let state = fakes.state();
        let id = super::run(&state, pod_config("p"), "").await.expect("run");
        let pod = state.pod(&id).expect("pod");
        let record = pod.record();
        assert!(record.ready);
        assert_eq!(record.ips, ["10.88.0.7"]);
        let hosts = std::fs::read_to_string(pod.dir.join("hosts")).expect("hosts");
        assert!(hosts.contains("10.88.0.7"), "{hosts}");

        fakes.network.fail_del.store(true, Ordering::SeqCst);
        super::stop(&state, &id)
            .await
            .expect_err("stop fails while DEL fails");
        let netns = record.namespaces.net.clone().expect("netns");
        assert!(
            netns.exists(),
            "the network namespace went before DEL succeeded"
        );
        assert!(fakes.calls.of("unpin").is_empty());
        assert!(
            pod.record().cni_result.is_some(),
            "the ADD result is kept for DEL"
        );

        fakes.network.fail_del.store(false, Ordering::SeqCst);
        super::stop(&state, &id).await.expect("stop");
        assert!(!pod.record().ready);
        assert!(!netns.exists());
        // Stop again, then remove: both repeat nothing harmful.
        super::stop(&state, &id).await.expect("second stop");
        super::remove(&state, &id).await.expect("remove");
        super::remove(&state, &id).await.expect("second remove");
        assert_nothing_left(&fakes, &state);
    }

    #[tokio::test]
    async fn after_a_restart_a_pod_whose_pins_are_gone_is_not_ready() {
        let fakes = Fakes::new();
        let state = fakes.state();
        let kept = super::run(&state, pod_config("kept"), "")
            .await
            .expect("run");
        let lost = super::run(&state, pod_config("lost"), "")
            .await
            .expect("run");
        let uts = state
            .pod(&lost)
            .expect("pod")
            .record()
            .namespaces
            .uts
            .expect("uts");
        drop(state);
        // The host rebooted, say: the pins of one pod are gone.
        std::fs::remove_file(&uts).expect("remove pin");
        let state = fakes.state();
        super::recover(&state);
        assert!(state.pod(&kept).expect("kept").record().ready);
        assert!(!state.pod(&lost).expect("lost").record().ready);
        // The name stays reserved across the restart.
        let again = super::run(&state, pod_config("lost"), "")
            .await
            .expect_err("name taken");
        assert!(
            matches!(again, crate::error::DaemonError::AlreadyExists(_)),
            "{again:?}"
        );
    }
}
