//! Hostile requests and workloads: what a pod author controls in a CRI request (sysctls, env,
//! annotations, log paths, mounts, the PID namespace to join) and what a container does
//! (floods its output, forks without end, ignores SIGTERM) never reaches the host, and every
//! buffer it feeds has a bound. Each test is named for the CVE or anchor it stands for
//! (`../shared/reference/style-and-security-anchors.md` §2.4–2.5), and each ends with the
//! fixture's leak check (no mount, namespace pin, process, cgroup or lease left behind).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crid_proto::cri;
use crid_proto::cri::runtime_service_client::RuntimeServiceClient;
use crid_tests::harness::pods::PodFixture;
use tonic::transport::Channel;
use tonic::Code;

/// The OCI spec crid wrote for a container (ContainerStatus verbose `info.runtimeSpec`).
async fn runtime_spec(fx: &mut PodFixture, id: &str) -> serde_json::Value {
    fx.container_info(id).await["runtimeSpec"].clone()
}

/// crid still answers (Version) within a few seconds.
async fn assert_responsive(fx: &mut PodFixture) {
    let started = Instant::now();
    let version = tokio::time::timeout(
        Duration::from_secs(10),
        fx.runtime.version(cri::VersionRequest::default()),
    )
    .await
    .expect("crid answers Version within 10 s")
    .expect("Version");
    assert!(!version.into_inner().runtime_name.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// B. CRI request fields

/// Anchor B13 (CRI-O `allowed_annotations`, the CVE-2024-3154 fix): pod and container
/// annotations reach the OCI spec only through `[runtime] allowed_annotations`; runtime-specific
/// ones (crun's `run.oci.*`, runc's `org.systemd.property.*`) and spoofs of crid's own keys are
/// left out, and the status calls still report what the client set.
#[tokio::test(flavor = "multi_thread")]
async fn cve_2024_3154_annotations_reach_the_spec_only_through_the_allowlist() {
    let mut fx = PodFixture::start("[runtime]\nallowed_annotations = [\"example.com/\"]\n").await;
    let mut pod = fx.pod_config("annotations");
    pod.annotations = HashMap::from([
        ("run.oci.systemd.subgroup".to_owned(), "evil".to_owned()),
        ("example.com/from-pod".to_owned(), "pod".to_owned()),
    ]);
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut config = fx.container_config("c", &["sleep", "1000"]);
    let asked = HashMap::from([
        ("run.oci.keep_original_groups".to_owned(), "1".to_owned()),
        (
            "run.oci.seccomp_fail_unknown_syscall".to_owned(),
            "1".to_owned(),
        ),
        (
            "org.systemd.property.DevicePolicy".to_owned(),
            "'auto'".to_owned(),
        ),
        (
            "io.kubernetes.cri-o.Devices".to_owned(),
            "/dev/sda".to_owned(),
        ),
        (
            "io.kubernetes.cri.sandbox-id".to_owned(),
            "spoofed".to_owned(),
        ),
        ("io.kubernetes.container.hash".to_owned(), "1234".to_owned()),
        ("example.com/note".to_owned(), "kept".to_owned()),
    ]);
    config.annotations = asked.clone();
    let id = fx.start_container(&pod_id, &pod, config).await;
    let spec = runtime_spec(&mut fx, &id).await;
    let annotations: HashMap<String, String> =
        serde_json::from_value(spec["annotations"].clone()).expect("spec annotations");
    let expected = HashMap::from([
        ("io.kubernetes.cri.sandbox-id".to_owned(), pod_id.clone()),
        (
            "io.kubernetes.cri.container-name".to_owned(),
            "c".to_owned(),
        ),
        ("example.com/note".to_owned(), "kept".to_owned()),
        ("example.com/from-pod".to_owned(), "pod".to_owned()),
    ]);
    assert_eq!(annotations, expected);
    // The status calls report the client's annotations as they were sent.
    let status = fx.container_status(&id).await;
    assert_eq!(status.annotations, asked);
    fx.finish().await;
}

/// A host process (`sleep`) with pid `pid`, made by setting the host's last pid just below
/// it; None if other processes kept taking it first.
fn process_with_pid(pid: i32) -> Option<std::process::Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write /proc/sys/kernel/ns_last_pid (needs root in the host PID namespace)");
        let mut child = std::process::Command::new("sleep")
            .arg("120")
            .spawn()
            .expect("spawn sleep");
        if child.id() as i32 == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

fn pid_namespace_of(pid: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Anchor: the issue's TARGET item, a pid reuse race of the `/proc/<pid>/ns/pid` kind (the
/// class runc and containerd close with pidfds). The runtime's `create` is held (a wrapper
/// waits on a gate file) after crid resolved the target; meanwhile the target's init is
/// killed and a host process takes its pid. A namespace named by `/proc/<pid>/ns/pid` would
/// now be the host's; crid hands the runtime the namespace it opened and checked, so the new
/// container either fails (that namespace's init is dead) or is in it, never in the host's.
#[tokio::test(flavor = "multi_thread")]
async fn pidfd_target_pid_namespace_is_never_joined_through_a_reused_pid() {
    let gates = tempfile::tempdir().expect("tempdir");
    let gate = gates.path().join("gate");
    let held = gates.path().join("held");
    let wrapper = gates.path().join("runc-gated");
    let runc = crid_tests::harness::require::tool("runc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# Holds `create` while {gate} exists.\nfor a in \"$@\"; do\n  if [ \"$a\" = create ] && [ -e {gate} ]; then\n    touch {held}\n    while [ -e {gate} ]; do sleep 0.05; done\n  fi\ndone\nexec {runc} \"$@\"\n",
            gate = gate.display(),
            held = held.display(),
            runc = runc.display(),
        ),
    )
    .expect("write wrapper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("chmod wrapper");
    }
    let mut fx = PodFixture::start(&format!(
        "[runtime]\nruntime_path = \"{}\"\n",
        wrapper.display()
    ))
    .await;
    let mut pod = fx.pod_config("target");
    pod.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let pid_mode = |fx: &PodFixture, name: &str, mode: cri::NamespaceMode, target: &str| {
        let mut config = fx.container_config(name, &["sleep", "1000"]);
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: mode as i32,
                    target_id: target.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        config
    };
    let target = fx
        .start_container(
            &pod_id,
            &pod,
            pid_mode(&fx, "target", cri::NamespaceMode::Container, ""),
        )
        .await;
    let target_pid = fx.container_pid(&target).await;

    std::fs::write(&gate, "").expect("close the gate");
    let mut client = fx.runtime.clone();
    let debug_config = pid_mode(&fx, "debug", cri::NamespaceMode::Target, &target);
    let create = tokio::spawn({
        let (pod_id, pod) = (pod_id.clone(), pod.clone());
        async move {
            client
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod_id,
                    config: Some(debug_config),
                    sandbox_config: Some(pod),
                })
                .await
        }
    });
    let waiting =
        crid_tests::harness::wait_for(Duration::from_secs(30), || held.exists().then_some(()));
    assert!(
        waiting.is_some(),
        "the runtime's create never reached the gate: {}",
        fx.crid.stderr()
    );
    // The target's init dies and is reaped by its monitor; a host process takes its pid.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(target_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the target's init");
    let reaped = crid_tests::harness::wait_for(Duration::from_secs(20), || {
        (!Path::new(&format!("/proc/{target_pid}")).exists()).then_some(())
    });
    assert!(
        reaped.is_some(),
        "the target's init {target_pid} was not reaped"
    );
    let mut impostor = process_with_pid(target_pid)
        .unwrap_or_else(|| panic!("no host process could be given pid {target_pid}"));
    let host_namespace = pid_namespace_of(target_pid).expect("the impostor's namespace");
    std::fs::remove_file(&gate).expect("open the gate");
    let created = create.await.expect("CreateContainer task");
    match created {
        // The namespace crid opened is the target's, whose init is gone: nothing can join it.
        Err(_) => {}
        Ok(response) => {
            let id = response.into_inner().container_id;
            let pid = fx.container_pid(&id).await;
            assert_ne!(
                pid_namespace_of(pid),
                Some(host_namespace.clone()),
                "the TARGET container joined the PID namespace of the host process that reused the target's pid"
            );
        }
    }
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert_responsive(&mut fx).await;
    fx.finish().await;
}

