//! `crid-bench streaming`: crid's streaming server against containerd 1.6's (the kubelet
//! library's), driven by the same client (the harness's SPDY client, client-go's protocol):
//! exec round trips of `true`, attach output throughput, port-forward throughput. A second
//! crid with `[streaming] exec_direct = false` (every exec through `runc exec`) runs the exec
//! round trips too, interleaved with the others, so the direct exec's gain is measured on the
//! same load.

use std::time::{Duration, Instant};

use anyhow::Context;
use crid_proto::cri;
use crid_tests::harness::streaming_client::{exec_round_trip, PortForwarder, SpdyClient};

use crid_proto::cri::runtime_service_client::RuntimeServiceClient;
use crid_tests::harness::crid::{connect, CridOptions, CridProcess};
use crid_tests::harness::pods::conflist;
use crid_tests::harness::require;

use super::lifecycle::{end_pod, ms, percentile, start_pod_running, Peers, Runtime};

/// What to run.
pub struct Settings {
    /// Exec sessions per runtime.
    pub execs: usize,
    /// MiB streamed through attach and through port-forward.
    pub mib: usize,
    /// Throughput runs per runtime and stream (crid's and containerd's in turn); the table
    /// gives the medians.
    pub rounds: usize,
    pub runtime: String,
}

/// How long one throughput run may take before it is called stuck.
const STREAM_LIMIT: Duration = Duration::from_secs(600);
/// How long attach output may pause before it is taken to be over.
const QUIET: Duration = Duration::from_secs(2);
/// The port the pod serves on for the port-forward run.
const SERVED_PORT: u16 = 8080;
/// Exec sessions each runtime runs before the next one's turn.
const EXEC_ROUND: usize = 20;
/// The network of the crid that execs through runc (the peers use crbench1 and crbench2).
const RELAY_BRIDGE: &str = "crbench3";
const RELAY_NETWORK: &str = "crid-bench-3";

/// A crid like the bench's with `exec_direct = false`; its bridge and leases are removed on
/// drop (after the crid itself).
struct RelayCrid {
    crid: CridProcess,
}

impl RelayCrid {
    fn start(peers: &Peers, runtime: &str) -> anyhow::Result<Self> {
        let crid = CridProcess::start(&CridOptions {
            extra_toml: peers.registry.crid_image_config(peers.work.path()),
            dropin: Some(format!(
                "log_level = \"info\"\n[runtime]\nruntime_path = \"{}\"\n\
                 [streaming]\nexec_direct = false\n",
                require::tool(runtime).display()
            )),
        });
        std::fs::write(
            crid.dir.path().join("net.d/10-bench.conflist"),
            conflist(RELAY_NETWORK, RELAY_BRIDGE, "10.235.3"),
        )?;
        Ok(RelayCrid { crid })
    }

    async fn runtime(&self, peers: &Peers) -> anyhow::Result<Runtime> {
        let mut images =
            cri::image_service_client::ImageServiceClient::new(connect(&self.crid.socket).await);
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: peers.image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .context("crid (runc exec): pull")?;
        Ok(Runtime {
            name: "crid (runc exec)",
            client: RuntimeServiceClient::new(connect(&self.crid.socket).await),
            image: peers.image.clone(),
            log_root: peers.work.path().join("logs-crid-runc"),
        })
    }
}

impl Drop for RelayCrid {
    fn drop(&mut self) {
        if let Some(mut child) = self.crid.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", RELAY_BRIDGE])
            .status();
        let _ = std::fs::remove_dir_all(
            std::path::Path::new("/var/lib/cni/networks").join(RELAY_NETWORK),
        );
    }
}

/// Exec `true` `count` times: the Exec call and the whole SPDY session, in ms.
async fn exec_times(runtime: &Runtime, container: &str, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut client = runtime.client.clone();
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let url = client
            .exec(cri::ExecRequest {
                container_id: container.to_owned(),
                cmd: vec!["true".to_owned()],
                stdout: true,
                stderr: true,
                ..Default::default()
            })
            .await
            .with_context(|| format!("{}: Exec", runtime.name))?
            .into_inner()
            .url;
        exec_round_trip(&url)
            .await
            .with_context(|| format!("{}: exec session", runtime.name))?;
        times.push(ms(t.elapsed()));
    }
    Ok(times)
}

