//! Recording fakes of the host's programs, and a [`State`] on temporary directories that
//! drives them: pod and container lifecycles without root, runc, CNI or crimon.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crid_cni::CniError;
use crid_common::exit_record::ExitRecord;
use crid_proto::cri;
use serde_json::{json, Value};

use crate::config::{Config, NetworkConfig};
use crate::host::{BoxFuture, Host, MonitorLauncher, NamespacePinner, OciRuntimeOps, PodNetwork};
use crate::monitor_client::{MonitorClientError, MonitorSpec};
use crate::namespaces::{NamespaceError, PinRequest, PodNamespaces};
use crate::oci_runtime::RuntimeError;
use crate::state::State;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every call the fakes saw, in order (`"pin <id>"`, `"kill <id> 15 all=false"`…).
#[derive(Default)]
pub struct Calls(Mutex<Vec<String>>);

impl Calls {
    fn push(&self, call: String) {
        lock(&self.0).push(call);
    }

    /// The calls so far.
    pub fn all(&self) -> Vec<String> {
        lock(&self.0).clone()
    }

    /// The calls so far whose first word is `verb`.
    pub fn of(&self, verb: &str) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|c| c.split(' ').next() == Some(verb))
            .collect()
    }
}

/// A runtime whose containers exit (with 128 + signal, recorded as a monitor records it) on
/// the signals in `exits_on`, and ignore the others.
pub struct FakeRuntime {
    calls: Arc<Calls>,
    exits: PathBuf,
    pub exits_on: Mutex<Vec<i32>>,
    /// Ids the runtime still keeps state for.
    pub containers: Mutex<BTreeSet<String>>,
}

impl FakeRuntime {
    fn call(&self, call: String) -> BoxFuture<'_, Result<(), RuntimeError>> {
        self.calls.push(call);
        Box::pin(async { Ok(()) })
    }
}

impl OciRuntimeOps for FakeRuntime {
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.call(format!("start {id}"))
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        _file: &'a Path,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.call(format!("update {id}"))
    }

    fn kill<'a>(
        &'a self,
        id: &'a str,
        signal: i32,
        all: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        if lock(&self.exits_on).contains(&signal) {
            let record = ExitRecord {
                exit_code: 128 + signal,
                finished_at: "2026-01-01T00:00:00.000000000Z".into(),
                oom_killed: false,
            };
            let path = crid_common::monitor_paths::exit_record(&self.exits, id);
            if let Err(err) = record.write_durably(&path) {
                panic!("fake runtime: {err}");
            }
            lock(&self.containers).remove(id);
        }
        self.call(format!("kill {id} {signal} all={all}"))
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        lock(&self.containers).remove(id);
        self.call(format!("delete {id}"))
    }

    fn has_state(&self, id: &str) -> bool {
        lock(&self.containers).contains(id)
    }
}

/// A monitor launcher whose monitors answer for the ids in `answering`.
pub struct FakeMonitors {
    calls: Arc<Calls>,
    pub answering: Mutex<BTreeSet<String>>,
}

impl MonitorLauncher for FakeMonitors {
    fn create<'a>(
        &'a self,
        spec: &'a MonitorSpec,
    ) -> BoxFuture<'a, Result<i32, MonitorClientError>> {
        self.calls.push(format!("create {}", spec.id));
        lock(&self.answering).insert(spec.id.clone());
        Box::pin(async { Ok(4242) })
    }

    fn answers(&self, _socket_dir: &Path, id: &str) -> bool {
        lock(&self.answering).contains(id)
    }
}

/// A network whose ADD fails while `fail_add` is set, and whose ADD leaves `<pods>/<id>/hosts`
/// a directory (so that writing the pod's hosts file, the step after it, fails) while
/// `break_hosts` is set; DEL fails while `fail_del` is set.
pub struct FakeNetwork {
    calls: Arc<Calls>,
    pods: PathBuf,
    pub fail_add: AtomicBool,
    pub break_hosts: AtomicBool,
    pub fail_del: AtomicBool,
    /// Pods attached and not detached.
    pub attached: Mutex<BTreeSet<String>>,
}

fn cni_failure(what: &str) -> CniError {
    CniError::BadConfig {
        path: PathBuf::from("/fake"),
        why: format!("{what} fails (fake)"),
    }
}

