//! `crid-conformance [critest flags…]`: critest (cri-tools' CRI validation suite) against a
//! private crid, as `packaging/setup.sh conformance` and CI run it.
//!
//! It builds every image critest pulls from Debian packages (see `images.rs`), pushes them to
//! a registry on loopback, starts crid with `registry.k8s.io`, `gcr.io` and `docker.io`
//! redirected there and a private CNI network (bridge, subnet, lease directory), runs critest
//! with its output passed through, removes what critest left through the CRI, stops crid and
//! the registry, and checks that nothing of crid's stays on the host. The last line it prints
//! is `conformance: N passed, N failed, N skipped`; it exits non-zero when critest failed or
//! something leaked, and then keeps crid's log and prints its path.
//!
//! `CRITEST` names the critest binary (default: `shared/cri-tools/critest` beside the
//! repository); `CRID_CONFORMANCE_CACHE` the directory the fetched `.deb`s are kept in
//! (default `/var/cache/crid-conformance`).

mod critest;
mod images;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use crid_proto::cri;
use crid_tests::harness::crid::{CridOptions, CridProcess};
use crid_tests::harness::pods::{conflist, HostTraces};
use crid_tests::harness::registry::Registry;
use crid_tests::harness::{require, wait_for};

/// The registries critest's image names point at, all served by the loopback registry.
const REDIRECTED: [&str; 3] = ["registry.k8s.io", "gcr.io", "docker.io"];
/// The private CNI network: a /24 no test or benchmark uses.
const NETWORK: &str = "crid-conformance";
const BRIDGE: &str = "crconf0";
const SUBNET: &str = "10.236.0";
/// crid's cgroup parent for pods that name none (critest's, with the cgroupfs driver).
const CGROUP_PARENT: &str = "/crid";

/// The critest binary: `$CRITEST`, else `shared/cri-tools/critest` beside the repository
/// (the workspace root's parent), wherever the checkout is.
fn critest_path() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("CRITEST") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .and_then(Path::parent)
            .context("the workspace root has no parent")?
            .join("shared/cri-tools/critest"),
    };
    anyhow::ensure!(
        path.is_file(),
        "missing: {} (set CRITEST to the critest binary)",
        path.display()
    );
    Ok(path)
}

/// SysV shared memory segments on the host that critest's HostIpc specs may have made (with
/// `ipcmk -M 1048576`, never removed): unattached ones of 1 MiB, by id.
fn unattached_mib_segments() -> Vec<String> {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            // key shmid perms size cpid lpid nattch …
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(3) == Some(&"1048576") && fields.get(6) == Some(&"0"))
                .then(|| fields[1].to_owned())
        })
        .collect()
}

/// Removes through the CRI every pod critest left (each one a leak: critest removes its own)
/// and reports them.
async fn remove_leftover_pods(crid: &CridProcess) -> anyhow::Result<Vec<String>> {
    let mut runtime = crid.runtime().await;
    let pods = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items;
    let mut leaks = Vec::new();
    for pod in pods {
        let name = pod.metadata.map(|m| m.name).unwrap_or_default();
        leaks.push(format!("pod {} ({name}) still listed", pod.id));
        runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .with_context(|| format!("StopPodSandbox {}", pod.id))?;
        runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .with_context(|| format!("RemovePodSandbox {}", pod.id))?;
    }
    let containers = runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers;
    for container in containers {
        leaks.push(format!(
            "container {} still listed after its pods were removed",
            container.id
        ));
    }
    Ok(leaks)
}

