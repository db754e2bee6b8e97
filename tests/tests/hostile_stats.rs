//! Hostile workloads against the stats calls: what a container does in its writable layer
//! never makes crid measure the host. Each test is named for the anchor it stands for
//! (`../shared/reference/style-and-security-anchors.md` §2.5).

use std::time::{Duration, Instant};

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;

/// Bytes of the host file the container tries to make crid count.
const CANARY_BYTES: usize = 64 << 20;

fn v(value: &Option<cri::UInt64Value>) -> u64 {
    value.as_ref().map(|v| v.value).unwrap_or(0)
}

/// Anchor C (hostile workload behaviour), issue 10: a container swaps directories of its
/// writable layer for symlinks to a host directory (`ln -s <host dir> d`) over and over, and
/// keeps a symlink to the host's `/` in place, while the test polls ContainerStats. The
/// layer's reported bytes never include the host directory's 64 MiB file.
///
/// A walk by path (lstat, then read_dir of the path) follows the swapped symlinks: the
/// twenty swapped directories sit around one of 20,000 files, so tens of milliseconds pass
/// between a directory's lstat and its read_dir, while each is a symlink half the time.
#[tokio::test(flavor = "multi_thread")]
async fn anchor_c_stats_walk_never_leaves_the_upper_dir() {
    let mut fx = PodFixture::start("").await;
    let canary = fx.work.path().join("canary");
    std::fs::create_dir_all(canary.join("deep")).expect("mkdir canary");
    // Written, not sparse: its blocks count.
    std::fs::write(canary.join("deep/big"), vec![7u8; CANARY_BYTES]).expect("write canary");
    let canary = canary.display().to_string();
    let script = format!(
        r#"set -e
ln -s / /host-root
ln -s {canary} /host-canary
mkdir -p /swap/big
i=0; while [ $i -lt 20000 ]; do : > /swap/big/f$i; i=$((i+1)); done
for k in 0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j; do mkdir -p /swap/d$k/inner; : > /swap/d$k/f; done
touch /ready
while :; do
  for k in 0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j; do mv /swap/d$k /swap/aside$k; ln -s {canary} /swap/d$k; done
  usleep 50000
  for k in 0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j; do rm /swap/d$k; mv /swap/aside$k /swap/d$k; done
  usleep 50000
done"#
    );
    let pod = fx.pod_config("hostile-stats");
    let pod_id = fx.run_pod(pod.clone()).await;
    let id = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("swapper", &["sh", "-c", &script]),
        )
        .await;
    let ready = Instant::now() + Duration::from_secs(60);
    while fx.exec(&id, &["test", "-e", "/ready"], 10).await.exit_code != 0 {
        assert!(Instant::now() < ready, "the container never got ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A measurement is shared for 5 s: about five walks in 22 s, each of which a walk by
    // path would almost surely get wrong.
    let until = Instant::now() + Duration::from_secs(22);
    let mut seen = Vec::new();
    // Checked after the pod is gone, so that a failure leaves nothing on the host.
    let mut failure = None;
    while Instant::now() < until {
        let stats = fx
            .runtime
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .expect("ContainerStats")
            .into_inner()
            .stats
            .expect("stats");
        let layer = stats.writable_layer.expect("writable layer");
        let (bytes, inodes) = (v(&layer.used_bytes), v(&layer.inodes_used));
        if seen.last() != Some(&(bytes, inodes)) {
            seen.push((bytes, inodes));
        }
        if bytes >= CANARY_BYTES as u64 {
            failure = Some(format!(
                "the writable layer counted the host directory behind a symlink: \
                 {bytes} bytes, {inodes} inodes (measurements: {seen:?})"
            ));
            break;
        }
        if inodes <= 20_000 {
            failure = Some(format!("the walk missed the layer: {seen:?}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fx.finish().await;
    if let Some(failure) = failure {
        panic!("{failure}");
    }
}

/// Anchor C, issue 10: a container writes a 32 MiB file 130 directory levels down (`mkdir -p
/// $(printf 'd/%.0s' $(seq 130))`, past the 128 levels the walk once stopped at, which hid
/// the file from kubelet's ephemeral-storage accounting): ContainerStats counts it. The walk
/// keeps a few directories open however deep it goes.
#[tokio::test(flavor = "multi_thread")]
async fn anchor_c_stats_count_a_file_130_levels_deep() {
    const BIG_MIB: u64 = 32;
    let mut fx = PodFixture::start("").await;
    let script = format!(
        r#"set -e
cd /
p=; i=0; while [ $i -lt 130 ]; do p=${{p}}d/; i=$((i+1)); done
mkdir -p $p
dd if=/dev/zero of=${{p}}big bs=1048576 count={BIG_MIB} 2>/dev/null
sync
touch /ready
exec sleep 3600"#
    );
    let pod = fx.pod_config("deep-stats");
    let pod_id = fx.run_pod(pod.clone()).await;
    let id = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("deep", &["sh", "-c", &script]),
        )
        .await;
    let ready = Instant::now() + Duration::from_secs(60);
    while fx.exec(&id, &["test", "-e", "/ready"], 10).await.exit_code != 0 {
        assert!(Instant::now() < ready, "the container never got ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Measurements are shared for 5 s: one made before the file was written may be reported
    // for that long.
    let until = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    let counted = loop {
        let stats = fx
            .runtime
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .expect("ContainerStats")
            .into_inner()
            .stats
            .expect("stats");
        let layer = stats.writable_layer.expect("writable layer");
        let (bytes, inodes) = (v(&layer.used_bytes), v(&layer.inodes_used));
        seen.push((bytes, inodes));
        if bytes >= BIG_MIB << 20 && inodes >= 131 {
            break true;
        }
        if Instant::now() >= until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    fx.finish().await;
    assert!(
        counted,
        "the file 130 levels down was not counted: (bytes, inodes) {seen:?}"
    );
}
