//! Pods end to end with real runc, CNI plugins and crimon: networking, files, mounts, exits,
//! stop escalation, ExecSync, logs, list filters, idempotent stop/remove, errors. Each test
//! ends with a leak check (see `PodFixture::finish`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tonic::Code;

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
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("client", &["sleep", "1000"]),
        )
        .await;

    // Over localhost inside the pod.
    let mut fetched = String::new();
    for _ in 0..100 {
        let out = fx
            .exec(
                &client_id,
                &["wget", "-q", "-O-", "http://127.0.0.1:8080/"],
                10,
            )
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
    let (code, body) = http_get(&format!("{host_ip}:{host_port}"), "/").expect("GET host port");
    assert_eq!((code, body.trim()), (200, "hello-from-pod"));

    // PodSandboxStatus carries the containers' statuses (kubelet's evented PLEG reads them).
    let with_containers = fx
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(with_containers.containers_statuses.len(), 2);
    assert!(with_containers.timestamp > 0);
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
    assert!(
        resolv.contains("search test.svc.cluster.local svc.cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let hosts = text(&fx.exec(&id, &["cat", "/etc/hosts"], 10).await.stdout);
    assert!(hosts.contains("custom-host"), "{hosts}");
    let env = text(&fx.exec(&id, &["env"], 10).await.stdout);
    assert!(env.contains("HOSTNAME=custom-host"), "{env}");
    fx.finish().await;
}

/// A pod without a hostname gets CRI-O's default, the first 12 characters of its id (its
/// metadata name may be longer than a hostname can be: critest's are 68 characters), and a
/// non-root container can read the pod's files.
#[tokio::test(flavor = "multi_thread")]
async fn default_hostname_and_pod_files_readable_by_any_user() {
    let mut fx = PodFixture::start("").await;
    let mut pod = fx.pod_config("create-PodSandbox-for-container-0123456789abcdef0123456789abcdef");
    pod.hostname = String::new();
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut config = fx.container_config("c", &["sleep", "1000"]);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = fx.start_container(&pod_id, &pod, config).await;
    let hostname = fx.exec(&id, &["hostname"], 10).await;
    assert_eq!(text(&hostname.stdout).trim(), &pod_id[..12]);
    for file in ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"] {
        let read = fx.exec(&id, &["cat", file], 10).await;
        assert_eq!(
            read.exit_code,
            0,
            "uid 1000 cannot read {file}: {}",
            text(&read.stderr)
        );
    }
    let hosts = text(&fx.exec(&id, &["cat", "/etc/hosts"], 10).await.stdout);
    assert!(hosts.contains(&pod_id[..12]), "{hosts}");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_mounts_follow_symlinked_host_paths_and_honour_read_only() {
    let mut fx = PodFixture::start("").await;
    let data = fx.work.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("file"), "from-host").expect("write");
    let link = fx.work.path().join("data-link");
    std::os::unix::fs::symlink(&data, &link).expect("symlink");
    let created = fx.work.path().join("made-by-crid");
    let pod = fx.pod_config("mounts");
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut config = fx.container_config("c", &["sleep", "1000"]);
    config.mounts = vec![
        cri::Mount {
            container_path: "/ro".into(),
            host_path: data.display().to_string(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/via-link".into(),
            host_path: link.display().to_string(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/new".into(),
            host_path: created.display().to_string(),
            ..Default::default()
        },
    ];
    let id = fx.start_container(&pod_id, &pod, config).await;
    let read = fx
        .exec(&id, &["cat", "/ro/file", "/via-link/file"], 10)
        .await;
    assert_eq!(text(&read.stdout), "from-hostfrom-host");
    let write_ro = fx.exec(&id, &["sh", "-c", "echo x > /ro/other"], 10).await;
    assert_ne!(write_ro.exit_code, 0, "a read-only mount was writable");
    let write_rw = fx
        .exec(&id, &["sh", "-c", "echo written > /via-link/out"], 10)
        .await;
    assert_eq!(write_rw.exit_code, 0, "{}", text(&write_rw.stderr));
    assert_eq!(
        std::fs::read_to_string(data.join("out"))
            .expect("out")
            .trim(),
        "written"
    );
    assert!(
        created.is_dir(),
        "a missing host path is created as a directory"
    );
    let status = fx.container_status(&id).await;
    assert_eq!(status.mounts.len(), 3);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_reasons_and_stop_escalation() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("exits");
    let pod_id = fx.run_pod(pod.clone()).await;
    let ok = fx
        .start_container(&pod_id, &pod, fx.container_config("ok", &["true"]))
        .await;
    let failed = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("failed", &["sh", "-c", "exit 3"]),
        )
        .await;
    let status = fx.wait_exited(&ok, Duration::from_secs(20)).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    assert!(status.finished_at >= status.started_at && status.started_at >= status.created_at);
    let status = fx.wait_exited(&failed, Duration::from_secs(20)).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (3, "Error"));

    // A container that ends on SIGTERM stops at once.
    let polite = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("polite", &["sleep", "1000"]),
        )
        .await;
    let started = Instant::now();
    fx.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: polite.clone(),
            timeout: 30,
        })
        .await
        .expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let status = fx.container_status(&polite).await;
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 128 + 15);

    // One that ignores it is killed after the timeout.
    let stubborn = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config(
                "stubborn",
                &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
            ),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    fx.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 2,
        })
        .await
        .expect("stop");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let status = fx.container_status(&stubborn).await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (128 + 9, "Error")
    );
    // A started container cannot be started again.
    let again = fx
        .runtime
        .start_container(cri::StartContainerRequest {
            container_id: stubborn.clone(),
        })
        .await
        .expect_err("restart an exited container");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again}");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_returns_output_and_exit_code_and_honours_timeouts() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("exec");
    let pod_id = fx.run_pod(pod.clone()).await;
    let id = fx
        .start_container(&pod_id, &pod, fx.container_config("c", &["sleep", "1000"]))
        .await;
    let out = fx
        .exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 7"], 10)
        .await;
    assert_eq!(
        (
            text(&out.stdout).as_str(),
            text(&out.stderr).as_str(),
            out.exit_code
        ),
        ("out\n", "err\n", 7)
    );
    let started = Instant::now();
    let timeout = fx
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .expect_err("timeout");
    assert_eq!(timeout.code(), Code::DeadlineExceeded, "{timeout}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let missing = fx
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .expect_err("unknown container");
    assert_eq!(missing.code(), Code::NotFound);
    let created = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(fx.container_config("idle", &["sleep", "1000"])),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    let not_running = fx
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: created,
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .expect_err("not running");
    assert_eq!(not_running.code(), Code::FailedPrecondition);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_cri_formatted_and_reopened_after_rotation() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("logs");
    let pod_id = fx.run_pod(pod.clone()).await;
    let config = fx.container_config(
        "writer",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo line-$i; echo err-$i >&2; i=$((i+1)); sleep 0.05; done",
        ],
    );
    let id = fx.start_container(&pod_id, &pod, config).await;
    let status = fx.container_status(&id).await;
    let log = std::path::PathBuf::from(&status.log_path);
    assert_eq!(
        log,
        std::path::Path::new(&pod.log_directory).join("writer/0.log")
    );
    let wait_lines = |path: std::path::PathBuf| async move {
        for _ in 0..200 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= 4 {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no log lines in {}", path.display());
    };
    let first = wait_lines(log.clone()).await;
    let line = first.lines().next().expect("line");
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert!(fields[1] == "stdout" || fields[1] == "stderr", "{line}");
    assert_eq!(fields[2], "F", "{line}");
    assert!(fields[0].ends_with('Z') && fields[0].len() == 30, "{line}");

    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    fx.runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect("reopen");
    let second = wait_lines(log.clone()).await;
    assert!(second.contains("line-"), "{second}");
    fx.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .expect("stop");
    let stopped = fx
        .runtime
        .reopen_container_log(cri::ReopenContainerLogRequest { container_id: id })
        .await
        .expect_err("reopen a stopped container's log");
    assert_eq!(stopped.code(), Code::FailedPrecondition);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_and_idempotent_stop_and_remove() {
    let mut fx = PodFixture::start("").await;
    let pod_a = fx.pod_config("a");
    let pod_b = fx.pod_config("b");
    let a = fx.run_pod(pod_a.clone()).await;
    let b = fx.run_pod(pod_b.clone()).await;
    let a1 = fx
        .start_container(&a, &pod_a, fx.container_config("one", &["sleep", "1000"]))
        .await;
    let b1 = fx
        .start_container(&b, &pod_b, fx.container_config("one", &["true"]))
        .await;
    fx.wait_exited(&b1, Duration::from_secs(20)).await;

    let pods = |filter: cri::PodSandboxFilter| {
        let mut rt = fx.runtime.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .expect("list pods")
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(pods(cri::PodSandboxFilter::default()).await, both);
    assert_eq!(
        pods(cri::PodSandboxFilter {
            id: a[..13].to_owned(),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    let by_label = cri::PodSandboxFilter {
        label_selector: HashMap::from([("app".to_owned(), "b".to_owned())]),
        ..Default::default()
    };
    assert_eq!(pods(by_label).await, vec![b.clone()]);

    let containers = |filter: cri::ContainerFilter| {
        let mut rt = fx.runtime.clone();
        async move {
            rt.list_containers(cri::ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .expect("list containers")
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
        }
    };
    let running = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    assert_eq!(containers(running).await, vec![a1.clone()]);
    let exited = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerExited as i32,
        }),
        ..Default::default()
    };
    assert_eq!(containers(exited).await, vec![b1.clone()]);
    assert_eq!(
        containers(cri::ContainerFilter {
            pod_sandbox_id: b.clone(),
            ..Default::default()
        })
        .await,
        vec![b1.clone()]
    );
    let by_label = cri::ContainerFilter {
        label_selector: HashMap::from([("container".to_owned(), "one".to_owned())]),
        pod_sandbox_id: a.clone(),
        ..Default::default()
    };
    assert_eq!(containers(by_label).await, vec![a1.clone()]);

    // Stop and remove twice, and for ids that never existed.
    for _ in 0..2 {
        fx.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: a1.clone(),
                timeout: 0,
            })
            .await
            .expect("stop");
        fx.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: a1.clone(),
            })
            .await
            .expect("remove");
        fx.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: a.clone(),
            })
            .await
            .expect("stop pod");
    }
    let stopped = fx.pod_status(&a).await;
    assert_eq!(stopped.state, cri::PodSandboxState::SandboxNotready as i32);
    assert!(stopped.network.map(|n| n.ip).unwrap_or_default().is_empty());
    for _ in 0..2 {
        fx.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: a.clone(),
            })
            .await
            .expect("remove pod");
    }
    fx.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: "0123456789ab".into(),
            timeout: 0,
        })
        .await
        .expect("stop unknown");
    fx.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: "0123456789ab".into(),
        })
        .await
        .expect("remove unknown");
    fx.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: "0123456789ab".into(),
        })
        .await
        .expect("stop unknown pod");
    fx.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: "0123456789ab".into(),
        })
        .await
        .expect("remove unknown pod");
    let gone = fx
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: a1,
            verbose: false,
        })
        .await
        .expect_err("status of a removed container");
    assert_eq!(gone.code(), Code::NotFound);
    let gone = fx
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: a,
            verbose: false,
        })
        .await
        .expect_err("status of a removed pod");
    assert_eq!(gone.code(), Code::NotFound);
    // Creating in a stopped pod is refused.
    fx.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: b.clone(),
        })
        .await
        .expect("stop pod");
    let refused = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: b,
            config: Some(fx.container_config("late", &["true"])),
            sandbox_config: Some(pod_b),
        })
        .await
        .expect_err("create in a stopped pod");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_and_leave_nothing() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("errors");
    let pod_id = fx.run_pod(pod.clone()).await;
    let dup = fx
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("same pod twice");
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert!(dup.message().contains(&pod_id), "{dup}");

    let mut nameless = fx.pod_config("x");
    nameless.metadata.as_mut().expect("meta").name.clear();
    let err = fx
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(nameless),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("no name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("config.metadata.name"), "{err}");
    let mut bad_sysctl = fx.pod_config("sysctl");
    bad_sysctl.linux.as_mut().expect("linux").sysctls = HashMap::from([(
        "kernel.shm_rmid_forced".to_owned(),
        "1+kernel.core_pattern=|/x".to_owned(),
    )]);
    let err = fx
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad_sysctl),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("smuggled sysctl");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = fx
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(fx.pod_config("h")),
            runtime_handler: "kata".into(),
        })
        .await
        .expect_err("unknown handler");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    let first = fx
        .start_container(&pod_id, &pod, fx.container_config("c", &["sleep", "1000"]))
        .await;
    let dup = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(fx.container_config("c", &["sleep", "1000"])),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("same container twice");
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert!(dup.message().contains(&first), "{dup}");

    let mut escaping = fx.container_config("escape", &["true"]);
    escaping.log_path = "../../outside.log".into();
    let mut no_image = fx.container_config("noimage", &["true"]);
    no_image.image = Some(cri::ImageSpec {
        image: "127.0.0.1:1/missing:1".into(),
        ..Default::default()
    });
    let mut bad_mount = fx.container_config("badmount", &["true"]);
    bad_mount.mounts = vec![cri::Mount {
        container_path: "relative".into(),
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    let mut bad_user = fx.container_config("baduser", &["true"]);
    bad_user.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "ghost".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    for (config, code, needle) in [
        (escaping, Code::InvalidArgument, "config.log_path"),
        (no_image, Code::NotFound, "missing"),
        (bad_mount, Code::InvalidArgument, "config.mounts"),
        (bad_user, Code::InvalidArgument, "ghost"),
    ] {
        let err = fx
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .expect_err("bad container config");
        assert_eq!(err.code(), code, "{err}");
        assert!(err.message().contains(needle), "{err}");
    }
    // The runtime's own message comes back when it refuses.
    let missing_binary = fx.container_config("nobinary", &["/no/such/binary"]);
    let created = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(missing_binary),
            sandbox_config: Some(pod.clone()),
        })
        .await;
    let err = match created {
        Err(err) => err,
        Ok(resp) => fx
            .runtime
            .start_container(cri::StartContainerRequest {
                container_id: resp.into_inner().container_id,
            })
            .await
            .expect_err("start a missing binary"),
    };
    assert!(err.message().contains("/no/such/binary"), "{err}");
    assert!(!std::path::Path::new(&fx.work.path().join("outside.log")).exists());
    let listed = fx
        .runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .containers;
    let names: Vec<String> = listed
        .iter()
        .filter_map(|c| c.metadata.as_ref().map(|m| m.name.clone()))
        .collect();
    assert!(
        names.iter().all(|n| n == "c" || n == "nobinary"),
        "partial containers remain: {names:?}"
    );
    let unknown = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "ffffffffffff".into(),
            config: Some(fx.container_config("x", &["true"])),
            sandbox_config: None,
        })
        .await
        .expect_err("unknown pod");
    assert_eq!(unknown.code(), Code::NotFound);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_network_and_private_pid_namespaces() {
    let mut fx = PodFixture::start("").await;
    let mut pod = fx.pod_config("hostnet");
    pod.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let status = fx.pod_status(&pod_id).await;
    assert!(status.network.map(|n| n.ip).unwrap_or_default().is_empty());
    let mut config = fx.container_config("c", &["sleep", "1000"]);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = fx.start_container(&pod_id, &pod, config).await;
    let links = text(&fx.exec(&id, &["ip", "-o", "link"], 10).await.stdout);
    let host_links = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip")
            .stdout,
    )
    .lines()
    .count();
    assert_eq!(links.lines().count(), host_links, "{links}");
    let ps = text(&fx.exec(&id, &["ps", "-o", "pid,args"], 10).await.stdout);
    assert!(
        ps.lines()
            .any(|l| l.trim().starts_with("1 ") && l.contains("sleep")),
        "{ps}"
    );
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_crid_finds_its_pods_and_the_exits_it_missed() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("restart");
    let pod_id = fx.run_pod(pod.clone()).await;
    let long = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("long", &["sleep", "1000"]),
        )
        .await;
    let short = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("short", &["sh", "-c", "sleep 1; exit 5"]),
        )
        .await;
    fx.crid.stop_with(nix::sys::signal::Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fx.crid.restart();
    fx.runtime = fx.crid.runtime().await;
    assert_eq!(
        fx.pod_status(&pod_id).await.state,
        cri::PodSandboxState::SandboxReady as i32
    );
    let status = fx.container_status(&long).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    let status = fx.container_status(&short).await;
    assert_eq!(
        (status.state, status.exit_code),
        (cri::ContainerState::ContainerExited as i32, 5)
    );
    let out = fx.exec(&long, &["echo", "still-here"], 10).await;
    assert_eq!(text(&out.stdout).trim(), "still-here");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_in_use_is_not_removed() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("inuse");
    let pod_id = fx.run_pod(pod.clone()).await;
    let id = fx
        .start_container(&pod_id, &pod, fx.container_config("c", &["sleep", "1000"]))
        .await;
    let mut images = fx.crid.images().await;
    let image = fx.image.clone();
    let spec = || {
        Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        })
    };
    let refused = images
        .remove_image(cri::RemoveImageRequest { image: spec() })
        .await
        .expect_err("remove an image a container uses");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains(&id), "{refused}");
    // The container still works.
    assert_eq!(fx.exec(&id, &["true"], 10).await.exit_code, 0);
    fx.runtime
        .remove_container(cri::RemoveContainerRequest { container_id: id })
        .await
        .expect("remove");
    images
        .remove_image(cri::RemoveImageRequest { image: spec() })
        .await
        .expect("remove the unused image");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cni_config_a_pod_is_refused_and_leaves_nothing() {
    let mut fx = PodFixture::start("").await;
    let conf_dir = fx.crid.dir.path().join("net.d");
    std::fs::remove_file(conf_dir.join("10-test.conflist")).expect("remove conflist");
    let status = fx
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner();
    let network = status
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady");
    assert!(
        !network.status && network.reason == "NetworkPluginNotReady",
        "{network:?}"
    );
    let err = fx
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(fx.pod_config("nonet")),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a pod without a network");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains(&conf_dir.display().to_string()),
        "{err}"
    );
    // The name is free again and nothing is listed.
    let pods = fx
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_pid_and_host_ipc() {
    let mut fx = PodFixture::start("").await;
    let mut pod = fx.pod_config("hostpid");
    let host_options = cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Node as i32,
        ipc: cri::NamespaceMode::Node as i32,
        ..Default::default()
    };
    pod.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(host_options.clone()),
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut config = fx.container_config("c", &["sleep", "1000"]);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(host_options),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = fx.start_container(&pod_id, &pod, config).await;
    // The host's processes are visible (this test's own pid among them).
    let ps = text(&fx.exec(&id, &["ps", "-o", "pid"], 10).await.stdout);
    let own = std::process::id().to_string();
    assert!(
        ps.lines().any(|l| l.trim() == own),
        "host pid {own} not visible"
    );
    // The host's IPC namespace and /dev/shm.
    let ipc = fx.exec(&id, &["readlink", "/proc/self/ns/ipc"], 10).await;
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").expect("host ipc ns");
    assert_eq!(text(&ipc.stdout).trim(), host_ipc.display().to_string());
    let marker = format!("/dev/shm/crid-test-{}", std::process::id());
    std::fs::write(&marker, "host").expect("write host shm");
    let seen = fx.exec(&id, &["cat", &marker], 10).await;
    let _ = std::fs::remove_file(&marker);
    assert_eq!(text(&seen.stdout), "host");
    fx.finish().await;
}