// ---------------------------------------------------------------------------------------------
// C. Hostile workloads

/// A `key: value` field of `/proc/<pid>/status`, in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn crid_pid(fx: &PodFixture) -> u32 {
    fx.crid.child.as_ref().expect("crid runs").id()
}

/// The parent of `pid` (a container's init: its monitor, the subreaper).
fn parent_of(pid: i32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').expect("stat name").1;
    after
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid")
}

/// A runtime client that accepts replies as large as kubelet's does (16 MiB).
fn kubelet_sized(fx: &PodFixture) -> RuntimeServiceClient<Channel> {
    fx.runtime
        .clone()
        .max_decoding_message_size(crid_common::limits::CRI_MAX_MESSAGE_BYTES)
}

/// Anchor C17 (CVE-2022-1708 CRI-O, CVE-2022-31030 containerd; CRI-O `ctr.bats` "ctr
/// execsync should cap output"): 64 MiB on stdout and 64 MiB on stderr come back as at most
/// one CRI message's worth together, quickly, and neither crid nor the monitor holds the rest
/// in memory.
#[tokio::test(flavor = "multi_thread")]
async fn cve_2022_1708_huge_exec_sync_output_is_bounded_in_sum() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("execflood");
    let pod_id = fx.run_pod(pod.clone()).await;
    let id = fx
        .start_container(&pod_id, &pod, fx.container_config("c", &["sleep", "1000"]))
        .await;
    let monitor = parent_of(fx.container_pid(&id).await);
    let crid_before = status_kib(crid_pid(&fx), "VmRSS");
    let mut client = kubelet_sized(&fx);
    let bound = crid_common::limits::EXEC_SYNC_MAX_OUTPUT as usize;
    for (what, script) in [
        (
            "64 MiB stdout then 64 MiB stderr",
            "head -c 67108864 /dev/zero; head -c 67108864 /dev/zero >&2",
        ),
        ("64 MiB on stderr only", "head -c 67108864 /dev/zero >&2"),
        (
            "both at once, no newline",
            "head -c 67108864 /dev/zero >&2 & head -c 67108864 /dev/zero; wait",
        ),
    ] {
        let started = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(120),
            client.exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 0,
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: ExecSync did not return within 120 s"))
        .unwrap_or_else(|e| panic!("{what}: ExecSync failed: {e}"))
        .into_inner();
        let took = started.elapsed();
        assert_eq!(reply.exit_code, 0, "{what}");
        assert_eq!(
            reply.stdout.len() + reply.stderr.len(),
            bound,
            "{what}: stdout {} + stderr {} bytes",
            reply.stdout.len(),
            reply.stderr.len()
        );
        assert!(took < Duration::from_secs(60), "{what}: took {took:?}");
    }
    assert!(
        fx.crid.stderr().contains("exec sync output truncated"),
        "crid did not log the truncation"
    );
    // Bounded memory: crid held one reply (and its encoding) at a time, the monitor none.
    let crid_after = status_kib(crid_pid(&fx), "VmRSS");
    assert!(
        crid_after < crid_before + 96 * 1024,
        "crid's RSS grew from {crid_before} KiB to {crid_after} KiB"
    );
    let monitor_peak = status_kib(monitor, "VmHWM");
    assert!(
        monitor_peak < 16 * 1024,
        "the monitor's peak RSS is {monitor_peak} KiB"
    );
    assert_responsive(&mut fx).await;
    fx.finish().await;
}

