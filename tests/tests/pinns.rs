//! crid-pinns: pod namespaces created, configured and pinned to files, and undone on failure.

use std::path::Path;
use std::process::Command;

use crid_tests::harness::{require, workspace_binary};

fn nsenter(args: &[&str]) -> String {
    let out = Command::new(require::tool("nsenter"))
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "nsenter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.to_str().expect("utf8")))
}

fn unpin(path: &Path) {
    let _ = Command::new("umount").arg(path).status();
    let _ = std::fs::remove_file(path);
}

#[test]
fn pins_configured_namespaces_and_undoes_a_failure() {
    require::root();
    let dir = tempfile::tempdir().expect("tempdir");
    let pinns = workspace_binary("crid-pinns");
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let out = Command::new(&pinns)
        .arg("--dir")
        .arg(dir.path())
        .args([
            "--id",
            "pod1",
            "--net",
            "--ipc",
            "--uts",
            "--hostname",
            "my-pod",
        ])
        .args([
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--sysctl",
            "kernel.shm_rmid_forced=1",
        ])
        .output()
        .expect("run crid-pinns");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let [net, ipc, uts] = ["net", "ipc", "uts"].map(|k| dir.path().join(k).join("pod1"));
    let checks = std::panic::catch_unwind(|| {
        for file in [&net, &ipc, &uts] {
            assert!(
                mounted(file),
                "{} is not a pinned namespace",
                file.display()
            );
        }
        let uts_arg = format!("--uts={}", uts.display());
        let net_arg = format!("--net={}", net.display());
        let ipc_arg = format!("--ipc={}", ipc.display());
        assert_eq!(
            nsenter(&[&uts_arg, "cat", "/proc/sys/kernel/hostname"]),
            "my-pod"
        );
        assert_eq!(
            nsenter(&[&net_arg, "cat", "/proc/sys/net/ipv4/ip_forward"]),
            "1"
        );
        assert_eq!(
            nsenter(&[&ipc_arg, "cat", "/proc/sys/kernel/shm_rmid_forced"]),
            "1"
        );
        // A fresh network namespace: loopback only.
        let links = nsenter(&[&net_arg, "cat", "/proc/net/dev"]);
        let names: Vec<&str> = links
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(names, vec!["lo"]);
    });
    for file in [&net, &ipc, &uts] {
        unpin(file);
    }
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname"),
        host_name
    );

    // A sysctl that cannot be set: nothing stays behind.
    let out = Command::new(&pinns)
        .arg("--dir")
        .arg(dir.path())
        .args([
            "--id",
            "pod2",
            "--net",
            "--uts",
            "--sysctl",
            "net.ipv4.no_such_knob=1",
        ])
        .output()
        .expect("run crid-pinns");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_knob"));
    for kind in ["net", "uts"] {
        let file = dir.path().join(kind).join("pod2");
        assert!(
            !file.exists() && !mounted(&file),
            "{} left behind",
            file.display()
        );
    }
    // Refused before anything is made: a hostile sysctl value, a bad id.
    for bad in [
        vec![
            "--id",
            "pod3",
            "--ipc",
            "--sysctl",
            "kernel.shm_rmid_forced=1+kernel.core_pattern=|/x",
        ],
        vec!["--id", "../pod", "--net"],
    ] {
        let out = Command::new(&pinns)
            .arg("--dir")
            .arg(dir.path())
            .args(&bad)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{bad:?}");
    }
    assert!(!dir.path().join("ipc/pod3").exists());
}

#[test]
fn a_pid_namespace_is_held_by_a_holder_and_lo_is_up() {
    require::root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(workspace_binary("crid-pinns"))
        .arg("--dir")
        .arg(dir.path())
        .args(["--id", "pod2", "--net", "--pid"])
        .output()
        .expect("run crid-pinns");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("holder report on stdout");
    let holder = report["holder_pid"].as_i64().expect("holder_pid") as i32;
    let pid_pin = dir.path().join("pid/pod2");
    let net_pin = dir.path().join("net/pod2");
    assert!(mounted(&pid_pin) && mounted(&net_pin));
    // The holder is PID 1 of the pinned namespace, and survives SIGTERM.
    let holder_ns = std::fs::read_link(format!("/proc/{holder}/ns/pid")).expect("holder ns");
    let pinned_ns = nsenter(&[
        &format!("--pid={}", pid_pin.display()),
        "readlink",
        "/proc/self/ns/pid",
    ]);
    assert_eq!(holder_ns.display().to_string(), pinned_ns);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder),
        nix::sys::signal::Signal::SIGTERM,
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        Path::new(&format!("/proc/{holder}")).exists(),
        "holder died of SIGTERM"
    );
    // lo is up in the new network namespace without any CNI plugin.
    let lo = nsenter(&[
        &format!("--net={}", net_pin.display()),
        "ip",
        "-o",
        "link",
        "show",
        "lo",
    ]);
    assert!(lo.contains("UP"), "{lo}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder),
        nix::sys::signal::Signal::SIGKILL,
    );
    unpin(&pid_pin);
    unpin(&net_pin);
}
