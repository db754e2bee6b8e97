//! Pods end to end: crid with a private CNI network (its own bridge, subnet and lease
//! directory, so tests can run side by side and each can check what it leaked), a registry
//! holding the busybox test image, and helpers to build CRI configs.
//!
//! Every test ends with [`PodFixture::finish`]: it removes what is left through the CRI and
//! then checks that nothing of the test remains on the host: mounts, pinned namespaces,
//! processes, veths on the bridge, IP leases, runtime state, cgroups.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crid_proto::cri;
use crid_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::crid::{CridOptions, CridProcess};
use super::image::build_oci_busybox;
use super::registry::Registry;
use super::require;

/// The directory where host-local keeps its leases.
const LEASE_ROOT: &str = "/var/lib/cni/networks";

/// A crid with a private network and the test image pulled.
pub struct PodFixture {
    pub registry: Registry,
    pub crid: CridProcess,
    pub work: tempfile::TempDir,
    /// The bridge the pods of this fixture attach to.
    pub bridge: String,
    /// The CNI network name (names the lease directory).
    pub network: String,
    /// `10.234.<n>` (the /24 of this fixture).
    pub subnet: String,
    /// The cgroup parent pods get.
    pub cgroup_parent: String,
    /// The busybox image reference (`<registry>/test/busybox:latest`).
    pub image: String,
    pub runtime: RuntimeServiceClient<Channel>,
}

fn fixture_number() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    // Distinct within a test binary (they run one after another; their tests in parallel).
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    assert!(n < 250, "more fixtures than /24 subnets in 10.234.0.0/16");
    n
}

/// A CNI conflist: bridge + host-local + portmap, as crid's packaging installs (crid-pinns
/// brings up `lo` itself).
pub fn conflist(network: &str, bridge: &str, subnet: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": format!("{subnet}.0/24") }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
    .to_string()
}

impl PodFixture {
    /// Starts a registry with the busybox image and crid with a private CNI network (and
    /// `dropin` as a configuration drop-in when not empty), and pulls the image.
    pub async fn start(dropin: &str) -> Self {
        require::root();
        for tool in ["runc", "ip", "iptables"] {
            require::tool(tool);
        }
        let registry = Registry::start();
        let work = tempfile::tempdir().expect("tempdir");
        let layout = work.path().join("layout");
        build_oci_busybox(&layout, "latest", &["sh"]);
        registry.push_layout(&layout, "latest", "test/busybox");
        let n = fixture_number();
        let network = format!("crid-test-{}-{n}", std::process::id());
        let bridge = format!("crt{}x{n}", std::process::id() % 100_000);
        let subnet = format!("10.234.{n}");
        let crid = CridProcess::start(&CridOptions {
            extra_toml: registry.crid_image_config(work.path()),
            dropin: (!dropin.is_empty()).then(|| dropin.to_owned()),
        });
        std::fs::write(
            crid.dir.path().join("net.d/10-test.conflist"),
            conflist(&network, &bridge, &subnet),
        )
        .expect("write conflist");
        let image = format!("{}/test/busybox:latest", registry.addr);
        let mut images = crid.images().await;
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("pull the test image");
        let runtime = crid.runtime().await;
        PodFixture {
            registry,
            crid,
            work,
            bridge,
            network,
            subnet,
            cgroup_parent: format!("/crid-test-{}-{n}", std::process::id()),
            image,
            runtime,
        }
    }

    /// A pod config named `name` with a log directory in the fixture's work dir.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let log_directory = self.work.path().join("logs").join(name);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                namespace: "test".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: log_directory.display().to_string(),
            labels: HashMap::from([("app".to_owned(), name.to_owned())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A container config running `command` in the busybox image.
    pub fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            log_path: format!("{name}/0.log"),
            labels: HashMap::from([("container".to_owned(), name.to_owned())]),
            ..Default::default()
        }
    }