/// Anchor C23 / the issue's ExecSync item: with `timeout: 0` (none), a background child that
/// keeps the pipes open and keeps writing after the command exited cannot hold the call:
/// it returns with the command's own output, its exit code, soon after it exited.
#[tokio::test(flavor = "multi_thread")]
async fn conmon_exec_sync_without_timeout_ends_when_the_command_exits_despite_a_writing_child() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("execbg");
    let pod_id = fx.run_pod(pod.clone()).await;
    let id = fx
        .start_container(&pod_id, &pod, fx.container_config("c", &["sleep", "1000"]))
        .await;
    let mut client = kubelet_sized(&fx);
    for (what, script) in [
        (
            "a child that writes without end",
            "(while true; do echo spam; done) & echo main; exit 3",
        ),
        (
            "a quiet child holding the pipes",
            "sleep 1000 & echo main; exit 3",
        ),
    ] {
        let started = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            client.exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 0,
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: ExecSync without a timeout hung"))
        .unwrap_or_else(|e| panic!("{what}: ExecSync failed: {e}"))
        .into_inner();
        assert_eq!(reply.exit_code, 3, "{what}");
        assert!(
            text(&reply.stdout).contains("main\n"),
            "{what}: {:?}",
            &text(&reply.stdout)[..reply.stdout.len().min(200)]
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
    assert_responsive(&mut fx).await;
    fx.finish().await;
}

/// RunPodSandbox of `config`, expected to fail; returns the status.
async fn run_pod_err(fx: &mut PodFixture, config: cri::PodSandboxConfig) -> tonic::Status {
    fx.runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("RunPodSandbox should fail")
}

/// Anchor B9 (CVE-2022-0811 "cr8escape", CRI-O `pod.bats` "fail to pass pod sysctl to runtime
/// if invalid value" and "if invalid spaces"): a sysctl that smuggles a second assignment, names
/// a path, is not namespaced, or belongs to a namespace shared with the host is refused with
/// INVALID_ARGUMENT naming it, and nothing is made or written. crid checked these before this
/// suite (`sandbox/sysctl.rs`); the test documents it end to end.
#[tokio::test(flavor = "multi_thread")]
async fn cve_2022_0811_sysctl_injection_is_refused() {
    let mut fx = PodFixture::start("").await;
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("host");
    let cases: &[(&str, &str, bool, bool)] = &[
        // key, value, host network, host IPC
        ("kernel.core_pattern", "|/tmp/evil %p", false, false),
        (
            "kernel.shm_rmid_forced",
            "1+kernel.core_pattern=|/tmp/evil",
            false,
            false,
        ),
        (
            "net.ipv4.ip_forward",
            "1\nkernel.core_pattern=|/tmp/evil",
            false,
            false,
        ),
        ("net.ipv4.ip_forward", "1\0", false, false),
        (
            "net/ipv4/../../kernel/core_pattern",
            "|/tmp/evil",
            false,
            false,
        ),
        (
            "net.ipv4.ip_forward=1 kernel.core_pattern",
            "x",
            false,
            false,
        ),
        ("net.ipv4.ip_forward ", "1", false, false),
        ("net.ipv4.ip_forward\n", "1", false, false),
        ("vm.swappiness", "1", false, false),
        ("kernel.hostname", "evil", false, false),
        ("net.ipv4.ip_forward", "1", true, false),
        ("kernel.shm_rmid_forced", "1", false, true),
        ("fs.mqueue.msg_max", "10", false, true),
    ];
    for (n, (key, value, host_network, host_ipc)) in cases.iter().enumerate() {
        let mut pod = fx.pod_config(&format!("sysctl-{n}"));
        let linux = pod.linux.as_mut().expect("linux");
        linux.sysctls = HashMap::from([((*key).to_owned(), (*value).to_owned())]);
        linux.security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: if *host_network {
                    cri::NamespaceMode::Node as i32
                } else {
                    cri::NamespaceMode::Pod as i32
                },
                ipc: if *host_ipc {
                    cri::NamespaceMode::Node as i32
                } else {
                    cri::NamespaceMode::Pod as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = run_pod_err(&mut fx, pod).await;
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{key:?}={value:?}: {err}"
        );
        assert!(err.message().contains("sysctl"), "{key:?}: {err}");
    }
    let pods = fx
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "refused pods were made: {pods:?}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("host"),
        core_pattern
    );
    fx.finish().await;
}

