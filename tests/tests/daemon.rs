//! The crid skeleton over its socket: Version, Status, RuntimeConfig, UNIMPLEMENTED for the
//! rest, clean shutdown, refusal of a second instance.

use std::os::unix::fs::PermissionsExt;

use crid_proto::cri;
use crid_tests::harness::crid::{CridOptions, CridProcess};

type Client =
    crid_proto::cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// One condition of a Status call.
async fn condition(rt: &mut Client, kind: &str) -> cri::RuntimeCondition {
    let status = rt
        .status(cri::StatusRequest::default())
        .await
        .expect("Status")
        .into_inner();
    status
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition"))
}

/// The cgroup driver RuntimeConfig reports.
async fn cgroup_driver(rt: &mut Client) -> i32 {
    let rc = rt
        .runtime_config(cri::RuntimeConfigRequest::default())
        .await
        .expect("RuntimeConfig")
        .into_inner();
    rc.linux.expect("linux").cgroup_driver
}

#[tokio::test]
async fn version_status_and_runtime_config() {
    let crid = CridProcess::start(&CridOptions::default());
    let mode = std::fs::metadata(&crid.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o007, 0, "socket mode {mode:o}");
    let mut rt = crid.runtime().await;

    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "crid");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
    assert!(!v.runtime_version.is_empty());

    // No CNI configuration yet: runtime ready, network not, with the reason.
    let status = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let conditions = status.status.expect("status").conditions;
    let get = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.r#type == kind)
            .cloned()
            .expect(kind)
    };
    let runtime = get("RuntimeReady");
    assert!(runtime.status, "{runtime:?}");
    let network = get("NetworkReady");
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(network.message.contains("net.d"), "{}", network.message);
    assert!(status.info.contains_key("config"));
    // What crid supports is said (critest and kubelet skip what is not): both supplemental
    // groups policies, and for the default handler ("", what critest asks about) and "runc",
    // recursive read-only mounts; user namespaces not yet.
    assert!(
        status
            .features
            .as_ref()
            .is_some_and(|f| f.supplemental_groups_policy),
        "{:?}",
        status.features
    );
    let handlers: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(handlers, ["", "runc"]);
    for handler in &status.runtime_handlers {
        let features = handler.features.expect("handler features");
        assert!(features.recursive_read_only_mounts, "{handler:?}");
        // This host's kernel id-maps overlay layers (tests/tests/userns.rs uses them).
        assert!(features.user_namespaces, "{handler:?}");
    }

    // A CNI configuration appears: the network becomes ready.
    std::fs::write(
        crid.dir.path().join("net.d/10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"loopback"}]}"#,
    )
    .expect("write cni config");
    assert!(condition(&mut rt, "NetworkReady").await.status);
    assert_eq!(
        cgroup_driver(&mut rt).await,
        cri::CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test]
async fn runtime_not_ready_names_the_missing_runtime() {
    // The drop-in overrides the file's runtime path and cgroup manager.
    let crid = CridProcess::start(&CridOptions {
        dropin: Some(
            "[runtime]\nruntime_path = \"/nonexistent/runc\"\ncgroup_manager = \"systemd\"\n"
                .into(),
        ),
        ..Default::default()
    });
    let mut rt = crid.runtime().await;
    let runtime = condition(&mut rt, "RuntimeReady").await;
    assert!(!runtime.status);
    assert_eq!(runtime.reason, "RuntimeNotReady");
    assert!(
        runtime.message.contains("/nonexistent/runc"),
        "{}",
        runtime.message
    );
    assert_eq!(
        cgroup_driver(&mut rt).await,
        cri::CgroupDriver::Systemd as i32
    );
}

#[tokio::test]
async fn everything_else_is_unimplemented() {
    let crid = CridProcess::start(&CridOptions::default());
    let mut rt = crid.runtime().await;
    let checks = [
        rt.checkpoint_container(cri::CheckpointContainerRequest::default())
            .await
            .map(drop),
        rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest::default())
            .await
            .map(drop),
        rt.update_runtime_config(cri::UpdateRuntimeConfigRequest::default())
            .await
            .map(drop),
        rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest::default())
            .await
            .map(drop),
    ];
    for result in checks {
        let status = result.expect_err("must not succeed");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        assert!(status.message().contains("not implemented"), "{status:?}");
    }
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut crid = CridProcess::start(&CridOptions::default());
    let mut rt = crid.runtime().await;
    rt.version(cri::VersionRequest::default())
        .await
        .expect("Version");
    let status = crid.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        crid.stderr()
    );
    assert!(!crid.socket.exists(), "socket left behind");
    // SIGINT too, after a restart on the same socket.
    let mut second = CridProcess::start(&CridOptions::default());
    let status = second.stop_with(nix::sys::signal::Signal::SIGINT);
    assert!(status.success());
    assert!(!second.socket.exists());
}

#[tokio::test]
async fn a_second_instance_refuses_to_start() {
    let crid = CridProcess::start(&CridOptions::default());
    let out = crid.command().output().expect("run second crid");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already serving"), "{stderr}");
    // The first one still answers.
    let mut rt = crid.runtime().await;
    rt.version(cri::VersionRequest::default())
        .await
        .expect("Version after refusal");
}

#[test]
fn config_and_version_subcommands() {
    let crid = crid_tests::harness::workspace_binary("crid");
    let out = std::process::Command::new(&crid)
        .arg("config")
        .output()
        .expect("crid config");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "root =",
        "runroot =",
        "listen =",
        "runtime_path =",
        "cni_config_dir =",
        "cgroup_manager =",
    ] {
        assert!(text.contains(key), "missing {key}");
    }
    let out = std::process::Command::new(&crid)
        .arg("version")
        .output()
        .expect("crid version");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("crid "));
    // A bad config file is a clear error naming the key.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[runtime]\nruntime_pth = \"x\"\n").expect("write");
    let out = std::process::Command::new(&crid)
        .arg("--config")
        .arg(&file)
        .output()
        .expect("crid with bad config");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("runtime_pth"));
}