/// What the run found wrong besides failed specs.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, what: impl Into<String>) {
        let what = what.into();
        println!("conformance: {what}");
        self.0.push(what);
    }
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("conformance: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The whole run; its exit code.
fn run() -> anyhow::Result<i32> {
    let started = Instant::now();
    // Image layers get the modes written here, not the caller's umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let extra: Vec<String> = std::env::args().skip(1).collect();
    require::root();
    for tool in [
        "runc",
        "ip",
        "iptables",
        "ipcrm",
        "umoci",
        "skopeo",
        "docker-registry",
    ] {
        require::tool(tool);
    }
    let critest = critest_path()?;
    let cache = std::env::var_os("CRID_CONFORMANCE_CACHE").map_or_else(
        || PathBuf::from("/var/cache/crid-conformance"),
        PathBuf::from,
    );
    if critest::SKIPS.is_empty() {
        println!("conformance: no spec is skipped on purpose");
    } else {
        println!(
            "conformance: skipping {} specs on purpose:",
            critest::SKIPS.len()
        );
    }
    for (spec, reason) in critest::SKIPS {
        println!("  {spec} ({reason})");
    }

    let work = tempfile::Builder::new()
        .prefix("crid-conformance")
        .tempdir()
        .context("create a work directory")?;
    let built = images::build(work.path(), &cache)?;
    let registry = Registry::start();
    let digest_image = format!("gcr.io/{}", images::push(&built, &registry, work.path())?);
    println!("conformance: CRITEST_DIGEST_IMAGE={digest_image}");

    let mut crid = CridProcess::start(&CridOptions {
        extra_toml: registry.crid_image_config_for(work.path(), &REDIRECTED),
        dropin: None,
    });
    let conflist_path = crid.dir.path().join("net.d/10-conformance.conflist");
    std::fs::write(&conflist_path, conflist(NETWORK, BRIDGE, SUBNET))
        .with_context(|| format!("write {}", conflist_path.display()))?;
    let mut traces = HostTraces {
        crid_dir: crid.dir.path().to_owned(),
        crid_pid: crid.child.as_ref().map(std::process::Child::id),
        bridge: BRIDGE.to_owned(),
        network: NETWORK.to_owned(),
        subnet: SUBNET.to_owned(),
        cgroup_parent: CGROUP_PARENT.to_owned(),
        foreign_cgroups: Vec::new(),
    };
    // The parent is crid's default, which another crid on this host may be using too.
    traces.foreign_cgroups = traces.cgroups();
    let segments_before = unattached_mib_segments();

    let critest_started = Instant::now();
    let (status, summary) =
        critest::run(&critest, &crid.socket, &digest_image, &extra).context("run critest")?;
    let critest_secs = critest_started.elapsed().as_secs();

    let mut problems = Problems::default();
    match summary {
        None => problems.add(format!("critest ended ({status}) without a summary")),
        Some(s) if !status.success() && s.failed == 0 => {
            problems.add(format!("critest exited with {status}"));
        }
        Some(_) => {}
    }
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    let leftovers = tokio.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), remove_leftover_pods(&crid)).await
    });
    match leftovers {
        Ok(Ok(leaks)) => leaks
            .into_iter()
            .for_each(|l| problems.add(format!("left behind: {l}"))),
        Ok(Err(e)) => problems.add(format!("removing what critest left failed: {e:#}")),
        Err(_) => problems.add("removing what critest left took over 120 s"),
    }
    let exit = crid.stop_with(nix::sys::signal::Signal::SIGTERM);
    if !exit.success() {
        problems.add(format!("crid exited with {exit} on SIGTERM"));
    }
    traces.crid_pid = None;
    // A removed container's files go in the background; give them a moment.
    let settled = wait_for(Duration::from_secs(5), || {
        traces.leaks().is_empty().then_some(())
    });
    for leak in settled.map_or_else(|| traces.leaks(), |()| Vec::new()) {
        problems.add(format!("left behind: {leak}"));
    }
    traces.remove();
    for segment in unattached_mib_segments() {
        if !segments_before.contains(&segment) {
            let _ = std::process::Command::new("ipcrm")
                .args(["-m", &segment])
                .status();
        }
    }
    drop(registry);

    let summary = summary.unwrap_or_default();
    let failed = summary.failed > 0 || !problems.0.is_empty() || !status.success();
    if failed {
        let kept =
            std::env::temp_dir().join(format!("crid-conformance-{}.crid.log", std::process::id()));
        match std::fs::copy(&crid.stderr_path, &kept) {
            Ok(_) => println!("conformance: crid's log is kept at {}", kept.display()),
            Err(e) => println!(
                "conformance: could not keep crid's log {}: {e}",
                crid.stderr_path.display()
            ),
        }
    }
    println!(
        "conformance: critest ran {critest_secs} s, the whole run {} s",
        started.elapsed().as_secs()
    );
    println!(
        "conformance: {} passed, {} failed, {} skipped",
        summary.passed, summary.failed, summary.skipped
    );
    Ok(i32::from(failed))
}