/// Anchor B10 (CVE-2022-4318, CRI-O `ctr.bats` "ctr HOME env actual newline byte invalid" and
/// "escaped newline valid"): a NUL in an env name or value, `=` or a line break in a name, a
/// line break in HOME and a NUL in an argument are INVALID_ARGUMENT; an escaped `\n` in HOME
/// and a real one in another value (a certificate) reach the process unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn cve_2022_4318_nul_and_newline_in_env_and_home_are_refused() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("env");
    let pod_id = fx.run_pod(pod.clone()).await;
    let env = |key: &str, value: &str| cri::KeyValue {
        key: key.to_owned(),
        value: value.to_owned(),
    };
    let refused = [
        env("A\0B", "x"),
        env("A", "x\0y"),
        env("A=B", "x"),
        env("", "x"),
        env("A\nB", "x"),
        env("HOME", "/root\nevil:x:0:0::/:/bin/sh"),
        env("HOME", "/root\r"),
    ];
    for (n, kv) in refused.into_iter().enumerate() {
        let mut config = fx.container_config(&format!("bad-{n}"), &["sleep", "1000"]);
        config.envs = vec![kv.clone()];
        let err = fx.create_container_err(&pod_id, &pod, config).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{kv:?}: {err}");
    }
    let mut config = fx.container_config("bad-arg", &["echo", "a\0b"]);
    config.log_path = "bad-arg.log".into();
    let err = fx.create_container_err(&pod_id, &pod, config).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    let mut config = fx.container_config("ok", &["sleep", "1000"]);
    config.envs = vec![env("HOME", "/root\\n"), env("CERT", "line1\nline2")];
    let id = fx.start_container(&pod_id, &pod, config).await;
    let out = fx
        .exec(&id, &["sh", "-c", "printf '%s|%s' \"$HOME\" \"$CERT\""], 10)
        .await;
    assert_eq!(text(&out.stdout), "/root\\n|line1\nline2");
    fx.finish().await;
}

