//! Exec, attach and port-forward through crid's streaming server, driven by the real crictl
//! (cri-tools v1.32.0) over SPDY and WebSocket, the way kubelet and operators use them.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crid_proto::cri;
use crid_tests::harness::pods::PodFixture;

/// crictl against the fixture's crid, with `stdin` fed to it.
fn crictl(fx: &PodFixture, args: &[&str], stdin: &[u8]) -> Output {
    crictl_typed_late(fx, args, stdin, Duration::ZERO)
}

/// Runs crictl with `stdin` written only after `delay`, as a person types into a session
/// that has already started.
fn crictl_typed_late(fx: &PodFixture, args: &[&str], stdin: &[u8], delay: Duration) -> Output {
    let socket = format!("unix://{}", fx.crid.socket.display());
    let config = fx.work.path().join("crictl.yaml");
    std::fs::write(
        &config,
        format!("runtime-endpoint: {socket}\nimage-endpoint: {socket}\ntimeout: 30\n"),
    )
    .expect("write crictl.yaml");
    let mut child = Command::new(crid_tests::harness::require::crictl())
        .arg("-c")
        .arg(&config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run crictl");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        std::thread::sleep(delay);
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("crictl output");
    let _ = feeder.join();
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "({})\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A pod with one long-running container; returns (pod id, container id).
async fn pod_with_sleeper(fx: &mut PodFixture, name: &str) -> (String, String) {
    let pod = fx.pod_config(name);
    let pod_id = fx.run_pod(pod.clone()).await;
    let mut config = fx.container_config("sleeper", &["sleep", "100000"]);
    config.stdin = true;
    let id = fx.start_container(&pod_id, &pod, config).await;
    (pod_id, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_over_spdy_and_websocket() {
    let mut fx = PodFixture::start("").await;
    let (_pod_id, id) = pod_with_sleeper(&mut fx, "exec").await;
    for transport in ["spdy", "websocket"] {
        // Output and success.
        let out = crictl(
            &fx,
            &["exec", "-r", transport, &id, "echo", "-n", "hello"],
            b"",
        );
        assert!(out.status.success(), "{transport}: {}", show(&out));
        assert_eq!(text(&out.stdout), "hello", "{transport}: {}", show(&out));
        // stderr is its own stream.
        let out = crictl(
            &fx,
            &["exec", "-r", transport, &id, "sh", "-c", "echo oops >&2"],
            b"",
        );
        assert!(out.status.success(), "{transport}: {}", show(&out));
        assert!(
            text(&out.stderr).contains("oops"),
            "{transport}: {}",
            show(&out)
        );
        // A non-zero exit code reaches the client.
        let out = crictl(
            &fx,
            &["exec", "-r", transport, &id, "sh", "-c", "exit 3"],
            b"",
        );
        assert!(!out.status.success(), "{transport}: {}", show(&out));
        assert!(
            text(&out.stderr).contains("exit code 3"),
            "{transport}: {}",
            show(&out)
        );
        // stdin piped in, closed at its end (cat must see EOF and exit).
        let input = b"line one\nline two\n".repeat(1000);
        let out = crictl(&fx, &["exec", "-i", "-r", transport, &id, "cat"], &input);
        assert!(out.status.success(), "{transport}: {}", show(&out));
        assert_eq!(
            out.stdout.len(),
            input.len(),
            "{transport}: {}",
            text(&out.stderr)
        );
        // stdin that comes after the session started (a person typing): the server keeps its
        // side of the stdin stream open until the end, or the client takes its close for the
        // end of the session and drops what is typed.
        let out = crictl_typed_late(
            &fx,
            &["exec", "-i", "-r", transport, &id, "cat"],
            b"typed later\n",
            Duration::from_secs(1),
        );
        assert!(out.status.success(), "{transport}: {}", show(&out));
        assert_eq!(
            text(&out.stdout),
            "typed later\n",
            "{transport}: {}",
            show(&out)
        );
        // A large output arrives whole (past any 64 KiB window).
        let out = crictl(
            &fx,
            &[
                "exec",
                "-r",
                transport,
                &id,
                "sh",
                "-c",
                "head -c 3000000 /dev/zero",
            ],
            b"",
        );
        assert!(out.status.success(), "{transport}: {}", show(&out));
        assert_eq!(
            out.stdout.len(),
            3_000_000,
            "{transport}: {}",
            text(&out.stderr)
        );
    }
    // A command that does not exist fails with the runtime's message, not a hang.
    let out = crictl(&fx, &["exec", &id, "/no/such/binary"], b"");
    assert!(!out.status.success(), "{}", show(&out));
    fx.finish().await;
}

/// crictl exec -it needs a terminal on its own stdin: `script` gives it one.
#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_with_a_terminal() {
    let script = crid_tests::harness::require::tool("script");
    let mut fx = PodFixture::start("").await;
    let (_pod_id, id) = pod_with_sleeper(&mut fx, "tty").await;
    let socket = format!("unix://{}", fx.crid.socket.display());
    let command = format!(
        "{} -r {socket} -i {socket} exec -it {id} sh -c 'stty size; tty; exit 5'",
        crid_tests::harness::require::crictl().display()
    );
    let out = Command::new(script)
        .args(["-qec", &command, "/dev/null"])
        .env("COLUMNS", "100")
        .env("LINES", "30")
        .stdin(Stdio::piped())
        .output()
        .expect("script");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("/dev/pts/"), "no terminal: {}", show(&out));
    assert_eq!(
        out.status.code(),
        Some(1),
        "crictl reports the exit: {}",
        show(&out)
    );
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_attach_sees_output_and_sends_input() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("attach");
    let pod_id = fx.run_pod(pod.clone()).await;
    for transport in ["spdy", "websocket"] {
        // Echoes its stdin, line by line, then exits when stdin ends.
        let mut config = fx.container_config(
            &format!("echo-{transport}"),
            &["sh", "-c", "while read l; do echo got:$l; done; echo bye"],
        );
        config.stdin = true;
        config.stdin_once = true;
        let id = fx.start_container(&pod_id, &pod, config).await;
        let out = crictl(
            &fx,
            &["attach", "-i", "-r", transport, &id],
            b"first\nsecond\n",
        );
        assert!(out.status.success(), "{transport}: {}", show(&out));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("got:first") && stdout.contains("got:second"),
            "{transport}: {}",
            show(&out)
        );
        // stdin-once: the client's end of input closed the container's stdin.
        let status = fx.wait_exited(&id, Duration::from_secs(20)).await;
        assert_eq!(status.exit_code, 0, "{transport}");
    }
    // A container without stdin refuses an interactive attach.
    let sleeper = fx
        .start_container(
            &pod_id,
            &pod,
            fx.container_config("nostdin", &["sleep", "1000"]),
        )
        .await;
    let err = fx
        .runtime
        .attach(cri::AttachRequest {
            container_id: sleeper,
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("attach with stdin to a container without stdin");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_port_forward_reaches_the_pod() {
    let mut fx = PodFixture::start("").await;
    let pod = fx.pod_config("pf");
    let pod_id = fx.run_pod(pod.clone()).await;
    // A server on the pod's loopback only: reachable through port-forward, not from the host.
    let config = fx.container_config(
        "server",
        &["sh", "-c", "mkdir -p /www && echo It works! > /www/index.html && httpd -f -p 127.0.0.1:8080 -h /www"],
    );
    fx.start_container(&pod_id, &pod, config).await;
    for (transport, local) in [("spdy", 18431u16), ("websocket", 18432)] {
        let socket = format!("unix://{}", fx.crid.socket.display());
        let mut forwarder = Command::new(crid_tests::harness::require::crictl())
            .args([
                "-r",
                &socket,
                "-i",
                &socket,
                "port-forward",
                "-r",
                transport,
                &pod_id,
            ])
            .arg(format!("{local}:8080"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("crictl port-forward");
        let mut body = String::new();
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", local)) {
                let _ = tcp.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
                body.clear();
                let _ = tcp.read_to_string(&mut body);
                if body.contains("It works!") {
                    break;
                }
            }
        }
        if !body.contains("It works!") {
            let _ = forwarder.kill();
            let out = forwarder.wait_with_output().expect("port-forward output");
            panic!(
                "{transport}: nothing through the forward: {body}\n{}",
                show(&out)
            );
        }
        // Several connections over one session.
        for _ in 0..3 {
            let mut tcp = std::net::TcpStream::connect(("127.0.0.1", local)).expect("connect");
            tcp.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .expect("write");
            let mut again = String::new();
            tcp.read_to_string(&mut again).expect("read");
            assert!(again.contains("It works!"), "{transport}: {again}");
        }
        let _ = forwarder.kill();
        let out = forwarder.wait_with_output().expect("port-forward output");
        assert!(
            body.contains("It works!"),
            "{transport}: {body}\n{}",
            show(&out)
        );
    }
    fx.finish().await;
}

/// With a certificate configured, URLs are https and crictl (which skips verification
/// without its TLS flags, as kubelet's own hop may not) execs through them.
#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_over_tls() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    let made = Command::new(crid_tests::harness::require::tool("openssl"))
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "openssl: {}", show(&made));
    let dropin = format!(
        "[streaming]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut fx = PodFixture::start(&dropin).await;
    let (_pod_id, id) = pod_with_sleeper(&mut fx, "tls").await;
    let url = fx
        .runtime
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let out = crictl(&fx, &["exec", &id, "echo", "-n", "secure"], b"");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out.stdout), "secure");
    fx.finish().await;
}
