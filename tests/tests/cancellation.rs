//! Issue 11: RPCs that cannot be cut in half. A client that gives up (a deadline, as kubelet's
//! and `crictl runp -T`) while a RunPodSandbox waits on a slow CNI plugin, or a CreateContainer
//! on a slow runtime, leaves nothing half-made: the work finishes in crid, and
//! the retry with the same name gets what the first request made (CRI-O's behaviour), not
//! AlreadyExists. Nothing leaks after the pod is removed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;
use crid_tests::harness::require;
use tonic::Code;

/// How long the slow CNI plugin and the slow runtime wait before doing their work.
const SLOW: &str = "3";

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A crid whose CNI ADD and `runc create` each take 3 s more than usual.
async fn slow_fixture(tools: &Path) -> PodFixture {
    script(
        &tools.join("slow-bridge"),
        &format!(
            "#!/bin/sh\n[ \"$CNI_COMMAND\" = ADD ] && sleep {SLOW}\nexec /usr/lib/cni/bridge \"$@\"\n"
        ),
    );
    script(
        &tools.join("slow-runc"),
        &format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = create ] && sleep {SLOW} && break; done\nexec {} \"$@\"\n",
            require::tool("runc").display()
        ),
    );
    let dropin = format!(
        "[runtime]\nruntime_path = \"{}\"\n[network]\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n",
        tools.join("slow-runc").display(),
        tools.display()
    );
    let fx = PodFixture::start(&dropin).await;
    let conflist = fx.crid.dir.path().join("net.d/10-test.conflist");
    let text = std::fs::read_to_string(&conflist).expect("read conflist");
    let slow = text.replacen("\"type\":\"bridge\"", "\"type\":\"slow-bridge\"", 1);
    assert_ne!(slow, text, "the conflist names no bridge plugin: {text}");
    std::fs::write(&conflist, slow).expect("write conflist");
    fx
}

/// The client's own deadline: tonic's client says Cancelled ("Timeout expired") when it gives
/// up first, the server DeadlineExceeded when it does.
fn gave_up(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled)
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_a_client_deadline_gets_what_the_first_request_made() {
    let tools = tempfile::tempdir().expect("tempdir");
    let mut fx = slow_fixture(tools.path()).await;
    let pod = fx.pod_config("cut");

    // RunPodSandbox: the client leaves after 1 s, while the CNI plugin sleeps.
    let cut = fx
        .runtime
        .run_pod_sandbox(with_deadline(
            cri::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            },
            Duration::from_secs(1),
        ))
        .await
        .expect_err("the client's deadline passes first");
    assert!(gave_up(&cut), "{cut}");
    // kubelet's retry, with the same name, while the first is still running: it waits for it.
    let pod_id = fx
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("the retry: {e}\n{}", fx.crid.stderr()))
        .into_inner()
        .pod_sandbox_id;
    let pods = fx
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].id, pod_id);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);

    // CreateContainer: cut while `runc create` sleeps; the retry comes after it finished.
    let config = fx.container_config("c", &["sleep", "1000"]);
    let cut = fx
        .runtime
        .create_container(with_deadline(
            cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(config.clone()),
                sandbox_config: Some(pod.clone()),
            },
            Duration::from_secs(1),
        ))
        .await
        .expect_err("the client's deadline passes first");
    assert!(gave_up(&cut), "{cut}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let container_id = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config.clone()),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("the retry: {e}\n{}", fx.crid.stderr()))
        .into_inner()
        .container_id;
    let containers = fx
        .runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].id, container_id);
    fx.runtime
        .start_container(cri::StartContainerRequest {
            container_id: container_id.clone(),
        })
        .await
        .expect("StartContainer");
    assert_eq!(fx.exec(&container_id, &["true"], 10).await.exit_code, 0);
    // A third request with the same name, after the retry took the result: the name is taken.
    let again = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(pod),
        })
        .await
        .expect_err("the name is taken");
    assert_eq!(again.code(), Code::AlreadyExists, "{again}");

    // PullImage: a client that leaves at once; the retry pulls again.
    let mut images = fx.crid.images().await;
    let spec = Some(cri::ImageSpec {
        image: fx.image.clone(),
        ..Default::default()
    });
    let _ = images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: fx.image.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("the image is in use");
    let cut = images
        .pull_image(with_deadline(
            cri::PullImageRequest {
                image: spec.clone(),
                ..Default::default()
            },
            Duration::from_millis(1),
        ))
        .await;
    if let Err(cut) = &cut {
        assert!(gave_up(cut), "{cut}");
    }
    images
        .pull_image(cri::PullImageRequest {
            image: spec,
            ..Default::default()
        })
        .await
        .expect("the retried pull");
    fx.finish().await;
}

/// The real crictl: `crictl runp -T 1` gives up after a second; a second `crictl runp` of the
/// same config prints the same pod id the first request made.
#[tokio::test(flavor = "multi_thread")]
async fn crictl_runp_with_a_cancel_timeout_then_again_gets_one_pod() {
    let tools = tempfile::tempdir().expect("tempdir");
    let fx = slow_fixture(tools.path()).await;
    let pod = fx.pod_config("crictl-cut");
    let config = tools.path().join("pod.json");
    let json = serde_json::json!({
        "metadata": {
            "name": pod.metadata.as_ref().expect("metadata").name,
            "namespace": "test",
            "uid": pod.metadata.as_ref().expect("metadata").uid,
            "attempt": 0
        },
        "log_directory": pod.log_directory,
        "linux": {}
    });
    std::fs::write(&config, json.to_string()).expect("write pod.json");
    let crictl = |args: &[&str]| {
        std::process::Command::new(require::crictl())
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", fx.crid.socket.display()))
            .args(args)
            .output()
            .expect("run crictl")
    };
    let config = config.display().to_string();
    let first = crictl(&["runp", "-T", "1", &config]);
    assert!(
        !first.status.success(),
        "crictl runp -T 1 should give up: {}",
        String::from_utf8_lossy(&first.stdout)
    );
    let second = crictl(&["runp", &config]);
    assert!(
        second.status.success(),
        "the second crictl runp: {}\n{}",
        String::from_utf8_lossy(&second.stderr),
        fx.crid.stderr()
    );
    let id = String::from_utf8_lossy(&second.stdout).trim().to_owned();
    let listed = crictl(&["pods", "-q"]);
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids, vec![id], "one pod, the one the first request made");
    fx.finish().await;
}
