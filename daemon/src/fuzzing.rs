//! Entry points for the fuzz targets in `fuzz/` (a cargo workspace of its own, run with
//! `cargo fuzz`): each takes what an attacker controls, bytes from a registry or a CRI
//! request, and runs crid's parser or validator on it. They must not panic, allocate without
//! bound or touch anything outside a scratch directory; their results are not checked beyond
//! the invariants asserted here. Not an API: hidden from the docs, and nothing else in crid
//! calls it.

use std::path::PathBuf;

use crid_proto::cri;
use prost::Message;

use crid_image::fuzzing::{digest, image_config, image_reference, manifest, seed_tar, tar_stream};

use crate::config::CgroupManager;
use crate::container::spec::{
    self, ImageRuntimeConfig, Namespaces, PidNamespace, PodFiles, SpecInputs,
};
use crate::state::container::ProcessUser;

/// A RunPodSandbox request (protobuf bytes): every check made before anything is created,
/// under both cgroup managers.
pub fn pod_request(bytes: &[u8]) {
    let Ok(request) = cri::RunPodSandboxRequest::decode(bytes) else {
        return;
    };
    let Some(config) = request.config else {
        return;
    };
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    for manager in [CgroupManager::Cgroupfs, CgroupManager::Systemd] {
        if crate::sandbox::lifecycle::check_request(manager, id, &config).is_ok() {
            // Whatever passed can be handed to CNI: its CNI_ARGS values are checked again.
            let meta = config.metadata.clone().unwrap_or_default();
            for value in [&meta.name, &meta.namespace, &meta.uid] {
                assert!(crid_cni::check_arg_value(value).is_ok());
            }
        }
    }
}

/// Makes a container config safe to build a spec from in a fuzzer: what would read or create
/// host paths (mounts, devices, a Localhost seccomp profile) is dropped; everything else of
/// the request is kept.
fn without_host_paths(mut config: cri::ContainerConfig) -> cri::ContainerConfig {
    config.mounts.clear();
    config.devices.clear();
    config.cdi_devices.clear();
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        if let Some(seccomp) = sc.seccomp.as_mut() {
            if seccomp.profile_type == cri::security_profile::ProfileType::Localhost as i32 {
                seccomp.profile_type = cri::security_profile::ProfileType::RuntimeDefault as i32;
            }
        }
        #[allow(deprecated)]
        if sc.seccomp_profile_path.starts_with("localhost/") {
            sc.seccomp_profile_path = "runtime/default".into();
        }
    }
    config
}

/// A CreateContainer request (protobuf bytes): the process (command, environment, working
/// directory), capabilities, seccomp and AppArmor choices, annotations and resources, as the
/// OCI spec is built from them, without mounts, devices or Localhost seccomp files.
pub fn container_request(bytes: &[u8]) {
    let Ok(request) = cri::CreateContainerRequest::decode(bytes) else {
        return;
    };
    let Some(config) = request.config else {
        return;
    };
    let config = without_host_paths(config);
    let image = ImageRuntimeConfig {
        cmd: Some(vec!["sh".into()]),
        ..Default::default()
    };
    let _ = spec::stop_signal(&config.metadata.clone().unwrap_or_default().name);
    let user = ProcessUser::default();
    let run = PathBuf::from("/run/crid-fuzz");
    let built = spec::build(SpecInputs {
        config: &config,
        image: &image,
        rootfs: &run.join("rootfs"),
        user: &user,
        hostname: Some("fuzz"),
        namespaces: Namespaces {
            net: Some(run.join("ns/net")),
            ipc: Some(run.join("ns/ipc")),
            uts: Some(run.join("ns/uts")),
            pid: PidNamespace::New,
            cgroup: true,
        },
        files: PodFiles {
            resolv_conf: run.join("resolv.conf"),
            hosts: run.join("hosts"),
            hostname: run.join("hostname"),
            shm: run.join("shm"),
        },
        cgroups_path: "/crid-fuzz/c".into(),
        annotations: Default::default(),
        privileged: false,
        pids_limit: 0,
        runtime: PathBuf::from("/nonexistent/runc"),
        staged_rro: Default::default(),
        user_namespace: None,
        staged_idmap: Default::default(),
    });
    if let Ok(spec) = built {
        // Nothing the request says may put a NUL or a bare key into the environment.
        let env = spec
            .process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .unwrap_or_default();
        for entry in env {
            assert!(entry.contains('=') && !entry.starts_with('=') && !entry.contains('\0'));
        }
    }
}

/// The fuzz targets, by name (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 7] = [
    "tar_stream",
    "manifest",
    "image_config",
    "digest",
    "image_reference",
    "pod_request",
    "container_request",
];

/// Runs target `name` on `input` (what its `fuzz_target!` does): for tests and for replaying
/// a crash without libFuzzer. Unknown names panic.
pub fn run(name: &str, input: &[u8]) {
    let text = || std::str::from_utf8(input).ok();
    match name {
        "tar_stream" => tar_stream(input),
        "manifest" => {
            // The first byte picks the Content-Type the registry sent.
            let (kind, body) = input.split_first().unwrap_or((&0, &[]));
            let content_type = [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "",
            ][usize::from(*kind) % 4];
            manifest(body, content_type);
        }
        "image_config" => image_config(input),
        "digest" => {
            if let Some(raw) = text() {
                digest(raw);
            }
        }
        "image_reference" => {
            if let Some(raw) = text() {
                image_reference(raw);
            }
        }
        "pod_request" => pod_request(input),
        "container_request" => container_request(input),
        other => panic!("no fuzz target {other}"),
    }
}

