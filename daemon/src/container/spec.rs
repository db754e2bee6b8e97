//! The OCI runtime spec of a container: the CRI config merged with the image config, in the
//! pod's namespaces, with the pod's shared files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crid_proto::cri;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDevice, LinuxDeviceBuilder,
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxIdMapping,
    LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::{resources, security};
use crate::state::container::ProcessUser;

pub use crate::spec_error::SpecError;

// The image config, parsed strictly (an image config that does not parse is an error).
pub use crid_image::config::{ImageConfig, ImageRuntimeConfig};

/// The PATH a container gets when neither the image nor the CRI config sets one.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments, by Kubernetes' rules: `command` replaces the image's entrypoint
/// (and drops its cmd); `args` replace the image's cmd.
pub fn process_args(
    config: &cri::ContainerConfig,
    image: &ImageRuntimeConfig,
) -> Result<Vec<String>, SpecError> {
    let args = if config.command.is_empty() {
        let mut args = image.entrypoint.clone().unwrap_or_default();
        if config.args.is_empty() {
            args.extend(image.cmd.clone().unwrap_or_default());
        } else {
            args.extend(config.args.iter().cloned());
        }
        args
    } else {
        let mut args = config.command.clone();
        args.extend(config.args.iter().cloned());
        args
    };
    if args.is_empty() {
        return Err(SpecError::Invalid(
            "no command: config.command, config.args and the image's entrypoint and cmd are all empty"
                .into(),
        ));
    }
    // No argv string can hold one; runc would refuse it later, less clearly.
    if let Some(arg) = args.iter().find(|a| a.contains('\0')) {
        let shown: String = arg.chars().take(64).collect();
        return Err(SpecError::Invalid(format!(
            "command argument {shown:?} contains a NUL byte"
        )));
    }
    Ok(args)
}

/// The environment: the image's, overridden by the CRI config's, with a PATH.
pub fn process_env(
    config: &cri::ContainerConfig,
    image: &ImageRuntimeConfig,
    hostname: &str,
) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    let key_of = |entry: &str| entry.split('=').next().unwrap_or_default().to_owned();
    for kv in &config.envs {
        if kv.key.is_empty()
            || kv.key.contains('=')
            || kv.key.contains('\0')
            || kv.value.contains('\0')
        {
            return Err(SpecError::Invalid(format!(
                "config.envs: invalid variable name {:?}",
                kv.key
            )));
        }
        env.retain(|e| key_of(e) != kv.key);
        env.push(format!("{}={}", kv.key, kv.value));
    }
    for entry in &env {
        check_env_entry(entry)?;
    }
    let has = |env: &[String], key: &str| env.iter().any(|e| key_of(e) == key);
    if !has(&env, "PATH") {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    if !has(&env, "HOSTNAME") && !hostname.is_empty() {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if config.tty && !has(&env, "TERM") {
        env.push("TERM=xterm".to_owned());
    }
    Ok(env)
}

/// One `NAME=value` entry of the process environment, from the image or the request. Refused:
/// a NUL anywhere (runc refuses it later, with a less clear error), an entry without `=` or
/// with an empty name, a line break in a name (no name has one; kubelet's validation refuses
/// them too), and a line break in `HOME`, which tools write into `/etc/passwd` (CRI-O's fix
/// for CVE-2022-4318). Line breaks in other values are kept: multi-line values (certificates)
/// are legitimate, and runc passes them through.
fn check_env_entry(entry: &str) -> Result<(), SpecError> {
    let invalid = |why: &str| {
        let shown: String = entry.chars().take(64).collect();
        Err(SpecError::Invalid(format!(
            "environment variable {shown:?}: {why}"
        )))
    };
    let Some((name, value)) = entry.split_once('=') else {
        return invalid("no '=' between name and value");
    };
    if name.is_empty() {
        return invalid("the name is empty");
    }
    if entry.contains('\0') {
        return invalid("contains a NUL byte");
    }
    if name.contains(['\n', '\r']) {
        return invalid("a line break in the name");
    }
    if name == "HOME" && value.contains(['\n', '\r']) {
        return invalid("a line break in HOME (CVE-2022-4318)");
    }
    Ok(())
}

/// The annotations of the OCI spec: pod and container annotations whose key starts with one
/// of `allowed` (the container's win over the pod's), then crid's own keys (`own`), which no
/// request can override. Everything else is left out and returned (sorted) so the caller can
/// say so: runtime-specific annotations such as crun's `run.oci.*` or runc's
/// `org.systemd.property.*` change how the runtime sets the container up, and the pod author
/// must not reach them (CVE-2024-3154). Left out rather than refused, as CRI-O's
/// `allowed_annotations` and containerd's `pod_annotations`/`container_annotations` do:
/// kubelet puts its own annotations on every container.
pub fn spec_annotations(
    pod: &HashMap<String, String>,
    container: &HashMap<String, String>,
    allowed: &[String],
    own: &[(&str, &str)],
) -> (HashMap<String, String>, Vec<String>) {
    let is_allowed = |key: &str| {
        allowed
            .iter()
            .any(|prefix| key.starts_with(prefix.as_str()))
    };
    let mut out = HashMap::new();
    let mut dropped = Vec::new();
    for (key, value) in pod.iter().chain(container) {
        if is_allowed(key) {
            out.insert(key.clone(), value.clone());
        } else {
            dropped.push(key.clone());
        }
    }
    for (key, value) in own {
        out.insert((*key).to_owned(), (*value).to_owned());
    }
    dropped.sort();
    dropped.dedup();
    (out, dropped)
}

/// Signal number of an image's `StopSignal` (`SIGTERM`, `TERM`, `15`); SIGTERM when unset.
pub fn stop_signal(name: &str) -> Result<i32, SpecError> {
    if name.is_empty() {
        return Ok(libc::SIGTERM);
    }
    if let Ok(n) = name.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let with_prefix = format!("SIG{bare}");
    with_prefix
        .parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| SpecError::Invalid(format!("image stop signal {name:?} is not a signal")))
}

