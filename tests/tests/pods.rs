//! Pods end to end with real runc, CNI plugins and crimon: networking, files, mounts, exits,
//! stop escalation, ExecSync, logs, list filters, idempotent stop/remove, errors. Each test
//! ends with a leak check (see `PodFixture::finish`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;
use crid_tests::harness::registry::http_get;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_containers_share_the_pod_network_and_the_host_reaches_it() {
    let mut fx = PodFixture::start("").await;
    let host_port = 20_000 + (std::process::id() % 10_000) as i32;
    let mut pod = fx.pod_config("web");
    pod.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let pod_id = fx.run_pod(pod.clone()).await;
    let status = fx.pod_status(&pod_id).await;
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = status.network.expect("network").ip;
    assert!(ip.starts_with(&fx.subnet), "pod ip {ip}");

    let mut server = fx.container_config(
        "server",
        &["sh", "-c", "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www"],
    );
    server.working_dir = "/".into();
    let server_id = fx.start_container(&pod_id, &pod, server).await;
    let client_id = fx
        .start_container(&pod_id, &pod, fx.container_config("client", &["sleep", "1000"]))
        .await;

    // Over localhost inside the pod.
    let mut fetched = String::new();
    for _ in 0..100 {
        let out = fx
            .exec(&client_id, &["wget", "-q", "-O-", "http://127.0.0.1:8080/"], 10)
            .await;
        fetched = text(&out.stdout);
        if out.exit_code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetched.trim(), "hello-from-pod");
    // The pod IP from the host.
    let (code, body) = http_get(&format!("{ip}:8080"), "/").expect("GET pod ip");
    assert_eq!((code, body.trim()), (200, "hello-from-pod"));
    // The hostPort from the host, through the portmap plugin.
    let host_ip = fx.subnet.clone() + ".1";
    let (code, body) =
        http_get(&format!("{host_ip}:{host_port}"), "/").expect("GET host port");
    assert_eq!((code, body.trim()), (200, "hello-from-pod"));

    // The containers share the pod's PID namespace by default: the client sees httpd.
    let ps = fx.exec(&client_id, &["ps"], 10).await;
    assert!(text(&ps.stdout).contains("httpd"), "{}", text(&ps.stdout));
    let _ = server_id;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostname_dns_and_hosts_come_from_the_pod_config() {
    let mut fx = PodFixture::start("").await;
    let mut pod = fx.pod_config("dns");
    pod.hostname = "custom-host".into();
    pod.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["test.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let id = fx
        .start_container(&pod_id, &pod, fx.container_config("c", &["sleep", "1000"]))
        .await;
    let hostname = fx.exec(&id, &["hostname"], 10).await;
    assert_eq!(text(&hostname.stdout).trim(), "custom-host");
    let resolv = text(&fx.exec(&id, &["cat", "/etc/resolv.conf"], 10).await.stdout);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("search test.svc.cluster.local svc.cluster.local"), "{resolv}");
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let hosts = text(&fx.exec(&id, &["cat", "/etc/hosts"], 10).await.stdout);
    assert!(hosts.contains("custom-host"), "{hosts}");
    let env = text(&fx.exec(&id, &["env"], 10).await.stdout);
    assert!(env.contains("HOSTNAME=custom-host"), "{env}");
    fx.finish().await;
}
