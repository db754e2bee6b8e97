//! The direct exec (crid entering the container itself, `daemon/enter/`, crid-enter) against
//! `runc exec`, on the same running containers: the process each starts must be the same in
//! everything a container can see of itself (ids, groups, capabilities, no_new_privs, seccomp
//! and its very filter, namespaces, cgroups, LSM label, limits, oom_score_adj, cwd,
//! environment, stdio, signals, session, keyring), for a default container, restrictive
//! ones (user 1000 with groups, dropped and ambient capabilities, no_new_privs, RuntimeDefault
//! seccomp with and without no_new_privs, read-only root, the pod's PID namespace) and a
//! privileged one. Also: exit codes, missing commands (the client sees runc's own message),
//! and terminals (against crid with `exec_direct = false`, which relays `runc exec --tty`).
//!
//! `runc exec` is run by this test the way crid runs it (same binary, root, and the
//! environment crid inherits from this process).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;
use crid_tests::harness::require;
use crid_tests::harness::streaming_client::{exec_spdy, ExecOptions, ExecResult, RemoteCommand};

/// What a process sees of itself; `$p` is the exec'd shell.
const PROBE: &str = r#"p=$$
s() { echo "== $1"; }
s status; cat /proc/$p/status
s limits; cat /proc/$p/limits
s cgroup; cat /proc/$p/cgroup
s ns; for n in cgroup ipc mnt net pid pid_for_children time time_for_children user uts; do echo "$n $(readlink /proc/$p/ns/$n)"; done
s attr; cat /proc/$p/attr/current 2>&1; echo
s oom; cat /proc/$p/oom_score_adj
s stat; cat /proc/$p/stat
s cwd; pwd
s environ; tr '\0' '\n' < /proc/$p/environ
s id; id
s fds; for f in /proc/$p/fd/*; do echo "${f##*/} $(readlink $f) $(stat -L -c '%u:%g %a' $f)"; done
s fdinfo; for f in 0 1 2; do grep flags /proc/$p/fdinfo/$f; done
s keys; cat /proc/keys 2>&1
s umask; umask
s audit; cat /proc/$p/loginuid; echo; cat /proc/$p/sessionid; echo
s personality; cat /proc/$p/personality 2>&1
s mountinfo; cat /proc/$p/mountinfo
"#;

/// /proc/<pid>/status keys that differ between any two processes (pids as seen from each
/// namespace, memory, scheduling counters, queued-signal counts, the size of the fd table
/// inherited from the parent).
const VOLATILE_STATUS: &[&str] = &[
    "State",
    "Tgid",
    "Ngid",
    "Pid",
    "PPid",
    "NStgid",
    "NSpid",
    "NSpgid",
    "NSsid",
    "FDSize",
    "SigQ",
    "voluntary_ctxt_switches",
    "nonvoluntary_ctxt_switches",
    "CoreDumping",
    "THP_enabled",
    "untag_mask",
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A probe's output by section, with what must differ normalised away.
fn sections(output: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut current = String::from("preamble");
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            current = name.to_owned();
            map.entry(current.clone()).or_insert_with(String::new);
            continue;
        }
        let entry = map.entry(current.clone()).or_insert_with(String::new);
        entry.push_str(&normalise(&current, line));
        entry.push('\n');
    }
    map
}