    /// [`PodFixture::container_config`] in a PID namespace of its own: `command` is PID 1
    /// there (deaf to a SIGTERM it has no handler for).
    pub fn own_pid_container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        let mut config = self.container_config(name, command);
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        config
    }

    pub async fn run_pod(&mut self, config: cri::PodSandboxConfig) -> String {
        self.runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.crid.stderr()))
            .into_inner()
            .pod_sandbox_id
    }

    /// Creates and starts a container; returns its id.
    pub async fn start_container(
        &mut self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.to_owned(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.crid.stderr()))
            .into_inner()
            .container_id;
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e}"));
        id
    }

    pub async fn exec(&mut self, id: &str, cmd: &[&str], timeout: i64) -> cri::ExecSyncResponse {
        self.runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"))
            .into_inner()
    }

    /// The record ContainerStatus verbose reports under `info` (pid, runtimeSpec, ...).
    pub async fn container_info(&mut self, id: &str) -> serde_json::Value {
        let info = self
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: true,
            })
            .await
            .expect("ContainerStatus verbose")
            .into_inner()
            .info;
        serde_json::from_str(info.get("info").expect("info")).expect("info is JSON")
    }

    /// The host pid of a container's init (ContainerStatus verbose `info.pid`).
    pub async fn container_pid(&mut self, id: &str) -> i32 {
        self.container_info(id).await["pid"].as_i64().expect("pid") as i32
    }

    /// A CreateContainer that must fail: its status.
    pub async fn create_container_err(
        &mut self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> tonic::Status {
        self.runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.to_owned(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .expect_err("CreateContainer should fail")
    }

    pub async fn container_status(&mut self, id: &str) -> cri::ContainerStatus {
        self.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus: {e}"))
            .into_inner()
            .status
            .expect("status")
    }

    /// Polls until the container has exited; returns its status.
    pub async fn wait_exited(&mut self, id: &str, limit: Duration) -> cri::ContainerStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let status = self.container_status(id).await;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "container {id} did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn pod_status(&mut self, id: &str) -> cri::PodSandboxStatus {
        self.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_owned(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("PodSandboxStatus: {e}"))
            .into_inner()
            .status
            .expect("status")
    }

    /// Removes every pod through the CRI, then checks that nothing of this test remains.
    pub async fn finish(mut self) {
        let pods = self
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        for pod in pods {
            self.runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", self.crid.stderr()));
            self.runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.id,
                })
                .await
                .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", self.crid.stderr()));
        }
        // Some cleanup finishes just after the RPC returns (a removed container's files go
        // in the background); give it a moment before calling anything a leak.
        let mut leaks = self.leaks();
        for _ in 0..100 {
            if leaks.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            leaks = self.leaks();
        }
        assert!(leaks.is_empty(), "left behind: {leaks:#?}");
    }

    /// What of this fixture is still on the host (besides crid, its files and the bridge).
    pub fn leaks(&self) -> Vec<String> {
        self.traces().leaks()
    }

    /// Where this fixture's crid and network leave traces on the host.
    pub fn traces(&self) -> HostTraces {
        HostTraces {
            crid_dir: self.crid.dir.path().to_owned(),
            crid_pid: self.crid.child.as_ref().map(std::process::Child::id),
            bridge: self.bridge.clone(),
            network: self.network.clone(),
            subnet: self.subnet.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            foreign_cgroups: Vec::new(),
        }
    }
}

/// What one crid (with a private directory) and its private CNI network can leave on the
/// host, found by name: the leak check of the pod tests and of the conformance run.
#[derive(Debug, Clone)]
pub struct HostTraces {
    /// crid's directory (root, runroot, socket): its mounts, namespace pins, processes and
    /// runtime state are found under or by it.
    pub crid_dir: PathBuf,
    /// crid itself, which names its directory too and is no leak.
    pub crid_pid: Option<u32>,
    /// The bridge the pods attach to.
    pub bridge: String,
    /// The CNI network name (names the lease directory).
    pub network: String,
    /// `a.b.c` of the network's /24.
    pub subnet: String,
    /// The cgroup parent the pods get.
    pub cgroup_parent: String,
    /// Container cgroups under that parent that are not this crid's (another crid on the
    /// host shares the parent): neither leaks nor removed.
    pub foreign_cgroups: Vec<PathBuf>,
}

