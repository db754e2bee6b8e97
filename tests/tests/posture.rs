//! The posture of a default container (anchor C24: critest's security context specs, CRI-O
//! `ctr_seccomp.bats`, gVisor's sandbox posture test), inspected from inside and from the host
//! and compared with the expected sets exactly: capabilities, seccomp mode, no_new_privs, the
//! open fds of its init, and its mounts (masked and read-only paths as the README says). And
//! what the pod's PID 1 (crid-pinns' namespace holder) shows a container: nothing of the host.

use std::collections::BTreeSet;
use std::path::Path;

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;

/// CRI-O's nine, crid's default capabilities (README "Security, resources, stats, events"):
/// CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, SETPCAP 8,
/// NET_BIND_SERVICE 10.
const DEFAULT_CAPS: u64 = 0x5fb;
/// crid's default masked paths (the OCI runtime-tools list).
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// crid's default read-only paths.
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

/// The capability, no_new_privs and seccomp lines of a `/proc/<pid>/status`.
fn check_status(who: &str, status: &str, seccomp: &str, no_new_privs: &str) {
    let caps = format!("{DEFAULT_CAPS:016x}");
    for name in ["CapEff", "CapBnd", "CapPrm"] {
        assert_eq!(field(status, name), caps, "{who}: {name}");
    }
    for name in ["CapInh", "CapAmb"] {
        assert_eq!(field(status, name), format!("{:016x}", 0), "{who}: {name}");
    }
    assert_eq!(field(status, "Seccomp"), seccomp, "{who}: Seccomp");
    assert_eq!(
        field(status, "NoNewPrivs"),
        no_new_privs,
        "{who}: NoNewPrivs"
    );
}

/// The open fds of `pid` seen from the host, by number, with what each names.
fn open_fds(pid: i32) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .map(|e| {
            let e = e.expect("entry");
            let n = e.file_name().to_string_lossy().parse().expect("fd number");
            let target = std::fs::read_link(e.path()).expect("fd link");
            (n, target.display().to_string())
        })
        .collect();
    fds.sort();
    fds
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

/// A container given CAP_SYS_PTRACE (no privilege needed), sleeping.
fn ptrace_container(fx: &PodFixture) -> cri::ContainerConfig {
    with_security(
        fx.container_config("ptrace", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["SYS_PTRACE".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

fn own_pid_namespace() -> Option<cri::NamespaceOption> {
    Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    })
}

/// One `/proc/<pid>/mountinfo` line: mount point, its root in the source, per-mount options,
/// filesystem type.
struct MountLine {
    point: String,
    root: String,
    options: String,
    fstype: String,
}

fn mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-").expect("separator");
            MountLine {
                point: fields[4].to_owned(),
                root: fields[3].to_owned(),
                options: fields[5].to_owned(),
                fstype: fields[dash + 1].to_owned(),
            }
        })
        .collect()
}

