//! crid's streaming server driven by the test harness's own client
//! (`harness::streaming_client`, written from the protocol reference, not from crid's server):
//! exec and attach over SPDY and every WebSocket channel protocol, terminals and resizes,
//! port-forward over SPDY, SPDY-in-WebSocket and the legacy channels, token and handshake
//! errors, 100 concurrent sessions, clients that vanish mid-session, and crid's own resources
//! (fds, threads, children, RSS) before and after.

use std::time::{Duration, Instant};

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;
use crid_tests::harness::streaming_client::{
    exec_round_trip, exec_spdy, exec_ws, refused_status, ws_port_forward_legacy, ExecOptions,
    ExecResult, HttpRefused, PortForwarder, RemoteCommand, SpdyClient, StreamUrl,
    PORT_FORWARD_PROTOCOL,
};

/// The exact success status of protocol v4/v5 (34 bytes).
const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;
const SECOND: Duration = Duration::from_secs(1);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(r: &ExecResult) -> String {
    format!(
        "protocol {:?}, ended {:?}, close {:?}, status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        r.protocol,
        r.ended,
        r.ws_close_code,
        r.status_text(),
        text(&r.stdout),
        text(&r.stderr)
    )
}

/// Asserts the exact `NonZeroExitCode` status of the reference (metav1.Status in Go's field
/// order; only the message's tail is the runtime's own) and client-go's reading of it.
fn assert_exit_status(r: &ExecResult, code: u8) {
    let status = r.status_text();
    let head = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: "#;
    let tail = format!(
        r#"","reason":"NonZeroExitCode","details":{{"causes":[{{"reason":"ExitCode","message":"{code}"}}]}}}}"#
    );
    assert!(
        status.starts_with(head) && status.ends_with(&tail),
        "not the NonZeroExitCode status for {code}: {}",
        show(r)
    );
    assert_eq!(r.exit_code(), Ok(code), "{}", show(r));
}

fn assert_success(r: &ExecResult) {
    assert_eq!(r.status_text(), SUCCESS, "{}", show(r));
}

fn strings(cmd: &[&str]) -> Vec<String> {
    cmd.iter().map(|s| (*s).to_owned()).collect()
}

async fn exec_url(fx: &mut PodFixture, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    fx.runtime
        .exec(cri::ExecRequest {
            container_id: id.to_owned(),
            cmd: strings(cmd),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })
        .await
        .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e}"))
        .into_inner()
        .url
}

async fn attach_url(fx: &mut PodFixture, id: &str, stdin: bool, tty: bool) -> String {
    fx.runtime
        .attach(cri::AttachRequest {
            container_id: id.to_owned(),
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        })
        .await
        .unwrap_or_else(|e| panic!("Attach: {e}"))
        .into_inner()
        .url
}

async fn port_forward_url(fx: &mut PodFixture, pod_id: &str, ports: &[i32]) -> String {
    fx.runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.to_owned(),
            port: ports.to_vec(),
        })
        .await
        .unwrap_or_else(|e| panic!("PortForward: {e}"))
        .into_inner()
        .url
}

fn with_stdin(data: &[u8]) -> ExecOptions {
    ExecOptions {
        stdin: Some(data.to_vec()),
        ..Default::default()
    }
}

fn protocol(p: &str) -> ExecOptions {
    ExecOptions {
        protocols: vec![p.to_owned()],
        ..Default::default()
    }
}

/// Options of a terminal session with stdin (no stderr stream: the CRI refuses it with tty).
fn terminal(resize: &[(u16, u16)]) -> ExecOptions {
    ExecOptions {
        stdin: Some(Vec::new()),
        stderr: false,
        tty: true,
        resize: resize.to_vec(),
        ..Default::default()
    }
}

/// A pod with one long-running container (with stdin); returns (pod id, container id).
async fn pod_with_sleeper(fx: &mut PodFixture, name: &str) -> (String, String) {
    let pod = fx.pod_config(name);
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut config = fx.container_config("sleeper", &["sleep", "100000"]);
    config.stdin = true;
    let id = fx.start_container(&pod_id, &pod, config).await;
    (pod_id, id)
}

/// The pod's TCP sockets as (local port, remote port, state) from `/proc/net/tcp{,6}` seen by
/// container `id` (it shares the pod's network namespace).
async fn pod_sockets(fx: &mut PodFixture, id: &str) -> Vec<(u16, u16, u8)> {
    let out = fx
        .exec(id, &["cat", "/proc/net/tcp", "/proc/net/tcp6"], 10)
        .await;
    text(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |f: &str| u16::from_str_radix(f.rsplit(':').next()?, 16).ok();
            Some((
                port(fields.get(1)?)?,
                port(fields.get(2)?)?,
                u8::from_str_radix(fields.get(3)?, 16).ok()?,
            ))
        })
        .collect()
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0A;

/// Established connections to or from `port` in the pod.
async fn established(fx: &mut PodFixture, id: &str, port: u16) -> usize {
    pod_sockets(fx, id)
        .await
        .iter()
        .filter(|(l, r, s)| *s == TCP_ESTABLISHED && (*l == port || *r == port))
        .count()
}