/// A command in the pod that writes `bytes` zeros to stdout, fast enough not to be what is
/// measured: busybox's `head -c` copies in small pieces (about 140 MB/s on the bench VM,
/// which capped both runtimes in the first runs); `dd` with 1 MiB blocks runs at 1.4 GB/s.
fn zeros(bytes: u64) -> String {
    let mib = 1u64 << 20;
    let mut command = format!(
        "dd if=/dev/zero bs=1048576 count={} 2>/dev/null",
        bytes / mib
    );
    if bytes % mib != 0 {
        command = format!("{{ {command}; head -c {} /dev/zero; }}", bytes % mib);
    }
    command
}

/// Attaches to a container that writes `bytes` to stdout once attached (it waits for a file
/// the bench creates through ExecSync) and returns (bytes received, seconds from the first
/// byte to the last).
async fn attach_throughput(runtime: &Runtime, bytes: u64) -> anyhow::Result<(u64, f64)> {
    let mut client = runtime.client.clone();
    let script = format!(
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; {}; sleep 100000",
        zeros(bytes)
    );
    let (pod, container, _) =
        start_pod_running(&mut client, runtime, "attach", &["sh", "-c", &script]).await?;
    let url = client
        .attach(cri::AttachRequest {
            container_id: container.clone(),
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: Attach", runtime.name))?
        .into_inner()
        .url;
    let (_, spdy) = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let _error = spdy.open_stream(&[("streamtype", "error")]).await?;
    let mut stdout = spdy.open_stream(&[("streamtype", "stdout")]).await?;
    let _stderr = spdy.open_stream(&[("streamtype", "stderr")]).await?;
    client
        .exec_sync(cri::ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec!["touch".into(), "/tmp/go".into()],
            timeout: 10,
        })
        .await
        .with_context(|| format!("{}: ExecSync", runtime.name))?;
    // An attach client that cannot keep up misses output (crimon never lets a client stall
    // the container), so the count may end short: the output is over once it has been
    // quiet for QUIET.
    let (mut received, mut first, mut last) = (0u64, None, Instant::now());
    let deadline = Instant::now() + STREAM_LIMIT;
    while received < bytes && Instant::now() < deadline {
        let wait = if first.is_some() { QUIET } else { STREAM_LIMIT };
        match tokio::time::timeout(wait, stdout.read()).await {
            Ok(Some(chunk)) => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                received += chunk.len() as u64;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let seconds = first.map_or(0.0, |t| last.duration_since(t).as_secs_f64());
    spdy.close().await;
    end_pod(&mut client, runtime.name, &pod, &container).await?;
    Ok((received, seconds))
}

/// Forwards a port of a pod that serves `bytes` per connection and returns (bytes received,
/// seconds from the first byte to the last).
async fn port_forward_throughput(runtime: &Runtime, bytes: u64) -> anyhow::Result<(u64, f64)> {
    let mut client = runtime.client.clone();
    // nc runs dd on the connection itself (`-e`): piping into nc measured busybox nc's
    // copy loop (about 146 MB/s), not the runtimes. The bench's sizes are whole MiB.
    let script = format!(
        "nc -l -p {SERVED_PORT} -e dd if=/dev/zero bs=1048576 count={}; sleep 100000",
        bytes >> 20
    );
    let (pod, container, _) =
        start_pod_running(&mut client, runtime, "forward", &["sh", "-c", &script]).await?;
    // Let the server listen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = client
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: Vec::new(),
        })
        .await
        .with_context(|| format!("{}: PortForward", runtime.name))?
        .into_inner()
        .url;
    let forwarder = PortForwarder::connect(&url).await?;
    let mut conn = forwarder.open(SERVED_PORT).await?;
    let mut received = 0u64;
    let mut first = None;
    let counted = tokio::time::timeout(STREAM_LIMIT, async {
        while received < bytes {
            let Some(chunk) = conn.read().await else {
                break;
            };
            first.get_or_insert_with(Instant::now);
            received += chunk.len() as u64;
        }
    })
    .await;
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    anyhow::ensure!(
        counted.is_ok(),
        "{}: port-forward stalled at {received} bytes",
        runtime.name
    );
    forwarder.close().await;
    end_pod(&mut client, runtime.name, &pod, &container).await?;
    Ok((received, seconds))
}

pub fn run(settings: &Settings) -> anyhow::Result<()> {
    let peers = Peers::start(&settings.runtime)?;
    let relay = RelayCrid::start(&peers, &settings.runtime)?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
        eprintln!("peers started");
        let [crid, containerd] = peers.runtimes().await?;
        let runtimes = [crid, relay.runtime(&peers).await?, containerd];
        let bytes = settings.mib as u64 * 1024 * 1024;

        // Exec: one pod each, warmed up, then rounds of EXEC_ROUND sessions in turn.
        let mut pods = Vec::new();
        for runtime in &runtimes {
            let mut client = runtime.client.clone();
            let (pod, container, _) =
                start_pod_running(&mut client, runtime, "exec", &["sleep", "100000"]).await?;
            // Warm up (page cache, first connection, the direct exec's seccomp read).
            exec_times(runtime, &container, 5).await?;
            pods.push((pod, container));
        }
        eprintln!("exec: {} sessions each, in rounds", settings.execs);
        let mut execs = vec![Vec::with_capacity(settings.execs); runtimes.len()];
        while execs[0].len() < settings.execs {
            let round = EXEC_ROUND.min(settings.execs - execs[0].len());
            for (index, (runtime, (_, container))) in runtimes.iter().zip(&pods).enumerate() {
                execs[index].extend(exec_times(runtime, container, round).await?);
            }
        }
        for (runtime, (pod, container)) in runtimes.iter().zip(&pods) {
            let mut client = runtime.client.clone();
            end_pod(&mut client, runtime.name, pod, container).await?;
        }

        // Rates in MB/s per runtime (crid, containerd), in turn round after round: load
        // that comes and goes on the machine falls on both alike.
        let rate = |(got, secs): (u64, f64)| got as f64 / 1e6 / secs.max(1e-9);
        let mut attach = [Vec::new(), Vec::new()];
        let mut forward = [Vec::new(), Vec::new()];
        let mut received = [[bytes; 2]; 2];
        for round in 0..settings.rounds.max(1) {
            for (index, runtime) in [&runtimes[0], &runtimes[2]].into_iter().enumerate() {
                eprintln!("{}: attach (round {})", runtime.name, round + 1);
                let result = attach_throughput(runtime, bytes).await?;
                received[0][index] = received[0][index].min(result.0);
                attach[index].push(rate(result));
                eprintln!("{}: port-forward (round {})", runtime.name, round + 1);
                let result = port_forward_throughput(runtime, bytes).await?;
                received[1][index] = received[1][index].min(result.0);
                forward[index].push(rate(result));
            }
        }
        println!(
            "## exec `true` (non-tty, SPDY), {} sessions each in rounds of {EXEC_ROUND}, ms \
             (Exec call + session)",
            settings.execs
        );
        println!("| runtime | p50 | p99 | p50 / containerd's |");
        println!("|---|---|---|---|");
        let containerd_p50 = percentile(&execs[2], 0.5);
        for (runtime, times) in runtimes.iter().zip(&execs) {
            let p50 = percentile(times, 0.5);
            println!(
                "| {} | {p50:.1} | {:.1} | {:.2}x |",
                runtime.name,
                percentile(times, 0.99),
                p50 / containerd_p50
            );
        }
        println!(
            "direct exec / runc exec (both crid), p50: {:.2}x",
            percentile(&execs[0], 0.5) / percentile(&execs[1], 0.5)
        );
        println!();
        println!(
            "## throughput over {} MiB, MB/s, median of {} runs (fewest bytes received / expected)",
            settings.mib,
            settings.rounds.max(1)
        );
        println!("| stream | crid | containerd | ratio |");
        println!("|---|---|---|---|");
        for (index, (what, rates)) in [("attach stdout", &attach), ("port-forward", &forward)]
            .into_iter()
            .enumerate()
        {
            let (c, d) = (percentile(&rates[0], 0.5), percentile(&rates[1], 0.5));
            println!(
                "| {what} | {c:.0} ({}/{bytes}) | {d:.0} ({}/{bytes}) | {:.2}x |",
                received[index][0],
                received[index][1],
                c / d
            );
        }
        anyhow::Ok(())
    })
}
