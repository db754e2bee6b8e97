//! `crid-bench lifecycle`: crid against Debian's containerd (1.6, CRI plugin, runc), driven by
//! the same CRI client in one run: per-operation latency of the pod lifecycle over sequential
//! pods, wall time of concurrent pod starts, memory per idle pod, ExecSync round trips.
//!
//! Both runtimes pull the same busybox image from the harness registry; containerd's sandbox
//! (pause) image is busybox running `sleep`. Each runtime gets its own CNI bridge and subnet.
//! Pods are configured as kubelet does by default: network and IPC per pod, PID per container.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use crid_proto::cri;
use crid_proto::cri::runtime_service_client::RuntimeServiceClient;
use crid_tests::harness::containerd::Containerd;
use crid_tests::harness::crid::{connect, CridOptions, CridProcess};
use crid_tests::harness::image::build_oci_busybox;
use crid_tests::harness::pods::conflist;
use crid_tests::harness::registry::Registry;
use crid_tests::harness::require;
use tonic::transport::Channel;

use super::memory_kb;

type Client = RuntimeServiceClient<Channel>;

/// The lifecycle operations, in order.
const OPERATIONS: [&str; 7] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

/// The workload: exits on SIGTERM at once (the shell's `wait` returns on a trapped signal).
const WORKLOAD: &[&str] = &["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"];
/// The grace period StopContainer gets.
const STOP_TIMEOUT: i64 = 10;

/// What to run.
pub struct Settings {
    pub pods: usize,
    pub concurrent: usize,
    pub idle: usize,
    pub execs: usize,
    /// The OCI runtime crid uses (containerd always uses runc).
    pub runtime: String,
}

pub(crate) struct Runtime {
    pub name: &'static str,
    pub client: Client,
    pub image: String,
    pub log_root: std::path::PathBuf,
}

fn pod_config(runtime: &Runtime, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "bench".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: runtime.log_root.join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(runtime: &Runtime, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "work".to_owned(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: runtime.image.clone(),
            ..Default::default()
        }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        log_path: "work.log".to_owned(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs a pod with one started container running the workload; returns (pod id, container
/// id) and the time of each of the three steps.
async fn start_pod(
    client: &mut Client,
    runtime: &Runtime,
    name: &str,
) -> anyhow::Result<(String, String, [Duration; 3])> {
    start_pod_running(client, runtime, name, WORKLOAD).await
}

/// The same with the container running `command`.
pub(crate) async fn start_pod_running(
    client: &mut Client,
    runtime: &Runtime,
    name: &str,
    command: &[&str],
) -> anyhow::Result<(String, String, [Duration; 3])> {
    let config = pod_config(runtime, name);
    let t = Instant::now();
    let pod = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .with_context(|| format!("{}: RunPodSandbox", runtime.name))?
        .into_inner()
        .pod_sandbox_id;
    let run = t.elapsed();
    let t = Instant::now();
    let container = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(runtime, command)),
            sandbox_config: Some(config),
        })
        .await
        .with_context(|| format!("{}: CreateContainer", runtime.name))?
        .into_inner()
        .container_id;
    let create = t.elapsed();
    let t = Instant::now();
    client
        .start_container(cri::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .with_context(|| format!("{}: StartContainer", runtime.name))?;
    Ok((pod, container, [run, create, t.elapsed()]))
}

/// Stops and removes a container and its pod; returns the time of each of the four steps.
pub(crate) async fn end_pod(
    client: &mut Client,
    name: &str,
    pod: &str,
    container: &str,
) -> anyhow::Result<[Duration; 4]> {
    let t = Instant::now();
    client
        .stop_container(cri::StopContainerRequest {
            container_id: container.to_owned(),
            timeout: STOP_TIMEOUT,
        })
        .await
        .with_context(|| format!("{name}: StopContainer"))?;
    let stop = t.elapsed();
    let t = Instant::now();
    client
        .remove_container(cri::RemoveContainerRequest {
            container_id: container.to_owned(),
        })
        .await
        .with_context(|| format!("{name}: RemoveContainer"))?;
    let remove = t.elapsed();
    let t = Instant::now();
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_owned(),
        })
        .await
        .with_context(|| format!("{name}: StopPodSandbox"))?;
    let stop_pod = t.elapsed();
    let t = Instant::now();
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_owned(),
        })
        .await
        .with_context(|| format!("{name}: RemovePodSandbox"))?;
    Ok([stop, remove, stop_pod, t.elapsed()])
}

pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// PSS (kB) of the processes whose command line contains `needle`, except `skip`.
fn pss_of_matching(needle: &str, skip: &[i32]) -> (u64, usize) {
    let mut total = 0;
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if skip.contains(&pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
        {
            if let Ok((pss, _, _)) = memory_kb(pid) {
                total += pss;
                count += 1;
            }
        }
    }
    (total, count)
}

/// Per-pod memory of a runtime: (daemon growth + helper processes) / pods, in kB.
struct PodMemory {
    daemon_growth_kb: f64,
    helpers_kb: f64,
    helpers: usize,
}

async fn measure_memory(
    runtime: &mut Runtime,
    daemon_pid: i32,
    helper_needles: &[String],
    pods: usize,
) -> anyhow::Result<PodMemory> {
    let before = memory_kb(daemon_pid)?.0;
    let mut started = Vec::new();
    for i in 0..pods {
        let mut client = runtime.client.clone();
        let name = format!("idle-{i}");
        let (pod, container, _) = start_pod(&mut client, runtime, &name).await?;
        started.push((name, pod, container));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = memory_kb(daemon_pid)?.0;
    let (mut helpers_kb, mut helpers) = (0, 0);
    for needle in helper_needles {
        let (kb, n) = pss_of_matching(needle, &[daemon_pid, std::process::id() as i32]);
        helpers_kb += kb;
        helpers += n;
    }
    for (name, pod, container) in started {
        let mut client = runtime.client.clone();
        end_pod(&mut client, &name, &pod, &container).await?;
    }
    Ok(PodMemory {
        daemon_growth_kb: after.saturating_sub(before) as f64 / pods as f64,
        helpers_kb: helpers_kb as f64 / pods as f64,
        helpers,
    })
}

async fn exec_round_trips(runtime: &mut Runtime, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let mut client = runtime.client.clone();
    let (pod, container, _) = start_pod(&mut client, runtime, "exec").await?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let out = client
            .exec_sync(cri::ExecSyncRequest {
                container_id: container.clone(),
                cmd: vec!["true".to_owned()],
                timeout: 10,
            })
            .await
            .with_context(|| format!("{}: ExecSync", runtime.name))?
            .into_inner();
        anyhow::ensure!(
            out.exit_code == 0,
            "{}: `true` exited {}",
            runtime.name,
            out.exit_code
        );
        times.push(ms(t.elapsed()));
    }
    end_pod(&mut client, runtime.name, &pod, &container).await?;
    Ok(times)
}

async fn pull(client: &mut Client, socket: &Path, image: &str) -> anyhow::Result<()> {
    let mut images = cri::image_service_client::ImageServiceClient::new(connect(socket).await);
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .with_context(|| format!("pull {image} through {}", socket.display()))?;
    let _ = client;
    Ok(())
}

/// Host state outside both runtimes' directories, removed at the end.
struct HostNetworks {
    bridges: Vec<String>,
    networks: Vec<String>,
}

impl Drop for HostNetworks {
    fn drop(&mut self) {
        for bridge in &self.bridges {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", bridge])
                .status();
        }
        for network in &self.networks {
            let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(network));
        }
        // crid's default cgroup parent (the bench's pods name none), empty by now.
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for controller in controllers.flatten() {
                let _ = std::fs::remove_dir(controller.path().join("crid"));
            }
        }
    }
}

/// crid and containerd side by side, each with its own CNI network, both with the harness
/// registry's busybox image pulled; stopped and cleaned up on drop.
pub(crate) struct Peers {
    pub crid: CridProcess,
    pub containerd: Containerd,
    pub image: String,
    pub pause: String,
    pub work: tempfile::TempDir,
    _networks: HostNetworks,
    pub registry: Registry,
}