fn normalise(section: &str, line: &str) -> String {
    match section {
        "status" => {
            let key = line.split(':').next().unwrap_or_default();
            if VOLATILE_STATUS.contains(&key)
                || key.starts_with("Vm")
                || key.starts_with("Rss")
                || key == "HugetlbPages"
            {
                return format!("{key}: (differs)");
            }
            line.to_owned()
        }
        "stat" => {
            // pid (comm) state ppid pgrp session tty_nr tpgid flags ... : keep what a
            // process can rely on (session and group leadership, terminal, priority, policy).
            let Some((head, rest)) = line.rsplit_once(')') else {
                return line.to_owned();
            };
            let pid = head.split_whitespace().next().unwrap_or_default();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| f.get(i).copied().unwrap_or("?");
            format!(
                "pgrp=self:{} session=self:{} tty_nr={} tpgid=self:{} priority={} nice={} \
                 threads={} exit_signal={} rt_priority={} policy={}",
                field(2) == pid,
                field(3) == pid,
                field(4),
                field(5) == pid,
                field(15),
                field(16),
                field(17),
                field(35),
                field(37),
                field(38)
            )
        }
        // Pipe inodes are each process's own.
        "fds" => {
            let mut out = line.to_owned();
            if let Some(at) = out.find("pipe:[") {
                if let Some(end) = out[at..].find(']') {
                    out.replace_range(at..at + end + 1, "pipe:[…]");
                }
            }
            out
        }
        _ => line.to_owned(),
    }
}

/// `runc exec` of this fixture's crid, as crid runs it: with crid's umask (077, which runc
/// passes on to the process); everything else crid's runc gets, it inherits from this test.
fn runc(fx: &PodFixture) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
        .arg(require::tool("runc"))
        .arg("--root")
        .arg(fx.crid.dir.path().join("run/runc"));
    command
}

fn runc_exec(fx: &PodFixture, id: &str, cmd: &[&str]) -> std::process::Output {
    runc(fx)
        .arg("exec")
        .arg(id)
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("run runc exec")
}

async fn exec_url(fx: &mut PodFixture, id: &str, cmd: &[&str], tty: bool) -> String {
    fx.runtime
        .exec(cri::ExecRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            tty,
            stdin: false,
            stdout: true,
            stderr: !tty,
        })
        .await
        .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e}"))
        .into_inner()
        .url
}

/// The command through crid's streaming server (SPDY, no stdin).
async fn crid_exec(fx: &mut PodFixture, id: &str, cmd: &[&str]) -> ExecResult {
    let url = exec_url(fx, id, cmd, false).await;
    exec_spdy(&url, &ExecOptions::default())
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"))
}

/// How many times crid's log says it fell back to `runc exec` for container `id`.
fn fallbacks(fx: &PodFixture, id: &str) -> usize {
    fx.crid
        .stderr()
        .lines()
        .filter(|l| l.contains("exec through the runtime") && l.contains(id))
        .count()
}

/// Fails with every section that differs, both versions shown.
fn assert_same(what: &str, runc: &BTreeMap<String, String>, direct: &BTreeMap<String, String>) {
    let mut differences = Vec::new();
    for name in runc.keys().chain(direct.keys()) {
        let (a, b) = (runc.get(name), direct.get(name));
        if a != b && !differences.iter().any(|(n, _, _)| n == name) {
            differences.push((name.clone(), a.cloned(), b.cloned()));
        }
    }
    if differences.is_empty() {
        return;
    }
    let mut report = format!("{what}: the direct exec differs from runc exec\n");
    for (name, a, b) in differences {
        report.push_str(&format!(
            "--- {name} (runc exec)\n{}--- {name} (direct)\n{}",
            a.unwrap_or_default(),
            b.unwrap_or_default()
        ));
    }
    panic!("{report}");
}

