//! crid's side of crimon (`crid_daemon::monitor_client`) against a real crimon and runc.

use std::time::Duration;

use crid_daemon::monitor_client::{self, MonitorClientError, MonitorConnection, MonitorSpec};
use crid_tests::harness::bundle::BundleSpec;
use crid_tests::harness::monitor::MonitoredContainer;

fn spec_for(c: &MonitoredContainer) -> MonitorSpec {
    MonitorSpec {
        monitor: c.monitor.clone(),
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        runtime: c.runtime.clone(),
        runtime_root: c.runtime_root.clone(),
        log_path: c.log_path.clone(),
        log_size_max: 0,
        exit_dir: c.exit_dir.clone(),
        socket_dir: c.socket_dir.clone(),
        terminal: false,
        stdin: false,
        stdin_once: false,
        delete_after_exit: false,
        systemd_cgroup: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_state_exec_reopen_and_wait() {
    let c = MonitoredContainer::new(&BundleSpec::sh("sleep 3; echo done; exit 6"));
    let pid = monitor_client::create(&spec_for(&c)).await.expect("create");
    assert!(pid > 0);
    c.start();
    let conn = MonitorConnection::connect(&c.socket_dir, &c.id)
        .await
        .expect("connect");
    let state = conn.state().await.expect("State");
    assert_eq!(state.pid, pid);

    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let out = conn
        .exec_sync(
            &args(&["sh", "-c", "echo out; echo err >&2; exit 2"]),
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("ExecSync");
    assert_eq!(
        (out.exit_code, out.stdout.as_slice(), out.stderr.as_slice()),
        (2, &b"out\n"[..], &b"err\n"[..])
    );
    assert!(!out.timed_out);
    let out = conn
        .exec_sync(&args(&["sleep", "20"]), Some(Duration::from_millis(300)))
        .await
        .expect("ExecSync with timeout");
    assert!(out.timed_out);
    // The output files were read and removed.
    let leftovers: Vec<_> = std::fs::read_dir(&c.socket_dir)
        .expect("socket dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("execout"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    std::fs::rename(&c.log_path, c.log_path.with_extension("1")).expect("rotate");
    conn.reopen_log().await.expect("ReopenLog");
    let waited = conn.wait().await.expect("Wait");
    assert_eq!(waited.exit_code, 6);
    let lines = c.log_lines();
    assert_eq!(lines.last().map(|(_, l)| l.as_str()), Some("done"));
}

#[tokio::test]
async fn a_failed_create_carries_the_runtimes_message() {
    let c = MonitoredContainer::new(&BundleSpec::sh("true"));
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.bundle.join("config.json")).expect("read"))
            .expect("json");
    config["process"]["cwd"] = "not/absolute".into();
    std::fs::write(c.bundle.join("config.json"), config.to_string()).expect("write");
    match monitor_client::create(&spec_for(&c)).await {
        Err(MonitorClientError::CreateFailed { id, message }) => {
            assert_eq!(id, c.id);
            assert!(message.to_lowercase().contains("cwd"), "{message}");
        }
        other => panic!("expected CreateFailed, got {:?}", other.map(|_| ())),
    }
}