/// Where a container's namespaces come from.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    /// Pinned pod namespaces to join (None: the host's).
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// PID namespace: `Join(path)`, `New`, or `Host`.
    pub pid: PidNamespace,
    pub cgroup: bool,
}

#[derive(Debug, Clone, Default)]
pub enum PidNamespace {
    #[default]
    New,
    Join(PathBuf),
    Host,
}

/// The pod's user namespace, joined by path; the runtime wants its mappings too.
#[derive(Debug, Clone)]
pub struct UserNamespace {
    pub path: PathBuf,
    pub mappings: crate::idmap::PodIdMappings,
}

/// The pod's files the container gets (all absolute host paths).
#[derive(Debug, Clone)]
pub struct PodFiles {
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    pub hostname: PathBuf,
    /// The pod's /dev/shm (the host's with host IPC).
    pub shm: PathBuf,
}

/// Everything the spec is built from.
pub struct SpecInputs<'a> {
    pub config: &'a cri::ContainerConfig,
    pub image: &'a ImageRuntimeConfig,
    pub rootfs: &'a Path,
    pub user: &'a ProcessUser,
    pub hostname: Option<&'a str>,
    pub namespaces: Namespaces,
    pub files: PodFiles,
    pub cgroups_path: String,
    pub annotations: HashMap<String, String>,
    /// A privileged container (its pod must be privileged too).
    pub privileged: bool,
    /// The pids cgroup limit from crid's configuration (0: none).
    pub pids_limit: i64,
    /// The OCI runtime binary (its features decide what mounts may ask for).
    pub runtime: PathBuf,
    /// Recursive read-only mounts crid staged itself (see `rro`), by container path: bound
    /// from there, without asking the runtime for `rro`.
    pub staged_rro: HashMap<String, PathBuf>,
    /// The pod's user namespace (None: the host's).
    pub user_namespace: Option<UserNamespace>,
    /// Other mounts crid id-mapped itself for the pod's user namespace (see `idmap`), by
    /// container path: bound from there.
    pub staged_idmap: HashMap<String, PathBuf>,
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()?)
}

fn bind(
    destination: &str,
    source: &Path,
    readonly: bool,
    extra: &[&str],
) -> Result<Mount, SpecError> {
    let mut options = vec![
        "rbind".to_owned(),
        if readonly { "ro" } else { "rw" }.to_owned(),
    ];
    options.extend(extra.iter().map(|o| (*o).to_owned()));
    Ok(MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options)
        .build()?)
}

/// A container path must be absolute and clean of `..` (runc resolves it inside the root).
fn check_container_path(field: &str, path: &str) -> Result<(), SpecError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(SpecError::Invalid(format!(
            "{field}: container path {path:?} must be absolute without '..'"
        )));
    }
    Ok(())
}