/// Every seccomp filter of `pid`, newest first, read with PTRACE_SECCOMP_GET_FILTER.
fn seccomp_filters(pid: i32) -> Vec<Vec<u64>> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    let target = nix::unistd::Pid::from_raw(pid);
    // SAFETY: ptrace requests with integer arguments on a process this test started.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) };
    assert_eq!(
        rc,
        0,
        "PTRACE_SEIZE {pid}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above.
    let rc = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0usize, 0usize) };
    assert_eq!(rc, 0, "PTRACE_INTERRUPT {pid}");
    let status = nix::sys::wait::waitpid(target, Some(nix::sys::wait::WaitPidFlag::__WALL));
    assert!(status.is_ok(), "wait for {pid} to stop: {status:?}");
    let mut filters = Vec::new();
    for index in 0usize.. {
        // SAFETY: a null buffer: the kernel only returns the length.
        let length = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                pid,
                index as *mut libc::c_void,
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if length < 0 {
            break;
        }
        let mut program = vec![0u64; length as usize];
        // SAFETY: the buffer holds `length` 8-byte instructions of the same stopped tracee.
        let read = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                pid,
                index as *mut libc::c_void,
                program.as_mut_ptr().cast::<libc::c_void>(),
            )
        };
        assert_eq!(read, length, "filter {index} of {pid}");
        filters.push(program);
    }
    // SAFETY: as above; the tracee is stopped.
    let rc = unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    assert_eq!(rc, 0, "PTRACE_DETACH {pid}");
    filters
}

/// The pid of the process whose command line is exactly `argv`.
fn find_process(argv: &[&str]) -> Option<i32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            (std::fs::read(entry.path().join("cmdline")).ok()? == wanted).then_some(pid)
        })
}

fn wait_for_process(argv: &[&str]) -> i32 {
    crid_tests::harness::wait_for(Duration::from_secs(10), || find_process(argv))
        .unwrap_or_else(|| panic!("no process {argv:?}"))
}