/// Anchor C24: a container with no security context has CRI-O's nine capabilities (effective,
/// bounding, permitted; nothing inheritable or ambient), no seccomp filter (crid's default for
/// an absent profile, as containerd; mode 2 with RuntimeDefault), no_new_privs only when asked,
/// an init with only fds 0, 1 and 2 (nothing of crid or crimon), and exactly the mounts the
/// README lists, the masked and read-only paths among them.
#[tokio::test(flavor = "multi_thread")]
async fn anchor_c24_a_default_container_has_the_expected_posture() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("posture");
    let pod_id = fx.run_pod(pod.clone()).await;
    // In the pod's PID namespace (the default), inspected from the host.
    let default = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("default", &["sleep", "1000"]),
        )
        .await;
    // PID 1 of its own PID namespace, inspected from inside too.
    let own = with_security(
        fx.container_config("own", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            namespace_options: own_pid_namespace(),
            ..Default::default()
        },
    );
    let own = fx.start_container(&pod_id, &pod, own).await;
    let hardened = with_security(
        fx.container_config("hardened", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            namespace_options: own_pid_namespace(),
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            no_new_privs: true,
            ..Default::default()
        },
    );
    let hardened = fx.start_container(&pod_id, &pod, hardened).await;

    for (id, seccomp, nnp) in [
        (&default, "0", "0"),
        (&own, "0", "0"),
        (&hardened, "2", "1"),
    ] {
        let pid = fx.container_pid(id).await;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        check_status(&format!("{id} from the host"), &status, seccomp, nnp);
        // Only stdin, stdout and stderr: /dev/null or the monitor's pipes.
        let fds = open_fds(pid);
        assert_eq!(
            fds.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![0, 1, 2],
            "{id}: {fds:?}"
        );
        for (n, target) in &fds {
            assert!(
                target.starts_with("pipe:[") || target == "/dev/null",
                "{id}: fd {n} names {target}"
            );
        }
    }
    for (id, seccomp, nnp) in [(&own, "0", "0"), (&hardened, "2", "1")] {
        let status = text(&fx.exec(id, &["cat", "/proc/1/status"], 10).await.stdout);
        check_status(&format!("{id} from inside"), &status, seccomp, nnp);
    }

    // The mounts, exactly.
    let listed = text(
        &fx.exec(&own, &["cat", "/proc/1/mountinfo"], 10)
            .await
            .stdout,
    );
    let mounts = mountinfo(&listed);
    let host = std::fs::read_to_string("/proc/self/mountinfo").expect("host mountinfo");
    let cgroup_v1: BTreeSet<String> = mountinfo(&host)
        .into_iter()
        .filter(|m| m.fstype == "cgroup" && m.point.starts_with("/sys/fs/cgroup/"))
        .map(|m| m.point)
        .collect();
    let masked: BTreeSet<&str> = MASKED
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    let readonly: BTreeSet<&str> = READONLY
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    let mut expected: BTreeSet<String> = [
        "/",
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/dev/shm",
        "/sys",
        "/sys/fs/cgroup",
        "/etc/resolv.conf",
        "/etc/hosts",
        "/etc/hostname",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    expected.extend(cgroup_v1.iter().cloned());
    expected.extend(masked.iter().map(|p| (*p).to_owned()));
    expected.extend(readonly.iter().map(|p| (*p).to_owned()));
    let points: BTreeSet<String> = mounts.iter().map(|m| m.point.clone()).collect();
    assert_eq!(points, expected, "{listed}");
    assert_eq!(points.len(), mounts.len(), "a mount point twice: {listed}");
    let ro = |m: &MountLine| m.options.split(',').any(|o| o == "ro");
    for m in &mounts {
        let read_only = ro(m);
        let point = m.point.as_str();
        if readonly.contains(point) || point == "/sys" || point.starts_with("/sys/fs/cgroup/") {
            assert!(read_only, "{point} is not read-only: {listed}");
        } else if masked.contains(point) {
            // A masked file is /dev/null bound over it; a masked directory an empty read-only
            // tmpfs.
            let file = m.root == "/null";
            assert!(
                file || (read_only && m.fstype == "tmpfs"),
                "{point} is not masked: {listed}"
            );
        } else if point == "/" {
            assert!(!read_only, "the root is read-only without readonly_rootfs");
        }
    }
    // And from inside: masked paths read nothing, read-only ones refuse writes.
    let probe = fx
        .exec(
            &own,
            &[
                "sh",
                "-c",
                "cat /proc/keys /proc/timer_list | wc -c; \
                 echo 1 > /proc/sys/kernel/shm_rmid_forced && echo writable; \
                 touch /sys/fs/cgroup/pids/x && echo writable; \
                 { ls -A /proc/acpi; ls -A /sys/firmware; } | wc -l",
            ],
            10,
        )
        .await;
    let lines: Vec<String> = text(&probe.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    assert_eq!(
        lines,
        vec!["0".to_owned(), "0".to_owned()],
        "{:?}",
        text(&probe.stderr)
    );
    fx.finish().await;
}

/// What a container of a pod with a shared PID namespace sees as its PID 1, crid-pinns' holder
/// (crid runs no infra container): nothing of the host. Any container could read the holder's
/// `mountinfo` (the host's mount table), and one given CAP_SYS_PTRACE, which a pod may ask for
/// without being privileged, passed the non-dumpable check and reached the host's root file
/// system through `/proc/1/root`. The holder now lives in a mount namespace of its own whose
/// only mount is an empty read-only tmpfs.
#[tokio::test(flavor = "multi_thread")]
async fn anchor_c24_the_pod_pid_1_shows_nothing_of_the_host() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("holder");
    let pod_id = fx.run_pod(pod.clone()).await;
    let ptrace = ptrace_container(&fx);
    let id = fx.start_container(&pod_id, &pod, ptrace).await;
    let comm = text(&fx.exec(&id, &["cat", "/proc/1/comm"], 10).await.stdout);
    assert_eq!(comm.trim(), "crid-pinns", "PID 1 is the pod's holder");
    let mounts = text(&fx.exec(&id, &["cat", "/proc/1/mountinfo"], 10).await.stdout);
    let lines = mountinfo(&mounts);
    assert_eq!(lines.len(), 1, "the holder's mount table: {mounts}");
    assert_eq!(
        (lines[0].point.as_str(), lines[0].fstype.as_str()),
        ("/", "tmpfs")
    );
    for path in ["/proc/1/root/", "/proc/1/cwd/"] {
        let listing = fx.exec(&id, &["ls", "-A", path], 10).await;
        assert_eq!(
            text(&listing.stdout),
            "",
            "{path} lists {:?} ({})",
            text(&listing.stdout),
            text(&listing.stderr)
        );
    }
    let escape = fx
        .exec(&id, &["sh", "-c", "echo x > /proc/1/root/escape"], 10)
        .await;
    assert_ne!(escape.exit_code, 0, "wrote through /proc/1/root");
    fx.finish().await;
}