/// The host source of a CRI mount, symlinks resolved (created as a directory when missing,
/// as kubelet expects of the runtime).
pub(super) fn host_source(host_path: &str) -> Result<PathBuf, SpecError> {
    let path = Path::new(host_path);
    if !path.is_absolute() {
        return Err(SpecError::Invalid(format!(
            "config.mounts: host path {host_path:?} is not absolute"
        )));
    }
    match std::fs::canonicalize(path) {
        Ok(resolved) => Ok(resolved),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|err| SpecError::Io {
                what: "create mount source",
                path: path.to_owned(),
                err,
            })?;
            std::fs::canonicalize(path).map_err(|err| SpecError::Io {
                what: "resolve",
                path: path.to_owned(),
                err,
            })
        }
        Err(err) => Err(SpecError::Io {
            what: "resolve",
            path: path.to_owned(),
            err,
        }),
    }
}

/// The CRI mounts as OCI mounts, parents before children, and the rootfs propagation they
/// need.
fn cri_mounts(
    mounts: &[cri::Mount],
    runtime: &Path,
    staged_rro: &HashMap<String, PathBuf>,
    staged_idmap: &HashMap<String, PathBuf>,
) -> Result<(Vec<Mount>, Option<&'static str>), SpecError> {
    use super::mounts::{check_propagation, runtime_supports_rro, Propagation};
    let mut sorted: Vec<&cri::Mount> = mounts.iter().collect();
    sorted.sort_by_key(|m| Path::new(&m.container_path).components().count());
    let mut out = Vec::with_capacity(sorted.len());
    let mut propagation = None;
    for m in sorted {
        check_container_path("config.mounts", &m.container_path)?;
        // Refused rather than ignored: each would give the container something else than
        // what was asked for.
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(SpecError::Invalid(format!(
                "config.mounts: {}: id-mapped mounts are not supported by crid yet",
                m.container_path
            )));
        }
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            return Err(SpecError::Invalid(format!(
                "config.mounts: {}: image volumes are not supported by crid yet",
                m.container_path
            )));
        }
        let mut source = host_source(&m.host_path)?;
        let (mode, wanted) = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationHostToContainer) => {
                propagation.get_or_insert("rslave");
                ("rslave", Propagation::Slave)
            }
            Ok(cri::MountPropagation::PropagationBidirectional) => {
                propagation = Some("rshared");
                ("rshared", Propagation::Shared)
            }
            _ => ("rprivate", Propagation::Private),
        };
        check_propagation(&source, wanted, &m.container_path)?;
        if let Some(staged) = staged_idmap.get(&m.container_path) {
            source = staged.clone();
        }
        let mut options = vec![mode];
        if m.recursive_read_only {
            // Kubernetes' rules: only on a read-only, private mount.
            if !m.readonly || wanted != Propagation::Private {
                return Err(SpecError::Invalid(format!(
                    "config.mounts: {}: recursive_read_only needs readonly and private propagation",
                    m.container_path
                )));
            }
            if let Some(staged) = staged_rro.get(&m.container_path) {
                source = staged.clone();
            } else if runtime_supports_rro(runtime) {
                options.push("rro");
            } else {
                return Err(SpecError::Invalid(format!(
                    "config.mounts: {}: recursive read-only needs a kernel with mount_setattr (Linux 5.12) or an OCI runtime with the rro mount option ({} lacks it)",
                    m.container_path,
                    runtime.display()
                )));
            }
        }
        out.push(bind(&m.container_path, &source, m.readonly, &options)?);
    }
    Ok((out, propagation))
}

/// A CRI device as an OCI device and the cgroup rule that allows it.
fn device(d: &cri::Device) -> Result<(LinuxDevice, LinuxDeviceCgroup), SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    check_container_path("config.devices", &d.container_path)?;
    let meta = std::fs::metadata(&d.host_path).map_err(|err| SpecError::Io {
        what: "stat device",
        path: d.host_path.clone().into(),
        err,
    })?;
    let typ = if meta.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if meta.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(SpecError::Invalid(format!(
            "config.devices: {} is not a device node",
            d.host_path
        )));
    };
    let permissions = if d.permissions.is_empty() {
        "rwm"
    } else {
        &d.permissions
    };
    if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(SpecError::Invalid(format!(
            "config.devices: permissions {permissions:?} of {} are not a subset of \"rwm\"",
            d.host_path
        )));
    }
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev) as i64, libc::minor(rdev) as i64);
    let dev = LinuxDeviceBuilder::default()
        .path(&d.container_path)
        .typ(typ)
        .major(major)
        .minor(minor)
        .file_mode(meta.mode() & 0o777)
        .uid(0u32)
        .gid(0u32)
        .build()?;
    let rule = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(typ)
        .major(major)
        .minor(minor)
        .access(permissions)
        .build()?;
    Ok((dev, rule))
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, SpecError> {
    let builder = LinuxNamespaceBuilder::default().typ(typ);
    Ok(match path {
        Some(p) => builder.path(p).build()?,
        None => builder.build()?,
    })
}