/// Anchor B12 (CRI-O `ctr.bats` "ctr log linking with malicious paths" and "with invalid
/// paths"; conmon "should reject unsafe log paths"): a pod log directory that is relative or
/// has `..`, a container log path that is absolute, has `..`, or leads out through a symlink
/// in the log directory is INVALID_ARGUMENT, and no file or directory is made outside.
#[tokio::test(flavor = "multi_thread")]
async fn cve_2025_0750_log_path_traversal_is_refused_and_writes_nothing_outside() {
    let mut fx = PodFixture::start("").await;
    let outside = fx.work.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");

    let mut pod = fx.pod_config("logs-relative");
    pod.log_directory = "relative/logs".into();
    let err = run_pod_err(&mut fx, pod).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let mut pod = fx.pod_config("logs-dotdot");
    pod.log_directory = format!("{}/logs/../outside/pod", fx.work.path().display());
    let err = run_pod_err(&mut fx, pod).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    let pod = fx.pod_config("logs");
    let pod_id = fx.run_pod(pod.clone()).await;
    let log_dir = Path::new(&pod.log_directory).to_owned();
    std::os::unix::fs::symlink(&outside, log_dir.join("escape")).expect("symlink");
    let absolute = outside.join("abs.log").display().to_string();
    for (n, log_path) in [
        "../../outside/x.log",
        absolute.as_str(),
        "a/../../outside/x.log",
        "./x.log",
        "escape/x.log",
        "escape/sub/x.log",
    ]
    .into_iter()
    .enumerate()
    {
        let mut config = fx.container_config(&format!("c-{n}"), &["sleep", "1000"]);
        config.log_path = log_path.to_owned();
        let err = fx.create_container_err(&pod_id, &pod, config).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{log_path}: {err}");
        assert!(err.message().contains("log_path"), "{log_path}: {err}");
    }
    let made: Vec<_> = std::fs::read_dir(&outside)
        .expect("outside")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        made.is_empty(),
        "written outside the log directory: {made:?}"
    );
    assert!(!fx.work.path().join("logs/outside").exists());
    fx.finish().await;
}

