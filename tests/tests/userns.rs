//! Pods with a user namespace of their own (CRI `userns_options` mode POD, KEP-127): the
//! container's ids are the pod's mappings, its rootfs and volumes are id-mapped (crid makes the
//! id-mapped mounts itself: runc 1.1 has none), what it writes belongs to the pod's host ids,
//! and nothing is left behind; bad mappings and modes are InvalidArgument.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;
use crid_tests::harness::{require, workspace_binary};
use tonic::Code;

/// The pod's mappings: container ids 0..65536 are host ids 300000.. (uids) and 400000..
/// (gids); ranges no user of this host has.
const HOST_UID: u32 = 300_000;
const HOST_GID: u32 = 400_000;
const LENGTH: u32 = 65_536;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mapping(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping {
        container_id,
        host_id,
        length,
    }
}

fn userns(
    mode: cri::NamespaceMode,
    uids: Vec<cri::IdMapping>,
    gids: Vec<cri::IdMapping>,
) -> cri::UserNamespace {
    cri::UserNamespace {
        mode: mode as i32,
        uids,
        gids,
    }
}

fn pod_userns() -> cri::UserNamespace {
    userns(
        cri::NamespaceMode::Pod,
        vec![mapping(0, HOST_UID, LENGTH)],
        vec![mapping(0, HOST_GID, LENGTH)],
    )
}

/// `pod` with these namespace options (kubelet gives the same to the pod and its containers).
fn with_namespaces(
    mut pod: cri::PodSandboxConfig,
    options: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    let linux = pod.linux.get_or_insert_with(Default::default);
    linux
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(options);
    pod
}

