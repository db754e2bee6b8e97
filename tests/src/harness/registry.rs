//! Debian's docker-registry on a free loopback port, started and stopped by the test, and
//! filled with images pushed by skopeo.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::require;

/// A running registry; stopped (and its storage removed) on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

/// Manifest media types we accept (the registry answers 404 for a type not accepted).
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A plain HTTP GET on loopback; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {MANIFEST_TYPES}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

impl Registry {
    /// Starts a registry with filesystem storage on 127.0.0.1 and waits until it answers.
    pub fn start() -> Self {
        let binary = require::tool("docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry {
            child,
            addr,
            _dir: dir,
        };
        let up = super::wait_for(Duration::from_secs(20), || {
            matches!(http_get(&registry.addr, "/v2/"), Ok((200, _))).then_some(())
        });
        if up.is_none() {
            let _ = registry.child.kill();
            panic!(
                "docker-registry did not answer on {} within 20 s",
                registry.addr
            );
        }
        registry
    }

    /// Pushes `<layout>:<tag>` to `<registry>/<repo>:<tag>` with skopeo.
    pub fn push_layout(&self, layout: &Path, tag: &str, repo: &str) {
        let skopeo = require::tool("skopeo");
        let out = Command::new(skopeo)
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {} failed: {}",
            self.addr,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