impl Peers {
    /// Starts both (crid with the OCI runtime `runtime`).
    pub fn start(runtime: &str) -> anyhow::Result<Self> {
        require::root();
        let registry = Registry::start();
        let work = tempfile::Builder::new()
            .prefix("crid-bench-pods")
            .tempdir()?;
        let layout = work.path().join("layout");
        build_oci_busybox(&layout, "latest", &["sh"]);
        registry.push_layout(&layout, "latest", "bench/busybox");
        build_oci_busybox(&layout, "pause", &["sleep", "2147483647"]);
        registry.push_layout(&layout, "pause", "bench/pause");
        let image = format!("{}/bench/busybox:latest", registry.addr);
        let pause = format!("{}/bench/pause:pause", registry.addr);
        let crid = CridProcess::start(&CridOptions {
            extra_toml: registry.crid_image_config(work.path()),
            // The harness logs at debug; a benchmark logs as a production crid does.
            dropin: Some(format!(
                "log_level = \"info\"\n[runtime]\nruntime_path = \"{}\"\n",
                require::tool(runtime).display()
            )),
        });
        let containerd = Containerd::start(&[&registry.addr], Some(&pause));
        let networks = HostNetworks {
            bridges: vec!["crbench1".into(), "crbench2".into()],
            networks: vec!["crid-bench-1".into(), "crid-bench-2".into()],
        };
        std::fs::write(
            crid.dir.path().join("net.d/10-bench.conflist"),
            conflist("crid-bench-1", "crbench1", "10.235.1"),
        )?;
        std::fs::create_dir_all(containerd.cni_config_dir())?;
        std::fs::write(
            containerd.cni_config_dir().join("10-bench.conflist"),
            conflist("crid-bench-2", "crbench2", "10.235.2"),
        )?;
        Ok(Peers {
            crid,
            containerd,
            image,
            pause,
            work,
            _networks: networks,
            registry,
        })
    }

    /// A client for each runtime (crid first), with the images pulled.
    pub async fn runtimes(&self) -> anyhow::Result<[Runtime; 2]> {
        let mut runtimes = [
            Runtime {
                name: "crid",
                client: RuntimeServiceClient::new(connect(&self.crid.socket).await),
                image: self.image.clone(),
                log_root: self.work.path().join("logs-crid"),
            },
            Runtime {
                name: "containerd",
                client: RuntimeServiceClient::new(connect(&self.containerd.socket).await),
                image: self.image.clone(),
                log_root: self.work.path().join("logs-containerd"),
            },
        ];
        pull(&mut runtimes[0].client, &self.crid.socket, &self.image).await?;
        pull(
            &mut runtimes[1].client,
            &self.containerd.socket,
            &self.image,
        )
        .await?;
        pull(
            &mut runtimes[1].client,
            &self.containerd.socket,
            &self.pause,
        )
        .await?;
        Ok(runtimes)
    }
}

