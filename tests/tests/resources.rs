//! Resources as the container's cgroup shows them, UpdateContainerResources, an OOM kill
//! under a memory limit, and oom_score_adj.

use std::time::Duration;

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;
use tonic::Code;

async fn read_in(fx: &mut PodFixture, id: &str, path: &str) -> String {
    let out = fx.exec(id, &["cat", path], 10).await;
    assert_eq!(
        out.exit_code,
        0,
        "cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn with_resources(
    mut config: cri::ContainerConfig,
    resources: cri::LinuxContainerResources,
) -> cri::ContainerConfig {
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(resources),
        ..Default::default()
    });
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_reach_the_cgroup_and_can_be_updated() {
    let mut fx = PodFixture::start("[runtime]\npids_limit = 100\n").await;
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "this test reads cgroup v1 files"
    );
    let pod = fx.pod_config("limits");
    let pod_id = fx.run_pod(pod.clone()).await;
    let config = with_resources(
        fx.container_config("c", &["sleep", "1000"]),
        cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 500,
            ..Default::default()
        },
    );
    let id = fx.start_container(&pod_id, &pod, config).await;
    assert_eq!(
        read_in(&mut fx, &id, "/sys/fs/cgroup/memory/memory.limit_in_bytes").await,
        (64u64 << 20).to_string()
    );
    assert_eq!(
        read_in(&mut fx, &id, "/sys/fs/cgroup/cpu/cpu.shares").await,
        "512"
    );
    assert_eq!(
        read_in(&mut fx, &id, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").await,
        "50000"
    );
    assert_eq!(
        read_in(&mut fx, &id, "/sys/fs/cgroup/pids/pids.max").await,
        "100"
    );
    assert_eq!(
        read_in(&mut fx, &id, "/proc/self/oom_score_adj").await,
        "500"
    );

    fx.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_shares: 256,
                memory_limit_in_bytes: 128 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("update");
    assert_eq!(
        read_in(&mut fx, &id, "/sys/fs/cgroup/memory/memory.limit_in_bytes").await,
        (128u64 << 20).to_string()
    );
    assert_eq!(
        read_in(&mut fx, &id, "/sys/fs/cgroup/cpu/cpu.shares").await,
        "256"
    );
    let status = fx.container_status(&id).await;
    let reported = status
        .resources
        .and_then(|r| r.linux)
        .expect("resources in status");
    assert_eq!(reported.memory_limit_in_bytes, 128 << 20);

    let below = fx
        .runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 4096,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a limit below usage");
    assert_eq!(below.code(), Code::FailedPrecondition, "{below}");
    assert!(below.message().contains("current usage"), "{below}");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oom_kill_is_reported_as_oomkilled() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("oom");
    let pod_id = fx.run_pod(pod.clone()).await;
    let config = with_resources(
        fx.container_config(
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
        ),
        cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            memory_swap_limit_in_bytes: 32 << 20,
            ..Default::default()
        },
    );
    let id = fx.start_container(&pod_id, &pod, config).await;
    let status = fx.wait_exited(&id, Duration::from_secs(30)).await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled")
    );
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lowering_oom_score_adj_is_clamped_without_cap_sys_resource() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("oomadj");
    let pod_id = fx.run_pod(pod.clone()).await;
    let config = with_resources(
        fx.container_config("c", &["sleep", "1000"]),
        cri::LinuxContainerResources {
            oom_score_adj: -999,
            ..Default::default()
        },
    );
    let id = fx.start_container(&pod_id, &pod, config).await;
    let value: i64 = read_in(&mut fx, &id, "/proc/self/oom_score_adj")
        .await
        .parse()
        .expect("number");
    let own = std::fs::read_to_string("/proc/self/status").expect("status");
    let may_lower = own
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0);
    if may_lower {
        assert_eq!(value, -999);
    } else {
        let crid_pid = fx.crid.child.as_ref().expect("crid").id();
        let crid_adj: i64 = std::fs::read_to_string(format!("/proc/{crid_pid}/oom_score_adj"))
            .expect("crid oom_score_adj")
            .trim()
            .parse()
            .expect("number");
        assert_eq!(value, crid_adj.max(-999));
    }
    // Without resources, a container gets the CRI's 0 (or crid's own score where it may not
    // go lower), never its monitor's unkillable -1000.
    let plain = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("plain", &["sleep", "1000"]),
        )
        .await;
    let value: i64 = read_in(&mut fx, &plain, "/proc/self/oom_score_adj")
        .await
        .parse()
        .expect("number");
    let crid_pid = fx.crid.child.as_ref().expect("crid").id();
    let crid_adj: i64 = std::fs::read_to_string(format!("/proc/{crid_pid}/oom_score_adj"))
        .expect("crid oom_score_adj")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(value, if may_lower { 0 } else { crid_adj.max(0) });
    fx.finish().await;
}
