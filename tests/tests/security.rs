//! The security context as a container sees it: capabilities in /proc/self/status, privileged
//! containers, read-only root, masked paths, users and groups, no_new_privs.

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;
use tonic::Code;

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

async fn proc_status(fx: &mut PodFixture, id: &str) -> String {
    let out = fx.exec(id, &["cat", "/proc/self/status"], 10).await;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `id` in a new container running with `security`.
async fn id_as(
    fx: &mut PodFixture,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    security: cri::LinuxContainerSecurityContext,
    name: &str,
) -> String {
    let config = with_security(fx.container_config(name, &["sleep", "1000"]), security);
    let id = fx.start_container(pod_id, pod, config).await;
    let out = fx.exec(&id, &["id"], 10).await;
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn caps_mask(names: &[u32]) -> u64 {
    names.iter().fold(0, |m, bit| m | (1u64 << bit))
}

fn with_security(
    mut config: cri::ContainerConfig,
    security: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(security),
        ..Default::default()
    });
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn capabilities_default_add_drop_and_all() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("caps");
    let pod_id = fx.run_pod(pod.clone()).await;
    // CRI-O's nine: CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7,
    // SETPCAP 8, NET_BIND_SERVICE 10.
    let default = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("default", &["sleep", "1000"]),
        )
        .await;
    let status = proc_status(&mut fx, &default).await;
    let nine = caps_mask(&[0, 1, 3, 4, 5, 6, 7, 8, 10]);
    assert_eq!(status_field(&status, "CapEff"), format!("{nine:016x}"));
    assert_eq!(status_field(&status, "CapBnd"), format!("{nine:016x}"));
    assert_eq!(status_field(&status, "CapInh"), format!("{:016x}", 0));
    assert_eq!(status_field(&status, "NoNewPrivs"), "0");

    let changed = with_security(
        fx.container_config("changed", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["KILL".into(), "CAP_CHOWN".into()],
                add_ambient_capabilities: Vec::new(),
            }),
            no_new_privs: true,
            ..Default::default()
        },
    );
    let changed = fx.start_container(&pod_id, &pod, changed).await;
    let status = proc_status(&mut fx, &changed).await;
    let expected = caps_mask(&[1, 3, 4, 6, 7, 8, 10, 12]);
    assert_eq!(status_field(&status, "CapEff"), format!("{expected:016x}"));
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // NET_ADMIN works, KILL's absence does not matter for root killing its own processes.
    let link = fx
        .exec(&changed, &["ip", "link", "set", "lo", "mtu", "1500"], 10)
        .await;
    assert_eq!(
        link.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&link.stderr)
    );

    let none = with_security(
        fx.container_config("none", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let none = fx.start_container(&pod_id, &pod, none).await;
    let status = proc_status(&mut fx, &none).await;
    assert_eq!(status_field(&status, "CapEff"), format!("{:016x}", 0));
    let chown = fx.exec(&none, &["chown", "1000", "/tmp"], 10).await;
    assert_ne!(chown.exit_code, 0, "chown without CAP_CHOWN succeeded");

    let bad = with_security(
        fx.container_config("bad", &["true"]),
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["CAP_FLY".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let err = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(bad),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("unknown capability");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("CAP_FLY"), "{err}");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_containers_need_a_privileged_pod_and_get_everything() {
    let mut fx = PodFixture::start("").await;
    let plain_pod = fx.pod_config("plain");
    let plain_id = fx.run_pod(plain_pod.clone()).await;
    let privileged = |fx: &PodFixture| {
        with_security(
            fx.container_config("priv", &["sleep", "1000"]),
            cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        )
    };
    let err = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: plain_id.clone(),
            config: Some(privileged(&fx)),
            sandbox_config: Some(plain_pod.clone()),
        })
        .await
        .expect_err("privileged container in an unprivileged pod");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    let mut pod = fx.pod_config("priv");
    pod.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let id = fx.start_container(&pod_id, &pod, privileged(&fx)).await;
    let status =
        String::from_utf8_lossy(&fx.exec(&id, &["cat", "/proc/self/status"], 10).await.stdout)
            .into_owned();
    // Every capability crid itself holds (this test runs with the same set).
    let ours = std::fs::read_to_string("/proc/self/status").expect("own status");
    assert_eq!(
        status_field(&status, "CapEff"),
        status_field(&ours, "CapBnd")
    );
    let mounts =
        String::from_utf8_lossy(&fx.exec(&id, &["cat", "/proc/self/mounts"], 10).await.stdout)
            .into_owned();
    assert!(
        mounts.lines().any(|l| l.starts_with("sysfs /sys sysfs rw")),
        "{mounts}"
    );
    assert!(
        !mounts.contains("/proc/kcore"),
        "masked in a privileged container: {mounts}"
    );
    let devices =
        String::from_utf8_lossy(&fx.exec(&id, &["ls", "/dev"], 10).await.stdout).into_owned();
    assert!(
        devices.lines().any(|d| d == "kmsg"),
        "host devices missing: {devices}"
    );
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_root_masked_paths_users_and_groups() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("users");
    let pod_id = fx.run_pod(pod.clone()).await;
    let ro = with_security(
        fx.container_config("ro", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            masked_paths: vec!["/proc/cpuinfo".into()],
            ..Default::default()
        },
    );
    let ro = fx.start_container(&pod_id, &pod, ro).await;
    // The root and the runtime's mount points are 0755 (crid and crimon run with umask 077).
    let modes = fx
        .exec(&ro, &["stat", "-c", "%a", "/", "/dev/shm/.."], 10)
        .await;
    assert_eq!(
        String::from_utf8_lossy(&modes.stdout)
            .split_whitespace()
            .next(),
        Some("755")
    );
    let touch = fx.exec(&ro, &["touch", "/newfile"], 10).await;
    assert_ne!(touch.exit_code, 0, "wrote to a read-only root");
    let tmpfs = fx.exec(&ro, &["touch", "/dev/shm/ok"], 10).await;
    assert_eq!(
        tmpfs.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&tmpfs.stderr)
    );
    let cpuinfo = fx.exec(&ro, &["cat", "/proc/cpuinfo"], 10).await;
    assert!(cpuinfo.stdout.is_empty(), "/proc/cpuinfo not masked");
    let kcore = fx.exec(&ro, &["cat", "/proc/self/mounts"], 10).await;
    assert!(
        !String::from_utf8_lossy(&kcore.stdout).contains("/proc/kcore"),
        "the request's list replaces the defaults"
    );

    let by_uid = id_as(
        &mut fx,
        &pod_id,
        &pod,
        cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 2000 }),
            supplemental_groups: vec![3000],
            ..Default::default()
        },
        "uid",
    )
    .await;
    assert!(by_uid.starts_with("uid=1000(tester) gid=2000"), "{by_uid}");
    assert!(
        by_uid.contains("3000") && by_uid.contains("1500"),
        "{by_uid}"
    );
    let merged = id_as(
        &mut fx,
        &pod_id,
        &pod,
        cri::LinuxContainerSecurityContext {
            run_as_username: "tester".into(),
            ..Default::default()
        },
        "merge",
    )
    .await;
    assert!(
        merged.starts_with("uid=1000(tester) gid=1000(tester)") && merged.contains("1500(extra)"),
        "{merged}"
    );
    let strict = id_as(
        &mut fx,
        &pod_id,
        &pod,
        cri::LinuxContainerSecurityContext {
            run_as_username: "tester".into(),
            supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
            ..Default::default()
        },
        "strict",
    )
    .await;
    assert!(!strict.contains("1500"), "{strict}");

    let group_only = with_security(
        fx.container_config("grouponly", &["true"]),
        cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 5 }),
            ..Default::default()
        },
    );
    let err = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(group_only),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("run_as_group without a user");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("run_as_group"), "{err}");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_profiles_runtime_default_localhost_unconfined() {
    let mut fx = PodFixture::start("").await;
    let mut pod = fx.pod_config("seccomp");
    pod.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let profile = |kind: cri::security_profile::ProfileType, path: &str| cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: path.to_owned(),
    };
    use cri::security_profile::ProfileType;
    let run =
        |fx: &PodFixture, name: &str, seccomp: Option<cri::SecurityProfile>, privileged: bool| {
            with_security(
                fx.container_config(name, &["sleep", "1000"]),
                cri::LinuxContainerSecurityContext {
                    seccomp,
                    privileged,
                    ..Default::default()
                },
            )
        };
    let default = fx
        .start_container(
            &pod_id,
            &pod,
            run(
                &fx,
                "default",
                Some(profile(ProfileType::RuntimeDefault, "")),
                false,
            ),
        )
        .await;
    let status = proc_status(&mut fx, &default).await;
    assert_eq!(status_field(&status, "Seccomp"), "2");
    // Namespace creation is refused even to root without CAP_SYS_ADMIN; ordinary work is fine.
    let unshare = fx.exec(&default, &["unshare", "-n", "true"], 10).await;
    assert_ne!(unshare.exit_code, 0);
    let work = fx
        .exec(
            &default,
            &[
                "sh",
                "-c",
                "mkdir /tmp/d && echo ok > /tmp/d/f && cat /tmp/d/f",
            ],
            10,
        )
        .await;
    assert_eq!(String::from_utf8_lossy(&work.stdout).trim(), "ok");

    let unconfined = fx
        .start_container(
            &pod_id,
            &pod,
            run(
                &fx,
                "unconfined",
                Some(profile(ProfileType::Unconfined, "")),
                false,
            ),
        )
        .await;
    assert_eq!(
        status_field(&proc_status(&mut fx, &unconfined).await, "Seccomp"),
        "0"
    );

    let privileged = fx
        .start_container(
            &pod_id,
            &pod,
            run(
                &fx,
                "privileged",
                Some(profile(ProfileType::RuntimeDefault, "")),
                true,
            ),
        )
        .await;
    assert_eq!(
        status_field(&proc_status(&mut fx, &privileged).await, "Seccomp"),
        "0"
    );

    let file = fx.work.path().join("no-mkdir.json");
    std::fs::write(
        &file,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .expect("write profile");
    let local = fx
        .start_container(
            &pod_id,
            &pod,
            run(
                &fx,
                "local",
                Some(profile(ProfileType::Localhost, &file.display().to_string())),
                false,
            ),
        )
        .await;
    let mkdir = fx.exec(&local, &["mkdir", "/tmp/blocked"], 10).await;
    assert_ne!(mkdir.exit_code, 0, "the localhost profile did not apply");
    let missing = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(run(
                &fx,
                "missing",
                Some(profile(ProfileType::Localhost, "/nonexistent/p.json")),
                false,
            )),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("a missing profile");
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing}");
    assert!(
        missing.message().contains("/nonexistent/p.json"),
        "{missing}"
    );
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_modes_apparmor_and_mount_rules_are_checked() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("rules");
    let pod_id = fx.run_pod(pod.clone()).await;
    use cri::NamespaceMode as M;
    for (network, ipc, pid, needle) in [
        (M::Node, M::Pod, M::Pod, "network"),
        (M::Pod, M::Target, M::Pod, "ipc"),
        (M::Pod, M::Pod, M::Target, "target_id"),
    ] {
        let config = with_security(
            fx.container_config("ns", &["true"]),
            cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: network as i32,
                    ipc: ipc as i32,
                    pid: pid as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let err = fx.create_container_err(&pod_id, &pod, config).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains(needle), "{err}");
    }

    let apparmor = with_security(
        fx.container_config("aa", &["true"]),
        cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost as i32,
                localhost_ref: "my-profile".into(),
            }),
            ..Default::default()
        },
    );
    let err = fx.create_container_err(&pod_id, &pod, apparmor).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("my-profile"), "{err}");

    // Bidirectional propagation needs a shared source mount; the work dir is on a private one
    // unless the host made / shared.
    let private_dir = fx.work.path().join("private");
    std::fs::create_dir_all(&private_dir).expect("mkdir");
    let shared_root = crid_daemon::container::mounts::propagation_of(&private_dir)
        .map(|(_, p)| p == crid_daemon::container::mounts::Propagation::Shared)
        .unwrap_or(false);
    if !shared_root {
        let mut config = fx.container_config("bidi", &["true"]);
        config.mounts = vec![cri::Mount {
            container_path: "/bidi".into(),
            host_path: private_dir.display().to_string(),
            propagation: cri::MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        }];
        let err = fx.create_container_err(&pod_id, &pod, config).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains("shared"), "{err}");
    }
    let mut config = fx.container_config("rro", &["true"]);
    config.mounts = vec![cri::Mount {
        container_path: "/rro".into(),
        host_path: private_dir.display().to_string(),
        recursive_read_only: true,
        readonly: false,
        ..Default::default()
    }];
    let err = fx.create_container_err(&pod_id, &pod, config).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("recursive_read_only"), "{err}");
    fx.finish().await;
}