fn container_with_namespaces(
    mut config: cri::ContainerConfig,
    options: Option<cri::NamespaceOption>,
) -> cri::ContainerConfig {
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: options,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// Runs `cmd` in the container; panics unless it exits 0; its standard output.
async fn run(fx: &mut PodFixture, id: &str, cmd: &[&str]) -> String {
    let out = fx.exec(id, cmd, 10).await;
    assert_eq!(
        out.exit_code,
        0,
        "{cmd:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `ls -ln` fields: (uid, gid) of `path` in the container.
async fn owner_in_container(fx: &mut PodFixture, id: &str, path: &str) -> (String, String) {
    let out = run(fx, id, &["ls", "-lnd", path]).await;
    let fields: Vec<&str> = out.split_whitespace().collect();
    (fields[2].to_owned(), fields[3].to_owned())
}

fn host_ids(status: &str) -> (String, String) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_default()
            .to_owned()
    };
    (field("Uid:"), field("Gid:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn userns_pod_maps_ids_rootfs_and_volumes() {
    let mut fx = PodFixture::start("").await;
    // Status advertises user namespaces for both names of crid's handler.
    let status = fx
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    for handler in &status.runtime_handlers {
        assert!(
            handler.features.as_ref().is_some_and(|f| f.user_namespaces),
            "handler {:?} does not advertise user namespaces: {handler:?}\n{}",
            handler.name,
            fx.crid.stderr()
        );
    }
    assert_eq!(status.runtime_handlers.len(), 2);

    // A hostPath volume with a root-owned file and a file of uid 1234.
    let volume = fx.work.path().join("volume");
    std::fs::create_dir(&volume).expect("mkdir volume");
    std::fs::write(volume.join("root-file"), "from the host\n").expect("write");
    std::fs::write(volume.join("user-file"), "of 1234\n").expect("write");
    std::os::unix::fs::chown(volume.join("user-file"), Some(1234), Some(1234)).expect("chown");
    let read_only = fx.work.path().join("read-only");
    std::fs::create_dir(&read_only).expect("mkdir read-only");

    let options = cri::NamespaceOption {
        userns_options: Some(pod_userns()),
        ..Default::default()
    };
    let pod = with_namespaces(fx.pod_config("userns"), options.clone());
    let pod_id = fx.run_pod(pod.clone()).await;
    let pin = fx.crid.dir.path().join("run/ns/user").join(&pod_id);
    assert!(pin.exists(), "no user namespace pin {}", pin.display());

    let mut config = container_with_namespaces(
        fx.container_config("c", &["sleep", "1000"]),
        Some(options.clone()),
    );
    config.mounts = vec![
        cri::Mount {
            container_path: "/vol".into(),
            host_path: volume.display().to_string(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/ro".into(),
            host_path: read_only.display().to_string(),
            readonly: true,
            recursive_read_only: true,
            ..Default::default()
        },
    ];
    let id = fx.start_container(&pod_id, &pod, config).await;

    // The container's ids are the pod's mappings; it is root in them, host id 300000 outside.
    let uid_map = run(&mut fx, &id, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &HOST_UID.to_string(), &LENGTH.to_string()]
    );
    let gid_map = run(&mut fx, &id, &["cat", "/proc/self/gid_map"]).await;
    assert_eq!(
        gid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &HOST_GID.to_string(), &LENGTH.to_string()]
    );
    assert_eq!(run(&mut fx, &id, &["id", "-u"]).await.trim(), "0");
    let pid = i64::from(fx.container_pid(&id).await);
    let host_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(
        host_ids(&host_status),
        (HOST_UID.to_string(), HOST_GID.to_string())
    );

    // The image's files (root's on the host) are container root's, and container root
    // writes to its rootfs: the files land in the upper directory owned by the pod's host ids.
    assert_eq!(
        owner_in_container(&mut fx, &id, "/bin/busybox").await,
        ("0".into(), "0".into())
    );
    run(
        &mut fx,
        &id,
        &["sh", "-c", "echo hi > /written && mkdir /made"],
    )
    .await;
    let upper = fx
        .crid
        .dir
        .path()
        .join("root/containers")
        .join(&id)
        .join("upper");
    for name in ["written", "made"] {
        let meta = std::fs::metadata(upper.join(name)).expect("written to the upper dir");
        assert_eq!((meta.uid(), meta.gid()), (HOST_UID, HOST_GID), "{name}");
    }

    // The volume is id-mapped: host root's file is container root's, uid 1234 stays 1234,
    // and what container root writes there is host root's.
    assert_eq!(
        run(&mut fx, &id, &["cat", "/vol/root-file"]).await,
        "from the host\n"
    );
    assert_eq!(
        owner_in_container(&mut fx, &id, "/vol/root-file").await,
        ("0".into(), "0".into())
    );
    assert_eq!(
        owner_in_container(&mut fx, &id, "/vol/user-file").await,
        ("1234".into(), "1234".into())
    );
    run(
        &mut fx,
        &id,
        &["sh", "-c", "echo from-the-pod > /vol/from-pod"],
    )
    .await;
    let meta = std::fs::metadata(volume.join("from-pod")).expect("written to the volume");
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    // A recursive read-only volume is id-mapped and read-only.
    assert_eq!(
        owner_in_container(&mut fx, &id, "/ro").await,
        ("0".into(), "0".into())
    );
    let write = fx.exec(&id, &["touch", "/ro/x"], 10).await;
    assert_ne!(write.exit_code, 0, "wrote to a read-only volume");

    // The pod's files and /dev/shm are container root's.
    run(
        &mut fx,
        &id,
        &["sh", "-c", "echo '10.1.2.3 extra' >> /etc/hosts"],
    )
    .await;
    assert_eq!(
        owner_in_container(&mut fx, &id, "/dev/shm").await,
        ("0".into(), "0".into())
    );
    run(&mut fx, &id, &["touch", "/dev/shm/x"]).await;

    // Exec through the streaming server (crictl, SPDY) runs in the container's namespace too.
    let crictl_config = fx.work.path().join("crictl.yaml");
    let socket = format!("unix://{}", fx.crid.socket.display());
    std::fs::write(
        &crictl_config,
        format!("runtime-endpoint: {socket}\nimage-endpoint: {socket}\ntimeout: 30\n"),
    )
    .expect("write crictl.yaml");
    let exec = std::process::Command::new(require::crictl())
        .arg("-c")
        .arg(&crictl_config)
        .args(["exec", &id, "sh", "-c", "id -u; cat /proc/self/uid_map"])
        .output()
        .expect("run crictl exec");
    assert!(exec.status.success(), "crictl exec: {}", text(&exec.stderr));
    assert_eq!(
        text(&exec.stdout).split_whitespace().collect::<Vec<_>>(),
        ["0", "0", &HOST_UID.to_string(), &LENGTH.to_string()]
    );

    // A second container joins the same namespace.
    let second = container_with_namespaces(
        fx.container_config("second", &["cat", "/proc/self/uid_map"]),
        Some(options.clone()),
    );
    let second = fx.start_container(&pod_id, &pod, second).await;
    let status = fx.wait_exited(&second, Duration::from_secs(20)).await;
    assert_eq!(status.exit_code, 0);
    let log =
        std::fs::read_to_string(Path::new(&pod.log_directory).join("second/0.log")).expect("log");
    let (uid, length) = (HOST_UID.to_string(), LENGTH.to_string());
    let fields: Vec<&str> = log.split_whitespace().collect();
    assert!(
        fields.windows(3).any(|w| w == ["0", &uid, &length]),
        "{log}"
    );

    // After a restart of crid the pod keeps its user namespace.
    fx.crid.stop_with(nix::sys::signal::Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fx.crid.restart();
    fx.runtime = fx.crid.runtime().await;
    assert_eq!(
        fx.pod_status(&pod_id).await.state,
        cri::PodSandboxState::SandboxReady as i32
    );
    let after = container_with_namespaces(
        fx.container_config("after", &["sleep", "1000"]),
        Some(options),
    );
    let after = fx.start_container(&pod_id, &pod, after).await;
    let uid_map = run(&mut fx, &after, &["cat", "/proc/self/uid_map"]).await;
    assert!(uid_map.contains(&HOST_UID.to_string()), "{uid_map}");
    assert_eq!(run(&mut fx, &id, &["id", "-u"]).await.trim(), "0");

    // Removal leaves no pin, mount or process (finish checks).
    fx.finish().await;
    assert!(!pin.exists(), "user namespace pin left: {}", pin.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn userns_bad_mappings_and_modes_are_invalid_argument() {
    let mut fx = PodFixture::start("").await;
    let one = || vec![mapping(0, HOST_UID, LENGTH)];
    let bad: Vec<(&str, cri::NamespaceOption)> = vec![
        (
            "two mappings (critest)",
            cri::NamespaceOption {
                userns_options: Some(userns(
                    cri::NamespaceMode::Pod,
                    vec![mapping(0, 1000, 100000), mapping(0, 2000, 100000)],
                    vec![mapping(0, 1000, 100000), mapping(0, 2000, 100000)],
                )),
                ..Default::default()
            },
        ),
        (
            "container id 0 unmapped (critest)",
            cri::NamespaceOption {
                userns_options: Some(userns(
                    cri::NamespaceMode::Pod,
                    vec![mapping(1, 1000, 100000)],
                    vec![mapping(1, 1000, 100000)],
                )),
                ..Default::default()
            },
        ),
        (
            "mode CONTAINER (critest)",
            cri::NamespaceOption {
                userns_options: Some(userns(cri::NamespaceMode::Container, vec![], vec![])),
                ..Default::default()
            },
        ),
        (
            "mode TARGET (critest)",
            cri::NamespaceOption {
                userns_options: Some(userns(cri::NamespaceMode::Target, vec![], vec![])),
                ..Default::default()
            },
        ),
        (
            "no gid mapping",
            cri::NamespaceOption {
                userns_options: Some(userns(cri::NamespaceMode::Pod, one(), vec![])),
                ..Default::default()
            },
        ),
        (
            "empty range",
            cri::NamespaceOption {
                userns_options: Some(userns(
                    cri::NamespaceMode::Pod,
                    vec![mapping(0, HOST_UID, 0)],
                    one(),
                )),
                ..Default::default()
            },
        ),
        (
            "range past the last id",
            cri::NamespaceOption {
                userns_options: Some(userns(
                    cri::NamespaceMode::Pod,
                    vec![mapping(0, u32::MAX - 10, 11)],
                    one(),
                )),
                ..Default::default()
            },
        ),
        (
            "NODE with mappings",
            cri::NamespaceOption {
                userns_options: Some(userns(cri::NamespaceMode::Node, one(), one())),
                ..Default::default()
            },
        ),
        (
            "POD with the host's network",
            cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                userns_options: Some(pod_userns()),
                ..Default::default()
            },
        ),
        (
            "POD with the host's PID namespace",
            cri::NamespaceOption {
                pid: cri::NamespaceMode::Node as i32,
                userns_options: Some(pod_userns()),
                ..Default::default()
            },
        ),
    ];
    for (what, options) in bad {
        let pod = with_namespaces(fx.pod_config("bad"), options);
        let err = fx
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod),
                runtime_handler: String::new(),
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err}");
        assert!(err.message().contains("userns_options"), "{what}: {err}");
    }

    // NODE (and no options) is the host's user namespace.
    let node = cri::NamespaceOption {
        userns_options: Some(userns(cri::NamespaceMode::Node, vec![], vec![])),
        ..Default::default()
    };
    let pod = with_namespaces(fx.pod_config("node"), node.clone());
    let pod_id = fx.run_pod(pod.clone()).await;
    let config =
        container_with_namespaces(fx.container_config("node", &["sleep", "1000"]), Some(node));
    let id = fx.start_container(&pod_id, &pod, config).await;
    let host_map = std::fs::read_to_string("/proc/self/uid_map").expect("uid_map");
    assert_eq!(
        run(&mut fx, &id, &["cat", "/proc/self/uid_map"])
            .await
            .split_whitespace()
            .collect::<Vec<_>>(),
        host_map.split_whitespace().collect::<Vec<_>>()
    );

    // A container's user namespace must be its pod's.
    let options = cri::NamespaceOption {
        userns_options: Some(pod_userns()),
        ..Default::default()
    };
    let pod = with_namespaces(fx.pod_config("userns"), options.clone());
    let pod_id = fx.run_pod(pod.clone()).await;
    let other = cri::NamespaceOption {
        userns_options: Some(userns(
            cri::NamespaceMode::Pod,
            vec![mapping(0, 500_000, LENGTH)],
            vec![mapping(0, HOST_GID, LENGTH)],
        )),
        ..Default::default()
    };
    for (what, container_options) in [
        ("other mappings", Some(other)),
        ("the host's", Some(cri::NamespaceOption::default())),
    ] {
        let config = container_with_namespaces(
            fx.container_config("mismatch", &["true"]),
            container_options,
        );
        let err = fx
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err}");
        assert!(err.message().contains("userns_options"), "{what}: {err}");
    }
    // A volume that cannot be id-mapped (procfs) fails the create, and the volume staged
    // before it, the id-mapped layers and the rootfs go with the container (finish checks).
    let mut config = container_with_namespaces(
        fx.container_config("procfs", &["true"]),
        Some(options.clone()),
    );
    let fine = fx.work.path().join("fine");
    std::fs::create_dir(&fine).expect("mkdir");
    config.mounts = vec![
        cri::Mount {
            container_path: "/fine".into(),
            host_path: fine.display().to_string(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/hostproc".into(),
            host_path: "/proc".into(),
            ..Default::default()
        },
    ];
    let err = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("procfs cannot be id-mapped");
    assert!(err.message().contains("/proc"), "{err}");

    // A user the mappings leave out cannot run.
    let mut config =
        container_with_namespaces(fx.container_config("unmapped", &["true"]), Some(options));
    if let Some(security) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        security.run_as_user = Some(cri::Int64Value {
            value: i64::from(LENGTH) + 5,
        });
    }
    let err = fx
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("an unmapped user");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("not mapped"), "{err}");
    fx.finish().await;
}