fn id_mapping(m: &crate::idmap::IdMapping) -> Result<LinuxIdMapping, SpecError> {
    Ok(LinuxIdMappingBuilder::default()
        .container_id(m.container_id)
        .host_id(m.host_id)
        .size(m.length)
        .build()?)
}

fn capability_set<'a>(names: impl IntoIterator<Item = &'a String>) -> HashSet<Capability> {
    names
        .into_iter()
        .filter_map(|n| serde_json::from_value(serde_json::Value::String(n.clone())).ok())
        .collect()
}

/// Builds the spec.
pub fn build(inputs: SpecInputs<'_>) -> Result<Spec, SpecError> {
    let config = inputs.config;
    let args = process_args(config, inputs.image)?;
    let env = process_env(config, inputs.image, inputs.hostname.unwrap_or_default())?;
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !inputs.image.working_dir.is_empty() {
        inputs.image.working_dir.clone()
    } else {
        "/".to_owned()
    };
    check_container_path("config.working_dir", &cwd)?;
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let privileged = inputs.privileged;
    let (caps, ambient) =
        security::capabilities(security.and_then(|s| s.capabilities.as_ref()), privileged)?;
    let seccomp = super::seccomp::profile(security, &caps, privileged)?;
    let (caps, ambient) = (capability_set(&caps), capability_set(&ambient));
    let process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(
            UserBuilder::default()
                .uid(inputs.user.uid)
                .gid(inputs.user.gid)
                .additional_gids(inputs.user.additional_gids.clone())
                .build()?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                // Ambient capabilities must be inheritable too; nothing else is.
                .inheritable(ambient.clone())
                .ambient(ambient)
                .build()?,
        )
        .no_new_privileges(security.is_some_and(|s| s.no_new_privs))
        .build()?;

    let files = &inputs.files;
    // Privileged containers get a writable /sys (and cgroup tree), as in CRI-O and containerd.
    let sys_mode = if privileged { "rw" } else { "ro" };
    let targets: HashSet<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        )?,
    ];
    if !targets.contains("/dev/shm") {
        mounts.push(bind(
            "/dev/shm",
            &files.shm,
            false,
            &["nosuid", "nodev", "noexec"],
        )?);
    }
    for (target, source) in [
        ("/etc/resolv.conf", &files.resolv_conf),
        ("/etc/hosts", &files.hosts),
        ("/etc/hostname", &files.hostname),
    ] {
        if !targets.contains(target) {
            mounts.push(bind(target, source, false, &["nosuid", "nodev", "noexec"])?);
        }
    }
    let (user_mounts, propagation) = cri_mounts(
        &config.mounts,
        &inputs.runtime,
        &inputs.staged_rro,
        &inputs.staged_idmap,
    )?;
    mounts.extend(user_mounts);

    let mut devices = Vec::new();
    let mut rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(privileged)
        .access("rwm")
        .build()?];
    if privileged {
        for (path, _) in security::host_devices() {
            let host = cri::Device {
                container_path: path.clone(),
                host_path: path,
                permissions: "rwm".into(),
            };
            // A node that vanished meanwhile is skipped.
            if let Ok((dev, _)) = device(&host) {
                devices.push(dev);
            }
        }
    }
    for d in &config.devices {
        let (dev, rule) = device(d)?;
        devices.push(dev);
        rules.push(rule);
    }

    let ns = &inputs.namespaces;
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)?];
    if let Some(user) = &inputs.user_namespace {
        namespaces.push(namespace(LinuxNamespaceType::User, Some(&user.path))?);
    }
    if let Some(net) = &ns.net {
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(net))?);
    }
    if let Some(ipc) = &ns.ipc {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, Some(ipc))?);
    }
    if let Some(uts) = &ns.uts {
        namespaces.push(namespace(LinuxNamespaceType::Uts, Some(uts))?);
    }
    match &ns.pid {
        PidNamespace::New => namespaces.push(namespace(LinuxNamespaceType::Pid, None)?),
        PidNamespace::Join(path) => {
            namespaces.push(namespace(LinuxNamespaceType::Pid, Some(path))?)
        }
        PidNamespace::Host => {}
    }
    if ns.cgroup {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }

    let (masked, readonly) = security::path_lists(security, privileged);
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&inputs.cgroups_path))
        .resources(resources::linux_resources(
            config.linux.as_ref().and_then(|l| l.resources.as_ref()),
            rules,
            inputs.pids_limit,
        )?)
        .devices(devices)
        .masked_paths(masked)
        .readonly_paths(readonly);
    if let Some(propagation) = propagation {
        linux = linux.rootfs_propagation(propagation);
    }
    if let Some(user) = &inputs.user_namespace {
        linux = linux
            .uid_mappings(vec![id_mapping(&user.mappings.uid)?])
            .gid_mappings(vec![id_mapping(&user.mappings.gid)?]);
    }
    if let Some(seccomp) = seccomp {
        linux = linux.seccomp(seccomp);
    }
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(inputs.rootfs)
                .readonly(security.is_some_and(|s| s.readonly_rootfs))
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .annotations(inputs.annotations)
        .linux(linux.build()?);
    if let (Some(hostname), Some(_)) = (inputs.hostname, &ns.uts) {
        spec = spec.hostname(hostname);
    }
    let mut spec = spec.build()?;
    // The builder starts from oci-spec's example defaults; a hostname needs a UTS namespace
    // of the container's own (or the pod's), so only keep one given above.
    if ns.uts.is_none() {
        spec.set_hostname(None);
    }
    // Limits are inherited from crid (as containerd's containers inherit containerd's): the
    // builder's 1024-file example limit would starve real workloads.
    if let Some(process) = spec.process_mut() {
        process.set_rlimits(None);
        process.set_apparmor_profile(super::apparmor::profile(security, privileged)?);
        // Always set: otherwise the container inherits its monitor's score (crimon makes
        // itself unkillable by the OOM killer where it may), and nothing in it could be
        // chosen. No resources is the CRI's 0.
        let requested = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map_or(0, |r| r.oom_score_adj);
        process.set_oom_score_adj(Some(resources::oom_score_adj(requested)?));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageRuntimeConfig {
        ImageRuntimeConfig {
            entrypoint: Some(entrypoint.iter().map(|s| (*s).to_owned()).collect()),
            cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
            env: Some(vec!["PATH=/bin".into(), "A=image".into()]),
            ..Default::default()
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image(&["/entry"], &["default"]);
        let mut config = cri::ContainerConfig::default();
        assert_eq!(
            process_args(&config, &img).expect("args"),
            strings(&["/entry", "default"])
        );
        config.args = strings(&["x"]);
        assert_eq!(
            process_args(&config, &img).expect("args"),
            strings(&["/entry", "x"])
        );
        config.command = strings(&["/bin/sh", "-c"]);
        assert_eq!(
            process_args(&config, &img).expect("args"),
            strings(&["/bin/sh", "-c", "x"])
        );
        config.args.clear();
        assert_eq!(
            process_args(&config, &img).expect("args"),
            strings(&["/bin/sh", "-c"])
        );
        assert!(process_args(
            &cri::ContainerConfig::default(),
            &ImageRuntimeConfig::default()
        )
        .is_err());
    }

    #[test]
    fn env_overrides_and_defaults() {
        let img = image(&[], &[]);
        let config = cri::ContainerConfig {
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "cri=1".into(),
            }],
            ..Default::default()
        };
        let env = process_env(&config, &img, "pod1").expect("env");
        assert_eq!(env, strings(&["PATH=/bin", "A=cri=1", "HOSTNAME=pod1"]));
        let bad = cri::ContainerConfig {
            envs: vec![cri::KeyValue {
                key: "A=B".into(),
                value: String::new(),
            }],
            ..Default::default()
        };
        assert!(process_env(&bad, &img, "").is_err());
        let env_of = |key: &str, value: &str| cri::ContainerConfig {
            envs: vec![cri::KeyValue {
                key: key.into(),
                value: value.into(),
            }],
            ..Default::default()
        };
        for (key, value) in [
            ("A\0B", "x"),
            ("A", "x\0y"),
            ("A\nB", "x"),
            ("HOME", "/root\nevil:x:0:0::/:/bin/sh"),
            ("HOME", "/root\r"),
        ] {
            assert!(
                process_env(&env_of(key, value), &img, "").is_err(),
                "{key:?}={value:?}"
            );
        }
        // An escaped newline, and line breaks in other values, are fine.
        assert!(process_env(&env_of("HOME", "/root\\n"), &img, "").is_ok());
        assert!(process_env(&env_of("CERT", "a\nb"), &img, "").is_ok());
        let mut hostile_image = image(&[], &[]);
        hostile_image.env = Some(vec!["HOME=/x\ny".into()]);
        assert!(process_env(&cri::ContainerConfig::default(), &hostile_image, "").is_err());
        hostile_image.env = Some(vec!["NOEQUALS".into()]);
        assert!(process_env(&cri::ContainerConfig::default(), &hostile_image, "").is_err());
    }

    #[test]
    fn only_allowed_annotations_and_crids_own_reach_the_spec() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let pod = map(&[("run.oci.systemd.subgroup", "x"), ("example.com/a", "pod")]);
        let container = map(&[
            ("example.com/a", "container"),
            ("io.kubernetes.cri.sandbox-id", "spoofed"),
            ("org.systemd.property.Delegate", "yes"),
        ]);
        let own = [("io.kubernetes.cri.sandbox-id", "real")];
        let (out, dropped) = spec_annotations(&pod, &container, &[], &own);
        assert_eq!(out, map(&[("io.kubernetes.cri.sandbox-id", "real")]));
        assert_eq!(
            dropped,
            strings(&[
                "example.com/a",
                "io.kubernetes.cri.sandbox-id",
                "org.systemd.property.Delegate",
                "run.oci.systemd.subgroup"
            ])
        );
        let (out, dropped) = spec_annotations(
            &pod,
            &container,
            &strings(&["example.com/", "io.kubernetes.cri."]),
            &own,
        );
        assert_eq!(
            out,
            map(&[
                ("example.com/a", "container"),
                ("io.kubernetes.cri.sandbox-id", "real")
            ])
        );
        assert_eq!(
            dropped,
            strings(&["org.systemd.property.Delegate", "run.oci.systemd.subgroup"])
        );
    }

    #[test]
    fn stop_signals_by_name_and_number() {
        assert_eq!(stop_signal("").expect("default"), libc::SIGTERM);
        assert_eq!(stop_signal("SIGQUIT").expect("quit"), libc::SIGQUIT);
        assert_eq!(stop_signal("int").expect("int"), libc::SIGINT);
        assert_eq!(stop_signal("9").expect("9"), 9);
        assert!(stop_signal("SIGNOPE").is_err());
    }
}