impl PodNetwork for FakeNetwork {
    fn attach<'a>(
        &'a self,
        _network: &'a NetworkConfig,
        id: &'a str,
        netns: &'a Path,
        _config: &'a cri::PodSandboxConfig,
    ) -> BoxFuture<'a, Result<Value, CniError>> {
        self.calls.push(format!("add {id} {}", netns.display()));
        let result = if self.fail_add.load(Ordering::SeqCst) {
            Err(cni_failure("ADD"))
        } else {
            if self.break_hosts.load(Ordering::SeqCst) {
                let _ = std::fs::create_dir(self.pods.join(id).join("hosts"));
            }
            lock(&self.attached).insert(id.to_owned());
            Ok(json!({ "cniVersion": "1.0.0", "ips": [{ "address": "10.88.0.7/16" }] }))
        };
        Box::pin(async move { result })
    }

    fn detach<'a>(
        &'a self,
        _network: &'a NetworkConfig,
        id: &'a str,
        netns: &'a Path,
        _config: &'a cri::PodSandboxConfig,
        added: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<(), CniError>> {
        self.calls.push(format!(
            "del {id} {} with_result={}",
            netns.display(),
            added.is_some()
        ));
        let result = if self.fail_del.load(Ordering::SeqCst) {
            Err(cni_failure("DEL"))
        } else {
            lock(&self.attached).remove(id);
            Ok(())
        };
        Box::pin(async move { result })
    }
}

/// A pinner that makes plain files for pins (and fails while `fail` is set).
pub struct FakePinner {
    calls: Arc<Calls>,
    pub fail: AtomicBool,
    /// Pin files made and not removed.
    pub pinned: Mutex<BTreeSet<PathBuf>>,
}

impl NamespacePinner for FakePinner {
    fn pin<'a>(
        &'a self,
        dir: &'a Path,
        id: &'a str,
        request: &'a PinRequest,
    ) -> BoxFuture<'a, Result<PodNamespaces, NamespaceError>> {
        self.calls.push(format!("pin {id}"));
        let result = if self.fail.load(Ordering::SeqCst) {
            Err(NamespaceError::Failed {
                id: id.to_owned(),
                message: "fake".into(),
            })
        } else {
            let mut pinned = lock(&self.pinned);
            let mut pin = |kind: &str, on: bool| {
                on.then(|| {
                    let path = dir.join(kind).join(id);
                    std::fs::create_dir_all(dir.join(kind)).expect("pin dir");
                    std::fs::write(&path, b"").expect("pin file");
                    pinned.insert(path.clone());
                    path
                })
            };
            Ok(PodNamespaces {
                net: pin("net", request.net),
                ipc: pin("ipc", request.ipc),
                uts: pin("uts", request.uts),
                pid: pin("pid", request.pid),
                pid_holder: None,
                user: pin("user", request.user.is_some()),
            })
        };
        Box::pin(async move { result })
    }

    fn unpin(&self, namespaces: &PodNamespaces) -> Result<(), NamespaceError> {
        self.calls.push("unpin".into());
        let mut pinned = lock(&self.pinned);
        for file in namespaces.files() {
            let _ = std::fs::remove_file(file);
            pinned.remove(file);
        }
        Ok(())
    }
}

/// The fakes of one test, sharing one call log, with a [`State`] under a temporary
/// directory that drives them.
pub struct Fakes {
    pub calls: Arc<Calls>,
    pub runtime: Arc<FakeRuntime>,
    pub monitors: Arc<FakeMonitors>,
    pub network: Arc<FakeNetwork>,
    pub pinner: Arc<FakePinner>,
    pub dir: tempfile::TempDir,
}

impl Fakes {
    /// Fakes that succeed at everything, for a state under a new temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let paths = crate::state::StatePaths::new(&config);
        let calls = Arc::new(Calls::default());
        Fakes {
            runtime: Arc::new(FakeRuntime {
                calls: calls.clone(),
                exits: paths.exits,
                exits_on: Mutex::new(vec![libc::SIGTERM, libc::SIGKILL]),
                containers: Mutex::default(),
            }),
            monitors: Arc::new(FakeMonitors {
                calls: calls.clone(),
                answering: Mutex::default(),
            }),
            network: Arc::new(FakeNetwork {
                calls: calls.clone(),
                pods: paths.pods,
                fail_add: AtomicBool::new(false),
                break_hosts: AtomicBool::new(false),
                fail_del: AtomicBool::new(false),
                attached: Mutex::default(),
            }),
            pinner: Arc::new(FakePinner {
                calls: calls.clone(),
                fail: AtomicBool::new(false),
                pinned: Mutex::default(),
            }),
            calls,
            dir,
        }
    }

    /// A state (as loaded at startup: every record on disk) that drives these fakes.
    pub fn state(&self) -> State {
        let config = config(self.dir.path());
        let images = crid_image::ImageStore::open(config.root.clone(), config.image.clone())
            .expect("image store");
        let host = Host {
            runtime: self.runtime.clone(),
            monitors: self.monitors.clone(),
            network: self.network.clone(),
            pinner: self.pinner.clone(),
        };
        State::load_with(Arc::new(config), Arc::new(images), host).expect("state")
    }
}

/// crid's configuration with every directory under `dir`.
fn config(dir: &Path) -> Config {
    let mut config = Config {
        root: dir.join("root"),
        runroot: dir.join("run"),
        listen: dir.join("run/crid.sock"),
        ..Default::default()
    };
    config.runtime.runtime_root = dir.join("runc");
    config.network.cni_config_dir = dir.join("cni");
    config
}
