//! Hostile children: the programs crid runs (CNI plugins here) get only checked values, and
//! one that hangs cannot hang crid or leave anything behind. Anchors: CRI-O's `timeout.bats`
//! (sleeping plugin and pinns wrappers) and §2.5 B.11 (ids and names) of
//! `../shared/reference/style-and-security-anchors.md`; CNI_ARGS injection through pod
//! metadata is the `;` class of CVE-2022-0811 (a separator smuggled in a value).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crid_proto::cri;
use crid_tests::harness::crid::{CridOptions, CridProcess};
use crid_tests::harness::pods::HostTraces;
use crid_tests::harness::require;

fn pod_config(name: &str, namespace: &str, uid: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid: uid.to_owned(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

async fn run_pod(
    crid: &CridProcess,
    config: cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    crid.runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn pod_count(crid: &CridProcess) -> usize {
    crid.runtime()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .len()
}

/// `;`, `=` and NUL in pod metadata would add CNI_ARGS keys of their own
/// (`K8S_POD_NAME=x;K8S_POD_NAMESPACE=kube-system`): refused, naming the field, before
/// anything is made.
#[tokio::test]
async fn cni_args_injection_through_pod_metadata_is_refused() {
    let crid = CridProcess::start(&CridOptions::default());
    let cases = [
        (
            pod_config("web;K8S_POD_NAMESPACE=kube-system", "default", "u1"),
            "config.metadata.name",
        ),
        (
            pod_config("web", "default;IgnoreUnknown=0", "u1"),
            "config.metadata.namespace",
        ),
        (pod_config("web", "default", "u1=2"), "config.metadata.uid"),
        (
            pod_config("web\0x", "default", "u1"),
            "config.metadata.name",
        ),
        (pod_config("web", "default", "u\n1"), "config.metadata.uid"),
        (
            pod_config(&"n".repeat(254), "default", "u1"),
            "config.metadata.name",
        ),
    ];
    for (config, field) in cases {
        let meta = config.metadata.clone().expect("metadata");
        let status = run_pod(&crid, config)
            .await
            .expect_err("hostile metadata refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{meta:?}: {status:?}"
        );
        assert!(status.message().contains(field), "{meta:?}: {status:?}");
    }
    assert_eq!(pod_count(&crid).await, 0, "no pod was made");
    // Names as critest makes them still run: the check is not the whole Kubernetes name
    // grammar (critest uses upper case). Host network: this crid has no CNI configuration.
    let mut fine = pod_config("PodSandbox-for-Test_1.x", "ns_1", "0b2c-UID");
    fine.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run_pod(&crid, fine)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", crid.stderr()));
    let mut runtime = crid.runtime().await;
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .expect("RemovePodSandbox");
}

/// Removes the network's bridge and leases even when the test fails half-way.
struct Cleanup(HostTraces);

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.remove();
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .expect("a pid")
}

/// What a hanging plugin left: the test's view of one failed RunPodSandbox.
struct Hang {
    crid: CridProcess,
    traces: HostTraces,
    _cleanup: Cleanup,
    _work: tempfile::TempDir,
    status: tonic::Status,
    took: Duration,
    /// The plugin's pid and its child's, from the ADD that hung.
    plugin: i32,
    sleeper: i32,
}

const PLUGIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts crid with a CNI network whose only plugin, `hang-bridge`, attaches the pod with the
/// real bridge plugin (a veth, an address leased) and then never answers, with a child of its
/// own in its process group; with `hang_del`, DEL hangs the same way (after detaching).
async fn run_with_hanging_plugin(hang_del: bool) -> Hang {
    require::root();
    for tool in ["ip", "iptables"] {
        require::tool(tool);
    }
    let bridge_plugin = Path::new("/usr/lib/cni/bridge");
    assert!(
        bridge_plugin.is_file() && Path::new("/usr/lib/cni/host-local").is_file(),
        "missing: Debian's containernetworking-plugins (/usr/lib/cni/bridge, host-local)"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let pids = work.path().join("pids");
    std::fs::create_dir(&pids).expect("mkdir");
    let source = work.path().join("hang-bridge.sh");
    let hang = format!(
        "echo $$ > {pids}/$CNI_COMMAND.plugin\nsleep 100000 &\necho $! > {pids}/$CNI_COMMAND.sleeper\nwait\n",
        pids = pids.display()
    );
    let on_del = if hang_del { hang.as_str() } else { "" };
    std::fs::write(
        &source,
        format!(
            "#!/bin/sh\n\
             input=$(cat)\n\
             if [ \"$CNI_COMMAND\" != ADD ]; then\n\
             printf '%s' \"$input\" | {bridge}\n\
             status=$?\n\
             {on_del}\
             exit $status\n\
             fi\n\
             printf '%s' \"$input\" | {bridge} > /dev/null\n\
             {hang}",
            bridge = bridge_plugin.display(),
        ),
    )
    .expect("write plugin");
    // Installed by another program, so no descriptor of ours open for writing can make the
    // exec fail with ETXTBSY.
    let installed = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(&source)
        .arg(bin.join("hang-bridge"))
        .status()
        .expect("install");
    assert!(installed.success());

    let crid = CridProcess::start(&CridOptions {
        // Appended to crid.toml's [network] table.
        extra_toml: format!(
            "cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nplugin_timeout_secs = {}\n",
            bin.display(),
            PLUGIN_TIMEOUT.as_secs()
        ),
        dropin: None,
    });
    let n = std::process::id() % 200 + u32::from(hang_del) * 50;
    let network = format!("crid-hang-{}-{}", std::process::id(), u8::from(hang_del));
    let bridge = format!("crh{}x{}", std::process::id() % 100_000, u8::from(hang_del));
    let subnet = format!("10.236.{}", n % 250);
    let traces = HostTraces {
        crid_dir: crid.dir.path().to_owned(),
        crid_pid: crid.child.as_ref().map(std::process::Child::id),
        bridge: bridge.clone(),
        network: network.clone(),
        subnet: subnet.clone(),
        cgroup_parent: format!("/crid-hang-{}", std::process::id()),
        foreign_cgroups: Vec::new(),
    };
    let cleanup = Cleanup(traces.clone());
    std::fs::write(
        crid.dir.path().join("net.d/10-hang.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [{
                "type": "hang-bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": format!("{subnet}.0/24") }]]
                }
            }]
        })
        .to_string(),
    )
    .expect("write conflist");

    let started = Instant::now();
    let status = run_pod(&crid, pod_config("hang", "test", "uid-hang"))
        .await
        .expect_err("the plugin never answers");
    let took = started.elapsed();
    Hang {
        plugin: read_pid(&pids.join("ADD.plugin")),
        sleeper: read_pid(&pids.join("ADD.sleeper")),
        crid,
        traces,
        _cleanup: cleanup,
        _work: work,
        status,
        took,
    }
}