/// Waits until the pod listens on every port of `ports`.
async fn wait_listening(fx: &mut PodFixture, id: &str, ports: &[u16]) {
    let deadline = Instant::now() + 20 * SECOND;
    loop {
        let sockets = pod_sockets(fx, id).await;
        if ports
            .iter()
            .all(|p| sockets.iter().any(|(l, _, s)| l == p && *s == TCP_LISTEN))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pod does not listen on {ports:?}: {sockets:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ps` in container `id`.
async fn ps(fx: &mut PodFixture, id: &str) -> String {
    text(&fx.exec(id, &["ps", "-o", "pid,args"], 10).await.stdout)
}

/// Polls `ps` until a process with `args` appears (`present`) or is gone (`!present`).
async fn wait_process(fx: &mut PodFixture, id: &str, args: &str, present: bool) -> String {
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let listing = ps(fx, id).await;
        let found = listing.lines().any(|l| l.trim_end().ends_with(args));
        if found == present || Instant::now() >= deadline {
            return listing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the tail of crid's stderr when the test panics (crid's panics abort it, and the
/// fixture's directory with the log goes with the test).
struct CridLogOnPanic(std::path::PathBuf);

impl CridLogOnPanic {
    fn new(fx: &PodFixture) -> Self {
        CridLogOnPanic(fx.crid.stderr_path.clone())
    }
}

impl Drop for CridLogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- crid stderr (last 60 lines)\n{tail}");
        }
    }
}

/// crid's log lines about its streaming server, for failure messages.
fn streaming_log(fx: &PodFixture) -> String {
    fx.crid
        .stderr()
        .lines()
        .filter(|l| l.contains("streaming"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails with crid's exit status when crid is gone `what` (its panics abort it), rather than
/// with whichever RPC happens to hit the dead socket next. Gives it a moment to die first.
async fn assert_crid_running(fx: &mut PodFixture, what: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let child = fx.crid.child.as_mut().expect("crid was started");
    if let Ok(Some(status)) = child.try_wait() {
        let log = fx.crid.stderr();
        let panic = log
            .lines()
            .skip_while(|l| !l.contains("panicked at"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n");
        panic!("crid exited ({status}) {what}:\n{panic}");
    }
}

// ---------------------------------------------------------------------------------------------
// crid's own resources
// ---------------------------------------------------------------------------------------------

/// What crid holds: open fds, threads, direct child processes, resident memory.
#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    threads: usize,
    children: usize,
    rss_kib: u64,
}

fn crid_pid(fx: &PodFixture) -> u32 {
    fx.crid.child.as_ref().expect("crid is running").id()
}

fn usage(fx: &PodFixture) -> Usage {
    let pid = crid_pid(fx);
    let count = |dir: String| std::fs::read_dir(dir).map(Iterator::count).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Usage {
        fds: count(format!("/proc/{pid}/fd")),
        threads: count(format!("/proc/{pid}/task")),
        children: children_of(pid).len(),
        rss_kib,
    }
}

/// Direct children of `pid`: (pid, command line).
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // The parent pid is the second field after the parenthesised command name.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then(|| {
                let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
                (child, text(&cmdline).replace('\0', " "))
            })
        })
        .collect()
}

/// crid's fds with their targets, for a failure message.
fn fd_listing(fx: &PodFixture) -> String {
    let pid = crid_pid(fx);
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let target = std::fs::read_link(e.path()).unwrap_or_default();
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        target.display()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds.join("\n")
}

/// crid's resources after a warm-up (the first session starts whatever crid starts lazily:
/// the streaming listener, runtime pools, allocator arenas), compared later with bounded slack.
struct LeakProbe {
    before: Usage,
}

impl LeakProbe {
    fn start(fx: &PodFixture) -> Self {
        LeakProbe { before: usage(fx) }
    }

    /// Takes a new baseline after more warm-up, keeping the lower thread count: threads a
    /// burst started (tokio's blocking pool) retire after 10 s idle and must do so.
    fn rebase(&mut self, fx: &PodFixture) {
        let threads = self.before.threads;
        self.before = usage(fx);
        self.before.threads = self.before.threads.min(threads);
    }

    /// Waits (up to 15 s, for sessions to wind down and idle blocking threads to retire)
    /// until crid is back within bounds of the baseline: fds +2, threads +4, no extra child,
    /// RSS + `rss_slack_mib`.
    async fn check(&self, fx: &PodFixture, what: &str, rss_slack_mib: u64) {
        let b = self.before;
        let within = |u: &Usage| {
            u.fds <= b.fds + 2
                && u.threads <= b.threads + 4
                && u.children <= b.children
                && u.rss_kib <= b.rss_kib + rss_slack_mib * 1024
        };
        let deadline = Instant::now() + 15 * SECOND;
        let mut now = usage(fx);
        while !within(&now) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            now = usage(fx);
        }
        eprintln!("crid across {what}: before {b:?}, after {now:?}");
        assert!(
            within(&now),
            "crid grew across {what}: before {b:?}, after {now:?}\nchildren: {:?}\nfds:\n{}",
            children_of(crid_pid(fx)),
            fd_listing(fx)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// exec
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn spdy_exec_carries_stdio_and_exit_codes() {
    let mut fx = PodFixture::start("").await;
    let _log = CridLogOnPanic::new(&fx);
    let (_pod_id, id) = pod_with_sleeper(&mut fx, "spdy-exec").await;

    // Warm-up, and the plain case: client-go's offer (v5..v1) negotiates v4.
    let url = exec_url(&mut fx, &id, &["echo", "-n", "hello"], false, false).await;
    let r = exec_spdy(&url, &ExecOptions::default())
        .await
        .expect("exec echo");
    assert_eq!(r.protocol, "v4.channel.k8s.io", "{}", show(&r));
    assert_eq!(text(&r.stdout), "hello", "{}", show(&r));
    assert!(r.stderr.is_empty(), "{}", show(&r));
    assert_success(&r);
    // The benchmark's measure: upgrade to status.
    let url = exec_url(&mut fx, &id, &["true"], false, false).await;
    let took = exec_round_trip(&url).await.expect("exec round trip");
    assert!(took < 10 * SECOND, "exec round trip took {took:?}");
    let probe = LeakProbe::start(&fx);

    // stdin through cat (1 MB: no flow-control window may stall it), stderr on its own
    // stream, and the exit code.
    let input: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let url = exec_url(
        &mut fx,
        &id,
        &["sh", "-c", "cat; echo oops >&2; exit 3"],
        true,
        false,
    )
    .await;
    let r = exec_spdy(&url, &with_stdin(&input))
        .await
        .expect("exec cat");
    assert_eq!(r.stdout.len(), input.len(), "{}", r.status_text());
    assert!(r.stdout == input, "stdout differs from stdin");
    assert_eq!(text(&r.stderr), "oops\n", "{}", show(&r));
    assert_exit_status(&r, 3);

    // 3 MB of output: the server must not wait for WINDOW_UPDATEs the Go client never sends.
    let url = exec_url(
        &mut fx,
        &id,
        &["head", "-c", "3000000", "/dev/zero"],
        false,
        false,
    )
    .await;
    let r = exec_spdy(&url, &ExecOptions::default())
        .await
        .expect("exec head");
    assert_eq!(r.stdout.len(), 3_000_000, "{}", r.status_text());
    assert_success(&r);

    // PING is echoed mid-session; stdin written interactively then half-closed.
    let url = exec_url(&mut fx, &id, &["cat"], true, false).await;
    let mut session = RemoteCommand::start_spdy(&url, &with_stdin(b""))
        .await
        .expect("start cat");
    let rtt = session
        .spdy()
        .expect("a SPDY session")
        .ping()
        .await
        .expect("PING echoed");
    assert!(rtt < 5 * SECOND, "PING took {rtt:?}");
    session.write_stdin(b"ping-pong").expect("write stdin");
    session
        .read_until("ping-pong", 10 * SECOND)
        .await
        .expect("echo");
    session.close_stdin().expect("close stdin");
    let r = session.finish().await.expect("cat ends");
    assert_eq!(text(&r.stdout), "ping-pong", "{}", show(&r));
    assert_success(&r);

    // Older protocols: the status is the message as plain text on failure, nothing on success.
    for p in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        let url = exec_url(
            &mut fx,
            &id,
            &["sh", "-c", "echo out; exit 2"],
            false,
            false,
        )
        .await;
        let r = exec_spdy(&url, &protocol(p)).await.expect("exec exit 2");
        assert_eq!(r.protocol, p, "{}", show(&r));
        assert_eq!(text(&r.stdout), "out\n", "{}", show(&r));
        assert!(
            r.status_text()
                .starts_with("command terminated with non-zero exit code"),
            "{p}: {}",
            show(&r)
        );
        let url = exec_url(&mut fx, &id, &["true"], false, false).await;
        let r = exec_spdy(&url, &protocol(p)).await.expect("exec true");
        assert!(r.status_json.is_empty(), "{p}: {}", show(&r));
    }

    // A command that does not exist fails with a status, not a hang.
    let url = exec_url(&mut fx, &id, &["/no/such/binary"], false, false).await;
    let r = exec_spdy(&url, &ExecOptions::default())
        .await
        .expect("exec a missing binary");
    assert_ne!(r.exit_code(), Ok(0), "{}", show(&r));

    probe.check(&fx, "SPDY execs", 16).await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_exec_speaks_every_channel_protocol() {
    let mut fx = PodFixture::start("").await;
    let _log = CridLogOnPanic::new(&fx);
    let (_pod_id, id) = pod_with_sleeper(&mut fx, "ws-exec").await;

    // v5 (crictl -r websocket): stdin closed with [255, 0], exact statuses, Close 1000.
    let url = exec_url(&mut fx, &id, &["echo", "-n", "hello"], false, false).await;
    let r = exec_ws(&url, &ExecOptions::default())
        .await
        .expect("v5 echo");
    assert_eq!(r.protocol, "v5.channel.k8s.io", "{}", show(&r));
    assert_eq!(text(&r.stdout), "hello", "{}", show(&r));
    assert_success(&r);
    assert_eq!(r.ws_close_code, Some(1000), "{}", show(&r));
    let probe = LeakProbe::start(&fx);

    let input = b"0123456789abcdef".repeat(12_500); // 200 kB
    let url = exec_url(
        &mut fx,
        &id,
        &["sh", "-c", "cat; echo oops >&2; exit 3"],
        true,
        false,
    )
    .await;
    let r = exec_ws(&url, &with_stdin(&input)).await.expect("v5 cat");
    assert_eq!(r.stdout.len(), input.len(), "{}", r.status_text());
    assert!(r.stdout == input, "stdout differs from stdin");
    assert_eq!(text(&r.stderr), "oops\n", "{}", show(&r));
    assert_exit_status(&r, 3);
    assert_eq!(r.ws_close_code, Some(1000), "{}", show(&r));

    // Offered v5 and v4: crid prefers v5.
    let url = exec_url(&mut fx, &id, &["true"], false, false).await;
    let both = ExecOptions {
        protocols: vec!["v4.channel.k8s.io".into(), "v5.channel.k8s.io".into()],
        ..Default::default()
    };
    let r = exec_ws(&url, &both).await.expect("v4+v5");
    assert_eq!(r.protocol, "v5.channel.k8s.io", "{}", show(&r));

    // v4 and its base64 variant: no way to close stdin, so the command reads one line only;
    // the kubelet library's "connected" message (empty, stdout channel) comes first.
    let cmd = ["sh", "-c", "head -n 1; echo oops >&2; exit 3"];
    for p in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let url = exec_url(&mut fx, &id, &cmd, true, false).await;
        let options = ExecOptions {
            stdin: Some(format!("via {p}\n").into_bytes()),
            ..protocol(p)
        };
        let r = exec_ws(&url, &options).await.expect("v4 exec");
        assert_eq!(r.protocol, p, "{}", show(&r));
        assert_eq!(text(&r.stdout), format!("via {p}\n"), "{}", show(&r));
        assert_eq!(text(&r.stderr), "oops\n", "{}", show(&r));
        assert_exit_status(&r, 3);
        assert_eq!(r.ws_first_message, Some((1, Vec::new())), "{}", show(&r));
        assert_eq!(r.ws_close_code, Some(1000), "{}", show(&r));
        let url = exec_url(&mut fx, &id, &["true"], false, false).await;
        let r = exec_ws(&url, &protocol(p)).await.expect("v4 true");
        assert_success(&r);
    }

    // Legacy channel protocols (and none at all): text status on failure, nothing on success.
    for p in ["channel.k8s.io", "base64.channel.k8s.io", ""] {
        let url = exec_url(&mut fx, &id, &cmd, true, false).await;
        let options = ExecOptions {
            stdin: Some(b"legacy\n".to_vec()),
            ..protocol(p)
        };
        let r = exec_ws(&url, &options).await.expect("legacy exec");
        assert_eq!(r.protocol, p, "{}", show(&r));
        assert_eq!(text(&r.stdout), "legacy\n", "{p:?}: {}", show(&r));
        assert_eq!(text(&r.stderr), "oops\n", "{p:?}: {}", show(&r));
        assert!(
            r.status_text()
                .starts_with("command terminated with non-zero exit code"),
            "{p:?}: {}",
            show(&r)
        );
        let url = exec_url(&mut fx, &id, &["true"], false, false).await;
        let r = exec_ws(&url, &protocol(p)).await.expect("legacy true");
        assert!(r.status_json.is_empty(), "{p:?}: {}", show(&r));
    }

    probe.check(&fx, "WebSocket execs", 16).await;
    fx.finish().await;
}

/// Sends `stty size` until the terminal reports `rows cols` (a resize and a command travel on
/// different streams, so the command may run before the resize lands).
async fn expect_size(session: &mut RemoteCommand, rows: u16, cols: u16) {
    let want = format!("{rows} {cols}");
    for _ in 0..20 {
        session
            .write_stdin(b"stty size\n")
            .expect("write stty size");
        if session.read_until(&want, SECOND / 2).await.is_ok() {
            return;
        }
    }
    panic!(
        "the terminal never reported {want}: {}",
        text(session.stdout())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn terminal_exec_applies_resizes() {
    let mut fx = PodFixture::start("").await;
    let _log = CridLogOnPanic::new(&fx);
    let (_pod_id, id) = pod_with_sleeper(&mut fx, "tty-exec").await;
    let probe = LeakProbe::start(&fx);
    for ws in [false, true] {
        let url = exec_url(&mut fx, &id, &["sh"], true, true).await;
        let options = terminal(&[(100, 30)]);
        let mut session = if ws {
            RemoteCommand::start_ws(&url, &options).await
        } else {
            RemoteCommand::start_spdy(&url, &options).await
        }
        .expect("start sh on a terminal");
        // The size sent right after the streams exist is the terminal's first size.
        session.write_stdin(b"tty\n").expect("write");
        session
            .read_until("/dev/pts/", 10 * SECOND)
            .await
            .expect("a terminal");
        expect_size(&mut session, 30, 100).await;
        session.resize(120, 40).expect("resize");
        expect_size(&mut session, 40, 120).await;
        session.resize(81, 23).expect("resize");
        expect_size(&mut session, 23, 81).await;
        session.write_stdin(b"exit 7\n").expect("write exit");
        let r = session.finish().await.expect("sh ends");
        assert_exit_status(&r, 7);
        assert!(r.stderr.is_empty(), "{}", show(&r));
    }
    // Without stdin: the size set while the command runs is what it sees.
    let url = exec_url(
        &mut fx,
        &id,
        &["sh", "-c", "sleep 1; stty size"],
        false,
        true,
    )
    .await;
    let options = ExecOptions {
        stdin: None,
        ..terminal(&[(77, 21)])
    };
    let r = exec_spdy(&url, &options).await.expect("stty size");
    assert!(text(&r.stdout).contains("21 77"), "{}", show(&r));
    assert_success(&r);
    probe.check(&fx, "terminal execs", 16).await;
    fx.finish().await;
}

// ---------------------------------------------------------------------------------------------
// attach
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn attach_streams_output_and_input_and_closes_stdin_once() {
    let mut fx = PodFixture::start("").await;
    let _log = CridLogOnPanic::new(&fx);
    let pod = fx.pod_config("attach");
    let pod_id = fx.run_pod(pod.clone()).await;
    let ticker = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config(
                "ticker",
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done",
                ],
            ),
        )
        .await;
    let mut echo = fx.container_config(
        "echo",
        &[
            "sh",
            "-c",
            "while read l; do echo got:$l; echo err:$l >&2; done; echo bye; exit 4",
        ],
    );
    echo.stdin = true;
    echo.stdin_once = true;
    let echo = fx.start_container(&pod_id, &pod, echo).await;
    let mut once = fx.container_config("once", &["sh", "-c", "read l; echo got:$l"]);
    once.stdin = true;
    once.stdin_once = true;
    let once = fx.start_container(&pod_id, &pod, once).await;
    let mut shell = fx.container_config("shell", &["sh"]);
    shell.stdin = true;
    shell.tty = true;
    let shell = fx.start_container(&pod_id, &pod, shell).await;

    // Warm-up: an output-only attach over WebSocket, left with a Close frame.
    let url = attach_url(&mut fx, &ticker, false, false).await;
    let mut session = RemoteCommand::start_ws(&url, &ExecOptions::default())
        .await
        .expect("attach to the ticker");
    session
        .read_until("tick", 10 * SECOND)
        .await
        .expect("ticks");
    session.close().await;
    let probe = LeakProbe::start(&fx);

    // Interactive stdin over SPDY; closing it (stdin_once) ends the container's input.
    let url = attach_url(&mut fx, &echo, true, false).await;
    let mut session = RemoteCommand::start_spdy(&url, &with_stdin(b""))
        .await
        .expect("attach to echo");
    session.write_stdin(b"first\n").expect("write");
    session
        .read_until("got:first", 10 * SECOND)
        .await
        .expect("first");
    session.write_stdin(b"second\n").expect("write");
    session
        .read_until("got:second", 10 * SECOND)
        .await
        .expect("second");
    session.close_stdin().expect("close stdin");
    let r = session
        .finish()
        .await
        .expect("attach ends with the container");
    assert!(text(&r.stdout).contains("bye"), "{}", show(&r));
    assert!(text(&r.stderr).contains("err:first"), "{}", show(&r));
    assert_success(&r);
    let status = fx.wait_exited(&echo, 20 * SECOND).await;
    assert_eq!(status.exit_code, 4, "the loop saw the end of its stdin");

    // Over WebSocket v5: the close signal [255, 0] closes the container's stdin.
    let url = attach_url(&mut fx, &once, true, false).await;
    let r = exec_ws(&url, &with_stdin(b"hello\n"))
        .await
        .expect("attach over v5");
    assert!(text(&r.stdout).contains("got:hello"), "{}", show(&r));
    assert_success(&r);
    let status = fx.wait_exited(&once, 20 * SECOND).await;
    assert_eq!(status.exit_code, 0);

    // Detaching (the client leaves first) leaves the containers running: a terminal
    // container whose shell gets resizes and input, and output-only attaches, each twice.
    // (Until 42ccebf a SPDY client leaving first made crid panic and abort.)
    for ws in [true, false] {
        let url = attach_url(&mut fx, &shell, true, true).await;
        let options = terminal(&[(90, 25)]);
        let mut session = if ws {
            RemoteCommand::start_ws(&url, &options).await
        } else {
            RemoteCommand::start_spdy(&url, &options).await
        }
        .expect("attach to the shell");
        expect_size(&mut session, 25, 90).await;
        session.write_stdin(b"echo $((6*7))\n").expect("write");
        session.read_until("42", 10 * SECOND).await.expect("42");
        session.close().await;
        let how = if ws { "WebSocket" } else { "SPDY" };
        assert_crid_running(&mut fx, &format!("after a {how} detach from a terminal")).await;
        let status = fx.container_status(&shell).await;
        assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
        for _ in 0..2 {
            let url = attach_url(&mut fx, &ticker, false, false).await;
            let options = ExecOptions::default();
            let mut session = if ws {
                RemoteCommand::start_ws(&url, &options).await
            } else {
                RemoteCommand::start_spdy(&url, &options).await
            }
            .expect("attach to the ticker");
            session
                .read_until("tick", 10 * SECOND)
                .await
                .expect("ticks");
            session
                .read_until("\ntick", 5 * SECOND)
                .await
                .expect("more ticks");
            session.close().await;
            let how = if ws { "WebSocket" } else { "SPDY" };
            assert_crid_running(&mut fx, &format!("after a {how} detach")).await;
        }
        let status = fx.container_status(&ticker).await;
        assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    }
    probe.check(&fx, "attach sessions", 16).await;
    fx.finish().await;
}

// ---------------------------------------------------------------------------------------------
// port-forward
// ---------------------------------------------------------------------------------------------

const GET_INDEX: &[u8] = b"GET /index.html HTTP/1.0\r\n\r\n";

/// A pod serving `port-a` on 127.0.0.1:8080 (and a 1 MB `/big`), `port-b` on 127.0.0.1:8081,
/// and an echo (`nc -e cat` per connection) on 8082; returns (pod id, container id).
async fn pod_with_servers(fx: &mut PodFixture, name: &str) -> (String, String) {
    let pod = fx.pod_config(name);
    let pod_id = fx.run_pod(pod.clone()).await;
    let config = fx.container_config(
        "servers",
        &[
            "sh",
            "-c",
            "mkdir -p /a /b && echo port-a > /a/index.html && echo port-b > /b/index.html \
             && head -c 1000000 /dev/zero > /a/big \
             && httpd -p 127.0.0.1:8080 -h /a && httpd -p 127.0.0.1:8081 -h /b \
             && exec nc -ll -p 8082 -e cat",
        ],
    );
    let id = fx.start_container(&pod_id, &pod, config).await;
    wait_listening(fx, &id, &[8080, 8081, 8082]).await;
    (pod_id, id)
}

/// Several concurrent connections to both HTTP ports, an echo with half-close, a large
/// download, a refused port reported on the error stream, and the session still usable.
/// Returns a deviation from the reference found on the way (see the end).
async fn exercise_port_forward(pf: &PortForwarder, what: &str) -> Option<String> {
    let exchanges = (0..8u16).map(|i| async move {
        let (port, want) = if i % 2 == 0 {
            (8080, "port-a")
        } else {
            (8081, "port-b")
        };
        let mut conn = pf.open(port).await.expect("open a forwarded connection");
        let (reply, error) = conn
            .exchange(GET_INDEX, i % 4 < 2, 20 * SECOND)
            .await
            .expect("exchange");
        assert!(
            text(&reply).contains(want),
            "{what}: connection {i} to {port}: {:?} (error {error:?})",
            text(&reply)
        );
        assert_eq!(error, "", "{what}: connection {i}");
    });
    futures_util::future::join_all(exchanges).await;

    // Echo: our FIN reaches the pod (cat sees EOF) and everything comes back first.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let mut conn = pf.open(8082).await.expect("open echo");
    let (reply, error) = conn
        .exchange(&data, true, 20 * SECOND)
        .await
        .expect("echo exchange");
    assert_eq!(reply.len(), data.len(), "{what}: echo (error {error:?})");
    assert!(reply == data, "{what}: echo differs");
    assert_eq!(error, "", "{what}: echo");

    let mut conn = pf.open(8080).await.expect("open big");
    let (reply, error) = conn
        .exchange(b"GET /big HTTP/1.0\r\n\r\n", false, 20 * SECOND)
        .await
        .expect("big exchange");
    assert!(
        reply.len() > 1_000_000,
        "{what}: /big: {} bytes (error {error:?})",
        reply.len()
    );

    // Nothing listens on port 9: the error stream says so; the session stays.
    let mut conn = pf.open(9).await.expect("open port 9");
    let (reply, error) = conn
        .exchange(b"x", true, 20 * SECOND)
        .await
        .expect("port 9 exchange");
    assert!(
        !error.is_empty(),
        "{what}: no error for port 9, reply {reply:?}"
    );
    assert!(
        error.contains('9'),
        "{what}: error names the port: {error:?}"
    );
    assert!(reply.is_empty(), "{what}: port 9 replied {reply:?}");
    assert_eq!(pf.client().closed(), None, "{what}: session dropped");
    assert_eq!(pf.client().goaway(), None, "{what}: GOAWAY after an error");
    let mut conn = pf.open(8081).await.expect("open after the error");
    let (reply, error) = conn
        .exchange(GET_INDEX, false, 20 * SECOND)
        .await
        .expect("exchange after the error");
    assert!(
        text(&reply).contains("port-b"),
        "{what}: after the error: {:?} {error:?}",
        text(&reply)
    );
    pf.client().ping().await.expect("PING after the error");

    // The pod closing its end FINs the data stream, then the error stream, without the
    // client resetting or half-closing anything (reference §3.11). Returned rather than
    // asserted, so the rest of the test still runs.
    let mut conn = pf.open(8080).await.expect("open");
    conn.write(GET_INDEX).expect("write");
    let reply = tokio::time::timeout(20 * SECOND, conn.read_to_end())
        .await
        .expect("the data stream ends when the pod closes");
    assert!(
        text(&reply).contains("port-a"),
        "{what}: {:?}",
        text(&reply)
    );
    match conn.error_text(5 * SECOND).await {
        Ok(e) if e.is_empty() => None,
        other => Some(format!(
            "{what}: the pod closed its end and the data stream ended, but the error stream \
             did not end within 5 s (client-go resets the data stream first; the reference \
             wants FIN on both): {other:?}"
        )),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_spdy_tunnel_and_legacy_websocket() {
    let mut fx = PodFixture::start("").await;
    let _log = CridLogOnPanic::new(&fx);
    let (pod_id, _id) = pod_with_servers(&mut fx, "pf").await;

    // Warm-up.
    let url = port_forward_url(&mut fx, &pod_id, &[]).await;
    let pf = PortForwarder::connect(&url).await.expect("port-forward");
    let mut conn = pf.open(8080).await.expect("open");
    let (reply, _) = conn
        .exchange(GET_INDEX, false, 20 * SECOND)
        .await
        .expect("exchange");
    assert!(text(&reply).contains("port-a"), "{}", text(&reply));
    pf.close().await;
    let probe = LeakProbe::start(&fx);

    let url = port_forward_url(&mut fx, &pod_id, &[]).await;
    let pf = PortForwarder::connect(&url)
        .await
        .expect("SPDY port-forward");
    let mut deviations = Vec::new();
    deviations.extend(exercise_port_forward(&pf, "SPDY").await);
    pf.close().await;

    let url = port_forward_url(&mut fx, &pod_id, &[]).await;
    let pf = PortForwarder::connect_ws(&url)
        .await
        .expect("SPDY-in-WebSocket port-forward");
    deviations.extend(exercise_port_forward(&pf, "SPDY over WebSocket").await);
    pf.close().await;

    // Legacy channels: ports from the CRI request, data on 2i, errors on 2i+1, each opened
    // with the port as u16 LE; the server closes when both forwards end.
    for p in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let url = port_forward_url(&mut fx, &pod_id, &[8080, 8081]).await;
        let (negotiated, forwards, close) =
            ws_port_forward_legacy(&url, Some(p), &[GET_INDEX, GET_INDEX], 20 * SECOND)
                .await
                .expect("legacy port-forward");
        assert_eq!(negotiated, p);
        assert_eq!(forwards.len(), 2);
        for (forward, (port, want)) in forwards.iter().zip([(8080, "port-a"), (8081, "port-b")]) {
            assert_eq!(forward.data_port, Some(port), "{p}: {forward:?}");
            assert_eq!(forward.error_port, Some(port), "{p}: {forward:?}");
            assert!(
                text(&forward.data).contains(want),
                "{p}: {port}: {:?}",
                text(&forward.data)
            );
            assert!(forward.error.is_empty(), "{p}: {port}: {forward:?}");
        }
        assert_eq!(close, Some(1000), "{p}");
    }

    probe.check(&fx, "port-forwards", 16).await;
    assert!(deviations.is_empty(), "{}", deviations.join("\n"));
    fx.finish().await;
}

// ---------------------------------------------------------------------------------------------
// tokens and handshakes
// ---------------------------------------------------------------------------------------------

fn expect_refused<T>(result: anyhow::Result<T>, status: u16, what: &str) -> HttpRefused {
    match result {
        Ok(_) => panic!("{what}: accepted, expected HTTP {status}"),
        Err(e) => {
            assert_eq!(refused_status(&e), Some(status), "{what}: {e:#}");
            e.downcast_ref::<HttpRefused>()
                .cloned()
                .expect("an HttpRefused")
        }
    }
}

/// `url` with its last path segment (the token) replaced.
fn with_token(url: &str, token: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a token in the URL");
    format!("{base}/{token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_single_use_and_protocols_are_checked() {
    let mut fx = PodFixture::start("").await;
    let _log = CridLogOnPanic::new(&fx);
    let (pod_id, id) = pod_with_sleeper(&mut fx, "tokens").await;

    let url = exec_url(&mut fx, &id, &["true"], false, false).await;
    let r = exec_spdy(&url, &ExecOptions::default())
        .await
        .expect("first use");
    assert_success(&r);
    let probe = LeakProbe::start(&fx);
    expect_refused(
        exec_spdy(&url, &ExecOptions::default()).await,
        404,
        "SPDY reuse",
    );
    expect_refused(
        exec_ws(&url, &ExecOptions::default()).await,
        404,
        "WebSocket reuse",
    );

    // Unknown tokens and paths.
    let unknown = with_token(&url, "AAAAAAAA");
    expect_refused(
        exec_spdy(&unknown, &ExecOptions::default()).await,
        404,
        "SPDY unknown",
    );
    expect_refused(
        exec_ws(&unknown, &ExecOptions::default()).await,
        404,
        "WebSocket unknown",
    );
    let parsed = StreamUrl::parse(&url).expect("exec URL");
    let elsewhere = format!("http://{}/nothing/here", parsed.authority());
    expect_refused(
        exec_spdy(&elsewhere, &ExecOptions::default()).await,
        404,
        "unknown path",
    );
    // An exec token is no attach token.
    let url = exec_url(&mut fx, &id, &["true"], false, false).await;
    let as_attach = url.replace("/exec/", "/attach/");
    assert_ne!(as_attach, url, "exec URL shape: {url}");
    expect_refused(
        exec_spdy(&as_attach, &ExecOptions::default()).await,
        404,
        "exec token on /attach",
    );

    // No offered protocol in common: 403, naming what is accepted (SPDY).
    let url = exec_url(&mut fx, &id, &["true"], false, false).await;
    let refused = expect_refused(
        exec_spdy(&url, &protocol("v9.channel.k8s.io")).await,
        403,
        "SPDY v9",
    );
    let accepted = refused
        .header_values("x-accepted-stream-protocol-versions")
        .join(",");
    assert!(
        accepted.contains("v4.channel.k8s.io"),
        "X-Accepted-Stream-Protocol-Versions: {:?}",
        refused.headers
    );
    let url = exec_url(&mut fx, &id, &["true"], false, false).await;
    expect_refused(
        exec_ws(&url, &protocol("v9.channel.k8s.io")).await,
        403,
        "WebSocket v9",
    );
    let url = port_forward_url(&mut fx, &pod_id, &[]).await;
    expect_refused(
        SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await,
        403,
        "port-forward with a remotecommand protocol",
    );
    let url = port_forward_url(&mut fx, &pod_id, &[]).await;
    expect_refused(
        SpdyClient::connect(&url, &["v4.channel.k8s.io", "channel.k8s.io"]).await,
        403,
        "port-forward with remotecommand protocols",
    );
    // No X-Stream-Protocol-Version at all: 400.
    let url = exec_url(&mut fx, &id, &["true"], false, false).await;
    expect_refused(SpdyClient::connect(&url, &[]).await, 400, "no protocol");
    // The port-forward protocol is negotiated exactly.
    let url = port_forward_url(&mut fx, &pod_id, &[]).await;
    let (negotiated, client) = SpdyClient::connect(&url, &[PORT_FORWARD_PROTOCOL])
        .await
        .expect("port-forward upgrade");
    assert_eq!(negotiated, PORT_FORWARD_PROTOCOL);
    client.close().await;

    probe.check(&fx, "refused upgrades", 16).await;
    fx.finish().await;
}

// ---------------------------------------------------------------------------------------------
// load and failures
// ---------------------------------------------------------------------------------------------

/// Runs 100 exec sessions at once (`echo session-<i>`, half over SPDY, half over WebSocket
/// v5); returns the failures, the wall time and the slowest session.
async fn hundred_sessions(fx: &mut PodFixture, id: &str) -> (Vec<String>, Duration, Duration) {
    let mut urls = Vec::new();
    for i in 0..100 {
        urls.push(exec_url(fx, id, &["echo", &format!("session-{i}")], false, false).await);
    }
    let start = Instant::now();
    let mut sessions = tokio::task::JoinSet::new();
    for (i, url) in urls.into_iter().enumerate() {
        sessions.spawn(async move {
            let options = ExecOptions {
                timeout: Duration::from_secs(90),
                ..Default::default()
            };
            let result = if i % 2 == 0 {
                exec_spdy(&url, &options).await
            } else {
                exec_ws(&url, &options).await
            };
            (i, result)
        });
    }
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    while let Some(joined) = sessions.join_next().await {
        let (i, result) = joined.expect("session task");
        match result {
            Ok(r) if text(&r.stdout) == format!("session-{i}\n") && r.status_text() == SUCCESS => {
                slowest = slowest.max(r.elapsed);
            }
            Ok(r) => failures.push(format!("session {i}: {}", show(&r))),
            Err(e) => failures.push(format!("session {i}: {e:#}")),
        }
    }
    (failures, start.elapsed(), slowest)
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_concurrent_exec_sessions_all_succeed() {
    let mut fx = PodFixture::start("").await;
    let _log = CridLogOnPanic::new(&fx);
    let (_pod_id, id) = pod_with_sleeper(&mut fx, "hundred").await;
    let url = exec_url(&mut fx, &id, &["true"], false, false).await;
    assert_success(
        &exec_spdy(&url, &ExecOptions::default())
            .await
            .expect("warm-up"),
    );
    let mut probe = LeakProbe::start(&fx);
    // Six waves; the first four warm up (allocator arenas and pools grow to the load's size
    // over the first waves: two were not always enough on a loaded CI machine, +11.7 MiB
    // once), the leak check covers the last two.
    for wave in 0..6 {
        let (failures, total, slowest) = hundred_sessions(&mut fx, &id).await;
        assert!(
            failures.is_empty(),
            "wave {wave}: {} of 100 sessions failed (in {total:?}):\n{}",
            failures.len(),
            failures.join("\n")
        );
        eprintln!("wave {wave}: 100 concurrent execs in {total:?}, slowest session {slowest:?}");
        if wave == 3 {
            probe.rebase(&fx);
        }
    }
    probe
        .check(&fx, "2 waves of 100 concurrent sessions", 10)
        .await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vanished_clients_end_their_execs_and_forwards() {
    let mut fx = PodFixture::start("").await;
    let _log = CridLogOnPanic::new(&fx);
    let (pod_id, servers) = pod_with_servers(&mut fx, "vanish").await;
    let pod = fx.pod_config("vanish");
    let mut sleeper = fx.container_config("sleeper", &["sleep", "100000"]);
    sleeper.stdin = true;
    let id = fx.start_container(&pod_id, &pod, sleeper).await;
    let url = exec_url(&mut fx, &id, &["true"], false, false).await;
    assert_success(
        &exec_spdy(&url, &ExecOptions::default())
            .await
            .expect("warm-up"),
    );
    let url = port_forward_url(&mut fx, &pod_id, &[]).await;
    let pf = PortForwarder::connect(&url)
        .await
        .expect("warm-up port-forward");
    let mut conn = pf.open(8082).await.expect("open");
    let (reply, _) = conn.exchange(b"hi", true, 10 * SECOND).await.expect("echo");
    assert_eq!(reply, b"hi");
    pf.close().await;
    let probe = LeakProbe::start(&fx);

    // A port-forward whose client vanishes mid-connection: crid closes the pod-side
    // connection (the echo's `cat` sees EOF).
    for ws in [false, true] {
        let what = if ws { "SPDY over WebSocket" } else { "SPDY" };
        let url = port_forward_url(&mut fx, &pod_id, &[]).await;
        let pf = if ws {
            PortForwarder::connect_ws(&url).await
        } else {
            PortForwarder::connect(&url).await
        }
        .expect("port-forward");
        let mut conn = pf.open(8082).await.expect("open echo");
        conn.write(b"are you there\n").expect("write");
        let echoed = tokio::time::timeout(10 * SECOND, conn.read())
            .await
            .expect("echo in time");
        assert_eq!(echoed.as_deref(), Some(&b"are you there\n"[..]), "{what}");
        let open = established(&mut fx, &servers, 8082).await;
        assert!(open >= 1, "{what}: no established connection on 8082");
        pf.abort();
        assert_crid_running(
            &mut fx,
            &format!("after a {what} port-forward client vanished"),
        )
        .await;
        let deadline = Instant::now() + 10 * SECOND;
        let mut left = established(&mut fx, &servers, 8082).await;
        while left > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            left = established(&mut fx, &servers, 8082).await;
        }
        assert_eq!(
            left,
            0,
            "{what}: the pod-side connection outlived its client: {:?}",
            pod_sockets(&mut fx, &servers).await
        );
    }

    // An exec whose client drops the TCP connection (no RST_STREAM, GOAWAY or Close) while
    // `sleep` runs: the process must not outlive its session.
    // (Until 42ccebf a vanished SPDY client made crid panic and abort.)
    let variants: [(&str, bool, bool, &str); 4] = [
        ("WebSocket v5", false, false, "1003"),
        ("WebSocket v5 terminal", true, true, "1004"),
        ("SPDY", false, false, "1001"),
        ("SPDY terminal", true, true, "1002"),
    ];
    for (what, stdin, tty, seconds) in variants {
        let url = exec_url(&mut fx, &id, &["sleep", seconds], stdin, tty).await;
        let options = if tty {
            terminal(&[(80, 24)])
        } else {
            ExecOptions {
                stdin: stdin.then(Vec::new),
                ..Default::default()
            }
        };
        let session = if what.starts_with("WebSocket") {
            RemoteCommand::start_ws(&url, &options).await
        } else {
            RemoteCommand::start_spdy(&url, &options).await
        }
        .unwrap_or_else(|e| panic!("{what}: start: {e:#}"));
        let args = format!("sleep {seconds}");
        let listing = wait_process(&mut fx, &id, &args, true).await;
        assert!(listing.contains(&args), "{what}: never started:\n{listing}");
        session.abort();
        assert_crid_running(&mut fx, &format!("after a {what} exec client vanished")).await;
        let listing = wait_process(&mut fx, &id, &args, false).await;
        assert!(
            !listing.lines().any(|l| l.trim_end().ends_with(&args)),
            "{what}: `{args}` still runs 10 s after its client vanished:\n{listing}\n\
             crid's streaming log:\n{}",
            streaming_log(&fx)
        );
    }

    // Clients that vanish as soon as their streams exist, while the process is being
    // started: whatever the timing, it must not be left running.
    for (what, seconds) in [
        ("SPDY", "1005"),
        ("WebSocket v5", "1006"),
        ("SPDY", "1007"),
        ("WebSocket v5", "1008"),
    ] {
        let url = exec_url(&mut fx, &id, &["sleep", seconds], false, false).await;
        let options = ExecOptions::default();
        let session = if what.starts_with("WebSocket") {
            RemoteCommand::start_ws(&url, &options).await
        } else {
            RemoteCommand::start_spdy(&url, &options).await
        }
        .unwrap_or_else(|e| panic!("{what}: start: {e:#}"));
        session.abort();
        assert_crid_running(&mut fx, &format!("after a {what} exec client vanished")).await;
        // By now the process has started, if it was going to.
        tokio::time::sleep(2 * SECOND).await;
        let args = format!("sleep {seconds}");
        let listing = wait_process(&mut fx, &id, &args, false).await;
        assert!(
            !listing.lines().any(|l| l.trim_end().ends_with(&args)),
            "{what}: `{args}` still runs 12 s after its client vanished at the start:\n\
             {listing}\ncrid's streaming log:\n{}",
            streaming_log(&fx)
        );
    }

    // crid still serves.
    let url = exec_url(&mut fx, &id, &["echo", "still"], false, false).await;
    let r = exec_spdy(&url, &ExecOptions::default())
        .await
        .expect("exec after");
    assert_eq!(text(&r.stdout), "still\n", "{}", show(&r));
    probe.check(&fx, "vanished clients", 16).await;
    fx.finish().await;
}

/// One of everything, for the leak check across rounds.
async fn mixed_round(fx: &mut PodFixture, pod_id: &str, id: &str) {
    let url = exec_url(fx, id, &["echo", "a"], false, false).await;
    assert_success(
        &exec_spdy(&url, &ExecOptions::default())
            .await
            .expect("SPDY exec"),
    );
    let url = exec_url(fx, id, &["cat"], true, false).await;
    let r = exec_ws(&url, &with_stdin(b"b")).await.expect("v5 exec");
    assert_eq!(text(&r.stdout), "b", "{}", show(&r));
    let url = exec_url(fx, id, &["sh", "-c", "exit 5"], false, false).await;
    let r = exec_ws(&url, &protocol("v4.base64.channel.k8s.io"))
        .await
        .expect("v4 base64 exec");
    assert_exit_status(&r, 5);
    let url = exec_url(fx, id, &["stty", "size"], true, true).await;
    let mut session = RemoteCommand::start_spdy(&url, &terminal(&[(50, 10)]))
        .await
        .expect("terminal exec");
    session.close_stdin().expect("close stdin");
    let r = session.finish().await.expect("stty");
    assert_success(&r);
    // Clients that vanish mid-session.
    let url = exec_url(fx, id, &["sleep", "100"], false, false).await;
    let session = RemoteCommand::start_ws(&url, &ExecOptions::default())
        .await
        .expect("sleep over WebSocket");
    session.abort();
    let url = exec_url(fx, id, &["sleep", "100"], false, false).await;
    let session = RemoteCommand::start_spdy(&url, &ExecOptions::default())
        .await
        .expect("sleep over SPDY");
    session.abort();
    let url = port_forward_url(fx, pod_id, &[]).await;
    let pf = PortForwarder::connect(&url).await.expect("port-forward");
    let mut conn = pf.open(8080).await.expect("open");
    let (reply, _) = conn
        .exchange(GET_INDEX, false, 20 * SECOND)
        .await
        .expect("GET");
    assert!(text(&reply).contains("port-a"));
    let mut conn = pf.open(9).await.expect("open 9");
    let (_, error) = conn.exchange(b"", true, 20 * SECOND).await.expect("port 9");
    assert!(!error.is_empty());
    pf.close().await;
    let url = port_forward_url(fx, pod_id, &[]).await;
    let pf = PortForwarder::connect_ws(&url).await.expect("tunnel");
    let mut conn = pf.open(8081).await.expect("open");
    let (reply, _) = conn
        .exchange(GET_INDEX, false, 20 * SECOND)
        .await
        .expect("GET");
    assert!(text(&reply).contains("port-b"));
    pf.abort();
    let url = port_forward_url(fx, pod_id, &[8080]).await;
    ws_port_forward_legacy(&url, Some("v4.channel.k8s.io"), &[GET_INDEX], 20 * SECOND)
        .await
        .expect("legacy port-forward");
    let url = exec_url(fx, id, &["true"], false, false).await;
    expect_refused(
        exec_spdy(&url, &protocol("v9.channel.k8s.io")).await,
        403,
        "v9",
    );
    expect_refused(
        exec_spdy(&with_token(&url, "zzzzzzzz"), &ExecOptions::default()).await,
        404,
        "unknown token",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crid_holds_no_more_after_rounds_of_sessions() {
    let mut fx = PodFixture::start("").await;
    let _log = CridLogOnPanic::new(&fx);
    let (pod_id, _servers) = pod_with_servers(&mut fx, "rounds").await;
    let pod = fx.pod_config("rounds");
    let mut sleeper = fx.container_config("sleeper", &["sleep", "100000"]);
    sleeper.stdin = true;
    let id = fx.start_container(&pod_id, &pod, sleeper).await;
    mixed_round(&mut fx, &pod_id, &id).await;
    // Let the warm-up's aborted `sleep 100` be reaped before the baseline.
    wait_process(&mut fx, &id, "sleep 100", false).await;
    let probe = LeakProbe::start(&fx);
    for _ in 0..3 {
        mixed_round(&mut fx, &pod_id, &id).await;
    }
    wait_process(&mut fx, &id, "sleep 100", false).await;
    probe
        .check(&fx, "3 rounds of every kind of session", 16)
        .await;
    fx.finish().await;
}