impl HostTraces {
    /// What is still on the host (besides crid, its files and the bridge).
    pub fn leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        for target in self.mounts() {
            leaks.push(format!("mount {target}"));
        }
        let ns_dir = self.crid_dir.join("run/ns");
        for kind in ["net", "ipc", "uts", "pid", "user"] {
            for entry in list(&ns_dir.join(kind)) {
                leaks.push(format!("namespace pin {kind}/{entry}"));
            }
        }
        for (pid, cmdline) in self.processes() {
            leaks.push(format!("process {pid}: {cmdline}"));
        }
        let out = Command::new(require::tool("ip"))
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .expect("ip link");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            leaks.push(format!("bridge port {line}"));
        }
        for lease in list(&Path::new(LEASE_ROOT).join(&self.network)) {
            if lease.starts_with(&self.subnet) {
                leaks.push(format!("IP lease {lease}"));
            }
        }
        for state in list(&self.crid_dir.join("run/runc")) {
            leaks.push(format!("runtime state {state}"));
        }
        for dir in self.cgroups() {
            if !self.foreign_cgroups.contains(&dir) {
                leaks.push(format!("cgroup {}", dir.display()));
            }
        }
        leaks
    }

    /// Mount points under crid's directory, deepest first.
    fn mounts(&self) -> Vec<String> {
        let base = self.crid_dir.display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut targets: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|t| t.starts_with(&base))
            .map(str::to_owned)
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        targets
    }

    /// Processes (besides crid) whose command line names crid's directory: monitors, PID
    /// holders, runtime leftovers.
    fn processes(&self) -> Vec<(u32, String)> {
        let base = self.crid_dir.display().to_string();
        list(Path::new("/proc"))
            .iter()
            .filter_map(|entry| entry.parse::<u32>().ok())
            .filter(|pid| Some(*pid) != self.crid_pid)
            .filter_map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline.contains(&base).then_some((pid, cmdline))
            })
            .collect()
    }

    /// The cgroup parent in every hierarchy.
    fn cgroup_parents(&self) -> Vec<PathBuf> {
        list(Path::new("/sys/fs/cgroup"))
            .into_iter()
            .map(|controller| {
                PathBuf::from("/sys/fs/cgroup")
                    .join(controller)
                    .join(self.cgroup_parent.trim_start_matches('/'))
            })
            .collect()
    }

    /// The container cgroups (`crid-*`) under the parent in every hierarchy.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        self.cgroup_parents()
            .into_iter()
            .flat_map(|dir| {
                list(&dir)
                    .into_iter()
                    .filter(|c| c.starts_with("crid-"))
                    .map(move |c| dir.join(c))
            })
            .collect()
    }

    /// Removes what is left: kills the processes (monitors, PID holders, runc leftovers),
    /// unmounts what is under crid's directory, and deletes the host state that outlives
    /// crid by design: the bridge, the lease directory and the cgroup parent directories
    /// (kubelet owns those in a cluster).
    pub fn remove(&self) {
        for (pid, _) in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Killed processes leave their cgroups only once reaped.
        std::thread::sleep(Duration::from_millis(100));
        for target in self.mounts() {
            let _ = nix::mount::umount2(target.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(Path::new(LEASE_ROOT).join(&self.network));
        for dir in self.cgroups() {
            if !self.foreign_cgroups.contains(&dir) {
                let _ = std::fs::remove_dir(dir);
            }
        }
        for dir in self.cgroup_parents() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for PodFixture {
    fn drop(&mut self) {
        // A test that failed before `finish` leaves its pods: remove them, so one failure
        // does not leak into the host for the tests after it.
        self.traces().remove();
    }
}