#[cfg(test)]
mod build_tests {
    use super::*;

    #[test]
    fn built_spec_keeps_only_what_crid_decides() {
        let config = cri::ContainerConfig {
            command: vec!["/bin/sh".into()],
            ..Default::default()
        };
        let spec = build(SpecInputs {
            config: &config,
            image: &ImageRuntimeConfig::default(),
            rootfs: Path::new("/r"),
            user: &ProcessUser::default(),
            hostname: Some("pod"),
            namespaces: Namespaces {
                net: Some("/run/ns/net/x".into()),
                ..Default::default()
            },
            files: PodFiles {
                resolv_conf: "/p/resolv.conf".into(),
                hosts: "/p/hosts".into(),
                hostname: "/p/hostname".into(),
                shm: "/p/shm".into(),
            },
            cgroups_path: "/crid/crid-x".into(),
            annotations: HashMap::new(),
            privileged: false,
            pids_limit: 0,
            runtime: "runc".into(),
            staged_rro: HashMap::new(),
            user_namespace: None,
            staged_idmap: HashMap::new(),
        })
        .expect("spec");
        let json = serde_json::to_value(&spec).expect("json");
        assert!(
            json.get("hostname").is_none(),
            "hostname without a UTS namespace"
        );
        assert!(json["process"].get("rlimits").is_none());
        assert_eq!(
            json["process"]["capabilities"]["ambient"],
            serde_json::json!([])
        );
        assert_eq!(json["root"]["readonly"], false);
        let kinds: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert_eq!(kinds, vec!["mount", "network", "pid"]);
    }
}
