//! crid driven only through the real crictl (cri-tools v1.32.0), as CRI-O's integration suite
//! drives its daemon: every crictl subcommand that needs no streaming server, with its filters
//! and output formats, against a crid with a private CNI network and the harness registry;
//! of the streaming ones (`streaming.rs` tests exec, attach and port-forward themselves) only
//! that a client going away mid-session leaves crid serving.
//! The fixture is the one of `pods.rs` (its tonic client is used only by the final leak check).
//!
//! crictl comes from `$CRICTL`, else `<repository top>/../shared/cri-tools/crictl`; a missing
//! binary fails every test naming where it was looked for. Each test writes its own crictl
//! configuration file, so nothing is read from or written to the host's `/etc/crictl.yaml`.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crid_tests::harness::image::build_oci_busybox;
use crid_tests::harness::pods::PodFixture;
use crid_tests::harness::wait_for;

/// How long one crictl call may take before the test calls it hung.
const CALL_LIMIT: Duration = Duration::from_secs(120);

/// What one crictl call did, printed whole in failure messages.
struct Run {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` ({})\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// crictl pointed at one fixture's crid through its own configuration file.
struct Crictl {
    binary: PathBuf,
    config: PathBuf,
    socket: String,
    /// Where the outputs of calls go (files, so a large output never blocks the child).
    dir: PathBuf,
    crid_stderr: PathBuf,
}

/// A crictl left running (`events`, `logs -f`); killed on drop.
struct Background {
    child: Option<Child>,
    command: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Crictl {
    /// Writes a crictl configuration naming the fixture's socket (crictl refuses to run
    /// without a configuration file) and returns a client using it.
    fn new(fx: &PodFixture) -> Self {
        let binary = crid_tests::harness::require::crictl();
        let dir = fx.work.path().join("crictl");
        std::fs::create_dir_all(&dir).expect("mkdir crictl dir");
        let socket = format!("unix://{}", fx.crid.socket.display());
        let config = dir.join("crictl.yaml");
        std::fs::write(
            &config,
            format!("runtime-endpoint: {socket}\nimage-endpoint: {socket}\ntimeout: 30\n"),
        )
        .expect("write crictl.yaml");
        Crictl {
            binary,
            config,
            socket,
            dir,
            crid_stderr: fx.crid.stderr_path.clone(),
        }
    }

    /// crictl with the global flags before `args`, and the command line for messages. The
    /// endpoints are given as flags too (as CRI-O's suite does), and `--timeout` is raised
    /// from crictl's 2 s, which also bounds each call: a create on a loaded host takes longer.
    fn command(&self, args: &[&str]) -> (Command, String) {
        let mut cmd = Command::new(&self.binary);
        let mut full = vec![
            "-c".to_owned(),
            self.config.display().to_string(),
            "-r".to_owned(),
            self.socket.clone(),
            "-i".to_owned(),
            self.socket.clone(),
            "--timeout".to_owned(),
            "30s".to_owned(),
        ];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        cmd.args(&full).stdin(Stdio::null());
        // Without the `-c` file, which only repeats the endpoints.
        (cmd, format!("crictl {}", full[2..].join(" ")))
    }

    /// Output files for one call or background process.
    fn output_files(&self) -> (PathBuf, PathBuf) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        (
            self.dir.join(format!("{n}.stdout")),
            self.dir.join(format!("{n}.stderr")),
        )
    }

    /// Runs crictl with `args`; panics if it takes longer than [`CALL_LIMIT`].
    fn run(&self, args: &[&str]) -> Run {
        let mut background = self.spawn(args);
        background.wait(CALL_LIMIT)
    }

    /// Runs crictl, expects success, returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(
            run.status.success(),
            "{run}\n--- crid's log (tail)\n{}",
            self.crid_log_tail()
        );
        run.stdout
    }

    /// Runs crictl and expects it to fail.
    fn fails(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert!(!run.status.success(), "expected a failure: {run}");
        run
    }

    /// Runs crictl with `-o json` output and parses it.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// Runs a `-q` listing; returns its ids, sorted.
    fn ids(&self, args: &[&str]) -> Vec<String> {
        let mut ids: Vec<String> = self
            .ok(args)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids
    }

    /// Starts crictl and leaves it running.
    fn spawn(&self, args: &[&str]) -> Background {
        let (mut cmd, command) = self.command(args);
        let (stdout, stderr) = self.output_files();
        let child = cmd
            .stdout(std::fs::File::create(&stdout).expect("create stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {command}: {e}"));
        Background {
            child: Some(child),
            command,
            stdout,
            stderr,
        }
    }

    /// The end of crid's log (or its panic), for the message of a call that should have
    /// worked: without the HTTP/2 libraries' debug lines and backtrace locations.
    fn crid_log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.crid_stderr).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                !["h2::", "hyper", "loona_hpack", "tonic::transport"]
                    .iter()
                    .any(|noise| l.contains(noise))
                    && !l.trim_start().starts_with("at ")
            })
            .collect();
        // A panic's message and its first frames say more than the end of its backtrace.
        let start = lines
            .iter()
            .position(|l| l.contains("panicked at"))
            .unwrap_or(lines.len().saturating_sub(40));
        lines[start..lines.len().min(start + 40)].join("\n")
    }

    /// Writes `value` as `<name>` in the crictl directory; returns its path.
    fn write_json(&self, name: &str, value: &Value) -> String {
        let path = self.dir.join(name);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(value).expect("encode json"),
        )
        .expect("write json file");
        path.display().to_string()
    }
}

impl Background {
    /// What the process has printed so far.
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Whether the process has not exited yet.
    fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("child");
        child.try_wait().expect("try_wait").is_none()
    }

    /// The whole record of the process, once it has exited with `status`.
    fn finish(&mut self, status: ExitStatus) -> Run {
        self.child = None;
        Run {
            command: self.command.clone(),
            status,
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }

    /// Waits for the process to exit on its own; panics (after killing it) past `limit`.
    fn wait(&mut self, limit: Duration) -> Run {
        let child = self.child.as_mut().expect("child");
        match wait_for(limit, || child.try_wait().expect("try_wait")) {
            Some(status) => self.finish(status),
            None => {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                let run = self.finish(status);
                panic!("still running after {limit:?}, killed: {run}")
            }
        }
    }

    /// Kills the process at once, as a vanished client or a dropped connection would end it.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("child");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops a process that would run forever (SIGTERM, as an operator's Ctrl-C would).
    fn stop(&mut self) -> Run {
        let child = self.child.as_mut().expect("child");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
            let _ = child.kill();
        }
        let status = child.wait().expect("wait");
        self.finish(status)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pod configuration as crictl reads it (the CRI's field names), like the fixture's: log
/// directory in the work dir, the fixture's cgroup parent (so the leak check sees it).
fn pod_json(fx: &PodFixture, name: &str, labels: Value) -> Value {
    json!({
        "metadata": { "name": name, "namespace": "test", "uid": format!("uid-{name}"), "attempt": 0 },
        "hostname": name,
        "log_directory": fx.work.path().join("logs").join(name).display().to_string(),
        "labels": labels,
        "linux": { "cgroup_parent": fx.cgroup_parent },
    })
}

/// A container configuration running `command` in the test image, with the labels kubelet
/// puts on containers (crictl's POD and NAMESPACE columns and `--namespace` read them).
fn container_json(fx: &PodFixture, pod: &str, name: &str, command: &[&str]) -> Value {
    json!({
        "metadata": { "name": name, "attempt": 0 },
        "image": { "image": fx.image },
        "command": command,
        "log_path": format!("{name}/0.log"),
        "labels": {
            "container": name,
            "io.kubernetes.pod.name": pod,
            "io.kubernetes.pod.namespace": "test",
            "io.kubernetes.container.name": name,
        },
    })
}

/// A JSON string field; panics naming the pointer and showing the document without one.
fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

/// A protobuf int64 as crictl prints it (a JSON string) or a plain JSON number.
fn int_at(value: &Value, pointer: &str) -> i64 {
    match value.pointer(pointer) {
        Some(Value::String(s)) => s.parse().unwrap_or_else(|e| panic!("{pointer}: {s}: {e}")),
        Some(Value::Number(n)) => n.as_i64().expect("integer"),
        other => panic!("no integer at {pointer} ({other:?}) in {value:#}"),
    }
}

/// Polls `crictl inspect` until the container is in `state` (e.g. `CONTAINER_EXITED`).
fn wait_state(cc: &Crictl, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let inspect = cc.json(&["inspect", "-o", "json", id]);
        if str_at(&inspect, "/status/state") == state {
            return inspect;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} not {state} within 30 s: {inspect:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes every pod (and so every container) through crictl, so the fixture's leak check
/// sees what crictl's own clean-up leaves.
fn remove_everything(cc: &Crictl) {
    cc.ok(&["rmp", "-f", "-a"]);
    assert_eq!(cc.ids(&["pods", "-q"]), Vec::<String>::new());
    assert_eq!(cc.ids(&["ps", "-a", "-q"]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn version_info_config_completion_and_unimplemented_calls() {
    let fx = PodFixture::start("").await;
    let cc = Crictl::new(&fx);

    let version = cc.ok(&["version"]);
    for field in [
        "RuntimeName:  crid",
        "RuntimeApiVersion:  v1",
        "RuntimeVersion:  ",
    ] {
        assert!(
            version.contains(field),
            "version lacks {field:?}: {version}"
        );
    }

    // info: Status with the verbose configuration; -q leaves the configuration out.
    let info = cc.json(&["info", "-o", "json"]);
    let conditions = info["status"]["conditions"]
        .as_array()
        .unwrap_or_else(|| panic!("no conditions: {info:#}"));
    for kind in ["RuntimeReady", "NetworkReady"] {
        let condition = conditions
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} condition: {info:#}"));
        assert_eq!(condition["status"], true, "{kind}: {info:#}");
    }
    assert_eq!(
        str_at(&info, "/config/listen"),
        fx.crid.socket.display().to_string(),
        "info shows the effective configuration"
    );
    // The default handler and the runtime's name (what `runp -r` may ask for), and features.
    let handlers = info["runtimeHandlers"]
        .as_array()
        .unwrap_or_else(|| panic!("no runtimeHandlers: {info:#}"));
    let names: Vec<&str> = handlers
        .iter()
        .map(|h| h["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["", "runc"], "{info:#}");
    // crictl 1.32 does not print the runtime's features; its debug log shows the response.
    let debug = cc.run(&["--debug", "info"]);
    assert!(
        debug
            .stderr
            .contains("Features:&RuntimeFeatures{SupplementalGroupsPolicy:true,}"),
        "{debug}"
    );
    let quiet = cc.json(&["info", "-q"]);
    assert!(quiet.get("config").is_none(), "info -q: {quiet:#}");
    let template = cc.ok(&[
        "info",
        "-o",
        "go-template",
        "--template",
        "{{range .status.conditions}}{{.type}}={{.status}} {{end}}",
    ]);
    assert_eq!(template.trim(), "RuntimeReady=true NetworkReady=true");

    let runtime_config = cc.ok(&["runtime-config"]);
    assert!(
        runtime_config.contains("cgroup driver:") && runtime_config.contains("CGROUPFS"),
        "{runtime_config}"
    );

    // imagefsinfo: the layer store, holding the fixture's image.
    let fs = cc.json(&["imagefsinfo", "-o", "json"]);
    let store = &fs["status"]["imageFilesystems"][0];
    assert!(
        str_at(store, "/fsId/mountpoint").starts_with(&fx.crid.dir.path().display().to_string()),
        "{fs:#}"
    );
    assert!(int_at(store, "/usedBytes/value") > 1_000_000, "{fs:#}");
    assert!(int_at(store, "/inodesUsed/value") > 10, "{fs:#}");

    // config reads and writes only the file it is given.
    let config = cc.dir.join("edited.yaml");
    std::fs::copy(&cc.config, &config).expect("copy crictl.yaml");
    let config = config.display().to_string();
    let plain = |args: &[&str]| {
        let out = Command::new(&cc.binary)
            .args(["-c", &config])
            .args(args)
            .output()
            .expect("run crictl");
        assert!(
            out.status.success(),
            "crictl -c {config} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    plain(&["config", "--set", "timeout=7,pull-image-on-create=true"]);
    assert_eq!(plain(&["config", "--get", "timeout"]).trim(), "7");
    let written = std::fs::read_to_string(&config).expect("read edited config");
    assert!(
        written.contains("timeout: 7") && written.contains("pull-image-on-create: true"),
        "{written}"
    );
    let list = plain(&["config", "--list"]);
    assert!(
        list.contains(&cc.socket) && list.contains("pull-image-on-create"),
        "{list}"
    );
    // The edited configuration still reaches crid.
    assert!(plain(&["version"]).contains("RuntimeName:  crid"));

    for shell in ["bash", "zsh", "fish"] {
        let script = plain(&["completion", shell]);
        assert!(
            script.contains("crictl") && script.len() > 200,
            "completion {shell}: {script}"
        );
    }

    // RPCs crid answers UNIMPLEMENTED: crictl fails and shows crid's message.
    for (args, rpc) in [
        (
            &["update-runtime-config", "--pod-cidr", "10.88.0.0/16"][..],
            "UpdateRuntimeConfig",
        ),
        (&["metricsp"][..], "ListPodSandboxMetrics"),
    ] {
        let run = cc.fails(args);
        assert!(
            run.stderr.contains("code = Unimplemented")
                && run
                    .stderr
                    .contains(&format!("{rpc} is not implemented by crid")),
            "{run}"
        );
    }
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn images_pull_list_inspect_and_remove() {
    let fx = PodFixture::start("").await;
    let cc = Crictl::new(&fx);
    // A second image under two tags, besides the fixture's busybox.
    let layout = fx.work.path().join("other-layout");
    build_oci_busybox(&layout, "v1", &["echo", "other"]);
    fx.registry.push_layout(&layout, "v1", "test/other");
    fx.registry.push_layout(&layout, "v1", "test/other-too");
    let other = format!("{}/test/other:v1", fx.registry.addr);
    let other_too = format!("{}/test/other-too:v1", fx.registry.addr);

    let busybox = cc.json(&["inspecti", "-o", "json", &fx.image]);
    let busybox_id = str_at(&busybox, "/status/id").to_owned();
    let pulled = cc.ok(&["pull", &other]);
    assert!(
        pulled.starts_with("Image is up to date for sha256:"),
        "{pulled}"
    );
    let other_id = pulled
        .trim()
        .rsplit(' ')
        .next()
        .expect("image id")
        .to_owned();
    assert_ne!(other_id, busybox_id);
    let again = cc.ok(&["pull", &other_too]);
    assert!(again.contains(&other_id), "same image, same id: {again}");

    // inspecti by tag and by id.
    let inspect = cc.json(&["inspecti", "-o", "json", &other]);
    assert_eq!(str_at(&inspect, "/status/id"), other_id);
    let tags: Vec<&str> = inspect["status"]["repoTags"]
        .as_array()
        .expect("repoTags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tags.contains(&other.as_str()) && tags.contains(&other_too.as_str()),
        "{inspect:#}"
    );
    let digest = str_at(&inspect, "/status/repoDigests/0").to_owned();
    assert!(digest.contains("@sha256:"), "{inspect:#}");
    assert_eq!(
        str_at(&inspect, "/info/imageSpec/config/Cmd/1"),
        "other",
        "the image's own config: {inspect:#}"
    );
    let by_id = cc.json(&["inspecti", "-o", "json", &other_id]);
    assert_eq!(str_at(&by_id, "/status/id"), other_id);

    // images: table, -q, --digests, -o json, a reference filter.
    let table = cc.ok(&["images"]);
    for repo in ["test/busybox", "test/other", "test/other-too"] {
        let repo = format!("{}/{repo} ", fx.registry.addr);
        assert!(table.contains(&repo), "images lacks {repo}: {table}");
    }
    assert_eq!(
        cc.ids(&["images", "-q"]),
        {
            let mut ids = vec![busybox_id.clone(), other_id.clone()];
            ids.sort();
            ids
        },
        "one id per image"
    );
    let digests = cc.ok(&["images", "--digests"]);
    let short_digest = &digest.rsplit_once("@sha256:").expect("digest").1[..13];
    assert!(
        digests.contains("DIGEST") && digests.contains(short_digest),
        "{digests}"
    );
    let verbose = cc.ok(&["images", "-v", &other]);
    for line in [
        format!("ID: {other_id}"),
        format!("RepoTags: {other}"),
        format!("RepoDigests: {digest}"),
    ] {
        assert!(
            verbose.contains(&line),
            "images -v lacks {line:?}: {verbose}"
        );
    }
    let listed = cc.json(&["images", "-o", "json"]);
    assert_eq!(
        listed["images"].as_array().expect("images").len(),
        2,
        "{listed:#}"
    );
    let filtered = cc.ok(&["images", "-q", "--filter", "reference=.*other-too.*"]);
    assert_eq!(filtered.trim(), other_id);

    // A missing image: crid's NotFound, naming the reference.
    let missing = format!("{}/test/nothing-here:v9", fx.registry.addr);
    let run = cc.fails(&["pull", &missing]);
    assert!(
        run.stderr.contains("NotFound") && run.stderr.contains(&missing),
        "{run}"
    );

    // rmi by tag drops only that tag.
    let removed = cc.ok(&["rmi", &other_too]);
    assert!(
        removed.contains(&format!("Deleted: {other_too}")),
        "{removed}"
    );
    let inspect = cc.json(&["inspecti", "-o", "json", &other]);
    assert_eq!(inspect["status"]["repoTags"], json!([other]), "{inspect:#}");
    // rmi by a short id removes the image with every tag; pulled again for what follows.
    cc.ok(&["pull", &other_too]);
    let removed = cc.ok(&["rmi", &other_id["sha256:".len()..][..13]]);
    for tag in [&other, &other_too] {
        assert!(removed.contains(&format!("Deleted: {tag}")), "{removed}");
    }
    assert_eq!(cc.ids(&["images", "-q"]), vec![busybox_id.clone()]);
    cc.ok(&["pull", &other]);

    // An image in use is refused; --prune removes only the unused ones.
    let pod = cc.write_json("pod.json", &pod_json(&fx, "img", json!({})));
    let ctr = cc.write_json(
        "ctr.json",
        &container_json(&fx, "img", "user", &["sleep", "1000"]),
    );
    let user = cc.ok(&["run", "--no-pull", &ctr, &pod]).trim().to_owned();
    wait_state(&cc, &user, "CONTAINER_RUNNING");
    let run = cc.fails(&["rmi", &fx.image]);
    assert!(run.stderr.contains(&fx.image), "{run}");
    assert!(cc.ids(&["images", "-q"]).contains(&busybox_id));
    let pruned = cc.ok(&["rmi", "--prune"]);
    assert!(pruned.contains(&format!("Deleted: {other}")), "{pruned}");
    assert_eq!(cc.ids(&["images", "-q"]), vec![busybox_id.clone()]);

    // rmi -a once nothing uses the image; the store is then empty.
    remove_everything(&cc);
    let all = cc.ok(&["rmi", "-a"]);
    assert!(all.contains(&format!("Deleted: {}", fx.image)), "{all}");
    assert_eq!(cc.ids(&["images", "-q"]), Vec::<String>::new());
    let fs = cc.json(&["imagefsinfo", "-o", "json"]);
    assert!(
        int_at(&fs, "/status/imageFilesystems/0/usedBytes/value") < 100_000,
        "the layers went with the images: {fs:#}"
    );

    // create --with-pull pulls the missing image first.
    let pod = cc.write_json("pod-2.json", &pod_json(&fx, "img-2", json!({})));
    let pod_id = cc.ok(&["runp", &pod]).trim().to_owned();
    let ctr = cc.write_json(
        "ctr-2.json",
        &container_json(&fx, "img-2", "pulled", &["sleep", "1000"]),
    );
    let run = cc.fails(&["create", &pod_id, &ctr, &pod]);
    assert!(run.stderr.contains("NotFound"), "no image, no pull: {run}");
    let id = cc.ok(&["create", "--with-pull", &pod_id, &ctr, &pod]);
    cc.ok(&["start", id.trim()]);
    wait_state(&cc, id.trim(), "CONTAINER_RUNNING");
    assert_eq!(cc.ids(&["images", "-q"]), vec![busybox_id.clone()]);
    remove_everything(&cc);
    cc.ok(&["rmi", &fx.image]);

    // Pull by digest; the image lists its digest and the id it had.
    let busybox_digest = str_at(&busybox, "/status/repoDigests/0").to_owned();
    let pulled = cc.ok(&["pull", &busybox_digest]);
    assert!(pulled.contains(&busybox_id), "{pulled}");
    let inspect = cc.json(&["inspecti", "-o", "json", &busybox_digest]);
    assert_eq!(str_at(&inspect, "/status/id"), busybox_id);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_and_containers_lifecycle_with_filters() {
    let fx = PodFixture::start("").await;
    let cc = Crictl::new(&fx);
    let pod_a = cc.write_json(
        "pod-a.json",
        &pod_json(&fx, "lc-a", json!({"app": "lc-a", "tier": "front"})),
    );
    let pod_b = cc.write_json("pod-b.json", &pod_json(&fx, "lc-b", json!({"app": "lc-b"})));
    let pod_c = cc.write_json("pod-c.json", &pod_json(&fx, "lc-c", json!({"app": "lc-c"})));

    // runp, and a second pod with the same metadata refused by crid.
    let a = cc.ok(&["runp", &pod_a]).trim().to_owned();
    assert_eq!(a.len(), 64, "runp prints the pod id: {a}");
    let run = cc.fails(&["runp", &pod_a]);
    assert!(
        run.stderr.contains("AlreadyExists") && run.stderr.contains(&a),
        "{run}"
    );
    // A handler crid does not have is refused, naming it; the runtime's name is one.
    let run = cc.fails(&["runp", "--runtime", "kata", &pod_b]);
    assert!(
        run.stderr.contains("InvalidArgument") && run.stderr.contains("kata"),
        "{run}"
    );
    let b = cc
        .ok(&["runp", "--runtime", "runc", &pod_b])
        .trim()
        .to_owned();
    let status = cc.json(&["inspectp", "-o", "json", &b]);
    assert_eq!(str_at(&status, "/status/runtimeHandler"), "runc");

    // pods and its filters.
    let table = cc.ok(&["pods"]);
    for (id, name, handler) in [(&a, "lc-a", "(default)"), (&b, "lc-b", "runc")] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&id[..13]))
            .unwrap_or_else(|| panic!("no row for {id}: {table}"));
        for column in ["Ready", name, "test", handler] {
            assert!(row.contains(column), "pods row lacks {column}: {row}");
        }
    }
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(cc.ids(&["pods", "-q"]), both);
    assert_eq!(cc.ids(&["pods", "-q", "--name", "lc-a"]), vec![a.clone()]);
    assert_eq!(
        cc.ids(&["pods", "-q", "--label", "app=lc-b"]),
        vec![b.clone()]
    );
    assert_eq!(
        cc.ids(&["pods", "-q", "--label", "app=lc-a", "--label", "tier=front"]),
        vec![a.clone()]
    );
    assert_eq!(cc.ids(&["pods", "-q", "--state", "ready"]), both);
    assert_eq!(
        cc.ids(&["pods", "-q", "--state", "notready"]),
        Vec::<String>::new()
    );
    assert_eq!(cc.ids(&["pods", "-q", "--namespace", "^test$"]), both);
    assert_eq!(cc.ids(&["pods", "-q", "--id", &b[..13]]), vec![b.clone()]);
    assert_eq!(cc.ids(&["pods", "-q", "--latest"]), vec![b.clone()]);
    let listed = cc.json(&["pods", "-o", "json", "--name", "lc-a"]);
    assert_eq!(str_at(&listed, "/items/0/metadata/namespace"), "test");
    assert_eq!(str_at(&listed, "/items/0/state"), "SANDBOX_READY");

    // inspectp: the pod's IP from the fixture's subnet.
    let status = cc.json(&["inspectp", "-o", "json", &a]);
    assert_eq!(str_at(&status, "/status/state"), "SANDBOX_READY");
    assert!(
        str_at(&status, "/status/network/ip").starts_with(&format!("{}.", fx.subnet)),
        "{status:#}"
    );
    assert_eq!(str_at(&status, "/status/metadata/uid"), "uid-lc-a");
    let by_name = cc.json(&["inspectp", "-o", "json", "--name", "^lc-a$"]);
    assert_eq!(str_at(&by_name, "/status/id"), a);

    // create + start, with ps seeing the created state first.
    let long_a = cc.write_json(
        "long-a.json",
        &container_json(&fx, "lc-a", "long", &["sleep", "1000"]),
    );
    let c1 = cc.ok(&["create", &a, &long_a, &pod_a]).trim().to_owned();
    assert_eq!(
        cc.ids(&["ps", "-q", "--state", "created"]),
        vec![c1.clone()]
    );
    assert_eq!(
        cc.ids(&["ps", "-q"]),
        Vec::<String>::new(),
        "ps lists running ones"
    );
    assert_eq!(cc.ok(&["start", &c1]).trim(), c1);
    wait_state(&cc, &c1, "CONTAINER_RUNNING");

    // run: a pod of its own, its container started.
    let long_c = cc.write_json(
        "long-c.json",
        &container_json(&fx, "lc-c", "other", &["sleep", "1000"]),
    );
    let c2 = cc.ok(&["run", &long_c, &pod_c]).trim().to_owned();
    let inspect = wait_state(&cc, &c2, "CONTAINER_RUNNING");
    let c_pod = str_at(&inspect, "/info/sandboxID").to_owned();
    assert_eq!(
        cc.ids(&["pods", "-q", "--name", "lc-c"]),
        vec![c_pod.clone()]
    );

    // A container that exits on its own with code 3.
    let failing = cc.write_json(
        "failing.json",
        &container_json(&fx, "lc-a", "failing", &["sh", "-c", "exit 3"]),
    );
    let c3 = cc.ok(&["create", &a, &failing, &pod_a]).trim().to_owned();
    cc.ok(&["start", &c3]);
    let exited = wait_state(&cc, &c3, "CONTAINER_EXITED");
    assert_eq!(int_at(&exited, "/status/exitCode"), 3, "{exited:#}");
    assert_eq!(str_at(&exited, "/status/reason"), "Error");
    assert!(
        !str_at(&exited, "/status/finishedAt").starts_with("0001"),
        "{exited:#}"
    );

    // ps and its filters.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(cc.ids(&["ps", "-q"]), sorted(vec![c1.clone(), c2.clone()]));
    assert_eq!(
        cc.ids(&["ps", "-a", "-q"]),
        sorted(vec![c1.clone(), c2.clone(), c3.clone()])
    );
    assert_eq!(
        cc.ids(&["ps", "-a", "-q", "--pod", &a]),
        sorted(vec![c1.clone(), c3.clone()])
    );
    assert_eq!(cc.ids(&["ps", "-q", "--pod", &a]), vec![c1.clone()]);
    assert_eq!(
        cc.ids(&["ps", "-a", "-q", "--name", "^fail"]),
        vec![c3.clone()]
    );
    assert_eq!(cc.ids(&["ps", "-q", "--state", "exited"]), vec![c3.clone()]);
    assert_eq!(
        cc.ids(&["ps", "-q", "--state", "running"]),
        sorted(vec![c1.clone(), c2.clone()])
    );
    assert_eq!(
        cc.ids(&["ps", "-a", "-q", "--label", "container=other"]),
        vec![c2.clone()]
    );
    assert_eq!(
        cc.ids(&["ps", "-a", "-q", "--label", "io.kubernetes.pod.name=lc-a"]),
        sorted(vec![c1.clone(), c3.clone()])
    );
    assert_eq!(
        cc.ids(&["ps", "-a", "-q", "--namespace", "^test$"]),
        sorted(vec![c1.clone(), c2.clone(), c3.clone()])
    );
    assert_eq!(cc.ids(&["ps", "-q", "--id", &c2[..13]]), vec![c2.clone()]);
    assert_eq!(cc.ids(&["ps", "-q", "--latest"]), vec![c3.clone()]);
    assert_eq!(
        cc.ids(&["ps", "-q", "--image", &fx.image]),
        sorted(vec![c1.clone(), c2.clone()])
    );
    let table = cc.ok(&["ps", "-a"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&c1[..13]))
        .unwrap_or_else(|| panic!("no row for {c1}: {table}"));
    for column in ["Running", "long", &a[..13], "lc-a", "test"] {
        assert!(row.contains(column), "ps row lacks {column}: {row}");
    }
    let verbose = cc.ok(&["ps", "-v", "--id", &c1]);
    for line in [
        format!("ID: {c1}"),
        format!("PodID: {a}"),
        "Namespace: test".to_owned(),
        "State: Running".to_owned(),
    ] {
        assert!(verbose.contains(&line), "ps -v lacks {line:?}: {verbose}");
    }
    let verbose = cc.ok(&["pods", "-v", "--id", &a]);
    for line in [
        format!("ID: {a}"),
        "Name: lc-a".to_owned(),
        "UID: uid-lc-a".to_owned(),
        "Status: Ready".to_owned(),
    ] {
        assert!(verbose.contains(&line), "pods -v lacks {line:?}: {verbose}");
    }
    let yaml = cc.ok(&["ps", "-o", "yaml", "--id", &c1]);
    assert!(yaml.contains(&format!("id: {c1}")), "{yaml}");
    let listed = cc.json(&["ps", "-o", "json", "--name", "^long$"]);
    assert_eq!(str_at(&listed, "/containers/0/id"), c1);
    assert_eq!(str_at(&listed, "/containers/0/podSandboxId"), a);
    assert_eq!(str_at(&listed, "/containers/0/state"), "CONTAINER_RUNNING");

    // inspect: the running container's pid, log path and labels.
    let inspect = cc.json(&["inspect", "-o", "json", &c1]);
    assert!(int_at(&inspect, "/info/pid") > 1, "{inspect:#}");
    assert_eq!(
        str_at(&inspect, "/status/logPath"),
        fx.work
            .path()
            .join("logs/lc-a/long/0.log")
            .display()
            .to_string()
    );
    assert_eq!(str_at(&inspect, "/status/labels/container"), "long");
    let state = cc.ok(&[
        "inspect",
        "-o",
        "go-template",
        "--template",
        "{{.status.state}} {{.status.metadata.name}}",
        &c3,
    ]);
    assert_eq!(state.trim(), "CONTAINER_EXITED failing");
    let by_name = cc.json(&["inspect", "-o", "json", "--name", "^long$"]);
    assert_eq!(str_at(&by_name, "/status/id"), c1);
    let table = cc.ok(&["inspect", "-o", "table", &c3]);
    assert!(table.contains("Exit Code: 3"), "{table}");

    // stop: SIGTERM within the timeout (143), and again (idempotent).
    assert_eq!(cc.ok(&["stop", "-t", "10", &c1]).trim(), c1);
    let stopped = wait_state(&cc, &c1, "CONTAINER_EXITED");
    assert_eq!(int_at(&stopped, "/status/exitCode"), 143, "{stopped:#}");
    cc.ok(&["stop", &c1]);

    // rm: crictl refuses a running container unless -f.
    let run = cc.fails(&["rm", &c2]);
    assert!(run.stderr.contains("is running"), "{run}");
    // crictl prints the id once for the stop and once for the removal.
    let removed = cc.ok(&["rm", "-f", &c2]);
    assert_eq!(removed.lines().collect::<Vec<_>>(), [c2.as_str(); 2]);
    let run = cc.fails(&["inspect", &c2]);
    assert!(run.stderr.contains("NotFound"), "{run}");

    // stopp: the pod turns NotReady, without an IP.
    assert!(cc
        .ok(&["stopp", &c_pod])
        .contains(&format!("Stopped sandbox {c_pod}")));
    assert_eq!(
        cc.ids(&["pods", "-q", "--state", "notready"]),
        vec![c_pod.clone()]
    );
    let status = cc.json(&["inspectp", "-o", "json", &c_pod]);
    assert_eq!(str_at(&status, "/status/state"), "SANDBOX_NOTREADY");
    assert!(
        status["status"]["network"]["ip"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{status:#}"
    );
    cc.ok(&["stopp", &c_pod]);

    // rmp: refused by crictl while ready; a stopped pod goes without -f.
    let run = cc.fails(&["rmp", &b]);
    assert!(run.stderr.contains("is running"), "{run}");
    assert!(cc
        .ok(&["rmp", &c_pod])
        .contains(&format!("Removed sandbox {c_pod}")));
    let run = cc.fails(&["inspectp", &c_pod]);
    assert!(run.stderr.contains("NotFound"), "{run}");

    // rm -k keeps the log file; rm -a removes the remaining (exited) container and its log;
    // rmp -f -a the remaining pods.
    cc.ok(&["rm", "-k", &c3]);
    let kept = fx.work.path().join("logs/lc-a/failing/0.log");
    assert!(kept.exists(), "rm -k keeps {}", kept.display());
    cc.ok(&["rm", "-a"]);
    assert_eq!(cc.ids(&["ps", "-a", "-q"]), Vec::<String>::new());
    let log = fx.work.path().join("logs/lc-a/long/0.log");
    assert!(
        !log.exists(),
        "crictl rm removes the log file: {}",
        log.display()
    );
    assert_eq!(cc.ids(&["pods", "-q"]), both);
    remove_everything(&cc);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_plain_tail_since_timestamps_limit_reopen_and_follow() {
    let fx = PodFixture::start("").await;
    let cc = Crictl::new(&fx);
    let pod = cc.write_json("pod.json", &pod_json(&fx, "logs", json!({})));
    let pod_id = cc.ok(&["runp", &pod]).trim().to_owned();
    let script = "for i in 1 2 3 4 5; do echo early $i; done; echo oops >&2; sleep 2; \
                  for i in 1 2 3; do echo late $i; done; exec sleep 1000";
    let writer = cc.write_json(
        "writer.json",
        &container_json(&fx, "logs", "writer", &["sh", "-c", script]),
    );
    let id = cc.ok(&["create", &pod_id, &writer, &pod]).trim().to_owned();
    cc.ok(&["start", &id]);
    let all = wait_for(Duration::from_secs(30), || {
        let run = cc.run(&["logs", &id]);
        run.stdout.contains("late 3").then_some(run)
    })
    .unwrap_or_else(|| {
        panic!(
            "no `late 3` in the log within 30 s: {}",
            cc.run(&["logs", &id])
        )
    });
    assert_eq!(
        all.stdout,
        "early 1\nearly 2\nearly 3\nearly 4\nearly 5\nlate 1\nlate 2\nlate 3\n"
    );
    assert_eq!(all.stderr, "oops\n", "stderr lines go to crictl's stderr");

    assert_eq!(cc.ok(&["logs", "--tail", "2", &id]), "late 2\nlate 3\n");
    assert_eq!(cc.ok(&["logs", "--limit-bytes", "8", &id]), "early 1\n");

    // --timestamps: each line carries the time crimon read it (RFC 3339, nanoseconds).
    let stamped = cc.ok(&["logs", "--timestamps", &id]);
    let lines: Vec<(&str, &str)> = stamped
        .lines()
        .map(|l| {
            l.split_once(' ')
                .unwrap_or_else(|| panic!("no timestamp: {l}"))
        })
        .collect();
    assert_eq!(lines.len(), 8, "{stamped}");
    for (stamp, _) in &lines {
        assert!(
            stamp.len() == 30 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "timestamp {stamp:?} in {stamped}"
        );
    }
    // --since the first late line: the early ones (2 s before) are left out.
    let (late_stamp, text) = lines[5];
    assert_eq!(text, "late 1");
    assert_eq!(
        cc.ok(&["logs", "--since", late_stamp, &id]),
        "late 1\nlate 2\nlate 3\n"
    );
    assert_eq!(
        cc.ok(&["logs", "--since", "1h", "--tail", "1", &id]),
        "late 3\n"
    );

    // --reopen (ReopenContainerLog) after the file was moved away, as kubelet rotates it.
    let inspect = cc.json(&["inspect", "-o", "json", &id]);
    let log_path = PathBuf::from(str_at(&inspect, "/status/logPath"));
    std::fs::rename(&log_path, log_path.with_extension("log.1")).expect("rotate the log");
    cc.ok(&["logs", "--reopen", &id]);
    assert!(
        log_path.exists(),
        "crid reopened {} on crictl logs --reopen",
        log_path.display()
    );

    // -f follows a container that keeps writing, and returns once it has exited.
    let ticker_script = "for i in $(seq 1 20); do echo tick $i; sleep 0.3; done; echo done";
    let ticker = cc.write_json(
        "ticker.json",
        &container_json(&fx, "logs", "ticker", &["sh", "-c", ticker_script]),
    );
    let ticker_id = cc.ok(&["create", &pod_id, &ticker, &pod]).trim().to_owned();
    cc.ok(&["start", &ticker_id]);
    let mut follow = cc.spawn(&["logs", "-f", &ticker_id]);
    let partial = wait_for(Duration::from_secs(20), || {
        let out = follow.stdout();
        out.contains("tick 2").then_some(out)
    })
    .expect("logs -f shows lines while the container runs");
    assert!(!partial.contains("done"), "{partial}");
    assert!(follow.is_running(), "logs -f still follows: {partial}");
    let followed = follow.wait(Duration::from_secs(30));
    assert!(followed.status.success(), "{followed}");
    let expected: String = (1..=20)
        .map(|i| format!("tick {i}\n"))
        .chain(["done\n".to_owned()])
        .collect();
    assert_eq!(followed.stdout, expected, "{followed}");
    wait_state(&cc, &ticker_id, "CONTAINER_EXITED");
    // -f on an exited container prints what there is and returns.
    assert_eq!(cc.ok(&["logs", "-f", "--tail", "1", &ticker_id]), "done\n");

    // Pieces of a line (crimon's `P` records: a write without newline, a line longer than
    // its 128 KiB read, an unterminated last line) come out joined, as kubelet reads them.
    let pieces_script = "printf abc; sleep 0.3; printf 'def\\n'; \
                         head -c 300000 /dev/zero | tr '\\000' x; echo; printf tail";
    let pieces = cc.write_json(
        "pieces.json",
        &container_json(&fx, "logs", "pieces", &["sh", "-c", pieces_script]),
    );
    let pieces_id = cc.ok(&["create", &pod_id, &pieces, &pod]).trim().to_owned();
    cc.ok(&["start", &pieces_id]);
    wait_state(&cc, &pieces_id, "CONTAINER_EXITED");
    let joined = cc.ok(&["logs", &pieces_id]);
    let expected = format!("abcdef\n{}\ntail", "x".repeat(300_000));
    assert!(
        joined == expected,
        "crictl logs of split lines: {} bytes, starting {:?}, ending {:?}",
        joined.len(),
        &joined[..joined.len().min(20)],
        &joined[joined.len().saturating_sub(20)..]
    );

    // -p: the log of the previous attempt, as kubelet names it (`<name>/<attempt>.log`).
    let mut first = container_json(&fx, "logs", "restarting", &["echo", "attempt zero"]);
    first["log_path"] = json!("restarting/0.log");
    let mut second = container_json(&fx, "logs", "restarting", &["echo", "attempt one"]);
    second["metadata"]["attempt"] = json!(1);
    second["log_path"] = json!("restarting/1.log");
    let mut attempts = Vec::new();
    for (file, config) in [("attempt-0.json", &first), ("attempt-1.json", &second)] {
        let config = cc.write_json(file, config);
        let id = cc.ok(&["create", &pod_id, &config, &pod]).trim().to_owned();
        cc.ok(&["start", &id]);
        wait_state(&cc, &id, "CONTAINER_EXITED");
        attempts.push(id);
    }
    assert_eq!(cc.ok(&["logs", &attempts[1]]), "attempt one\n");
    assert_eq!(cc.ok(&["logs", "-p", &attempts[1]]), "attempt zero\n");
    let run = cc.fails(&["logs", "-p", &attempts[0]]);
    assert!(run.stderr.contains("previous"), "{run}");

    remove_everything(&cc);
    fx.finish().await;
}

/// Starts `crictl events` with `args` and returns once it receives events: crictl prints
/// nothing when it has subscribed, so probe pods are made (and removed) until one shows up.
fn subscribe_events(cc: &Crictl, fx: &PodFixture, args: &[&str]) -> Background {
    let mut events_args = vec!["events"];
    events_args.extend_from_slice(args);
    let events = cc.spawn(&events_args);
    for attempt in 0..20 {
        let name = format!("probe-{attempt}");
        let probe = cc.write_json(&format!("{name}.json"), &pod_json(fx, &name, json!({})));
        let id = cc.ok(&["runp", &probe]).trim().to_owned();
        let seen = wait_for(Duration::from_secs(1), || {
            events.stdout().contains(&id).then_some(())
        });
        cc.ok(&["rmp", "-f", &id]);
        if seen.is_some() {
            return events;
        }
    }
    panic!(
        "`crictl {}` showed no event for 20 probe pods",
        events_args.join(" ")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_stats_events_and_checkpoint() {
    let fx = PodFixture::start("").await;
    let cc = Crictl::new(&fx);
    let mut events = subscribe_events(&cc, &fx, &[]);
    let mut templated = subscribe_events(
        &cc,
        &fx,
        &[
            "-o",
            "go-template",
            "--template",
            "{{.containerEventType}} {{.containerId}}\n",
        ],
    );

    let pod = cc.write_json("pod.json", &pod_json(&fx, "ex", json!({"app": "ex"})));
    let pod_id = cc.ok(&["runp", &pod]).trim().to_owned();
    let spinner = cc.write_json(
        "spinner.json",
        &container_json(
            &fx,
            "ex",
            "spinner",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/written bs=1k count=256; while :; do :; done",
            ],
        ),
    );
    let id = cc
        .ok(&["create", &pod_id, &spinner, &pod])
        .trim()
        .to_owned();
    cc.ok(&["start", &id]);
    wait_state(&cc, &id, "CONTAINER_RUNNING");

    // exec -s: stdout and stderr (crictl prints both to its stdout), exit codes, timeout.
    let out = cc.ok(&[
        "exec",
        "-s",
        &id,
        "sh",
        "-c",
        "echo to-out; echo to-err >&2",
    ]);
    assert_eq!(
        out, "to-out\n\nto-err\n\n",
        "crictl prints stdout, then stderr"
    );
    let run = cc.fails(&["exec", "-s", &id, "sh", "-c", "echo partial; exit 3"]);
    assert!(run.stderr.contains("exited with 3"), "{run}");
    let run = cc.fails(&["exec", "-s", "--timeout", "1", &id, "sleep", "30"]);
    assert!(
        run.stderr.contains("DeadlineExceeded") && run.stderr.contains("timed out"),
        "{run}"
    );
    let by_name = cc.ok(&["exec", "-s", "--name", "^spinner$", "hostname"]);
    assert_eq!(by_name, format!("{id}:\nex\n\n\n"));
    let run = cc.fails(&["exec", "-s", &id, "/no/such/program"]);
    assert!(!run.status.success(), "{run}");
    // 5 MiB of output: past gRPC's customary 4 MiB message size, within crictl's 16 MiB.
    let big = cc.ok(&[
        "exec",
        "-s",
        &id,
        "sh",
        "-c",
        "head -c 5242880 /dev/zero | tr '\\000' y",
    ]);
    assert_eq!(
        big.len(),
        (5 << 20) + 2,
        "5 MiB and a newline, then the empty stderr and a newline"
    );
    assert!(big.starts_with("yyyy") && big.trim_end().bytes().all(|b| b == b'y'));

    // stats: the spinner's CPU time, memory and written layer; the filters.
    let written = wait_for(Duration::from_secs(20), || {
        let stats = cc.json(&["stats", "-o", "json", "--id", &id]);
        (int_at(&stats, "/stats/0/writableLayer/usedBytes/value") >= 256 * 1024).then_some(stats)
    })
    .unwrap_or_else(|| {
        panic!(
            "no 256 KiB writable layer: {}",
            cc.ok(&["stats", "-o", "json"])
        )
    });
    assert_eq!(str_at(&written, "/stats/0/attributes/id"), id);
    assert!(
        int_at(&written, "/stats/0/cpu/usageCoreNanoSeconds/value") > 0,
        "{written:#}"
    );
    assert!(
        int_at(&written, "/stats/0/memory/workingSetBytes/value") > 0,
        "{written:#}"
    );
    let ids_in = |stats: &Value| -> Vec<String> {
        stats["stats"]
            .as_array()
            .expect("stats")
            .iter()
            .map(|s| str_at(s, "/attributes/id").to_owned())
            .collect()
    };
    assert_eq!(
        ids_in(&cc.json(&["stats", "-o", "json", "--pod", &pod_id])),
        vec![id.clone()]
    );
    assert_eq!(
        ids_in(&cc.json(&["stats", "-o", "json", "--label", "container=spinner"])),
        vec![id.clone()]
    );
    assert_eq!(
        ids_in(&cc.json(&["stats", "-o", "json", "--label", "container=nobody"])),
        Vec::<String>::new()
    );
    let table = cc.ok(&["stats", "--seconds", "1"]);
    let row = table
        .lines()
        .find(|l| l.contains(&id[..13]))
        .unwrap_or_else(|| panic!("no stats row for {id}: {table}"));
    let cpu: f64 = row
        .split_whitespace()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no CPU % in {row}"));
    // A spinning container: near 100 % alone; well above an idle one's 0 on a busy host.
    assert!(cpu > 5.0, "a spinning container uses CPU: {row}");

    // statsp: the pod's sums, by id and label.
    let pod_stats = cc.json(&["statsp", "-o", "json", "--id", &pod_id]);
    assert_eq!(str_at(&pod_stats, "/stats/0/attributes/id"), pod_id);
    assert!(
        int_at(&pod_stats, "/stats/0/linux/cpu/usageCoreNanoSeconds/value") > 0,
        "{pod_stats:#}"
    );
    assert!(
        int_at(&pod_stats, "/stats/0/linux/memory/workingSetBytes/value") > 0,
        "{pod_stats:#}"
    );
    let by_label = cc.json(&["statsp", "-o", "json", "--label", "app=ex"]);
    assert_eq!(str_at(&by_label, "/stats/0/attributes/id"), pod_id);
    let table = cc.ok(&["statsp"]);
    assert!(
        table.contains("ex") && table.contains(&pod_id[..13]),
        "{table}"
    );

    // checkpoint: crid's UNIMPLEMENTED, nothing written.
    let archive = cc.dir.join("checkpoint.tar");
    let run = cc.fails(&[
        "checkpoint",
        "--export",
        &archive.display().to_string(),
        &id,
    ]);
    assert!(
        run.stderr.contains("code = Unimplemented")
            && run
                .stderr
                .contains("CheckpointContainer is not implemented by crid"),
        "{run}"
    );
    assert!(!archive.exists(), "no checkpoint archive");

    // The events of this pod and container, in order, seen by both clients.
    cc.ok(&["stop", &id]);
    cc.ok(&["rm", &id]);
    cc.ok(&["stopp", &pod_id]);
    cc.ok(&["rmp", &pod_id]);
    let want = |object: &str| {
        [
            "CONTAINER_CREATED_EVENT",
            "CONTAINER_STARTED_EVENT",
            "CONTAINER_STOPPED_EVENT",
            "CONTAINER_DELETED_EVENT",
        ]
        .map(|kind| format!("{kind} {object}"))
        .to_vec()
    };
    let of = |seen: &[String], object: &str| -> Vec<String> {
        seen.iter()
            .filter(|e| e.ends_with(object))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let seen: Vec<String> = serde_json::Deserializer::from_str(&events.stdout())
            .into_iter::<Value>()
            .map_while(Result::ok)
            .map(|e| {
                format!(
                    "{} {}",
                    str_at(&e, "/containerEventType"),
                    str_at(&e, "/containerId")
                )
            })
            .collect();
        if (of(&seen, &pod_id) == want(&pod_id) && of(&seen, &id) == want(&id))
            || Instant::now() > deadline
        {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(of(&seen, &pod_id), want(&pod_id), "pod events: {seen:#?}");
    assert_eq!(of(&seen, &id), want(&id), "container events: {seen:#?}");
    // The container events carry the pod's status and the container's own.
    let stream = events.stop();
    let stopped = serde_json::Deserializer::from_str(&stream.stdout)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .find(|e| {
            e["containerId"] == id.as_str() && e["containerEventType"] == "CONTAINER_STOPPED_EVENT"
        })
        .expect("the container's STOPPED event");
    assert_eq!(str_at(&stopped, "/podSandboxStatus/id"), pod_id);
    let statuses = stopped["containersStatuses"]
        .as_array()
        .expect("containersStatuses");
    assert!(
        statuses
            .iter()
            .any(|s| s["id"] == id.as_str() && s["state"] == "CONTAINER_EXITED"),
        "{stopped:#}"
    );
    let templated_seen = wait_for(Duration::from_secs(20), || {
        let out = templated.stdout();
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        (of(&lines, &id) == want(&id)).then_some(lines)
    });
    let templated_run = templated.stop();
    assert!(
        templated_seen.is_some(),
        "go-template events: {templated_run}"
    );

    remove_everything(&cc);
    fx.finish().await;
}

/// A value of the container's cgroup, read on the host through `/proc/<pid>/cgroup`:
/// `<controller>/<v1 file>` on cgroup v1, `<v2 file>` on the unified hierarchy.
fn cgroup_value(pid: i64, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
    let v1 = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| format!("/sys/fs/cgroup/{controller}{path}/{v1_file}"))
    });
    let file = v1.unwrap_or_else(|| {
        let path = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_else(|| panic!("no cgroup for {controller}: {cgroups}"));
        format!("/sys/fs/cgroup{path}/{v2_file}")
    });
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("read {file}: {e}"))
        .trim()
        .to_owned()
}

/// The memory limit and CPU quota/period of the container's cgroup.
fn cgroup_limits(pid: i64) -> (String, String, String) {
    let memory = cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max");
    let quota = cgroup_value(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    if let Some((quota, period)) = quota.split_once(' ') {
        return (memory, quota.to_owned(), period.to_owned());
    }
    let period = cgroup_value(pid, "cpu", "cpu.cfs_period_us", "cpu.max");
    (memory, quota, period)
}

#[tokio::test(flavor = "multi_thread")]
async fn update_changes_the_cgroup_and_inspect_reports_what_is_in_force() {
    let fx = PodFixture::start("").await;
    let cc = Crictl::new(&fx);
    let pod = cc.write_json("pod.json", &pod_json(&fx, "upd", json!({})));
    let pod_id = cc.ok(&["runp", &pod]).trim().to_owned();
    let mut config = container_json(&fx, "upd", "limited", &["sleep", "1000"]);
    config["linux"] = json!({
        "resources": { "memory_limit_in_bytes": 128 << 20, "cpu_shares": 512 }
    });
    let limited = cc.write_json("limited.json", &config);
    let id = cc
        .ok(&["create", &pod_id, &limited, &pod])
        .trim()
        .to_owned();
    cc.ok(&["start", &id]);
    let inspect = wait_state(&cc, &id, "CONTAINER_RUNNING");
    let pid = int_at(&inspect, "/info/pid");
    assert_eq!(
        int_at(&inspect, "/status/resources/linux/memoryLimitInBytes"),
        128 << 20,
        "{inspect:#}"
    );
    assert_eq!(cgroup_limits(pid).0, (128u64 << 20).to_string());

    // Memory and CPU quota and period together.
    let updated = cc.ok(&[
        "update",
        "--memory",
        "67108864",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        &id,
    ]);
    assert_eq!(updated.trim(), id);
    assert_eq!(
        cgroup_limits(pid),
        (
            "67108864".to_owned(),
            "50000".to_owned(),
            "100000".to_owned()
        )
    );
    let inspect = cc.json(&["inspect", "-o", "json", &id]);
    let resources = &inspect["status"]["resources"]["linux"];
    assert_eq!(
        int_at(resources, "/memoryLimitInBytes"),
        64 << 20,
        "{inspect:#}"
    );
    assert_eq!(int_at(resources, "/cpuQuota"), 50_000, "{inspect:#}");
    assert_eq!(int_at(resources, "/cpuPeriod"), 100_000, "{inspect:#}");

    // A limit below what the container uses is refused by crid, and nothing changes.
    let run = cc.fails(&["update", "--memory", "4096", &id]);
    assert!(
        run.stderr.contains("FailedPrecondition") && run.stderr.contains("below its current usage"),
        "{run}"
    );
    assert_eq!(cgroup_limits(pid).0, "67108864");

    // An exited container cannot be updated.
    let short = cc.write_json(
        "short.json",
        &container_json(&fx, "upd", "short", &["true"]),
    );
    let short_id = cc.ok(&["create", &pod_id, &short, &pod]).trim().to_owned();
    cc.ok(&["start", &short_id]);
    wait_state(&cc, &short_id, "CONTAINER_EXITED");
    let run = cc.fails(&["update", "--memory", "67108864", &short_id]);
    assert!(run.stderr.contains("FailedPrecondition"), "{run}");

    // crictl sends 0 for what it is not told ("not specified"): only the quota changes in
    // the cgroup, and inspect must report the memory limit and period still in force.
    cc.ok(&["update", "--cpu-quota", "20000", &id]);
    assert_eq!(
        cgroup_limits(pid),
        (
            "67108864".to_owned(),
            "20000".to_owned(),
            "100000".to_owned()
        )
    );
    // CPU shares were set at create and never updated: 512 (v1), weight 20 (v2).
    let shares = cgroup_value(pid, "cpu", "cpu.shares", "cpu.weight");
    assert!(
        shares == "512" || shares == "20",
        "cpu shares in the cgroup: {shares}"
    );
    let inspect = cc.json(&["inspect", "-o", "json", &id]);
    let resources = &inspect["status"]["resources"]["linux"];
    let reported = [
        "/memoryLimitInBytes",
        "/cpuQuota",
        "/cpuPeriod",
        "/cpuShares",
    ]
    .map(|field| int_at(resources, field));
    assert_eq!(
        reported,
        [64 << 20, 20_000, 100_000, 512],
        "inspect after `crictl update --cpu-quota 20000` must report the memory limit, CPU \
         quota, period and shares in force (the cgroup's); it reports {resources:#}"
    );

    remove_everything(&cc);
    fx.finish().await;
}

/// crid answers `crictl version` (its CRI socket still serves) after what `after` did.
fn assert_crid_serves(cc: &Crictl, after: &str) {
    let run = cc.run(&["version"]);
    assert!(
        run.status.success() && run.stdout.contains("RuntimeName:  crid"),
        "crid stopped serving after {after}: {run}\n--- crid's log (tail)\n{}",
        cc.crid_log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_clients_that_go_away_leave_crid_serving() {
    let fx = PodFixture::start("").await;
    let cc = Crictl::new(&fx);
    let pod = cc.write_json("pod.json", &pod_json(&fx, "gone", json!({})));
    let ticker = cc.write_json(
        "ticker.json",
        &container_json(
            &fx,
            "gone",
            "ticker",
            &["sh", "-c", "while :; do echo tick; sleep 0.2; done"],
        ),
    );
    let id = cc
        .ok(&["run", "--no-pull", &ticker, &pod])
        .trim()
        .to_owned();
    wait_state(&cc, &id, "CONTAINER_RUNNING");

    // An exec whose client is killed (a dropped connection, an operator's kill) mid-command.
    let mut exec = cc.spawn(&["exec", &id, "sh", "-c", "echo started; sleep 100"]);
    wait_for(Duration::from_secs(20), || {
        exec.stdout().contains("started").then_some(())
    })
    .unwrap_or_else(|| panic!("crictl exec printed nothing: {}", exec.stop()));
    exec.kill();
    std::thread::sleep(Duration::from_secs(1));
    assert_crid_serves(&cc, "a `crictl exec` client was killed mid-command");

    // An attach left the way operators leave it: the client goes, the container stays.
    let mut attach = cc.spawn(&["attach", &id]);
    wait_for(Duration::from_secs(20), || {
        attach.stdout().contains("tick").then_some(())
    })
    .unwrap_or_else(|| panic!("crictl attach printed nothing: {}", attach.stop()));
    attach.kill();
    std::thread::sleep(Duration::from_secs(1));
    assert_crid_serves(&cc, "a `crictl attach` client was killed");
    assert_eq!(
        cc.ids(&["ps", "-q"]),
        vec![id.clone()],
        "the container runs on"
    );

    remove_everything(&cc);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_that_exit_at_once_start_without_error() {
    let fx = PodFixture::start("").await;
    let cc = Crictl::new(&fx);
    let pod = cc.write_json("pod.json", &pod_json(&fx, "brief", json!({})));
    let pod_id = cc.ok(&["runp", &pod]).trim().to_owned();
    // `runc start` removes the container's exec fifo after the process has begun: a process
    // that exits at once races that removal (the more so on a busy host, hence four starts
    // at a time), and its start must still succeed.
    let mut failures = Vec::new();
    for round in 0..10 {
        let ids: Vec<String> = (0..4)
            .map(|n| {
                let name = format!("brief-{round}-{n}");
                let config = cc.write_json(
                    &format!("{name}.json"),
                    &container_json(&fx, "brief", &name, &["true"]),
                );
                cc.ok(&["create", &pod_id, &config, &pod]).trim().to_owned()
            })
            .collect();
        let mut starts: Vec<Background> = ids.iter().map(|id| cc.spawn(&["start", id])).collect();
        for start in &mut starts {
            let run = start.wait(CALL_LIMIT);
            if !run.status.success() {
                failures.push(run.to_string());
            }
        }
        for id in &ids {
            let exited = wait_state(&cc, id, "CONTAINER_EXITED");
            assert_eq!(int_at(&exited, "/status/exitCode"), 0, "{exited:#}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 40 starts of `true` failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
    remove_everything(&cc);
    fx.finish().await;
}