/// Anchor B14 (critest "starting container with volume when host path is a symlink";
/// CVE-2021-30465's class, runc `mounts.bats`): a host path that is a symlink is resolved once,
/// by crid, on the host, and the resolved path is what the runtime binds; a symlink in the
/// image naming the mount's destination (`/data -> /<host dir>`, absolute or `../..`) is
/// resolved inside the root filesystem, so nothing is mounted on the host. crid and runc
/// behaved so before this suite; the test documents it.
#[tokio::test(flavor = "multi_thread")]
async fn cve_2021_30465_symlinked_mount_sources_and_destinations_stay_put() {
    use crid_tests::harness::image::{build_oci_busybox, umoci};
    let mut fx = PodFixture::start("").await;
    // A host directory an image symlink names; it must stay untouched and unmounted.
    let canary = tempfile::Builder::new()
        .prefix("crid-canary")
        .tempdir()
        .expect("canary");
    std::fs::write(canary.path().join("host-file"), "host").expect("write");
    let data = fx.work.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("file"), "from-volume").expect("write");
    let link = fx.work.path().join("data-link");
    std::os::unix::fs::symlink(&data, &link).expect("symlink");

    let layout = fx.work.path().join("symlink-layout");
    build_oci_busybox(&layout, "links", &["sleep", "3600"]);
    let staging = fx.work.path().join("staging");
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::os::unix::fs::symlink(canary.path(), staging.join("abs")).expect("symlink");
    let up = format!("../../../../../../../..{}", canary.path().display());
    std::os::unix::fs::symlink(&up, staging.join("up")).expect("symlink");
    let image = format!("{}:links", layout.display());
    umoci(&[
        "insert",
        "--image",
        &image,
        &staging.display().to_string(),
        "/",
    ]);
    fx.registry.push_layout(&layout, "links", "hostile/links");
    let reference = format!("{}/hostile/links:links", fx.registry.addr);
    fx.crid
        .images()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull the symlink image");

    let pod = fx.pod_config("symlinks");
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut config = fx.container_config("c", &["sleep", "3600"]);
    config.image = Some(cri::ImageSpec {
        image: reference,
        ..Default::default()
    });
    config.mounts = ["/abs", "/up"]
        .iter()
        .map(|target| cri::Mount {
            container_path: (*target).to_owned(),
            host_path: link.display().to_string(),
            ..Default::default()
        })
        .collect();
    let id = fx.start_container(&pod_id, &pod, config).await;
    // The runtime was handed the resolved host path, not the symlink.
    let spec = runtime_spec(&mut fx, &id).await;
    let real = std::fs::canonicalize(&data).expect("canonical");
    for target in ["/abs", "/up"] {
        let mount = spec["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == target)
            .unwrap_or_else(|| panic!("no mount {target}"));
        assert_eq!(mount["source"], real.display().to_string(), "{target}");
    }
    // Inside, both symlinks lead to the volume (mounted in the root filesystem).
    let read = fx.exec(&id, &["cat", "/abs/file", "/up/file"], 10).await;
    assert_eq!(text(&read.stdout), "from-volumefrom-volume");
    // On the host, the canary is neither mounted over nor written.
    let canary_path = canary.path().display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(canary_path.as_str())),
        "the host directory {canary_path} was mounted over"
    );
    let entries: Vec<_> = std::fs::read_dir(canary.path())
        .expect("canary")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("host-file")]);
    // Swapping the host symlink later changes nothing for the running container.
    std::fs::remove_file(&link).expect("rm link");
    std::os::unix::fs::symlink(canary.path(), &link).expect("relink");
    let read = fx.exec(&id, &["cat", "/abs/file"], 10).await;
    assert_eq!(text(&read.stdout), "from-volume");
    fx.finish().await;
}

/// The container's log file (ContainerStatus `log_path`).
async fn log_file(fx: &mut PodFixture, id: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(fx.container_status(id).await.log_path)
}