/// Runs a classic-BPF seccomp program on `data` (struct seccomp_data: nr, arch,
/// instruction_pointer, args[6]); returns its verdict.
fn run_bpf(program: &[u64], data: &[u8; 64]) -> u32 {
    let (mut a, mut x, mut memory, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
    let word = |offset: u32| {
        let at = offset as usize;
        let bytes: [u8; 4] = data[at..at + 4].try_into().expect("4 bytes");
        u32::from_ne_bytes(bytes)
    };
    loop {
        let instruction = program.get(pc).copied().expect("a jump past the program");
        let (code, jt, jf, k) = (
            (instruction & 0xffff) as u16,
            ((instruction >> 16) & 0xff) as usize,
            ((instruction >> 24) & 0xff) as usize,
            (instruction >> 32) as u32,
        );
        pc += 1;
        let source = if code & 0x08 != 0 { x } else { k };
        match code & 0x07 {
            // LD: W|ABS, IMM, MEM
            0x00 => {
                a = match code & 0xe0 {
                    0x20 => word(k),
                    0x00 => k,
                    0x60 => memory[k as usize],
                    _ => panic!("BPF load {code:#x}"),
                }
            }
            0x01 => {
                x = match code & 0xe0 {
                    0x00 => k,
                    0x60 => memory[k as usize],
                    _ => panic!("BPF ldx {code:#x}"),
                }
            }
            0x02 => memory[k as usize] = a,
            0x03 => memory[k as usize] = x,
            0x04 => {
                a = match code & 0xf0 {
                    0x00 => a.wrapping_add(source),
                    0x10 => a.wrapping_sub(source),
                    0x20 => a.wrapping_mul(source),
                    0x30 => a.checked_div(source).unwrap_or(0),
                    0x40 => a | source,
                    0x50 => a & source,
                    0x60 => a.wrapping_shl(source),
                    0x70 => a.wrapping_shr(source),
                    0x80 => a.wrapping_neg(),
                    0x90 => a.checked_rem(source).unwrap_or(0),
                    0xa0 => a ^ source,
                    _ => panic!("BPF alu {code:#x}"),
                }
            }
            0x05 => {
                let taken = match code & 0xf0 {
                    0x00 => {
                        pc += k as usize;
                        continue;
                    }
                    0x10 => a == source,
                    0x20 => a > source,
                    0x30 => a >= source,
                    0x40 => a & source != 0,
                    _ => panic!("BPF jump {code:#x}"),
                };
                pc += if taken { jt } else { jf };
            }
            0x06 => return if code & 0x18 == 0x10 { a } else { k },
            0x07 => {
                if code & 0xf8 == 0 {
                    x = a;
                } else {
                    a = x;
                }
            }
            _ => unreachable!(),
        }
    }
}

/// Whether two seccomp programs give every call of a broad sample the same verdict: each
/// syscall number (x32 included) of the architectures runc's filters name and an unknown
/// one, arguments all zero and all ones, then single bits and a few whole values in the
/// first three arguments (flags and modes, as clone's and personality's rules test them).
fn same_verdicts(a: &[u64], b: &[u64]) -> Result<(), String> {
    let data = |arch: u32, nr: u32, args: [u64; 6]| {
        let mut d = [0u8; 64];
        d[0..4].copy_from_slice(&nr.to_ne_bytes());
        d[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            d[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        d
    };
    let check = |arch: u32, nr: u32, args: [u64; 6]| {
        let d = data(arch, nr, args);
        let (x, y) = (run_bpf(a, &d), run_bpf(b, &d));
        if x == y {
            Ok(())
        } else {
            Err(format!(
                "arch {arch:#x} nr {nr} args {args:x?}: {x:#x} against {y:#x}"
            ))
        }
    };
    let archs = [
        0xc000_003e,
        0x4000_0003,
        0xc000_00b7,
        0x4000_0028,
        0x1234_5678,
    ];
    let numbers = (0..600)
        .chain((0..600).map(|n| n | 0x4000_0000))
        .chain([u32::MAX]);
    for arch in archs {
        for nr in numbers.clone() {
            check(arch, nr, [0; 6])?;
            check(arch, nr, [u64::MAX; 6])?;
        }
    }
    let values = (0..64).map(|bit| 1u64 << bit).chain([
        0x20008,
        0xffff_ffff,
        0x0800_0000 | 0x1000_0000,
        0x3c00,
    ]);
    for nr in 0..460 {
        for index in 0..3 {
            for value in values.clone() {
                let mut args = [0; 6];
                args[index] = value;
                check(0xc000_003e, nr, args)?;
            }
        }
    }
    Ok(())
}

/// The seccomp filters of a process started by each path and of the init: the direct exec
/// loads the very program runc installed in the init; `runc exec` builds it again, with the
/// same verdicts but not always the same bytes (runc's ENOSYS stub orders the architectures
/// as a Go map iterates).
async fn compare_filters(fx: &mut PodFixture, id: &str, name: &str) {
    let marker = |n: u32| format!("{}", 900_000 + n * 1000 + std::process::id() % 1000);
    let (runc_marker, direct_marker) = (marker(1), marker(2));
    let mut by_runc = runc(fx)
        .args(["exec", id, "sleep", &runc_marker])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runc exec sleep");
    let url = exec_url(fx, id, &["sleep", &direct_marker], false).await;
    let session = RemoteCommand::start_spdy(&url, &ExecOptions::default())
        .await
        .expect("exec sleep");
    let runc_pid = wait_for_process(&["sleep", &runc_marker]);
    let direct_pid = wait_for_process(&["sleep", &direct_marker]);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            fx.crid
                .dir
                .path()
                .join("run/runc")
                .join(id)
                .join("state.json"),
        )
        .expect("runc state"),
    )
    .expect("runc state json");
    let init_pid = state["init_process_pid"].as_i64().expect("init pid") as i32;
    let init_filters = seccomp_filters(init_pid);
    let (runc_filters, direct_filters) = (seccomp_filters(runc_pid), seccomp_filters(direct_pid));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runc_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = by_runc.wait();
    // The client leaves: crid kills its process.
    session.abort();
    assert!(
        crid_tests::harness::wait_for(Duration::from_secs(10), || {
            find_process(&["sleep", &direct_marker])
                .is_none()
                .then_some(())
        })
        .is_some(),
        "{name}: the direct exec outlived its client"
    );
    assert_eq!(direct_filters.len(), 1, "{name}: direct exec's filters");
    assert_eq!(runc_filters.len(), 1, "{name}: runc exec's filters");
    assert!(
        direct_filters == init_filters,
        "{name}: the direct exec's filter is not the init's"
    );
    if let Err(difference) = same_verdicts(&runc_filters[0], &direct_filters[0]) {
        panic!("{name}: runc exec's filter and the direct exec's differ: {difference}");
    }
}

/// The probe through both paths, compared; then exit codes and the seccomp filters.
async fn compare(fx: &mut PodFixture, id: &str, name: &str, seccomp: bool) {
    let before = fallbacks(fx, id);
    let by_runc = runc_exec(fx, id, &["sh", "-c", PROBE]);
    assert!(
        by_runc.status.success(),
        "{name}: runc exec: {}",
        text(&by_runc.stderr)
    );
    let direct = crid_exec(fx, id, &["sh", "-c", PROBE]).await;
    assert_eq!(
        direct.exit_code(),
        Ok(0),
        "{name}: {}",
        text(&direct.stderr)
    );
    assert_eq!(
        fallbacks(fx, id),
        before,
        "{name}: crid fell back to runc exec:\n{}",
        fx.crid.stderr()
    );
    assert_eq!(
        text(&direct.stderr),
        text(&by_runc.stderr),
        "{name}: stderr"
    );
    let (mut by_runc, mut direct) = (
        sections(&text(&by_runc.stdout)),
        sections(&text(&direct.stdout)),
    );
    // /proc/keys (visible in a privileged container) lists every container's keyring, and
    // each key's usage count moves: keep this container's session keyring, uncounted.
    for probe in [&mut by_runc, &mut direct] {
        if let Some(keys) = probe.get_mut("keys") {
            *keys = keys
                .lines()
                .filter(|l| l.contains(&format!("_ses.{id}")))
                .map(|l| {
                    let mut fields: Vec<&str> = l.split_whitespace().collect();
                    if let Some(usage) = fields.get_mut(2) {
                        *usage = "(usage)";
                    }
                    fields.join(" ") + "\n"
                })
                .collect();
        }
    }
    assert!(by_runc.contains_key("mountinfo"), "{name}: {by_runc:?}");
    assert_same(name, &by_runc, &direct);
    if seccomp {
        assert!(
            by_runc["status"].contains("Seccomp:\t2"),
            "{name}: no filter"
        );
    }

    // Exit codes, including a signal (128 + n from both).
    for (script, code) in [("exit 7", 7), ("kill -TERM $$", 143), ("true", 0)] {
        let runc_code = runc_exec(fx, id, &["sh", "-c", script]).status.code();
        let direct = crid_exec(fx, id, &["sh", "-c", script]).await;
        assert_eq!(runc_code, Some(code), "{name}: runc {script}");
        assert_eq!(
            direct.exit_code(),
            Ok(code as u8),
            "{name}: direct {script}"
        );
    }
    assert_eq!(fallbacks(fx, id), before, "{name}: crid fell back");
    if seccomp {
        compare_filters(fx, id, name).await;
    }
}

/// `config` with `security`; without namespace options, the container gets a PID namespace
/// of its own, as kubelet gives it unless the pod shares its process namespace (the direct
/// exec takes only such containers).
fn with_security(
    mut config: cri::ContainerConfig,
    mut security: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    security
        .namespace_options
        .get_or_insert_with(|| cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        });
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(security),
        ..Default::default()
    });
    config
}