/// The host pid of the PID 1 of `pid`'s PID namespace (found by its namespace link and its
/// `NSpid`, so tests running pods side by side never mix them up).
fn namespace_init(pid: i32) -> i32 {
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid namespace");
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(candidate) = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .parse::<i32>()
        else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{candidate}/ns/pid")).ok() != Some(ns.clone()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{candidate}/status")) else {
            continue;
        };
        if field(&status, "NSpid").split_whitespace().last() == Some("1") {
            return candidate;
        }
    }
    panic!("no PID 1 in the PID namespace of {pid} ({})", ns.display());
}

/// CVE-2019-5736 (anchor "runtime self-protection": the runtime binary must not be writable
/// from a container). The pod's PID 1 is crid-pinns' holder, and a container given
/// CAP_SYS_PTRACE (no privilege needed) passes its non-dumpable check: it can open the holder's
/// executable as `/proc/1/exe`, and trace it. The fd must never become a writable one — not
/// even once the holder is gone, when ETXTBSY no longer guards the host's binary (an fd can be
/// handed to another pod over a socket) — and code injected into the holder must find no
/// privilege to use: no capability, no_new_privs, a seccomp filter.
#[tokio::test]
async fn cve_2019_5736_the_pod_pid_1_lends_neither_its_binary_nor_its_privileges() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("holder-image");
    let pod_id = fx.run_pod(pod.clone()).await;
    let ptrace = ptrace_container(&fx);
    let id = fx.start_container(&pod_id, &pod, ptrace).await;
    let status = text(&fx.exec(&id, &["cat", "/proc/1/status"], 10).await.stdout);
    for name in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(
            field(&status, name),
            format!("{:016x}", 0),
            "holder's {name}"
        );
    }
    assert_eq!(field(&status, "NoNewPrivs"), "1", "holder's no_new_privs");
    assert_eq!(field(&status, "Seccomp"), "2", "holder's seccomp mode");
    // The container can read its PID 1's executable (it is no secret)...
    let read = fx
        .exec(&id, &["sh", "-c", "head -c 4 /proc/1/exe | od -c"], 10)
        .await;
    assert!(
        text(&read.stdout).contains("E   L   F"),
        "read /proc/1/exe: {} {}",
        text(&read.stdout),
        text(&read.stderr)
    );
    // ...and an fd to it, held past the holder's end, never opens for writing.
    let holder = namespace_init(fx.container_pid(&id).await);
    let exe = std::fs::File::open(format!("/proc/{holder}/exe")).expect("open the holder's exe");
    let reopen = || {
        use std::os::fd::AsRawFd;
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", exe.as_raw_fd()))
    };
    fx.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    let mut error = reopen().expect_err("the holder's binary opened for writing");
    for _ in 0..100 {
        if error.raw_os_error() != Some(libc::ETXTBSY) {
            break;
        }
        // The holder's memory goes a moment after it is killed.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        error = reopen().expect_err("the holder's binary opened for writing");
    }
    assert_eq!(
        error.raw_os_error(),
        Some(libc::EROFS),
        "reopening the holder's exe for writing: {error}"
    );
    drop(exe);
    fx.finish().await;
}
