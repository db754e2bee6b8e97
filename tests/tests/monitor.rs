//! crimon end to end, against real runc and busybox containers.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crid_common::log_line::Stream;
use crid_proto::monitor::sync as proto;
use crid_tests::harness::bundle::BundleSpec;
use crid_tests::harness::monitor::{alive, ctx, MonitoredContainer};
use crid_tests::harness::wait_for;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

const EXIT_WAIT: Duration = Duration::from_secs(30);

fn lines_of(c: &MonitoredContainer, stream: Stream) -> Vec<String> {
    c.log_lines()
        .into_iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, l)| l)
        .collect()
}

#[test]
fn logs_stdout_and_stderr_in_order_with_stream_tags() {
    let c = MonitoredContainer::new(&BundleSpec::sh(
        "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done",
    ));
    c.run(&[]);
    let rec = c.wait_exit_record(EXIT_WAIT);
    assert_eq!(rec.exit_code, 0);
    let want_out: Vec<String> = (1..=5).map(|i| format!("out{i}")).collect();
    let want_err: Vec<String> = (1..=5).map(|i| format!("err{i}")).collect();
    assert_eq!(lines_of(&c, Stream::Stdout), want_out);
    assert_eq!(lines_of(&c, Stream::Stderr), want_err);
    // Every record is well formed: timestamp, stream, tag.
    let raw = std::fs::read(&c.log_path).expect("log");
    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let rec = crid_common::log_line::parse(line).expect("well-formed record");
        assert!(
            crid_common::timestamp::parse(rec.timestamp).is_some(),
            "{}",
            rec.timestamp
        );
    }
}

#[test]
fn partial_lines_and_a_one_mib_line() {
    let c = MonitoredContainer::new(&BundleSpec::sh(
        "printf 'no newline'; sleep 0.2; printf ' then more\\n'; head -c 1048576 /dev/zero | tr '\\0' x; echo; printf 'unterminated tail'",
    ));
    c.run(&[]);
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 0);
    let out = lines_of(&c, Stream::Stdout);
    assert_eq!(
        out.len(),
        3,
        "lines: {:?}",
        out.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert_eq!(out[0], "no newline then more");
    assert_eq!(out[1].len(), 1 << 20);
    assert!(out[1].bytes().all(|b| b == b'x'));
    assert_eq!(out[2], "unterminated tail");
    // The 1 MiB line was split into P records closed by an F.
    let raw = String::from_utf8_lossy(&std::fs::read(&c.log_path).expect("log")).into_owned();
    assert!(raw.lines().filter(|l| l.contains(" stdout P xxxx")).count() >= 2);
    assert!(raw
        .lines()
        .last()
        .expect("last")
        .contains(" stdout P unterminated tail"));
}

#[test]
fn exit_codes_zero_and_three() {
    for (script, code) in [("exit 0", 0), ("exit 3", 3)] {
        let c = MonitoredContainer::new(&BundleSpec::sh(script));
        c.run(&[]);
        let rec = c.wait_exit_record(EXIT_WAIT);
        assert_eq!(rec.exit_code, code, "{script}");
        assert!(!rec.oom_killed);
    }
}

#[test]
fn exit_code_137_on_sigkill_and_143_on_sigterm() {
    let c = MonitoredContainer::new(&BundleSpec::sh("sleep 1000"));
    c.run(&[]);
    let out = c.runc(&["kill", &c.id, "KILL"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 137);

    // A namespace init ignores SIGTERM without a handler; share the host PID namespace so the
    // default action (death) applies.
    let spec = BundleSpec {
        args: vec!["sleep".into(), "1000".into()],
        host_pid: true,
        ..Default::default()
    };
    let c = MonitoredContainer::new(&spec);
    c.run(&[]);
    let out = c.runc(&["kill", &c.id, "TERM"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 143);
}

#[test]
fn oom_kill_is_recorded() {
    let spec = BundleSpec {
        args: ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]
            .map(String::from)
            .to_vec(),
        memory_limit: Some(32 << 20),
        ..Default::default()
    };
    let c = MonitoredContainer::new(&spec);
    c.run(&[]);
    let rec = c.wait_exit_record(EXIT_WAIT);
    assert_eq!(rec.exit_code, 137);
    assert!(rec.oom_killed, "{rec:?}");
}

#[test]
fn runtime_failure_reports_the_runtimes_message() {
    let c = MonitoredContainer::new(&BundleSpec::sh("true"));
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.bundle.join("config.json")).expect("read"))
            .expect("json");
    config["process"]["cwd"] = "relative/cwd".into();
    std::fs::write(c.bundle.join("config.json"), config.to_string()).expect("write");
    let report = c.create(&[]);
    assert_eq!(report.pid, -1);
    let message = report.message.expect("message");
    assert!(
        message
            .to_lowercase()
            .contains("cwd must be an absolute path"),
        "{message}"
    );
    assert!(!c.control_socket().exists() && !c.attach_socket().exists());
}