/// Anchor C18 (CRI-O `ctr.bats` "ctr log max", conmon `--log-size-max`): a container writing as
/// fast as it can keeps its log within `[runtime] log_size_max` at every moment (crimon
/// truncates before the write that would cross it), every record is a well-formed CRI line,
/// crimon's and crid's memory stay flat, and below the bound no line is lost.
#[tokio::test(flavor = "multi_thread")]
async fn conmon_log_size_max_a_log_flood_stays_bounded_and_loses_nothing_below_it() {
    const BOUND: u64 = 1 << 20;
    let mut fx = PodFixture::start(&format!("[runtime]\nlog_size_max = {BOUND}\n")).await;
    let pod = fx.pod_config("logflood");
    let pod_id = fx.run_pod(pod.clone()).await;
    // Below the bound: 15000 numbered lines at full speed, every one in the log, in order.
    let counted = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("counted", &["seq", "1", "15000"]),
        )
        .await;
    fx.wait_exited(&counted, Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(log_file(&mut fx, &counted).await).expect("log");
    // Partial records (`P`, a read that ended mid-line) join the next one, as kubelet reads them.
    let mut numbers: Vec<u32> = Vec::new();
    let mut partial = String::new();
    for line in log.lines() {
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        assert_eq!(fields[1], "stdout", "{line}");
        partial.push_str(fields[3]);
        match fields[2] {
            "P" => {}
            "F" => numbers.push(std::mem::take(&mut partial).parse().expect("a number")),
            other => panic!("tag {other:?} in {line}"),
        }
    }
    assert_eq!(numbers, (1..=15000).collect::<Vec<u32>>());
    assert!((log.len() as u64) < BOUND);

    // Above it: a flood without end, on both streams, one stream with no newline at all.
    let crid_before = status_kib(crid_pid(&fx), "VmRSS");
    let flood = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config(
                "flood",
                &[
                    "sh",
                    "-c",
                    "yes 0123456789abcdef >&2 & tr '\\0' x < /dev/zero",
                ],
            ),
        )
        .await;
    let path = log_file(&mut fx, &flood).await;
    let monitor = parent_of(fx.container_pid(&flood).await);
    let mut largest = 0;
    for _ in 0..100 {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        largest = largest.max(size);
        assert!(
            size <= BOUND,
            "the log grew to {size} bytes (bound {BOUND})"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        largest > BOUND / 4,
        "the flood hardly wrote: {largest} bytes"
    );
    let stats = fx
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: flood.clone(),
        })
        .await;
    assert!(stats.is_ok(), "crid answers for the flooding container");
    let tail = std::fs::read(&path).expect("log");
    // The first line may be cut by the truncation that raced the read; the others are whole
    // CRI records.
    for line in String::from_utf8_lossy(&tail).lines().skip(1).take(1000) {
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        if fields.len() < 4 {
            continue; // the last line may be mid-write
        }
        assert!(fields[0].ends_with('Z'), "{line:.80}");
        assert!(matches!(fields[1], "stdout" | "stderr"), "{line:.80}");
        assert!(matches!(fields[2], "P" | "F"), "{line:.80}");
    }
    let monitor_peak = status_kib(monitor, "VmHWM");
    assert!(
        monitor_peak < 16 * 1024,
        "the monitor's peak RSS is {monitor_peak} KiB"
    );
    let crid_after = status_kib(crid_pid(&fx), "VmRSS");
    assert!(
        crid_after < crid_before + 32 * 1024,
        "crid's RSS grew from {crid_before} KiB to {crid_after} KiB"
    );
    assert_responsive(&mut fx).await;
    fx.finish().await;
}

/// The pids cgroup files of a container (cgroup v1 `pids` hierarchy, or v2).
fn pids_cgroup(fx: &PodFixture, id: &str) -> std::path::PathBuf {
    let leaf = format!(
        "{}/crid-{id}",
        fx.cgroup_parent
            .trim_start_matches('/')
            .trim_end_matches('/')
    );
    let v1 = Path::new("/sys/fs/cgroup/pids").join(&leaf);
    if v1.exists() {
        v1
    } else {
        Path::new("/sys/fs/cgroup").join(&leaf)
    }
}

/// Anchor C19 (CRI-O `cgroups.bats` "pids limit", and the fork bomb itself): under
/// `[runtime] pids_limit`, a fork bomb is capped at the limit, crid and the host stay
/// responsive, and the pod stops and is removed in bounded time with every process gone.
#[tokio::test(flavor = "multi_thread")]
async fn anchor_c19_a_fork_bomb_is_capped_by_the_pids_limit() {
    const LIMIT: u64 = 64;
    let mut fx = PodFixture::start(&format!("[runtime]\npids_limit = {LIMIT}\n")).await;
    let pod = fx.pod_config("forkbomb");
    let pod_id = fx.run_pod(pod.clone()).await;
    let bomb = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config(
                "bomb",
                &["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 1000"],
            ),
        )
        .await;
    let cgroup = pids_cgroup(&fx, &bomb);
    let read = |name: &str| {
        std::fs::read_to_string(cgroup.join(name))
            .unwrap_or_else(|e| panic!("read {}: {e}", cgroup.join(name).display()))
            .trim()
            .to_owned()
    };
    assert_eq!(read("pids.max"), LIMIT.to_string());
    let mut peak = 0;
    for _ in 0..50 {
        let current: u64 = read("pids.current").parse().expect("pids.current");
        peak = peak.max(current);
        assert!(
            current <= LIMIT,
            "{current} processes under a limit of {LIMIT}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        peak >= LIMIT / 2,
        "the bomb did not go off: at most {peak} processes"
    );
    // The host and crid still answer.
    let started = Instant::now();
    let status = std::process::Command::new("true")
        .status()
        .expect("fork on the host");
    assert!(status.success() && started.elapsed() < Duration::from_secs(5));
    assert_responsive(&mut fx).await;
    // Stop and remove in bounded time; finish checks that no process, cgroup or mount is left.
    let started = Instant::now();
    fx.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    fx.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .expect("RemovePodSandbox");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "stop and remove took {took:?}"
    );
    fx.finish().await;
}