/// Namespace files of `pid`, or pinned files, by inode.
fn inode(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

/// The inode of the user namespace owning the namespace at `path` (NS_GET_USERNS).
fn owning_userns(path: &Path) -> u64 {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    let ns = std::fs::File::open(path).expect("open namespace");
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd (or -1).
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    assert!(
        fd >= 0,
        "NS_GET_USERNS {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    owner.metadata().expect("stat").ino()
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let base = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|t| t.starts_with(&base))
        .map(str::to_owned)
        .collect()
}

fn processes_naming(dir: &Path) -> Vec<String> {
    let base = dir.display().to_string();
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&base).then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}

#[test]
fn userns_pinns_makes_the_pods_namespaces_inside_its_user_namespace() {
    require::root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(workspace_binary("crid-pinns"))
        .arg("--dir")
        .arg(dir.path())
        .args(["--id", "pod1", "--net", "--ipc", "--uts", "--pid", "--user"])
        .args(["--uid-map", &format!("0:{HOST_UID}:{LENGTH}")])
        .args(["--gid-map", &format!("0:{HOST_GID}:{LENGTH}")])
        .args([
            "--hostname",
            "userns-pod",
            "--sysctl",
            "net.ipv4.ip_forward=1",
        ])
        .output()
        .expect("run crid-pinns");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("holder report");
    let holder = report["holder_pid"].as_i64().expect("holder pid");
    let pin = |kind: &str| dir.path().join(kind).join("pod1");
    // Every other namespace belongs to the pinned user namespace, which has the mappings.
    let user = inode(&pin("user"));
    for kind in ["net", "ipc", "uts", "pid"] {
        assert_eq!(owning_userns(&pin(kind)), user, "{kind} namespace's owner");
    }
    assert_eq!(inode(Path::new(&format!("/proc/{holder}/ns/user"))), user);
    let uid_map = std::fs::read_to_string(format!("/proc/{holder}/uid_map")).expect("uid_map");
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &HOST_UID.to_string(), &LENGTH.to_string()]
    );
    // The holder is root of the pod's namespace (host ids 300000/400000, never the host's
    // root), keeps no fd but stdio, and is not dumpable (its /proc/<pid>/root leads to the
    // host's files).
    let status = std::fs::read_to_string(format!("/proc/{holder}/status")).expect("status");
    assert_eq!(
        host_ids(&status),
        (HOST_UID.to_string(), HOST_GID.to_string())
    );
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{holder}/fd"))
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    assert!(fds.iter().all(|fd| *fd <= 2), "holder fds {fds:?}");
    // Not dumpable: a process of the holder's own host ids, without capabilities, may not
    // read its environment (it could if the holder were dumpable).
    let peek = std::process::Command::new(require::tool("setpriv"))
        .arg(format!("--reuid={HOST_UID}"))
        .arg(format!("--regid={HOST_GID}"))
        .args([
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "cat",
        ])
        .arg(format!("/proc/{holder}/environ"))
        .output()
        .expect("setpriv");
    assert!(
        !peek.status.success() && text(&peek.stderr).contains("Permission denied"),
        "the holder is dumpable: {peek:?}"
    );
    // Code injected into it (container root of this pod may trace it) finds no privilege.
    for name in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")));
        assert_eq!(
            value.map(str::trim),
            Some("0000000000000000"),
            "holder's {name}"
        );
    }
    for (name, want) in [("NoNewPrivs", "1"), ("Seccomp", "2")] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")));
        assert_eq!(value.map(str::trim), Some(want), "holder's {name}");
    }
    // Its UTS and network namespaces were set up inside.
    let hostname = std::process::Command::new(require::tool("nsenter"))
        .arg(format!("--uts={}", pin("uts").display()))
        .arg("hostname")
        .output()
        .expect("nsenter");
    assert_eq!(text(&hostname.stdout).trim(), "userns-pod");

    // Undone: kill the holder, unpin.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the holder");
    for kind in ["user", "net", "ipc", "uts", "pid"] {
        nix::mount::umount2(&pin(kind), nix::mount::MntFlags::MNT_DETACH).expect("unpin");
    }

    // A failure inside the user namespace (a sysctl that does not exist) undoes everything:
    // no pin, no mount, no process left.
    let out = std::process::Command::new(workspace_binary("crid-pinns"))
        .arg("--dir")
        .arg(dir.path())
        .args(["--id", "pod2", "--net", "--pid", "--user"])
        .args(["--uid-map", &format!("0:{HOST_UID}:{LENGTH}")])
        .args(["--gid-map", &format!("0:{HOST_GID}:{LENGTH}")])
        .args(["--sysctl", "net.ipv4.no_such_sysctl=1"])
        .output()
        .expect("run crid-pinns");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no_such_sysctl"),
        "{}",
        text(&out.stderr)
    );
    for kind in ["user", "net", "pid"] {
        assert!(
            !dir.path().join(kind).join("pod2").exists(),
            "{kind} pin left"
        );
    }
    assert_eq!(mounted_under(dir.path()), Vec::<String>::new());
    assert_eq!(processes_naming(dir.path()), Vec::<String>::new());
    // Mappings are checked before anything is made.
    for bad in ["0:1:0", "0:4294967295:2", "a:b:c", "0:1"] {
        let out = std::process::Command::new(workspace_binary("crid-pinns"))
            .arg("--dir")
            .arg(dir.path())
            .args(["--id", "pod3", "--net", "--user", "--uid-map", bad])
            .args(["--gid-map", "0:1000:1"])
            .output()
            .expect("run crid-pinns");
        assert!(!out.status.success(), "{bad} accepted");
    }
    assert!(!dir.path().join("user/pod3").exists());
}

