//! The images critest pulls, built here from Debian packages only (no internet): each under
//! the repository and tag critest names, in one OCI image layout that shares one busybox
//! base layer, then pushed to the loopback registry.
//!
//! The base is what `e2e-test-images/busybox` must hold for the specs to mean what they say:
//! Debian's *dynamic* busybox (its shell executes applets through PATH, so a masked
//! `/bin/ls` is really masked; busybox-static runs them in-process) with every applet a hard
//! link to the one binary, procps' `pgrep` and util-linux' `ipcs` (busybox has neither), each
//! with the shared libraries `ldd` finds, and users root, daemon, www-data (33) and nobody
//! (65534). The dynamic busybox package conflicts with the busybox-static the tests install,
//! so it is fetched with `apt-get download` into a cache directory and unpacked with
//! `dpkg-deb`, never installed; so is nginx, whose master process the PID-namespace specs
//! look for.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use crid_tests::harness::image::umoci;
use crid_tests::harness::registry::Registry;
use crid_tests::harness::require;

/// critest's e2e images (`registry.k8s.io/…`).
const E2E: &str = "e2e-test-images";
/// critest's own test images (`gcr.io/…`).
const STAGING: &str = "k8s-staging-cri-tools";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Users every busybox-based image knows.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nnobody:x:65534:\n";

/// What the HTTP servers serve.
const INDEX: &str = "<html><body><h1>It works!</h1></body></html>\n";

/// nginx as upstream's `e2e-test-images/nginx` runs it: master and worker, the pid file the
/// HostPID spec reads, errors on stderr (the CRI log).
const NGINX_CONF: &str = "user www-data;\n\
worker_processes 1;\n\
pid /var/run/nginx.pid;\n\
error_log stderr;\n\
events {\n    worker_connections 64;\n}\n\
http {\n    access_log off;\n    server {\n        listen 80;\n        root /usr/share/nginx/html;\n    }\n}\n";

/// The images built, in a layout, and where each goes in the registry.
pub struct Images {
    pub layout: PathBuf,
    /// (layout tag, `repository:tag` in the registry), in push order.
    pub pushes: Vec<(String, String)>,
}

/// The repository critest pulls by digest (its digest is only known after the push).
pub const DIGEST_REPOSITORY: &str = "k8s-staging-cri-tools/test-image-digest";