#[test]
fn bad_arguments_are_reported_on_the_sync_channel() {
    let c = MonitoredContainer::new(&BundleSpec::sh("true"));
    let mut cmd = c.command_with_id("../escape", &[]);
    let out = cmd.output().expect("run");
    assert!(!out.status.success());
    let report = crid_tests::harness::monitor::parse_report(&out);
    assert_eq!(report.pid, -1);
    assert!(report.message.expect("message").contains("escape"));
    // A command line crimon cannot parse still gets a report.
    let out = c.command(&["--no-such-flag"]).output().expect("run");
    assert!(!out.status.success());
    let report = crid_tests::harness::monitor::parse_report(&out);
    assert_eq!(report.pid, -1);
    assert!(report.message.expect("message").contains("--no-such-flag"));
}

fn attach_client(c: &MonitoredContainer) -> OwnedFd {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    socket::connect(
        fd.as_raw_fd(),
        &UnixAddr::new(&c.attach_socket()).expect("addr"),
    )
    .expect("connect");
    fd
}

fn recv_packet(fd: &OwnedFd, timeout: Duration) -> Option<(u8, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 8193];
    loop {
        match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return None,
            Ok(n) => return Some((buf[0], buf[1..n].to_vec())),
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn attach_round_trip_and_stdin_once() {
    let c = MonitoredContainer::new(&BundleSpec::sh("cat; echo done >&2"));
    let report = c.create(&["--stdin", "--stdin-once"]);
    assert!(report.pid > 0, "{report:?}");
    let mode = std::fs::metadata(c.attach_socket())
        .expect("attach socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "attach socket mode {mode:o}");
    let mode = std::fs::metadata(c.control_socket())
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "control socket mode {mode:o}");
    let client = attach_client(&c);
    c.start();
    socket::send(client.as_raw_fd(), b"hello attach\n", MsgFlags::empty()).expect("send");
    let (stream, data) = recv_packet(&client, Duration::from_secs(10)).expect("echo");
    assert_eq!(stream, 2);
    assert_eq!(data, b"hello attach\n");
    // Closing our side closes the container's stdin (--stdin-once): cat ends.
    socket::shutdown(client.as_raw_fd(), socket::Shutdown::Write).expect("shutdown");
    let (stream, data) = recv_packet(&client, Duration::from_secs(10)).expect("stderr packet");
    assert_eq!((stream, data.as_slice()), (3, b"done\n".as_slice()));
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 0);
    assert_eq!(lines_of(&c, Stream::Stdout), vec!["hello attach"]);
}

#[test]
fn close_stdin_ends_a_reader() {
    let c = MonitoredContainer::new(&BundleSpec::sh("cat >/dev/null; echo eof"));
    c.run(&["--stdin"]);
    let client = c.client();
    client
        .close_stdin(ctx(), &proto::CloseStdinRequest::new())
        .expect("CloseStdin");
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 0);
    assert_eq!(lines_of(&c, Stream::Stdout), vec!["eof"]);
}

#[test]
fn a_slow_attach_client_does_not_block_logging() {
    // A client that never reads while the container writes 8 MiB.
    let c = MonitoredContainer::new(&BundleSpec::sh(
        "sleep 0.3; head -c 8388600 /dev/zero | tr '\\0' y | fold -w 100; echo; echo end",
    ));
    c.create(&[]);
    let _lazy = attach_client(&c);
    c.start();
    let rec = c.wait_exit_record(EXIT_WAIT);
    assert_eq!(rec.exit_code, 0);
    let out = lines_of(&c, Stream::Stdout);
    assert_eq!(out.last().map(String::as_str), Some("end"));
    assert_eq!(out.len(), 8388600 / 100 + 1);
}