pub fn run(settings: &Settings) -> anyhow::Result<()> {
    let peers = Peers::start(&settings.runtime)?;
    let (crid, containerd) = (&peers.crid, &peers.containerd);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let crid_pid = crid.child.as_ref().context("crid is running")?.id() as i32;
    tokio.block_on(async {
        let mut runtimes = peers.runtimes().await?;

        // Warm up both (first pod pays for page cache, CNI bridge creation).
        for runtime in runtimes.iter_mut() {
            let mut client = runtime.client.clone();
            let (pod, container, _) = start_pod(&mut client, runtime, "warmup").await?;
            end_pod(&mut client, runtime.name, &pod, &container).await?;
        }

        // Sequential pods, alternating which runtime goes first.
        let mut times: [HashMap<&str, Vec<f64>>; 2] = [HashMap::new(), HashMap::new()];
        for i in 0..settings.pods {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let runtime = &runtimes[which];
                let mut client = runtime.client.clone();
                let name = format!("seq-{i}");
                let (pod, container, first) = start_pod(&mut client, runtime, &name).await?;
                let rest = end_pod(&mut client, runtime.name, &pod, &container).await?;
                for (op, took) in OPERATIONS.iter().zip(first.iter().chain(rest.iter())) {
                    times[which].entry(op).or_default().push(ms(*took));
                }
            }
        }

        // Concurrent pod starts.
        let mut walls = [0.0f64; 2];
        for (which, runtime) in runtimes.iter().enumerate() {
            let t = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..settings.concurrent {
                let mut client = runtime.client.clone();
                let rt = Runtime {
                    name: runtime.name,
                    client: client.clone(),
                    image: runtime.image.clone(),
                    log_root: runtime.log_root.clone(),
                };
                tasks.push(tokio::spawn(async move {
                    let name = format!("par-{i}");
                    let (pod, container, _) = start_pod(&mut client, &rt, &name).await?;
                    anyhow::Ok((name, pod, container))
                }));
            }
            let mut started = Vec::new();
            for task in tasks {
                started.push(task.await??);
            }
            walls[which] = ms(t.elapsed());
            for (name, pod, container) in started {
                let mut client = runtime.client.clone();
                end_pod(&mut client, &name, &pod, &container).await?;
            }
        }

        // Memory per idle pod.
        let crid_helpers = vec![crid.dir.path().display().to_string()];
        let ctd_helpers = vec![
            format!("-address {}", containerd.socket.display()),
            "sleep 2147483647".to_owned(),
        ];
        let [crid_rt, ctd_rt] = &mut runtimes;
        let crid_mem = measure_memory(crid_rt, crid_pid, &crid_helpers, settings.idle).await?;
        let ctd_mem = measure_memory(ctd_rt, containerd.pid(), &ctd_helpers, settings.idle).await?;

        // ExecSync round trips.
        let crid_exec = exec_round_trips(crid_rt, settings.execs).await?;
        let ctd_exec = exec_round_trips(ctd_rt, settings.execs).await?;

        println!(
            "## pod lifecycle, {} sequential pods (one container each), ms",
            settings.pods
        );
        println!("| operation | crid p50 | crid p99 | containerd p50 | containerd p99 | p50 ratio |");
        println!("|---|---|---|---|---|---|");
        for op in OPERATIONS {
            let (c, d) = (&times[0][op], &times[1][op]);
            let (c50, d50) = (percentile(c, 0.5), percentile(d, 0.5));
            println!(
                "| {op} | {c50:.1} | {:.1} | {d50:.1} | {:.1} | {:.2}x |",
                percentile(c, 0.99),
                percentile(d, 0.99),
                c50 / d50
            );
        }
        println!();
        println!(
            "## {} pods started concurrently (RunPodSandbox + CreateContainer + StartContainer), wall ms",
            settings.concurrent
        );
        println!("| crid | containerd | ratio |");
        println!("|---|---|---|");
        println!(
            "| {:.0} | {:.0} | {:.2}x |",
            walls[0],
            walls[1],
            walls[0] / walls[1]
        );
        println!();
        println!("## memory per idle pod over {} pods, PSS kB", settings.idle);
        println!("| runtime | daemon growth | per-pod processes | total | processes |");
        println!("|---|---|---|---|---|");
        for (name, m) in [("crid (crimon)", &crid_mem), ("containerd (shim + pause)", &ctd_mem)] {
            println!(
                "| {name} | {:.0} | {:.0} | {:.0} | {} |",
                m.daemon_growth_kb,
                m.helpers_kb,
                m.daemon_growth_kb + m.helpers_kb,
                m.helpers
            );
        }
        let total = |m: &PodMemory| m.daemon_growth_kb + m.helpers_kb;
        println!("| ratio crid/containerd | | | {:.3}x | |", total(&crid_mem) / total(&ctd_mem));
        println!();
        println!("## ExecSync `true`, {} calls, ms", settings.execs);
        println!("| crid p50 | crid p99 | containerd p50 | containerd p99 | p50 ratio |");
        println!("|---|---|---|---|---|");
        let (c50, d50) = (percentile(&crid_exec, 0.5), percentile(&ctd_exec, 0.5));
        println!(
            "| {c50:.1} | {:.1} | {d50:.1} | {:.1} | {:.2}x |",
            percentile(&crid_exec, 0.99),
            percentile(&ctd_exec, 0.99),
            c50 / d50
        );
        anyhow::Ok(())
    })?;
    Ok(())
}