/// A `.deb` of `package` from `cache`, fetched with `apt-get download` when not there yet.
fn fetch_deb(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let find = || -> anyhow::Result<Option<PathBuf>> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
            .with_context(|| format!("read {}", cache.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .collect();
        found.sort();
        Ok(found.pop())
    };
    std::fs::create_dir_all(cache).with_context(|| format!("create {}", cache.display()))?;
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    let out = Command::new(require::tool("apt-get"))
        .args(["download", "-qq", package])
        .current_dir(cache)
        .output()
        .context("run apt-get download")?;
    if !out.status.success() {
        bail!(
            "apt-get download {package} into {} failed: {}",
            cache.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    find()?.with_context(|| {
        format!(
            "apt-get download left no {package} .deb in {}",
            cache.display()
        )
    })
}

/// Unpacks `deb` into `dest` with `dpkg-deb -x`.
fn extract_deb(deb: &Path, dest: &Path) -> anyhow::Result<()> {
    let out = Command::new(require::tool("dpkg-deb"))
        .arg("-x")
        .arg(deb)
        .arg(dest)
        .output()
        .context("run dpkg-deb")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -x {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The shared libraries (and the program interpreter) `binary` loads, as `ldd` finds them on
/// this host; none for a static binary.
fn libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new(require::tool("ldd"))
        .arg(binary)
        .output()
        .context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    if [&text, &errors]
        .iter()
        .any(|t| t.contains("not a dynamic executable") || t.contains("statically linked"))
    {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!("ldd {} failed: {}", binary.display(), errors.trim());
    }
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once(" => ") {
            Some((name, rest)) => {
                let path = rest.split(" (").next().unwrap_or_default().trim();
                if path == "not found" {
                    bail!(
                        "{} needs {name}, which is not on this host",
                        binary.display()
                    );
                }
                path
            }
            // The interpreter (`/lib64/ld-linux-x86-64.so.2 (0x…)`); the vDSO has no path.
            None => line.split(" (").next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A directory tree that becomes one layer.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(root: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        Ok(Tree { root })
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    fn dir(&self, inside: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.path(inside);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        set_mode(&path, mode)
    }

    fn write(&self, inside: &str, contents: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.path(inside);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
        set_mode(&path, mode)
    }

    /// Copies `from` to `inside` with `mode`, and every library it loads to the same path it
    /// has on this host, unless `base` (the layer below) already holds it.
    fn install(
        &self,
        from: &Path,
        inside: &str,
        mode: u32,
        base: Option<&Tree>,
    ) -> anyhow::Result<()> {
        let to = self.path(inside);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::copy(from, &to)
            .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
        set_mode(&to, mode)?;
        for lib in libraries(from)? {
            let inside = lib.display().to_string();
            if base.is_some_and(|b| b.path(&inside).exists()) || self.path(&inside).exists() {
                continue;
            }
            self.install(&lib, &inside, 0o755, base)?;
        }
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The busybox base: Debian's dynamic busybox with its applets as hard links, procps'
/// pgrep, util-linux' ipcs, their libraries, and the users.
fn busybox_base(tree: &Tree, busybox: &Path) -> anyhow::Result<()> {
    // Ours are the real tools: no applet may take their names.
    const NOT_APPLETS: [&str; 3] = ["busybox", "pgrep", "ipcs"];
    for dir in [
        "bin",
        "dev",
        "etc",
        "home",
        "proc",
        "sys",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "var/run",
    ] {
        tree.dir(dir, 0o755)?;
    }
    tree.dir("root", 0o700)?;
    tree.dir("tmp", 0o1777)?;
    tree.install(busybox, "/bin/busybox", 0o755, None)?;
    // A shell that ran applets in-process would find `ls` without PATH.
    let inprocess = Command::new(busybox)
        .args(["sh", "-c", "PATH=/nonexistent; ls / >/dev/null 2>&1"])
        .status()
        .context("run busybox sh")?;
    if inprocess.success() {
        bail!(
            "{}: the shell runs applets in-process instead of through PATH",
            busybox.display()
        );
    }
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .context("run busybox --list")?;
    if !out.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet.is_empty() || NOT_APPLETS.contains(&applet) {
            continue;
        }
        let link = tree.path(&format!("/bin/{applet}"));
        std::fs::hard_link(tree.path("/bin/busybox"), &link)
            .with_context(|| format!("link {}", link.display()))?;
    }
    tree.install(&require::tool("pgrep"), "/usr/bin/pgrep", 0o755, None)?;
    tree.install(&require::tool("ipcs"), "/usr/bin/ipcs", 0o755, None)?;
    tree.write("/etc/passwd", PASSWD, 0o644)?;
    tree.write("/etc/group", GROUP, 0o644)?;
    Ok(())
}

/// Builds images in one layout.
struct Builder {
    layout: PathBuf,
}

impl Builder {
    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.layout.display())
    }

    /// A new image `tag` with `tree` as its one layer.
    fn new_image(&self, tag: &str, tree: &Tree) {
        umoci(&["new", "--image", &self.image(tag)]);
        self.add_layer(tag, tree);
    }

    /// `tag` as a copy of `from` (sharing its layers), with `tree` as one more layer if given.
    fn derive(&self, from: &str, tag: &str, tree: Option<&Tree>) {
        umoci(&["tag", "--image", &self.image(from), tag]);
        if let Some(tree) = tree {
            self.add_layer(tag, tree);
        }
    }

    fn add_layer(&self, tag: &str, tree: &Tree) {
        umoci(&[
            "insert",
            "--image",
            &self.image(tag),
            &tree.root.display().to_string(),
            "/",
        ]);
    }

    /// `umoci config` with `flags` on `tag`.
    fn config(&self, tag: &str, flags: &[&str]) {
        let image = self.image(tag);
        let mut args = vec!["config", "--image", &image];
        args.extend_from_slice(flags);
        umoci(&args);
    }
}

/// Builds every image critest pulls into `<work>/layout`; the `.deb`s come from `cache`.
pub fn build(work: &Path, cache: &Path) -> anyhow::Result<Images> {
    let debs = work.join("debs");
    for package in ["busybox", "nginx"] {
        extract_deb(&fetch_deb(cache, package)?, &debs)?;
    }
    let layout = work.join("layout");
    umoci(&["init", "--layout", &layout.display().to_string()]);
    let b = Builder {
        layout: layout.clone(),
    };
    let trees = work.join("trees");
    let tree = |name: &str| Tree::new(trees.join(name));
    let mut pushes = Vec::new();
    let mut push = |tag: &str, destination: String| pushes.push((tag.to_owned(), destination));

    let base = tree("base")?;
    busybox_base(&base, &debs.join("bin/busybox"))?;
    b.new_image("busybox", &base);
    b.config(
        "busybox",
        &[
            "--config.env",
            PATH_ENV,
            "--config.workingdir",
            "/",
            "--config.cmd",
            "sh",
        ],
    );
    push("busybox", format!("{E2E}/busybox:1.29-2"));

    let www = tree("www")?;
    www.write("/www/index.html", INDEX, 0o644)?;
    // The multi-container spec looks for "httpd" in the server's log, as Apache prints.
    b.derive("busybox", "httpd", Some(&www));
    b.config(
        "httpd",
        &[
            "--config.cmd",
            "sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "echo 'httpd: serving /www on port 80'; exec httpd -f -p 80 -h /www",
        ],
    );
    push("httpd", format!("{E2E}/httpd:2.4.39-4"));
    b.derive("busybox", "hostnet-nginx", Some(&www));
    b.config(
        "hostnet-nginx",
        &[
            "--config.cmd",
            "httpd",
            "--config.cmd",
            "-f",
            "--config.cmd",
            "-p",
            "--config.cmd",
            "12003",
            "--config.cmd",
            "-h",
            "--config.cmd",
            "/www",
        ],
    );
    push(
        "hostnet-nginx",
        format!("{STAGING}/hostnet-nginx-amd64:latest"),
    );

    let nginx = tree("nginx")?;
    nginx.install(
        &debs.join("usr/sbin/nginx"),
        "/usr/sbin/nginx",
        0o755,
        Some(&base),
    )?;
    nginx.write("/etc/nginx/nginx.conf", NGINX_CONF, 0o644)?;
    nginx.write("/usr/share/nginx/html/index.html", INDEX, 0o644)?;
    for dir in ["/var/log/nginx", "/var/lib/nginx", "/var/run"] {
        nginx.dir(dir, 0o755)?;
    }
    b.derive("busybox", "nginx", Some(&nginx));
    b.config(
        "nginx",
        &[
            "--config.cmd",
            "nginx",
            "--config.cmd",
            "-g",
            "--config.cmd",
            "daemon off;",
        ],
    );
    push("nginx", format!("{E2E}/nginx:1.14-2"));

    // coreutils' id, setuid root: it reports its effective uid, 0 unless no_new_privs kept
    // the setuid bit from taking effect.
    let nnp = tree("nonewprivs")?;
    nnp.install(
        &require::tool("id"),
        "/usr/local/bin/nnp-id",
        0o4755,
        Some(&base),
    )?;
    b.derive("busybox", "nonewprivs", Some(&nnp));
    b.config(
        "nonewprivs",
        &[
            "--clear=config.cmd",
            "--config.entrypoint",
            "/bin/sh",
            "--config.entrypoint",
            "-c",
            "--config.entrypoint",
            "echo \"Effective uid: $(/usr/local/bin/nnp-id -u)\"",
        ],
    );
    push("nonewprivs", format!("{E2E}/nonewprivs:1.3"));

    let pause = tree("pause")?;
    pause.install(&require::tool("catatonit"), "/catatonit", 0o755, None)?;
    b.new_image("pause", &pause);
    b.config(
        "pause",
        &[
            "--config.entrypoint",
            "/catatonit",
            "--config.entrypoint",
            "-P",
        ],
    );
    push("pause", "pause:3.10".to_owned());
    push("pause", "pause:3.9".to_owned());

    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
    ] {
        b.derive("busybox", name, None);
        b.config(name, &["--config.user", user]);
        push(name, format!("{STAGING}/{name}:latest"));
    }

    // uid 1000 is in a group of the image's own: SupplementalGroupsPolicy's specs.
    let group = tree("predefined-group")?;
    group.write(
        "/etc/passwd",
        &format!("{PASSWD}default-user:x:1000:1000:default-user:/home/default-user:/bin/sh\n"),
        0o644,
    )?;
    group.write(
        "/etc/group",
        &format!("{GROUP}default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"),
        0o644,
    )?;
    group.dir("/home/default-user", 0o755)?;
    b.derive("busybox", "test-image-predefined-group", Some(&group));
    b.config("test-image-predefined-group", &["--config.user", "1000"]);
    push(
        "test-image-predefined-group",
        format!("{STAGING}/test-image-predefined-group:latest"),
    );

    // Images only pulled, listed and removed: one small layer each, told apart by a marker.
    for (name, tags) in [
        ("test-image-latest", &["latest"][..]),
        ("test-image-tag", &["test", "all"][..]),
        ("test-image-digest", &["latest"][..]),
        ("test-image-1", &["latest"][..]),
        ("test-image-2", &["latest"][..]),
        ("test-image-3", &["latest"][..]),
        ("test-image-tags", &["1", "2", "3"][..]),
    ] {
        let marker = tree(name)?;
        marker.write("/marker", &format!("{name}\n"), 0o644)?;
        b.new_image(name, &marker);
        for tag in tags {
            push(name, format!("{STAGING}/{name}:{tag}"));
        }
    }
    Ok(Images { layout, pushes })
}

/// Pushes every image; returns `<repository>@<digest>` of the one critest pulls by digest.
pub fn push(images: &Images, registry: &Registry, work: &Path) -> anyhow::Result<String> {
    let digest_file = work.join("digest");
    let mut digest = None;
    let mut names = BTreeSet::new();
    for (tag, destination) in &images.pushes {
        let by_digest = destination.starts_with(&format!("{DIGEST_REPOSITORY}:"));
        let flag = format!("--digestfile={}", digest_file.display());
        let flags: &[&str] = if by_digest { &[&flag] } else { &[] };
        registry.push_layout_as(&images.layout, tag, destination, flags);
        names.insert(destination.as_str());
        if by_digest {
            let text = std::fs::read_to_string(&digest_file)
                .with_context(|| format!("read {}", digest_file.display()))?;
            digest = Some(format!("{DIGEST_REPOSITORY}@{}", text.trim()));
        }
    }
    println!(
        "conformance: pushed {} images to {}: {}",
        names.len(),
        registry.addr,
        names.into_iter().collect::<Vec<_>>().join(", ")
    );
    digest.with_context(|| format!("no image was pushed to {DIGEST_REPOSITORY}"))
}
