//! Debian's containerd (1.6, with its CRI plugin) on a private root, state directory and
//! socket, as the peer the benchmarks compare crid with. `restrict_oom_score_adj` is on (the
//! test hosts lack CAP_SYS_RESOURCE), CNI plugins come from /usr/lib/cni, and registries on
//! loopback are reached through plain-HTTP mirrors.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{require, wait_for};

/// A running containerd; stopped on drop.
pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Containerd {
    /// Starts containerd with `mirrors` (registry `host:port` served over plain HTTP) and,
    /// when given, the image its pods' sandbox (pause) containers run.
    pub fn start(mirrors: &[&str], sandbox_image: Option<&str>) -> Self {
        require::root();
        let binary = require::tool("containerd");
        let dir = tempfile::Builder::new()
            .prefix("containerd-t")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let mut config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{socket}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n  sandbox_image = \"{sandbox}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{net}\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            socket = socket.display(),
            net = dir.path().join("net.d").display(),
            sandbox = sandbox_image.unwrap_or("registry.k8s.io/pause:3.6"),
        );
        for host in mirrors {
            config.push_str(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n  endpoint = [\"http://{host}\"]\n"
            ));
        }
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log file");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let up = wait_for(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(drop)
        });
        assert!(
            up.is_some(),
            "containerd did not serve {} within 30 s",
            socket.display()
        );
        Containerd { child, dir, socket }
    }

    /// containerd's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its CNI configuration directory.
    pub fn cni_config_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if wait_for(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Its overlay snapshots may still be mounted under the root.
        let root = self.dir.path().display().to_string();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            for target in mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|t| t.starts_with(&root))
            {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
    }
}