#[test]
fn a_slow_attach_client_gets_every_byte() {
    // The container writes 4 MiB faster than the client reads: output waits for the client
    // (it is never dropped), and the log still gets everything.
    let total = 4 * 1024 * 1024;
    let c = MonitoredContainer::new(&BundleSpec::sh(&format!(
        "sleep 0.3; head -c {total} /dev/zero | tr '\\0' y; echo; echo end"
    )));
    c.create(&[]);
    let client = attach_client(&c);
    c.start();
    let mut received = 0usize;
    let mut packets = 0u64;
    while let Some((stream, data)) = recv_packet(&client, Duration::from_secs(30)) {
        assert_eq!(stream, 2);
        received += data.len();
        packets += 1;
        if packets % 64 == 0 {
            // Slower than the container: its output must wait for us.
            std::thread::sleep(Duration::from_millis(20));
        }
        if received >= total + "\nend\n".len() {
            break;
        }
    }
    assert_eq!(received, total + "\nend\n".len(), "bytes through attach");
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 0);
    let out = lines_of(&c, Stream::Stdout);
    assert_eq!(out.last().map(String::as_str), Some("end"));
}

#[test]
fn terminal_mode_with_resize() {
    let spec = BundleSpec {
        args: vec![
            "sh".into(),
            "-c".into(),
            "i=0; while [ \"$(stty size)\" != '40 120' ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; echo size=$(stty size); [ -t 1 ] && echo tty".into(),
        ],
        terminal: true,
        ..Default::default()
    };
    let c = MonitoredContainer::new(&spec);
    c.run(&["--terminal"]);
    let client = c.client();
    let mut req = proto::ResizeRequest::new();
    req.width = 120;
    req.height = 40;
    client.resize(ctx(), &req).expect("Resize");
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 0);
    let out: Vec<String> = lines_of(&c, Stream::Stdout)
        .into_iter()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    assert!(out.contains(&"size=40 120".to_owned()), "{out:?}");
    assert!(out.contains(&"tty".to_owned()), "{out:?}");
}

#[test]
fn resize_without_terminal_is_a_clear_error() {
    let c = MonitoredContainer::new(&BundleSpec::sh("sleep 1000"));
    c.run(&[]);
    let err = c
        .client()
        .resize(ctx(), &proto::ResizeRequest::new())
        .expect_err("no tty");
    assert!(format!("{err:?}").contains("no terminal"), "{err:?}");
}

fn exec(
    c: &MonitoredContainer,
    args: &[&str],
    timeout_ms: u64,
) -> (proto::ExecSyncResponse, Vec<u8>, Vec<u8>, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut req = proto::ExecSyncRequest::new();
    req.args = args.iter().map(|s| s.to_string()).collect();
    req.timeout_ms = timeout_ms;
    req.stdout_path = dir.path().join("out").display().to_string();
    req.stderr_path = dir.path().join("err").display().to_string();
    let started = Instant::now();
    let resp = c.client().exec_sync(ctx(), &req).expect("ExecSync");
    let took = started.elapsed();
    let out = std::fs::read(&req.stdout_path).expect("stdout file");
    let err = std::fs::read(&req.stderr_path).expect("stderr file");
    (resp, out, err, took)
}

fn zombie_children(pid: i32) -> Vec<String> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == pid.to_string() {
            zombies.push(stat);
        }
    }
    zombies
}