/// `setpriv`'s arguments to run as host `uid`/`gid` without any capability.
fn as_host_user(uid: u32, gid: u32) -> std::process::Command {
    let mut command = std::process::Command::new(require::tool("setpriv"));
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]);
    command
}

/// containerd's CVE-2021-41103: a user-namespaced container's root filesystem must be reachable
/// by its container root (an unprivileged host user), but by no other host user: else any
/// local user could read the container's files and run its setuid programs as the container's
/// ids. crid's root and containers directories are only searchable (0711), the container's
/// own directory belongs to container root's host ids with mode 0700, and the other
/// containers' directories and the layer store stay 0700.
#[tokio::test(flavor = "multi_thread")]
async fn cve_2021_41103_a_userns_container_is_closed_to_other_host_users() {
    use std::os::unix::fs::PermissionsExt;
    let mut fx = PodFixture::start("").await;
    let options = cri::NamespaceOption {
        userns_options: Some(pod_userns()),
        ..Default::default()
    };
    let pod = with_namespaces(fx.pod_config("closed"), options.clone());
    let pod_id = fx.run_pod(pod.clone()).await;
    let config =
        container_with_namespaces(fx.container_config("c", &["sleep", "1000"]), Some(options));
    let id = fx.start_container(&pod_id, &pod, config).await;
    assert_eq!(run(&mut fx, &id, &["id", "-u"]).await.trim(), "0");
    let plain_pod = fx.pod_config("plain");
    let plain_pod_id = fx.run_pod(plain_pod.clone()).await;
    let plain_config = fx.container_config("p", &["sleep", "1000"]);
    let plain = fx
        .start_container(&plain_pod_id, &plain_pod, plain_config)
        .await;

    let root = fx.crid.dir.path().join("root");
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777;
    let dir = root.join("containers").join(&id);
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let owner = std::fs::metadata(&dir).expect("stat");
    assert_eq!((owner.uid(), owner.gid()), (HOST_UID, HOST_GID));
    assert_eq!(mode(&root.join("containers").join(&plain)), 0o700);
    assert_eq!(mode(&root.join("layers")), 0o700);
    let shell = dir.join("rootfs/bin/sh");
    // Container root's host ids reach the root filesystem; nobody else does.
    let owner_sees = as_host_user(HOST_UID, HOST_GID)
        .arg("stat")
        .arg(&shell)
        .output()
        .expect("setpriv");
    assert!(owner_sees.status.success(), "{owner_sees:?}");
    for (uid, gid) in [(65534, 65534), (HOST_UID + 1, HOST_GID + 1), (1000, 1000)] {
        let other = as_host_user(uid, gid)
            .arg("stat")
            .arg(&shell)
            .output()
            .expect("setpriv");
        assert!(
            !other.status.success() && text(&other.stderr).contains("Permission denied"),
            "host user {uid} reached {}: {other:?}",
            shell.display()
        );
    }
    fx.finish().await;
}
