//! Timeouts from a request (anchor B.15, every value from outside bounded before it names a
//! size): StopContainer's and ExecSync's may be anything an i64 holds. kubelet passes a pod's
//! `terminationGracePeriodSeconds` (any non-negative i64 a pod author writes) as
//! StopContainer's timeout; a deadline computed from it must not overflow the clock, which
//! panics, and a panic aborts crid: every pod of the node would lose its runtime.

use std::time::Duration;

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;

async fn version(fx: &mut PodFixture) -> Result<(), tonic::Status> {
    fx.runtime
        .version(cri::VersionRequest::default())
        .await
        .map(drop)
}

#[tokio::test]
async fn anchor_b15_huge_stop_and_exec_sync_timeouts_keep_crid_alive() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("timeouts");
    let pod_id = fx.run_pod(pod.clone()).await;
    // PID 1 of its own namespace without a handler: SIGTERM does nothing, the stop waits.
    let config = fx.own_pid_container_config("sleeper", &["sleep", "100000"]);
    let id = fx.start_container(&pod_id, &pod, config).await;

    // ExecSync with the largest timeouts answers as usual.
    for timeout in [i64::MAX, i64::MAX / 1000 + 1, 1 << 62] {
        let out = fx.exec(&id, &["echo", "alive"], timeout).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "alive",
            "{timeout}"
        );
    }

    // StopContainer with the largest timeouts: the client gives up after a moment; crid goes
    // on waiting for the container (the stop is the container's, not the client's), and
    // answers everyone else meanwhile.
    for timeout in [i64::MAX, i64::MAX - 1] {
        let request = cri::StopContainerRequest {
            container_id: id.clone(),
            timeout,
        };
        let stopped =
            tokio::time::timeout(Duration::from_secs(2), fx.runtime.stop_container(request)).await;
        assert!(stopped.is_err(), "a stop of {timeout} s returned at once");
        version(&mut fx).await.unwrap_or_else(|e| {
            panic!(
                "crid is gone after a stop of {timeout} s: {e}\n{}",
                fx.crid.stderr()
            )
        });
        let status = fx.container_status(&id).await;
        assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    }
    // A later, shorter stop (kubelet's force delete) cuts the long one short: it returns
    // within its own timeout and SIGKILL's grace, not in a century.
    let shorter = cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    };
    tokio::time::timeout(Duration::from_secs(20), fx.runtime.stop_container(shorter))
        .await
        .expect("the shorter stop waited for the long one")
        .expect("StopContainer");
    let status = fx.container_status(&id).await;
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 137, "killed");
    fx.finish().await;
}
