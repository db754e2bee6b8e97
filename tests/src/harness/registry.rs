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
    /// The CA that signed the registry's certificate (TLS registries only).
    pub ca_cert: Option<std::path::PathBuf>,
    /// User and password the registry demands (htpasswd registries only).
    pub credentials: Option<(String, String)>,
    /// A directory holding `ca.crt`, `client.cert` and `client.key` (client-certificate
    /// registries only): a containers-certs.d(5) directory for this registry.
    pub certs_dir: Option<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

/// How to run the registry.
#[derive(Debug, Default, Clone)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate for 127.0.0.1 signed by a fresh test CA.
    pub tls: bool,
    /// Demand HTTP basic authentication (htpasswd, bcrypt) with these credentials.
    pub credentials: Option<(String, String)>,
    /// With `tls`: demand a client certificate signed by the test CA.
    pub client_certs: bool,
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `<out>/<name>.key` and a certificate `<out>/<name>.<ext>` for `subject`, signed by
/// the CA in `ca_dir` with the given X.509 extensions.
fn sign_certificate(
    ca_dir: &Path,
    out: &Path,
    name: &str,
    ext: &str,
    subject: &str,
    extensions: &str,
) {
    let openssl = require::tool("openssl");
    std::fs::create_dir_all(out).expect("mkdir");
    let csr = ca_dir.join(format!("{name}.csr"));
    let ext_file = ca_dir.join(format!("{name}-ext.cnf"));
    run(
        Command::new(&openssl)
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", subject])
            .arg("-keyout")
            .arg(out.join(format!("{name}.key")))
            .arg("-out")
            .arg(&csr),
        "openssl: make key",
    );
    std::fs::write(&ext_file, extensions).expect("write extensions");
    run(
        Command::new(&openssl)
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(ca_dir.join("ca.crt"))
            .arg("-CAkey")
            .arg(ca_dir.join("ca.key"))
            .arg("-out")
            .arg(out.join(format!("{name}.{ext}")))
            .arg("-extfile")
            .arg(&ext_file),
        "openssl: sign certificate",
    );
}

/// A client certificate signed by the test CA in `ca_dir`, written with the CA as a certs.d
/// directory: `out/ca.crt`, `out/client.cert`, `out/client.key`.
fn make_client_certificate(ca_dir: &Path, out: &Path) {
    sign_certificate(
        ca_dir,
        out,
        "client",
        "cert",
        "/CN=crid test client",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    std::fs::copy(ca_dir.join("ca.crt"), out.join("ca.crt")).expect("copy ca");
}

/// A test CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
fn make_certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    run(
        Command::new(require::tool("openssl"))
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=crid test CA",
            ])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.crt")),
        "openssl: make CA",
    );
    sign_certificate(
        dir,
        dir,
        "server",
        "crt",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
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
    /// Starts a plain-HTTP registry with filesystem storage on 127.0.0.1.
    pub fn start() -> Self {
        Self::start_with(&RegistryOptions::default())
    }

    /// Starts a registry on 127.0.0.1 and waits until it answers.
    pub fn start_with(options: &RegistryOptions) -> Self {
        let binary = require::tool("docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let mut ca_cert = None;
        let mut certs_dir = None;
        if options.tls {
            let (ca, cert, key) = make_certificates(dir.path());
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            if options.client_certs {
                let client_dir = dir.path().join("client-certs");
                make_client_certificate(dir.path(), &client_dir);
                yaml.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
                certs_dir = Some(client_dir);
            }
            ca_cert = Some(ca);
        }
        if let Some((user, password)) = &options.credentials {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new(require::tool("htpasswd"))
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: crid-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yaml).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry {
            child,
            addr,
            ca_cert,
            certs_dir,
            credentials: options.credentials.clone(),
            _dir: dir,
        };
        let plain = !options.tls && options.credentials.is_none();
        let up = super::wait_for(Duration::from_secs(20), || {
            if plain {
                matches!(http_get(&registry.addr, "/v2/"), Ok((200, _))).then_some(())
            } else {
                TcpStream::connect(&registry.addr).ok().map(drop)
            }
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

    /// Writes `<dir>/registries.conf` naming this registry insecure (it speaks plain HTTP)
    /// and returns the `[image]` section of a crid configuration that uses it.
    pub fn crid_image_config(&self, dir: &Path) -> String {
        self.crid_image_config_for(dir, &[&self.addr])
    }

    /// The same, with every registry of `prefixes` (`registry.k8s.io`, `gcr.io`, …) redirected
    /// to this one (registries.conf's `location`), so that images named after public
    /// registries are pulled from loopback and nothing leaves the machine.
    pub fn crid_image_config_for(&self, dir: &Path, prefixes: &[&str]) -> String {
        let conf = dir.join("registries.conf");
        let entries: String = prefixes
            .iter()
            .map(|prefix| {
                format!(
                    "[[registry]]\nprefix = \"{prefix}\"\nlocation = \"{addr}\"\ninsecure = true\n",
                    addr = self.addr
                )
            })
            .collect();
        std::fs::write(&conf, entries).expect("write registries.conf");
        format!(
            "[image]\nregistries_conf = \"{}\"\nregistries_conf_dir = \"{}\"\n",
            conf.display(),
            dir.join("registries.conf.d").display(),
        )
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes `<layout>:<tag>` to `<registry>/<repo>:<tag>` with skopeo.
    pub fn push_layout(&self, layout: &Path, tag: &str, repo: &str) {
        self.push_layout_with(layout, tag, repo, &[]);
    }

    /// The same with extra `skopeo copy` flags (manifest format, compression).
    pub fn push_layout_with(&self, layout: &Path, tag: &str, repo: &str, flags: &[&str]) {
        self.push_layout_as(layout, tag, &format!("{repo}:{tag}"), flags);
    }

    /// Pushes `<layout>:<tag>` to `<registry>/<destination>` (`repo:tag`) with skopeo and
    /// extra `skopeo copy` flags: one image of a layout under several names.
    pub fn push_layout_as(&self, layout: &Path, tag: &str, destination: &str, flags: &[&str]) {
        let skopeo = require::tool("skopeo");
        let mut cmd = Command::new(skopeo);
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(flags);
        if let Some((user, password)) = &self.credentials {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        if let Some(dir) = &self.certs_dir {
            cmd.arg(format!("--dest-cert-dir={}", dir.display()));
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{destination}", self.addr))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {}/{destination} failed: {}",
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
