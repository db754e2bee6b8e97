//! crid's benchmarks, each side by side with the peer Debian ships, in one run.
//!
//! `crid-bench monitor`: crimon against conmon 2.1.6 on the same busybox bundle and runc:
//! memory per monitor (PSS, anonymous, RSS from /proc/PID/smaps_rollup) alone and with N idle
//! containers each, and log throughput (1 GiB as ~120-byte lines and as 4 KiB lines) with the
//! monitor's CPU seconds per GiB. Medians over rounds; ratios crimon/conmon.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crid_tests::harness::bundle::BundleSpec;
use crid_tests::harness::monitor::MonitoredContainer;
use crid_tests::harness::{require, wait_for, workspace_binary};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Crimon,
    Conmon,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Crimon => "crimon",
            Kind::Conmon => "conmon",
        }
    }
}

/// A container under one of the two monitors.
struct Run {
    c: MonitoredContainer,
    monitor_pid: i32,
}

/// The monitor of a container is its init's parent (both are subreapers): found without
/// talking to the monitor, so no connection skews its memory.
fn parent_of(pid: i32) -> anyhow::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    rest.split_whitespace()
        .nth(1)
        .context("ppid")?
        .parse()
        .context("ppid")
}

fn start(kind: Kind, spec: &BundleSpec, log_dir: Option<&Path>) -> anyhow::Result<Run> {
    let place_log = |mut c: MonitoredContainer| {
        if let Some(dir) = log_dir {
            c.log_path = dir.join(format!("{}.log", c.id));
        }
        c
    };
    match kind {
        Kind::Crimon => {
            let c = place_log(MonitoredContainer::new(spec));
            let report = c.create(&[]);
            if report.pid <= 0 {
                bail!("crimon failed: {:?}", report.message);
            }
            let monitor_pid = parent_of(report.pid)?;
            Ok(Run { c, monitor_pid })
        }
        Kind::Conmon => {
            let conmon = require::tool("conmon");
            let c = place_log(MonitoredContainer::with_monitor(spec, conmon.clone()));
            let pidfile = c.dir.path().join("conmon.pid");
            let status = Command::new(&conmon)
                .args(["--cid", &c.id, "--cuuid", &c.id, "--name", &c.id])
                .arg("--runtime")
                .arg(&c.runtime)
                .arg("--bundle")
                .arg(&c.bundle)
                .arg("--container-pidfile")
                .arg(c.bundle.join("pidfile"))
                .arg("--conmon-pidfile")
                .arg(&pidfile)
                .arg("--log-path")
                .arg(format!("k8s-file:{}", c.log_path.display()))
                .arg("--exit-dir")
                .arg(&c.exit_dir)
                .arg("--socket-dir-path")
                .arg(&c.socket_dir)
                .arg(format!("--runtime-arg=--root={}", c.runtime_root.display()))
                .args(["--log-level", "error"])
                .status()
                .context("run conmon")?;
            if !status.success() {
                bail!("conmon exited with {status}");
            }
            let monitor_pid = wait_for(Duration::from_secs(10), || {
                std::fs::read_to_string(&pidfile)
                    .ok()?
                    .trim()
                    .parse::<i32>()
                    .ok()
            })
            .context("conmon wrote no pid file")?;
            let created = wait_for(Duration::from_secs(10), || {
                let out = c.runc(&["state", &c.id]);
                String::from_utf8_lossy(&out.stdout)
                    .contains("\"created\"")
                    .then_some(())
            });
            if created.is_none() {
                bail!("conmon's container never reached created");
            }
            Ok(Run { c, monitor_pid })
        }
    }
}

/// (PSS, anonymous, RSS) in kB.
fn memory_kb(pid: i32) -> anyhow::Result<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read smaps_rollup of {pid}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("Pss:"), field("Anonymous:"), field("Rss:")))
}

fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

struct MemoryResult {
    alone_pss: u64,
    avg_pss: f64,
    avg_anon: f64,
    avg_rss: f64,
}

fn measure_memory(kind: Kind, count: usize) -> anyhow::Result<MemoryResult> {
    let spec = BundleSpec {
        args: vec!["sleep".into(), "1000000".into()],
        ..Default::default()
    };
    let first = start(kind, &spec, None)?;
    first.c.start();
    std::thread::sleep(Duration::from_millis(300));
    let alone_pss = memory_kb(first.monitor_pid)?.0;
    let mut runs = vec![first];
    for _ in 1..count {
        let run = start(kind, &spec, None)?;
        run.c.start();
        runs.push(run);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (mut pss, mut anon, mut rss) = (0u64, 0u64, 0u64);
    for run in &runs {
        let (p, a, r) = memory_kb(run.monitor_pid)?;
        pss += p;
        anon += a;
        rss += r;
    }
    let n = runs.len() as f64;
    drop(runs);
    Ok(MemoryResult {
        alone_pss,
        avg_pss: pss as f64 / n,
        avg_anon: anon as f64 / n,
        avg_rss: rss as f64 / n,
    })
}

/// A file of `total` bytes of `line_len`-byte lines (newline included).
fn make_lines_file(dir: &Path, line_len: usize, total: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("lines-{line_len}.txt"));
    let mut line = vec![b'x'; line_len - 1];
    line.push(b'\n');
    let block: Vec<u8> = line.repeat((1 << 20) / line_len + 1);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut written = 0u64;
    while written < total {
        let n = (total - written).min(block.len() as u64) as usize;
        // Keep whole lines so every record is the same shape.
        let n = n - n % line_len;
        if n == 0 {
            break;
        }
        file.write_all(&block[..n])?;
        written += n as u64;
    }
    file.flush()?;
    Ok(path)
}