#[test]
fn exec_sync_output_exit_code_timeout_and_bound() {
    let c = MonitoredContainer::new(&BundleSpec::sh("sleep 1000"));
    c.run(&[]);

    let (resp, out, err, _) = exec(&c, &["sh", "-c", "echo out; echo err >&2; exit 5"], 0);
    assert_eq!(resp.exit_code, 5);
    assert!(!resp.timed_out);
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");

    let (resp, _, _, took) = exec(&c, &["sleep", "30"], 500);
    assert!(resp.timed_out, "{resp:?}");
    assert!(took < Duration::from_secs(10), "timeout took {took:?}");

    // The bound is on stdout and stderr together (what fits in one CRI reply).
    let (resp, out, err, _) = exec(
        &c,
        &["sh", "-c", "head -c 20000000 /dev/zero; echo late >&2"],
        0,
    );
    assert_eq!(resp.exit_code, 0);
    assert!(resp.stdout_truncated && resp.stderr_truncated, "{resp:?}");
    let bound = crid_common::limits::EXEC_SYNC_MAX_OUTPUT;
    assert_eq!((resp.stdout_bytes, resp.stderr_bytes), (bound, 0));
    assert_eq!((out.len() as u64, err.len()), (bound, 0));

    // A command the runtime cannot run fails with a non-zero code, not a hang.
    let (resp, _, _, _) = exec(&c, &["/no/such/binary"], 10_000);
    assert_ne!(resp.exit_code, 0);

    let monitor = c.monitor_pid();
    let zombies = wait_for(Duration::from_secs(2), || {
        let z = zombie_children(monitor);
        z.is_empty().then_some(())
    });
    assert!(
        zombies.is_some(),
        "zombies under crimon: {:?}",
        zombie_children(monitor)
    );
    let stats = c
        .client()
        .stats(ctx(), &proto::StatsRequest::new())
        .expect("Stats");
    assert_eq!(stats.exec_sync_calls, 4);
}

#[test]
fn exec_sync_refuses_bad_requests() {
    let c = MonitoredContainer::new(&BundleSpec::sh("sleep 1000"));
    c.run(&[]);
    let mut req = proto::ExecSyncRequest::new();
    req.stdout_path = "/tmp/x-out".into();
    req.stderr_path = "/tmp/x-err".into();
    let err = c.client().exec_sync(ctx(), &req).expect_err("empty args");
    assert!(format!("{err:?}").contains("INVALID_ARGUMENT"), "{err:?}");
    req.args = vec!["true".into()];
    req.stdout_path = "relative".into();
    let err = c
        .client()
        .exec_sync(ctx(), &req)
        .expect_err("relative path");
    assert!(format!("{err:?}").contains("not absolute"), "{err:?}");
}

#[test]
fn killing_the_caller_leaves_monitor_and_container_running() {
    let c = MonitoredContainer::new(&BundleSpec::sh("sleep 1000"));
    // The caller is a shell that runs crimon and then lingers; it and its process group die.
    let mut cmd = std::process::Command::new("/bin/sh");
    let crimon_cmd = c.command(&[]);
    let argv: Vec<String> = std::iter::once(crimon_cmd.get_program())
        .chain(crimon_cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    cmd.arg("-c").arg(format!("{}; sleep 1000", argv.join(" ")));
    cmd.stdout(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut caller = cmd.spawn().expect("spawn caller");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(caller.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read report");
    assert!(line.contains("\"pid\":"), "{line}");
    let pgid = nix::unistd::Pid::from_raw(caller.id() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).expect("kill caller group");
    let _ = caller.wait();
    c.start();
    let state = c
        .client()
        .state(ctx(), &proto::StateRequest::new())
        .expect("State");
    assert!(alive(state.monitor_pid), "monitor died with its caller");
    assert!(alive(state.pid), "container died with the caller");
    // The monitor left the caller's session.
    let sid =
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(state.monitor_pid))).expect("getsid");
    assert_ne!(sid, nix::unistd::getsid(None).expect("getsid"));
    assert_eq!(sid.as_raw(), state.monitor_pid);
}

#[test]
fn monitor_ignores_termination_signals_and_keeps_the_exit_code() {
    // Long enough for the signals to arrive while the container still runs, even under load.
    let c = MonitoredContainer::new(&BundleSpec::sh("sleep 2; exit 7"));
    c.run(&[]);
    let monitor = nix::unistd::Pid::from_raw(c.monitor_pid());
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        nix::sys::signal::kill(monitor, sig).expect("signal monitor");
    }
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 7);
}