/// A tmpfs mounted at `path` with the given propagation, unmounted on drop.
struct HostMount(std::path::PathBuf);

impl HostMount {
    fn tmpfs(path: &std::path::Path, propagation: &str) -> Self {
        std::fs::create_dir_all(path).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(path)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount tmpfs on {}", path.display());
        let ok = std::process::Command::new("mount")
            .arg(format!("--make-{propagation}"))
            .arg(path)
            .status()
            .expect("mount --make")
            .success();
        assert!(ok, "make {propagation} {}", path.display());
        HostMount(path.to_owned())
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_to_container_propagation_and_recursive_read_only() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("propagation");
    let pod_id = fx.run_pod(pod.clone()).await;
    let shared = HostMount::tmpfs(&fx.work.path().join("shared"), "shared");
    let tree = HostMount::tmpfs(&fx.work.path().join("tree"), "private");
    let inner = HostMount::tmpfs(&tree.0.join("inner"), "private");
    let mut config = fx.container_config("c", &["sleep", "1000"]);
    config.mounts = vec![
        cri::Mount {
            container_path: "/from-host".into(),
            host_path: shared.0.display().to_string(),
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/rro".into(),
            host_path: tree.0.display().to_string(),
            readonly: true,
            recursive_read_only: true,
            ..Default::default()
        },
    ];
    let id = fx.start_container(&pod_id, &pod, config).await;
    // A mount made on the host after the start appears inside.
    let late = HostMount::tmpfs(&shared.0.join("late"), "private");
    std::fs::write(late.0.join("marker"), "propagated").expect("write marker");
    let read = fx.exec(&id, &["cat", "/from-host/late/marker"], 10).await;
    assert_eq!(String::from_utf8_lossy(&read.stdout), "propagated");
    // The submount of a recursive read-only mount is read-only too.
    let write = fx
        .exec(&id, &["sh", "-c", "echo x > /rro/inner/file"], 10)
        .await;
    assert_ne!(
        write.exit_code, 0,
        "wrote into a recursive read-only submount"
    );
    fx.finish().await;
    drop(late);
    drop(inner);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_new_privs_stops_a_setuid_binary() {
    use std::os::unix::fs::PermissionsExt;
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("nnp");
    let pod_id = fx.run_pod(pod.clone()).await;
    // The harness's setuid-root program, with the host's C library mounted in (it is not a
    // static binary and the busybox image has no libc).
    let dir = fx.work.path().join("suid");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let program = dir.join("euid");
    std::fs::copy(
        crid_tests::harness::workspace_binary("crid-test-euid"),
        &program,
    )
    .expect("copy");
    std::os::unix::fs::chown(&program, Some(0), Some(0)).expect("chown");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    let libs = ["/lib/x86_64-linux-gnu", "/lib64"];
    for lib in libs {
        assert!(
            std::path::Path::new(lib).exists(),
            "missing: {lib} (the test mounts the host's C library)"
        );
    }
    let run = |fx: &PodFixture, name: &str, no_new_privs: bool| {
        let mut config = with_security(
            fx.container_config(name, &["sleep", "1000"]),
            cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                no_new_privs,
                ..Default::default()
            },
        );
        config.mounts = std::iter::once(("/opt/suid", dir.display().to_string()))
            .chain(libs.iter().map(|l| (*l, (*l).to_owned())))
            .map(|(target, source)| cri::Mount {
                container_path: target.to_owned(),
                host_path: source,
                readonly: true,
                ..Default::default()
            })
            .collect();
        config
    };
    let escalates = fx
        .start_container(&pod_id, &pod, run(&fx, "escalates", false))
        .await;
    let out = fx.exec(&escalates, &["/opt/suid/euid"], 10).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "setuid did not work without no_new_privs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = fx
        .start_container(&pod_id, &pod, run(&fx, "held", true))
        .await;
    let out = fx.exec(&held, &["/opt/suid/euid"], 10).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1000",
        "exit {}: {}",
        out.exit_code,
        String::from_utf8_lossy(&out.stderr)
    );
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_sysctls_and_a_target_pid_namespace() {
    let mut fx = PodFixture::start("").await;
    let mut pod = fx.pod_config("sysctls");
    let linux = pod.linux.as_mut().expect("linux");
    linux.sysctls = std::collections::HashMap::from([
        (
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "80".to_owned(),
        ),
        ("kernel.shm_rmid_forced".to_owned(), "1".to_owned()),
    ]);
    linux.security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let own_pid = |fx: &PodFixture, name: &str, pid: cri::NamespaceMode, target: &str| {
        with_security(
            fx.container_config(name, &["sleep", "1000"]),
            cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: pid as i32,
                    target_id: target.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    };
    let first = fx
        .start_container(
            &pod_id,
            &pod,
            own_pid(&fx, "first", cri::NamespaceMode::Container, ""),
        )
        .await;
    let port_start = fx
        .exec(
            &first,
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
            10,
        )
        .await;
    assert_eq!(String::from_utf8_lossy(&port_start.stdout).trim(), "80");
    let rmid = fx
        .exec(&first, &["cat", "/proc/sys/kernel/shm_rmid_forced"], 10)
        .await;
    assert_eq!(String::from_utf8_lossy(&rmid.stdout).trim(), "1");
    // The host's values are untouched.
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .expect("host sysctl");
    assert_ne!(host.trim(), "80");

    // A debug container joining the first one's PID namespace sees its sleep as PID 1.
    let debug = fx
        .start_container(
            &pod_id,
            &pod,
            own_pid(&fx, "debug", cri::NamespaceMode::Target, &first),
        )
        .await;
    let ps = fx.exec(&debug, &["ps", "-o", "pid,args"], 10).await;
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(
        ps.lines()
            .any(|l| l.trim().starts_with("1 ") && l.contains("sleep 1000")),
        "{ps}"
    );
    assert!(
        ps.lines().filter(|l| l.contains("sleep 1000")).count() >= 2,
        "{ps}"
    );
    fx.finish().await;
}

/// crid's own recursive read-only staging (used when the runtime lacks `rro`): every mount
/// of the staged tree is read-only, the host's tree stays writable, and unstaging leaves
/// nothing mounted.
#[test]
fn crid_stages_recursive_read_only_trees_itself() {
    crid_tests::harness::require::root();
    assert!(
        crid_mount::rro::kernel_supports(),
        "missing: mount_setattr (Linux 5.12) in this kernel"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let tree = HostMount::tmpfs(&work.path().join("tree"), "private");
    let inner = HostMount::tmpfs(&tree.0.join("inner"), "private");
    let container_dir = work.path().join("container");
    std::fs::create_dir(&container_dir).expect("mkdir");
    let staged = crid_mount::rro::stage(&container_dir, 0, &tree.0).expect("stage");
    for path in [staged.join("top"), staged.join("inner/file")] {
        let err = std::fs::write(&path, "x").expect_err("write into a staged tree");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EROFS),
            "{}: {err}",
            path.display()
        );
    }
    std::fs::write(inner.0.join("file"), "host").expect("the host's tree stays writable");
    crid_mount::rro::unstage_all(&container_dir).expect("unstage");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&container_dir.display().to_string()),
        "staged mounts left behind"
    );
    drop(inner);
    drop(tree);
}