struct Throughput {
    seconds: f64,
    cpu_seconds: f64,
}

fn measure_throughput(kind: Kind, data: &Path, log_dir: &Path) -> anyhow::Result<Throughput> {
    let dir = data.parent().context("data dir")?.to_owned();
    let spec = BundleSpec {
        args: vec![
            "cat".into(),
            format!(
                "/data/{}",
                data.file_name().context("name")?.to_string_lossy()
            ),
        ],
        bind_mounts: vec![(dir, "/data".into())],
        ..Default::default()
    };
    let run = start(kind, &spec, Some(log_dir))?;
    let exit = run.c.exit_record_path();
    let started = Instant::now();
    run.c.start();
    let mut last_cpu = 0;
    while !exit.exists() {
        if let Some(t) = cpu_ticks(run.monitor_pid) {
            last_cpu = t;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{} did not finish within 600 s", kind.name());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(t) = cpu_ticks(run.monitor_pid) {
        last_cpu = t;
    }
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let _ = std::fs::remove_file(&run.c.log_path);
    drop(run);
    Ok(Throughput {
        seconds,
        cpu_seconds: last_cpu as f64 / hz,
    })
}

mod lifecycle;
mod streaming;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rounds = 3usize;
    let mut containers = 10usize;
    let mut gib = 1.0f64;
    let mut what = "monitor".to_owned();
    let mut log_on_disk = false;
    let mut pods = lifecycle::Settings {
        pods: 100,
        concurrent: 20,
        idle: 50,
        execs: 200,
        runtime: "runc".to_owned(),
    };
    let mut mib = 1024usize;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            "--containers" => containers = it.next().context("--containers N")?.parse()?,
            "--gib" => gib = it.next().context("--gib X")?.parse()?,
            "monitor" | "pull" | "lifecycle" | "streaming" => what = arg.clone(),
            "--mib" => mib = it.next().context("--mib N")?.parse()?,
            "--pods" => pods.pods = it.next().context("--pods N")?.parse()?,
            "--concurrent" => pods.concurrent = it.next().context("--concurrent N")?.parse()?,
            "--idle" => pods.idle = it.next().context("--idle N")?.parse()?,
            "--execs" => pods.execs = it.next().context("--execs N")?.parse()?,
            "--runtime" => pods.runtime = it.next().context("--runtime runc|crun")?.clone(),
            "--log-on-disk" => log_on_disk = true,
            other => bail!("unknown argument {other:?} (usage: crid-bench monitor [--rounds N] [--containers N] [--gib X] [--log-on-disk] | crid-bench pull [--rounds N] | crid-bench lifecycle [--pods N] [--concurrent N] [--idle N] [--execs N] [--runtime runc|crun] | crid-bench streaming [--execs N] [--mib N] [--rounds N])"),
        }
    }
    if what == "pull" {
        return pull_bench(rounds);
    }
    if what == "lifecycle" {
        return lifecycle::run(&pods);
    }
    if what == "streaming" {
        return streaming::run(&streaming::Settings {
            execs: pods.execs,
            mib,
            rounds,
            runtime: pods.runtime,
        });
    }
    require::root();
    let crimon = workspace_binary("crimon");
    println!("crimon: {}", crimon.display());
    let conmon_version = Command::new(require::tool("conmon"))
        .arg("--version")
        .output()?;
    println!(
        "{}",
        String::from_utf8_lossy(&conmon_version.stdout)
            .lines()
            .next()
            .unwrap_or("conmon")
    );

    println!("\n## memory per monitor, {containers} idle containers each (kB)");
    println!("| monitor | PSS alone | avg PSS | avg anonymous | avg RSS |");
    println!("|---|---|---|---|---|");
    let mut mem = Vec::new();
    for kind in [Kind::Crimon, Kind::Conmon] {
        let m = measure_memory(kind, containers)?;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} |",
            kind.name(),
            m.alone_pss,
            m.avg_pss,
            m.avg_anon,
            m.avg_rss
        );
        mem.push(m);
    }
    println!(
        "ratio crimon/conmon: PSS {:.2}, anonymous {:.2}",
        mem[0].avg_pss / mem[1].avg_pss,
        mem[0].avg_anon / mem[1].avg_anon
    );

    let work = tempfile::Builder::new().prefix("crid-bench").tempdir()?;
    let log_dir = work.path().join("logs");
    std::fs::create_dir_all(&log_dir)?;
    // Logs on a tmpfs by default: the disk's writeback is shared by both monitors and its
    // noise would drown their own cost. --log-on-disk measures with the disk in the loop.
    let _tmpfs = if log_on_disk {
        None
    } else {
        Some(TmpfsMount::mount(&log_dir)?)
    };
    let total = (gib * (1u64 << 30) as f64) as u64;
    println!(
        "\n## log throughput, {gib} GiB per run, median of {rounds} rounds (monitors interleaved), logs on {}",
        if log_on_disk { "disk" } else { "tmpfs" }
    );
    println!("| line size | monitor | MiB/s | monitor CPU s/GiB |");
    println!("|---|---|---|---|");
    for line_len in [120usize, 4096] {
        let data = make_lines_file(work.path(), line_len, total)?;
        let bytes = std::fs::metadata(&data)?.len() as f64;
        let kinds = [Kind::Crimon, Kind::Conmon];
        let mut rates = [Vec::new(), Vec::new()];
        let mut cpus = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, kind) in kinds.iter().enumerate() {
                let t = measure_throughput(*kind, &data, &log_dir)?;
                rates[i].push(bytes / (1 << 20) as f64 / t.seconds);
                cpus[i].push(t.cpu_seconds / (bytes / (1u64 << 30) as f64));
            }
        }
        let mut medians = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let (rate, cpu) = (median(&mut rates[i]), median(&mut cpus[i]));
            println!("| {line_len} B | {} | {rate:.0} | {cpu:.2} |", kind.name());
            medians.push((rate, cpu));
        }
        println!(
            "| {line_len} B | ratio crimon/conmon | {:.2}x | {:.2}x |",
            medians[0].0 / medians[1].0,
            medians[0].1 / medians[1].1
        );
        std::fs::remove_file(&data)?;
    }
    Ok(())
}

