//! Hostile requests and workloads: what a pod author controls in a CRI request (sysctls, env,
//! annotations, log paths, mounts, the PID namespace to join) and what a container does
//! (floods its output, forks without end, ignores SIGTERM) never reaches the host, and every
//! buffer it feeds has a bound. Each test is named for the CVE or anchor it stands for
//! (`../shared/reference/style-and-security-anchors.md` §2.4–2.5), and each ends with the
//! fixture's leak check (no mount, namespace pin, process, cgroup or lease left behind).

use std::collections::HashMap;

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;

/// The OCI spec crid wrote for a container (ContainerStatus verbose `info.runtimeSpec`).
async fn runtime_spec(fx: &mut PodFixture, id: &str) -> serde_json::Value {
    let info = fx
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus verbose")
        .into_inner()
        .info;
    let info: serde_json::Value =
        serde_json::from_str(info.get("info").expect("info")).expect("info is JSON");
    info["runtimeSpec"].clone()
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