impl Hang {
    /// The call failed with DeadlineExceeded naming the plugin, after the timeout (and, with
    /// a hanging DEL, after the DEL's own).
    fn assert_deadline_exceeded(&self, timeouts: u32) {
        assert_eq!(
            self.status.code(),
            tonic::Code::DeadlineExceeded,
            "{:?}\n{}",
            self.status,
            self.crid.stderr()
        );
        let message = self.status.message();
        assert!(
            message.contains("hang-bridge") && message.contains("ADD"),
            "{message}"
        );
        let least = PLUGIN_TIMEOUT * timeouts;
        assert!(
            self.took >= least && self.took < least + Duration::from_secs(15),
            "took {:?}",
            self.took
        );
    }

    /// Waits until the plugin and its child are dead and nothing but `allowed` leaks remain.
    fn assert_left_only(&self, allowed: &[&str]) {
        let unexpected = || {
            self.traces
                .leaks()
                .into_iter()
                .filter(|l| !allowed.iter().any(|a| l.starts_with(a)))
                .collect::<Vec<_>>()
        };
        let gone = crid_tests::harness::wait_for(Duration::from_secs(5), || {
            (!alive(self.plugin) && !alive(self.sleeper) && unexpected().is_empty()).then_some(())
        });
        assert!(
            gone.is_some(),
            "plugin alive: {}, its child alive: {}, left behind: {:#?}\n{}",
            alive(self.plugin),
            alive(self.sleeper),
            unexpected(),
            self.crid.stderr(),
        );
        // The plugin was crid's child: reaped, not left a zombie.
        let crid_pid = self.traces.crid_pid.expect("crid pid");
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.plugin)).unwrap_or_default();
        assert!(
            !stat.contains(&format!(") Z {crid_pid} ")),
            "plugin reaped: {stat}"
        );
        let pods_dir: PathBuf = self.crid.dir.path().join("root/pods");
        assert_eq!(
            std::fs::read_dir(&pods_dir).map(|d| d.count()).unwrap_or(0),
            0,
            "no pod directory left in {}",
            pods_dir.display()
        );
    }

    async fn assert_crid_serves_no_pod(&self) {
        assert_eq!(pod_count(&self.crid).await, 0, "no pod recorded");
        self.crid
            .runtime()
            .await
            .version(cri::VersionRequest::default())
            .await
            .expect("crid still answers");
    }
}

/// A plugin that attaches the pod and then never answers: RunPodSandbox fails with
/// DeadlineExceeded naming the plugin once `[network] plugin_timeout_secs` has passed, the
/// plugin and its process group are killed and reaped, DEL releases what ADD made (veth,
/// lease), and nothing remains: namespaces, mounts, processes, pod directory.
#[tokio::test]
async fn a_hanging_cni_plugin_is_killed_and_leaves_nothing() {
    let hang = run_with_hanging_plugin(false).await;
    hang.assert_deadline_exceeded(1);
    hang.assert_left_only(&[]);
    hang.assert_crid_serves_no_pod().await;
}

/// The same plugin hanging on DEL too: DEL is killed after its own timeout (not retried), and
/// the pod's namespaces, /dev/shm and PID holder are removed all the same (the veth goes with
/// the network namespace). Only the plugin's own record, the IP lease, stays: what CRI-O
/// leaves in this case too.
#[tokio::test]
async fn a_cni_plugin_hanging_on_del_too_leaves_only_its_lease() {
    let hang = run_with_hanging_plugin(true).await;
    hang.assert_deadline_exceeded(2);
    hang.assert_left_only(&["IP lease"]);
    hang.assert_crid_serves_no_pod().await;
}