/// A tmpfs mounted for the run and unmounted after it.
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn mount(path: &Path) -> anyhow::Result<Self> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8g,mode=0700", "crid-bench"])
            .arg(path)
            .status()
            .context("run mount")?;
        if !status.success() {
            bail!("mounting a tmpfs on {} failed", path.display());
        }
        Ok(TmpfsMount {
            path: path.to_owned(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Pull and unpack of a multi-layer image of about 220 MB (busybox plus four 50 MiB layers of
/// random data), crid against containerd's CRI plugin, the same CRI client for both; the
/// image is removed (and its layers with it) after every pull, so each pull starts cold.
fn pull_bench(rounds: usize) -> anyhow::Result<()> {
    use crid_proto::cri;
    use crid_tests::harness::containerd::Containerd;
    use crid_tests::harness::crid::{CridOptions, CridProcess};
    use crid_tests::harness::image::{add_random_layers, build_oci_busybox};
    use crid_tests::harness::registry::Registry;

    require::root();
    let registry = Registry::start();
    let work = tempfile::Builder::new()
        .prefix("crid-bench-pull")
        .tempdir()?;
    let layout = work.path().join("layout");
    build_oci_busybox(&layout, "latest", &["sh"]);
    add_random_layers(&layout, "latest", "big", 4, 50 << 20);
    registry.push_layout(&layout, "big", "bench/big");
    let image = format!("{}/bench/big:big", registry.addr);
    let crid = CridProcess::start(&CridOptions {
        extra_toml: registry.crid_image_config(work.path()),
        ..Default::default()
    });
    let containerd = Containerd::start(&[&registry.addr], None);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut crid_times, mut ctd_times) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        let mut clients = [
            cri::image_service_client::ImageServiceClient::new(
                crid_tests::harness::crid::connect(&crid.socket).await,
            ),
            cri::image_service_client::ImageServiceClient::new(
                crid_tests::harness::crid::connect(&containerd.socket).await,
            ),
        ];
        let spec = || {
            Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            })
        };
        for round in 0..rounds {
            // Alternate who goes first.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let client = &mut clients[which];
                let started = Instant::now();
                let id = client
                    .pull_image(cri::PullImageRequest {
                        image: spec(),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("pull with {}", ["crid", "containerd"][which]))?
                    .into_inner()
                    .image_ref;
                let took = started.elapsed().as_secs_f64();
                client
                    .remove_image(cri::RemoveImageRequest {
                        image: Some(cri::ImageSpec {
                            image: id,
                            ..Default::default()
                        }),
                    })
                    .await
                    .with_context(|| format!("remove with {}", ["crid", "containerd"][which]))?;
                if which == 0 {
                    crid_times.push(took);
                } else {
                    ctd_times.push(took);
                }
            }
        }
        anyhow::Ok(())
    })?;
    let (c, d) = (median(&mut crid_times), median(&mut ctd_times));
    println!(
        "## pull and unpack, ~220 MB image (5 layers), median of {rounds} rounds, cold each time"
    );
    println!("| runtime | median s |");
    println!("|---|---|");
    println!("| crid | {c:.2} |");
    println!("| containerd 1.6 (CRI) | {d:.2} |");
    println!("| ratio crid/containerd | {:.2}x |", c / d);
    Ok(())
}
