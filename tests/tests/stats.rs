//! Stats under load: CPU usage and rate grow while a container spins, memory grows when it
//! fills a tmpfs, the writable layer counts what it writes, the pod's network counts traffic.

use std::collections::HashMap;
use std::time::Duration;

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;
use tonic::Code;

fn v(value: &Option<cri::UInt64Value>) -> u64 {
    value.as_ref().map(|v| v.value).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn numbers_move_under_load() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("stats");
    let pod_id = fx.run_pod(pod.clone()).await;
    let spinner = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("spin", &["sh", "-c", "while :; do :; done"]),
        )
        .await;
    let idle = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("idle", &["sleep", "1000"]),
        )
        .await;
    let stats_of = |fx: &mut PodFixture, id: &str| {
        let mut rt = fx.runtime.clone();
        let id = id.to_owned();
        async move {
            rt.container_stats(cri::ContainerStatsRequest { container_id: id })
                .await
                .expect("ContainerStats")
                .into_inner()
                .stats
                .expect("stats")
        }
    };
    let first = stats_of(&mut fx, &spinner).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = stats_of(&mut fx, &spinner).await;
    let cpu1 = v(&first.cpu.as_ref().expect("cpu").usage_core_nano_seconds);
    let cpu2 = v(&second.cpu.as_ref().expect("cpu").usage_core_nano_seconds);
    assert!(cpu2 > cpu1 + 300_000_000, "cpu {cpu1} -> {cpu2}");
    let rate = v(&second.cpu.as_ref().expect("cpu").usage_nano_cores);
    assert!(rate > 300_000_000, "a spinning shell uses {rate} nanocores");

    let before = stats_of(&mut fx, &idle).await;
    let out = fx
        .exec(
            &idle,
            &[
                "dd",
                "if=/dev/zero",
                "of=/dev/shm/fill",
                "bs=1M",
                "count=32",
            ],
            20,
        )
        .await;
    assert_eq!(out.exit_code, 0);
    let out = fx
        .exec(
            &idle,
            &["dd", "if=/dev/zero", "of=/layer-file", "bs=1M", "count=8"],
            20,
        )
        .await;
    assert_eq!(out.exit_code, 0);
    // The writable layer is measured at most every 5 s (crid shares a walk between calls),
    // so the new file shows within that.
    let layer_before = v(&before.writable_layer.as_ref().expect("layer").used_bytes);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let after = loop {
        let after = stats_of(&mut fx, &idle).await;
        let layer_after = v(&after.writable_layer.as_ref().expect("layer").used_bytes);
        if layer_after >= layer_before + (8 << 20) {
            break after;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "layer {layer_before} -> {layer_after}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let mem = v(&after.memory.as_ref().expect("memory").usage_bytes);
    assert!(mem > 0, "memory usage {mem}");

    // Pod stats: both containers, network counters that move with traffic.
    let pod_stats = |fx: &mut PodFixture| {
        let mut rt = fx.runtime.clone();
        let pod_id = pod_id.clone();
        async move {
            rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod_id,
            })
            .await
            .expect("PodSandboxStats")
            .into_inner()
            .stats
            .expect("stats")
            .linux
            .expect("linux")
        }
    };
    let net_before = pod_stats(&mut fx).await;
    assert_eq!(net_before.containers.len(), 2);
    let rx = |s: &cri::LinuxPodSandboxStats| {
        v(&s.network
            .as_ref()
            .and_then(|n| n.default_interface.clone())
            .expect("eth0")
            .rx_bytes)
    };
    // Traffic from the host: connection attempts to a closed port (each SYN in, RST out).
    let ip = fx.pod_status(&pod_id).await.network.expect("network").ip;
    for _ in 0..5 {
        let _ = std::net::TcpStream::connect_timeout(
            &format!("{ip}:1").parse().expect("address"),
            Duration::from_secs(1),
        );
    }
    let net_after = pod_stats(&mut fx).await;
    assert!(
        rx(&net_after) > rx(&net_before),
        "{} -> {}",
        rx(&net_before),
        rx(&net_after)
    );

    // Lists and filters.
    let listed = fx
        .runtime
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                label_selector: HashMap::from([("container".to_owned(), "spin".to_owned())]),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].attributes.as_ref().map(|a| a.id.clone()),
        Some(spinner.clone())
    );
    let pods = fx
        .runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .expect("list pods")
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1);
    fx.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: spinner.clone(),
            timeout: 0,
        })
        .await
        .expect("stop");
    let gone = fx
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: spinner,
        })
        .await
        .expect_err("stats of an exited container");
    assert_eq!(gone.code(), Code::FailedPrecondition);
    fx.finish().await;
}

/// Issue 11: nothing blocks the async workers. Four callers ask for the stats of a container
/// whose writable layer holds 400 000 files (each walk takes seconds) while kubelet's cheap
/// calls keep coming: Status and ListContainers must answer as usual. Before, the walks ran on
/// tokio's workers (two on this machine) and the cheap calls queued behind them.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_lists_answer_while_stats_walk_a_huge_layer() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("walk");
    let pod_id = fx.run_pod(pod.clone()).await;
    let id = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("many", &["sleep", "1000"]),
        )
        .await;
    // Written from the host straight into the container's upper directory: quicker than
    // from inside, and the same for the walk.
    let upper = fx
        .crid
        .dir
        .path()
        .join("root/containers")
        .join(&id)
        .join("upper");
    assert!(upper.is_dir(), "no upper directory at {}", upper.display());
    let files = 400_000;
    tokio::task::spawn_blocking(move || {
        for d in 0..400 {
            let dir = upper.join(format!("d{d}"));
            std::fs::create_dir(&dir).expect("mkdir");
            for f in 0..files / 400 {
                std::fs::File::create(dir.join(format!("f{f}"))).expect("create");
            }
        }
    })
    .await
    .expect("fill");

    let walks: Vec<_> = (0..4)
        .map(|_| {
            let mut rt = fx.runtime.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let stats = rt
                    .container_stats(cri::ContainerStatsRequest { container_id: id })
                    .await
                    .expect("ContainerStats")
                    .into_inner()
                    .stats
                    .expect("stats");
                (started.elapsed(), stats)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let mut rt = fx.runtime.clone();
        let started = std::time::Instant::now();
        rt.status(cri::StatusRequest { verbose: false })
            .await
            .expect("Status");
        rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .expect("ListContainers");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut longest_walk = Duration::ZERO;
    for walk in walks {
        let (took, stats) = walk.await.expect("stats task");
        longest_walk = longest_walk.max(took);
        let inodes = v(&stats.writable_layer.expect("layer").inodes_used);
        assert!(inodes >= files, "{inodes} inodes counted");
    }
    eprintln!("status+list slowest {slowest:?}, stats walks up to {longest_walk:?}");
    // Generous: a Status plus a List takes milliseconds; the walks take seconds.
    assert!(
        slowest < Duration::from_secs(1),
        "Status + ListContainers took {slowest:?} while the stats walks took {longest_walk:?}"
    );
    fx.finish().await;
}