fn runtime_default() -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_exec_is_runc_exec() {
    // A soft open-files limit below the hard one shows whether the exec'd process gets it
    // raised (runc's Go runtime does).
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile);
        if nofile.rlim_max > 1024 {
            nofile.rlim_cur = nofile.rlim_max / 2;
            libc::setrlimit(libc::RLIMIT_NOFILE, &nofile);
        }
    }
    let mut fx = PodFixture::start("").await;

    // A default container, and user 1000 under RuntimeDefault seccomp without no_new_privs
    // (the filter loaded before the user change).
    let pod = fx.pod_config("plain");
    let pod_id = fx.run_pod(pod.clone()).await;
    let default = with_security(
        fx.container_config("default", &["sleep", "100000"]),
        cri::LinuxContainerSecurityContext::default(),
    );
    let default = fx.start_container(&pod_id, &pod, default).await;
    compare(&mut fx, &default, "default", false).await;
    let seccomp_user = with_security(
        fx.container_config("seccomp-user", &["sleep", "100000"]),
        cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            seccomp: runtime_default(),
            ..Default::default()
        },
    );
    let seccomp_user = fx.start_container(&pod_id, &pod, seccomp_user).await;
    compare(&mut fx, &seccomp_user, "seccomp without no_new_privs", true).await;

    // The restrictive one: in a PID namespace of its own, user 1000 with groups, all
    // capabilities dropped but two (one ambient), no_new_privs, RuntimeDefault seccomp,
    // read-only root, its own working directory and environment.
    let mut pod = fx.pod_config("strict");
    let pid_pod = cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    };
    pod.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(pid_pod.clone()),
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut strict = with_security(
        fx.container_config("strict", &["sleep", "100000"]),
        cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 1000 }),
            supplemental_groups: vec![3000, 4000],
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["NET_BIND_SERVICE".into(), "CHOWN".into()],
                add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
            }),
            no_new_privs: true,
            seccomp: runtime_default(),
            readonly_rootfs: true,
            namespace_options: Some(pid_pod),
            ..Default::default()
        },
    );
    strict.working_dir = "/tmp".into();
    strict.envs = vec![
        cri::KeyValue {
            key: "GREETING".into(),
            value: "hello world".into(),
        },
        cri::KeyValue {
            key: "PATH".into(),
            value: "/usr/bin:/bin:/nonexistent".into(),
        },
    ];
    let strict = fx.start_container(&pod_id, &pod, strict).await;
    compare(&mut fx, &strict, "restrictive", true).await;

    // Privileged: every capability, no filter, a writable /sys.
    let mut pod = fx.pod_config("privileged");
    pod.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let privileged = with_security(
        fx.container_config("privileged", &["sleep", "100000"]),
        cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
    );
    let privileged = fx.start_container(&pod_id, &pod, privileged).await;
    // It holds CAP_SYS_PTRACE (and may be confined by seccomp or AppArmor all the same):
    // through runc.
    let out = crid_exec(&mut fx, &privileged, &["sh", "-c", "echo -n privileged"]).await;
    assert_eq!(text(&out.stdout), "privileged", "{}", text(&out.stderr));
    assert_eq!(fallbacks(&fx, &privileged), 1, "{}", fx.crid.stderr());

    // A container in the pod's shared PID namespace: a sibling that may ptrace would see the
    // entering process (a copy of crid's memory): through runc.
    let mut pod = fx.pod_config("shared");
    let shared_pid = cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    pod.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(shared_pid.clone()),
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let shared = with_security(
        fx.container_config("shared", &["sleep", "100000"]),
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(shared_pid),
            ..Default::default()
        },
    );
    let shared = fx.start_container(&pod_id, &pod, shared).await;
    let out = crid_exec(&mut fx, &shared, &["sh", "-c", "echo -n shared"]).await;
    assert_eq!(text(&out.stdout), "shared", "{}", text(&out.stderr));
    assert_eq!(fallbacks(&fx, &shared), 1, "{}", fx.crid.stderr());

    // A missing command: crid falls back and the client sees runc's own message and code.
    for missing in ["/no/such/binary", "nosuch", "/etc/passwd"] {
        let by_runc = runc_exec(&fx, &strict, &[missing]);
        let direct = crid_exec(&mut fx, &strict, &[missing]).await;
        let message = |stderr: &[u8]| {
            let text = text(stderr);
            text.split_once("msg=")
                .map(|(_, m)| m.to_owned())
                .unwrap_or(text)
        };
        assert_eq!(by_runc.status.code(), Some(255), "{missing}");
        assert_eq!(
            direct.exit_code(),
            Ok(255),
            "{missing}: {}",
            text(&direct.stderr)
        );
        assert_eq!(
            message(&direct.stderr),
            message(&by_runc.stderr),
            "{missing}"
        );
    }
    assert!(fallbacks(&fx, &strict) >= 3, "{}", fx.crid.stderr());

    // A container that may ptrace could read the entering process's copy of crid's memory:
    // its execs go through runc.
    let pod = fx.pod_config("tracer");
    let pod_id = fx.run_pod(pod.clone()).await;
    let tracer = with_security(
        fx.container_config("tracer", &["sleep", "100000"]),
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["SYS_PTRACE".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let tracer = fx.start_container(&pod_id, &pod, tracer).await;
    let out = crid_exec(&mut fx, &tracer, &["sh", "-c", "echo -n traced"]).await;
    assert_eq!(text(&out.stdout), "traced", "{}", text(&out.stderr));
    assert_eq!(fallbacks(&fx, &tracer), 1, "{}", fx.crid.stderr());
    fx.finish().await;
}

/// What a terminal session sees: the terminal, its settings and size, and the process.
const TTY_PROBE: &str = r#"sleep 1; tty; stty size; stty -a; id; for f in 0 1 2; do echo "$f $(readlink /proc/$$/fd/$f) $(stat -L -c '%u:%g %a' /proc/$$/fd/$f)"; done
grep -E '^(Uid|Gid|Groups|Cap|NoNewPrivs|Seccomp|Sig[BIC])' /proc/$$/status
awk '{print $5 == $1, $6 == $1, $8 == $1, $7}' /proc/$$/stat 2>/dev/null || cat /proc/$$/stat
printf 'a\nb\n'; exit 3"#;

async fn terminal_session(fx: &mut PodFixture, id: &str) -> ExecResult {
    let url = exec_url(fx, id, &["sh", "-c", TTY_PROBE], true).await;
    let options = ExecOptions {
        stderr: false,
        tty: true,
        resize: vec![(100, 30)],
        ..Default::default()
    };
    exec_spdy(&url, &options).await.expect("terminal exec")
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_terminal_is_runc_terminal() {
    let mut direct = PodFixture::start("").await;
    let mut relayed = PodFixture::start("[streaming]\nexec_direct = false\n").await;
    let mut outputs = Vec::new();
    for fx in [&mut direct, &mut relayed] {
        let pod = fx.pod_config("tty");
        let pod_id = fx.run_pod(pod.clone()).await;
        let config = with_security(
            fx.container_config("tty", &["sleep", "100000"]),
            cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                seccomp: runtime_default(),
                no_new_privs: true,
                ..Default::default()
            },
        );
        let id = fx.start_container(&pod_id, &pod, config).await;
        let r = terminal_session(fx, &id).await;
        assert_eq!(r.exit_code(), Ok(3), "{}", r.status_text());
        outputs.push((text(&r.stdout), fallbacks(fx, &id)));
    }
    let (direct_out, direct_fallbacks) = &outputs[0];
    let (relayed_out, _) = &outputs[1];
    assert_eq!(*direct_fallbacks, 0, "{}", direct.crid.stderr());
    assert!(direct_out.contains("/dev/pts/0"), "{direct_out}");
    assert!(direct_out.contains("30 100"), "no resize: {direct_out}");
    // Carriage returns as the client got them through runc's relay.
    assert!(direct_out.contains("a\r\nb\r\n"), "{direct_out:?}");
    let differing: Vec<(&str, &str)> = direct_out
        .split('\n')
        .zip(relayed_out.split('\n'))
        .filter(|(a, b)| a != b)
        .collect();
    assert!(
        direct_out == relayed_out,
        "terminal sessions differ (direct, relayed): {differing:?}\n{direct_out:?}"
    );
    direct.finish().await;
    relayed.finish().await;
}

/// CVE-2024-21626 through the direct exec: a container replaces its working directory with a
/// symlink to `/proc/self/fd/N` and waits for an exec. The entering process is a fork of crid
/// (here: of this test, which calls crid-enter itself so that it can hold the fd that matters):
/// a directory fd of the forking process at N would make the exec'd command start in a host
/// directory (and `..` from there is the host's root). The exec must be refused, the host
/// directory never listed, and through crid the client gets the refusal, not a `runc exec`.
#[tokio::test]
async fn cve_2024_21626_direct_exec_cwd_symlinked_to_proc_self_fd_stays_in_the_container() {
    use std::os::fd::AsRawFd;
    let mut fx = PodFixture::start("").await;
    let mut pod = fx.pod_config("cwd-trap");
    let own_pid = cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    };
    pod.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(own_pid.clone()),
        ..Default::default()
    });
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut trap = with_security(
        fx.container_config("trap", &["sleep", "100000"]),
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(own_pid),
            ..Default::default()
        },
    );
    trap.working_dir = "/app".into();
    let id = fx.start_container(&pod_id, &pod, trap).await;

    // A host directory the forking process holds open, with something to find in it.
    let canary = tempfile::tempdir().expect("canary dir");
    std::fs::write(canary.path().join("host-canary"), b"x").expect("canary");
    let held = std::fs::File::open(canary.path()).expect("open the canary dir");
    let fd = held.as_raw_fd();

    // The container's working directory becomes the trap (made through the host's view of
    // its root filesystem, as the container's own root would make it).
    let state = runc(&fx).args(["state", &id]).output().expect("runc state");
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).expect("state JSON");
    let bundle = std::path::PathBuf::from(state["bundle"].as_str().expect("bundle"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("config"))
            .expect("config JSON");
    let root = std::path::PathBuf::from(config["root"]["path"].as_str().expect("root"));
    let root = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    let app = root.join("app");
    let _ = std::fs::remove_dir_all(&app);
    std::os::unix::fs::symlink(format!("/proc/self/fd/{fd}"), &app).expect("plant the trap");

    let runtime_root = fx.crid.dir.path().join("run/runc");
    let monitor = crid_tests::harness::workspace_binary("crimon");
    let cmd = vec!["ls".to_owned(), "-a".to_owned()];
    let entered = tokio::task::spawn_blocking(move || {
        crid_enter::enter(&crid_enter::Request {
            runtime_root: &runtime_root,
            container_id: &id,
            bundle: &bundle,
            cmd: &cmd,
            stdio: crid_enter::Stdio::Pipes,
            monitor: &monitor,
        })
        .map(|entered| {
            let mut listing = String::new();
            if let Some(stdout) = entered.stdout {
                let _ =
                    std::io::Read::read_to_string(&mut std::fs::File::from(stdout), &mut listing);
            }
            listing
        })
    })
    .await
    .expect("enter");
    match entered {
        Err(crid_enter::EnterError::Refused(why)) => {
            assert!(why.contains("working directory"), "{why}")
        }
        Err(other) => panic!("refused for another reason: {other:?}"),
        Ok(listing) => panic!("the exec ran in the host's directory: it listed {listing:?}"),
    }
    drop(held);

    // Through crid (whatever fds it holds): the client is told, runc exec is not tried.
    let id = fx
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers
        .into_iter()
        .find(|c| c.metadata.as_ref().is_some_and(|m| m.name == "trap"))
        .expect("the trap container")
        .id;
    let url = exec_url(&mut fx, &id, &["ls", "-a"], false).await;
    let out = exec_spdy(&url, &ExecOptions::default())
        .await
        .expect("exec session");
    let status = text(&out.status_json);
    assert!(
        status.contains("working directory") && status.contains("Failure"),
        "status {status}, stdout {}, stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("host-canary"));
    assert_eq!(fallbacks(&fx, &id), 0, "{}", fx.crid.stderr());
    fx.finish().await;
}