#[test]
fn reopen_log_after_rename_keeps_every_line() {
    let c = MonitoredContainer::new(&BundleSpec::sh(
        // At least 1.5 s of output (30 pauses of 50 ms): the five rotations below take ~0.2 s.
        "i=0; while [ $i -lt 3000 ]; do echo line$i; i=$((i+1)); [ $((i % 100)) = 0 ] && usleep 50000; done; true",
    ));
    c.run(&[]);
    let client = c.client();
    let mut rotated = Vec::new();
    for n in 1..=5 {
        std::thread::sleep(Duration::from_millis(40));
        let old = c.log_path.with_extension(format!("log.{n}"));
        std::fs::rename(&c.log_path, &old).expect("rotate");
        rotated.push(old);
        client
            .reopen_log(ctx(), &proto::ReopenLogRequest::new())
            .expect("ReopenLog");
    }
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 0);
    let mut all = Vec::new();
    for path in rotated.iter().chain([&c.log_path]) {
        all.extend(std::fs::read(path).expect("log file"));
    }
    let lines: Vec<String> = crid_common::log_line::join_lines(&all)
        .into_iter()
        .map(|(_, l)| String::from_utf8_lossy(&l).into_owned())
        .collect();
    let want: Vec<String> = (0..3000).map(|i| format!("line{i}")).collect();
    assert_eq!(lines, want);
}

#[test]
fn log_size_max_bounds_the_file() {
    let c = MonitoredContainer::new(&BundleSpec::sh(
        "i=0; while [ $i -lt 2000 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done",
    ));
    c.run(&["--log-size-max", "10000"]);
    assert_eq!(c.wait_exit_record(EXIT_WAIT).exit_code, 0);
    let len = std::fs::metadata(&c.log_path).expect("log").len();
    assert!(len <= 10000, "log is {len} bytes");
}

#[test]
fn wait_state_stats_inspect_and_the_exit_record_after_the_monitor_is_gone() {
    let c = MonitoredContainer::new(&BundleSpec::sh("read x; echo bye; exit 4"));
    let report = c.run(&["--stdin"]);
    let client = c.client();
    let state = client
        .state(ctx(), &proto::StateRequest::new())
        .expect("State");
    assert_eq!(state.pid, report.pid);
    assert_eq!(state.id, c.id);
    let monitor_pid = state.monitor_pid;

    let inspect = std::process::Command::new(&c.monitor)
        .arg("inspect")
        .arg(c.control_socket())
        .output()
        .expect("crimon inspect");
    assert!(inspect.status.success());
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("inspect json");
    assert_eq!(json["state"]["pid"], report.pid);
    assert_eq!(json["state"]["status"], "created_or_running");

    let waiter = {
        let client = c.client();
        std::thread::spawn(move || client.wait(ctx(), &proto::WaitRequest::new()))
    };
    std::thread::sleep(Duration::from_millis(200));
    let attach = attach_client(&c);
    socket::send(attach.as_raw_fd(), b"go\n", MsgFlags::empty()).expect("send");
    let waited = waiter.join().expect("join").expect("Wait");
    assert_eq!(waited.exit_code, 4);

    let rec = c.wait_exit_record(EXIT_WAIT);
    assert_eq!(rec.exit_code, 4);
    assert_eq!(rec.finished_at, waited.finished_at);
    assert!(crid_common::timestamp::parse(&rec.finished_at).is_some());
    let gone = wait_for(Duration::from_secs(10), || {
        (!alive(monitor_pid)).then_some(())
    });
    assert!(gone.is_some(), "monitor still running after exit");
    assert!(!c.control_socket().exists() && !c.attach_socket().exists());
    let text = std::fs::read_to_string(c.exit_record_path()).expect("exit record");
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(parsed["exit_code"], 4);
    assert_eq!(parsed["oom_killed"], false);
    assert_eq!(lines_of(&c, Stream::Stdout), vec!["bye"]);
}

#[test]
fn a_second_monitor_for_the_same_id_is_refused_and_leaves_the_first_alone() {
    let c = MonitoredContainer::new(&BundleSpec::sh("sleep 1000"));
    c.run(&[]);
    let report = c.create(&[]);
    assert_eq!(report.pid, -1);
    assert!(report.message.expect("message").contains("already exists"));
    // The first monitor's sockets are untouched and it still answers.
    assert!(c.control_socket().exists() && c.attach_socket().exists());
    let state = c
        .client()
        .state(ctx(), &proto::StateRequest::new())
        .expect("State");
    assert!(alive(state.pid));
}