const SEED_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn seed_pod_request() -> Vec<u8> {
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web-0".into(),
            uid: "8b3f1c2e-0000-4000-8000-000000000001".into(),
            namespace: "default".into(),
            attempt: 1,
        }),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/default_web-0".into(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 8080,
            host_ip: "127.0.0.1".into(),
        }],
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/burstable/pod8b3f".into(),
            // One entry: a map's encoding order is not stable, and the seed file must be.
            sysctls: [("kernel.shm_rmid_forced".to_owned(), "1".to_owned())].into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace {
                        mode: cri::NamespaceMode::Pod as i32,
                        uids: vec![cri::IdMapping {
                            host_id: 65536,
                            container_id: 0,
                            length: 65536,
                        }],
                        gids: vec![cri::IdMapping {
                            host_id: 65536,
                            container_id: 0,
                            length: 65536,
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    }
    .encode_to_vec()
}

fn seed_container_request() -> Vec<u8> {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "docker.io/library/busybox:latest".into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into()],
        args: vec!["sleep 1000".into()],
        working_dir: "/srv".into(),
        envs: vec![cri::KeyValue {
            key: "HOME".into(),
            value: "/root".into(),
        }],
        annotations: [("io.kubernetes.container.hash".to_owned(), "1".to_owned())].into(),
        log_path: "app/0.log".into(),
        tty: true,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["ALL".into()],
                    ..Default::default()
                }),
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                no_new_privs: true,
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    cri::CreateContainerRequest {
        pod_sandbox_id: SEED_HEX.into(),
        config: Some(config),
        sandbox_config: None,
    }
    .encode_to_vec()
}

/// A few valid inputs per target, the starting corpus (`fuzz/seeds/<target>/`, kept in step
/// with this by a test).
pub fn seeds(name: &str) -> Vec<(&'static str, Vec<u8>)> {
    let digest = format!("sha256:{SEED_HEX}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 1234},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": 5678},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": digest, "size": 9}
        ]
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 500,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 500,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}
        ]
    });
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "echo hi"],
            "WorkingDir": "/work/app",
            "StopSignal": "SIGQUIT"
        },
        "rootfs": {"type": "layers", "diff_ids": [digest, digest]}
    });
    let with_type = |kind: u8, doc: &serde_json::Value| {
        let mut bytes = vec![kind];
        bytes.extend(doc.to_string().into_bytes());
        bytes
    };
    match name {
        "tar_stream" => vec![("layer.tar", seed_tar())],
        "manifest" => vec![
            ("manifest.json", with_type(0, &manifest)),
            ("index.json", with_type(1, &index)),
        ],
        "image_config" => vec![("config.json", config.to_string().into_bytes())],
        "digest" => vec![
            ("sha256", digest.clone().into_bytes()),
            ("traversal", b"sha256:../../etc/passwd".to_vec()),
        ],
        "image_reference" => vec![
            ("short", b"busybox".to_vec()),
            (
                "digest",
                format!("127.0.0.1:5000/test/busybox:latest@{digest}").into_bytes(),
            ),
        ],
        "pod_request" => vec![("pod.pb", seed_pod_request())],
        "container_request" => vec![("container.pb", seed_container_request())],
        other => panic!("no fuzz target {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds_dir() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
    }

    /// Every target runs on its seeds, and the seed files in `fuzz/seeds` are these
    /// (`CRID_WRITE_FUZZ_SEEDS=1` writes them).
    #[test]
    fn every_target_runs_on_its_seeds_and_they_are_checked_in() {
        let write = std::env::var_os("CRID_WRITE_FUZZ_SEEDS").is_some();
        for name in TARGETS {
            let dir = seeds_dir().join(name);
            for (file, bytes) in seeds(name) {
                run(name, &bytes);
                let path = dir.join(file);
                if write {
                    std::fs::create_dir_all(&dir).expect("mkdir seeds");
                    std::fs::write(&path, &bytes).expect("write seed");
                }
                let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (CRID_WRITE_FUZZ_SEEDS=1 writes the seeds)",
                        path.display()
                    )
                });
                assert_eq!(on_disk, bytes, "{} is stale", path.display());
            }
        }
    }

    #[test]
    fn the_seeds_exercise_the_interesting_paths() {
        // The pod seed passes every check (so the fuzzer starts from a valid request).
        let request = cri::RunPodSandboxRequest::decode(&seed_pod_request()[..]).expect("pb");
        let config = request.config.expect("config");
        crate::sandbox::lifecycle::check_request(CgroupManager::Cgroupfs, SEED_HEX, &config)
            .expect("the pod seed is valid");
        // The tar seed's headers: crid_image::fuzzing's test.
        // Empty and garbage inputs are fine everywhere.
        for name in TARGETS {
            run(name, b"");
            run(name, &[0xff; 1024]);
        }
    }
}
