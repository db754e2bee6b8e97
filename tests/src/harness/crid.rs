//! Starts crid on a temporary root, runroot and socket, and talks CRI to it with tonic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crid_proto::cri::image_service_client::ImageServiceClient;
use crid_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{require, wait_for, workspace_binary};

/// A running crid; stopped with SIGTERM (then SIGKILL) on drop.
pub struct CridProcess {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config_file: PathBuf,
    pub stderr_path: PathBuf,
}

/// Extra TOML appended to the test configuration.
#[derive(Debug, Default, Clone)]
pub struct CridOptions {
    pub extra_toml: String,
    /// A drop-in (`conf.d/50-test.toml`) written before crid starts.
    pub dropin: Option<String>,
}

impl CridProcess {
    /// Starts crid with a private root, runroot, socket and CNI config dir, and waits for its
    /// socket to appear.
    pub fn start(options: &CridOptions) -> Self {
        require::root();
        let dir = tempfile::Builder::new()
            .prefix("crid-t")
            .tempdir()
            .expect("tempdir");
        // Searchable by every user (not listable), as /var/lib is: root of a pod's user
        // namespace is an unprivileged host user, and the runtime reaches the container's
        // rootfs under crid's root as that user.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("chmod the crid directory");
        }
        let socket = dir.path().join("crid.sock");
        let cni_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&cni_dir).expect("mkdir");
        let config_file = dir.path().join("crid.toml");
        std::fs::write(
            &config_file,
            format!(
                "root = \"{root}\"\nrunroot = \"{runroot}\"\nlisten = \"{socket}\"\nlog_level = \"debug\"\n\
                 [runtime]\nruntime_path = \"{runc}\"\nruntime_root = \"{runroot}/runc\"\n\
                 [network]\ncni_config_dir = \"{cni}\"\n{extra}",
                root = dir.path().join("root").display(),
                runroot = dir.path().join("run").display(),
                socket = socket.display(),
                runc = require::tool("runc").display(),
                cni = cni_dir.display(),
                extra = options.extra_toml,
            ),
        )
        .expect("write crid.toml");
        if let Some(dropin) = &options.dropin {
            std::fs::create_dir_all(dir.path().join("conf.d")).expect("mkdir conf.d");
            std::fs::write(dir.path().join("conf.d/50-test.toml"), dropin).expect("write drop-in");
        }
        let mut process = CridProcess {
            child: None,
            stderr_path: dir.path().join("crid.stderr"),
            dir,
            socket,
            config_file,
        };
        process.spawn();
        process
    }

    /// Runs another crid with the same configuration (for the second-instance test).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(workspace_binary("crid"));
        cmd.arg("--config")
            .arg(&self.config_file)
            .arg("--config-dir")
            .arg(self.dir.path().join("conf.d"));
        cmd
    }

    fn spawn(&mut self) {
        let stderr = std::fs::File::create(&self.stderr_path).expect("create stderr file");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start crid");
        self.child = Some(child);
        let socket = self.socket.clone();
        // Connectable, not merely present: a killed crid leaves its socket file behind.
        let up = wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(drop)
        });
        assert!(
            up.is_some(),
            "crid did not create {} within 20 s: {}",
            socket.display(),
            self.stderr()
        );
    }

    /// Starts crid again with the same configuration (after it stopped or was killed).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "crid is still running");
        self.spawn();
    }

    /// crid's standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `signal` and waits for crid to exit; returns its exit status.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("crid is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let status = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
        match status {
            Some(status) => status,
            None => {
                let _ = child.kill();
                panic!("crid did not exit within 20 s of {signal}")
            }
        }
    }

    /// A CRI runtime client.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(connect(&self.socket).await)
    }

    /// A CRI image client.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(connect(&self.socket).await)
    }
}

/// A tonic channel over a unix socket.
pub async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_owned();
    Endpoint::try_from("http://[::1]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to crid socket")
}

impl Drop for CridProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