/// Anchor C21 (CRI-O `ctr.bats` "ctr stop timeouts should decrease", conmon-rs "should kill
/// created children if being killed"): a PID 1 that ignores SIGTERM (one that traps it, and one
/// that is the init of its own PID namespace, which the kernel shields from signals it has no
/// handler for) is SIGKILLed when the timeout passes: StopContainer returns within the
/// timeout and a margin, with exit code 137.
#[tokio::test(flavor = "multi_thread")]
async fn anchor_c21_pid_1_ignoring_sigterm_is_killed_after_the_timeout() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("sigterm");
    let pod_id = fx.run_pod(pod.clone()).await;
    let trapping = fx.container_config(
        "trapping",
        &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
    );
    let own_init = fx.own_pid_container_config("init", &["sleep", "1000"]);
    const TIMEOUT: u64 = 2;
    for config in [trapping, own_init] {
        let name = config.metadata.as_ref().expect("metadata").name.clone();
        let id = fx.start_container(&pod_id, &pod, config).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        fx.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: TIMEOUT as i64,
            })
            .await
            .expect("StopContainer");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(TIMEOUT) && took < Duration::from_secs(TIMEOUT + 5),
            "{name}: StopContainer took {took:?}"
        );
        let status = fx.container_status(&id).await;
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerExited as i32,
            "{name}"
        );
        assert_eq!(status.exit_code, 137, "{name}");
    }
    fx.finish().await;
}

/// Anchor A8 (crid runs as the host's root outside any device cgroup): a Localhost seccomp
/// profile path naming a FIFO or a device node (`/dev/watchdog` would reboot some hosts when
/// opened and closed) is refused with INVALID_ARGUMENT naming it, without crid ever opening it
/// for reading: it is located with O_PATH and checked first. A writer waiting on the FIFO sees
/// whether a reader ever opened it (the kernel wakes a waiting writer on any reader's open,
/// even one closed at once); the old code opened it O_RDONLY|O_NONBLOCK and then checked.
#[tokio::test(flavor = "multi_thread")]
async fn anchor_a8_a_localhost_seccomp_profile_that_is_a_fifo_or_a_device_is_never_opened() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("seccompfifo");
    let pod_id = fx.run_pod(pod.clone()).await;
    let fifo = fx.work.path().join("profile.json");
    let probe = crid_common::test_util::FifoProbe::new(&fifo);
    let localhost = |name: &str, path: &str| {
        let mut config = fx.container_config(name, &["sleep", "1000"]);
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: path.to_owned(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        config
    };
    let fifo_path = fifo.to_str().expect("utf-8").to_owned();
    let cases = [
        ("fifo", fifo_path.as_str(), "not a regular file (a fifo)"),
        (
            "device",
            "/dev/full",
            "not a regular file (a character device)",
        ),
        ("procfs", "/proc/self/status", "on a kernel file system"),
    ];
    let configs: Vec<_> = cases
        .iter()
        .map(|(name, path, _)| localhost(name, path))
        .collect();
    let mut refused = Vec::new();
    for ((name, path, why), config) in cases.into_iter().zip(configs) {
        let started = Instant::now();
        let err = fx.create_container_err(&pod_id, &pod, config).await;
        assert!(started.elapsed() < Duration::from_secs(10), "{name}: slow");
        refused.push((name, path, why, err));
    }
    assert!(
        !probe.was_opened(Duration::from_millis(500)),
        "crid opened the fifo named as a seccomp profile for reading"
    );
    for (name, path, why, err) in refused {
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().contains(path),
            "{name}: names the path: {err:?}"
        );
        assert!(err.message().contains(why), "{name}: {err:?}");
    }
    assert_responsive(&mut fx).await;
    fx.finish().await;
}