/// The pid of the crimon serving container `id` (its command line names the id).
fn monitor_of(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_monitor = args.first().is_some_and(|a| a.ends_with(b"crimon"));
            let names_id = args
                .windows(2)
                .any(|w| w[0] == b"--id" && w[1] == id.as_bytes());
            (is_monitor && names_id).then_some(pid)
        })
}

/// A crimon that dies is noticed at once: the container is exited with a reason saying so,
/// a STOPPED event goes out, and Stop and Remove work (quickly) and leave nothing, also
/// after a crid restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_monitor_is_noticed_and_its_container_cleaned_up() {
    use std::time::Instant;
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("monitor-death");
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        ids.push(
            fx.start_container(
                &pod_id,
                &pod,
                fx.container_config(name, &["sleep", "100000"]),
            )
            .await,
        );
    }
    for id in &ids {
        let monitor = monitor_of(id).expect("the container's crimon");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(monitor),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill crimon");
    }
    let status = fx.wait_exited(&ids[0], Duration::from_secs(10)).await;
    assert_eq!(status.reason, "Unknown", "{status:?}");
    assert!(status.message.contains("monitor"), "{status:?}");
    let started = Instant::now();
    fx.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: ids[0].clone(),
            timeout: 10,
        })
        .await
        .expect("StopContainer after the monitor died");
    fx.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: ids[0].clone(),
        })
        .await
        .expect("RemoveContainer after the monitor died");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop and remove took {:?}",
        started.elapsed()
    );
    // The second one across a restart of crid.
    fx.crid.stop_with(nix::sys::signal::Signal::SIGKILL);
    fx.crid.restart();
    fx.runtime = fx.crid.runtime().await;
    let status = fx.wait_exited(&ids[1], Duration::from_secs(10)).await;
    assert_eq!(status.reason, "Unknown", "{status:?}");
    fx.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .expect("RemovePodSandbox after the monitors died");
    fx.finish().await;
}
