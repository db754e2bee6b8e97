//! The image config (`application/vnd.oci.image.config.v1+json`, Docker's `container.Config`):
//! parsed strictly, once at pull and again at CreateContainer, by the same types. A config that
//! does not parse is an error, never a default: a default would silently run the container as
//! root, with no entrypoint and no environment.
//!
//! Values are taken as Go writes and reads them: a JSON `null` is the field's zero value, as
//! `encoding/json` leaves it; a value of the wrong type is an error.
//!
//! The working directory (the request's, else the image's) is checked where the container is
//! created: absolute, no `..`, and not under `/proc` or `/dev` once the image's own symlinks
//! are followed. A working directory of `/proc/self/fd/<n>` is how CVE-2024-21626 reached a
//! host directory through a file descriptor the runtime leaked, and `/dev/fd/<n>` reaches the
//! same through the links the runtime makes in the /dev crid mounts; crid refuses the whole
//! class itself, whatever the runtime does (distributions backport runc's fix without changing
//! its version).

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use serde::{Deserialize, Deserializer};

use super::digest::Digest;
use super::fsops;

/// Symlinks followed while resolving a working directory (Linux's MAXSYMLINKS).
const MAX_SYMLINK_HOPS: usize = 40;

/// Why an image config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("image config does not parse")]
    Parse(#[source] serde_json::Error),
    #[error("image config has {diff_ids} diff ids for {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
    #[error("rootfs.diff_ids[{index}] is refused")]
    DiffId {
        index: usize,
        #[source]
        err: super::digest::DigestError,
    },
}

/// A JSON `null` as the field's default (Go's zero value).
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The parts of an OCI image config a container uses.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ImageConfig {
    #[serde(default, rename = "config", deserialize_with = "nullable")]
    pub config: ImageRuntimeConfig,
}

/// The image config's `config` object: how a container of the image runs.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageRuntimeConfig {
    #[serde(default, deserialize_with = "nullable")]
    pub user: String,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub working_dir: String,
    #[serde(default, deserialize_with = "nullable")]
    pub stop_signal: String,
}

impl ImageConfig {
    /// Parses an image config; one that does not parse is an error.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(json).map_err(ConfigError::Parse)
    }
}

/// An image config as a pull reads it: how containers run, and the layers' diff ids.
#[derive(Debug, Deserialize)]
struct ConfigDocument {
    #[serde(default, deserialize_with = "nullable")]
    config: ImageRuntimeConfig,
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// What a pull takes from an image config.
#[derive(Debug)]
pub struct PulledConfig {
    pub runtime: ImageRuntimeConfig,
    /// `rootfs.diff_ids`, each checked.
    pub diff_ids: Vec<Digest>,
}

/// Parses the config of an image with `layers` layers: the whole runtime config (as
/// CreateContainer will) and every diff id.
pub fn parse_pulled(json: &str, layers: usize) -> Result<PulledConfig, ConfigError> {
    let doc: ConfigDocument = serde_json::from_str(json).map_err(ConfigError::Parse)?;
    if doc.rootfs.diff_ids.len() != layers {
        return Err(ConfigError::LayerCount {
            diff_ids: doc.rootfs.diff_ids.len(),
            layers,
        });
    }
    let diff_ids = doc
        .rootfs
        .diff_ids
        .iter()
        .enumerate()
        .map(|(index, raw)| Digest::parse(raw).map_err(|err| ConfigError::DiffId { index, err }))
        .collect::<Result<_, _>>()?;
    Ok(PulledConfig {
        runtime: doc.config,
        diff_ids,
    })
}

/// The links a runtime makes in a container's /dev that lead into /proc (runc's and crun's
/// default symlinks).
const RUNTIME_PROC_LINKS_IN_DEV: [&str; 5] = ["fd", "stdin", "stdout", "stderr", "core"];

/// Checks a container's working directory: `request` (the CRI `working_dir`) when set, else
/// `image_dir` (the image's `WorkingDir`). It must be absolute, without `..`, and must not be
/// or resolve (through the symlinks of the root filesystem at `rootfs`) to `/proc`, `/dev`
/// or below (nor below where the image's own `/proc` or `/dev` symlink leads).
/// The error says which value, and names `image`.
pub fn check_working_dir(
    rootfs: &Path,
    request: &str,
    image_dir: &str,
    image: &str,
) -> Result<(), String> {
    let (what, cwd) = if !request.is_empty() {
        ("config.working_dir".to_owned(), request)
    } else if !image_dir.is_empty() {
        (format!("the WorkingDir of image {image}"), image_dir)
    } else {
        return Ok(());
    };
    let refuse = |why: String| Err(format!("{what} {cwd:?} {why}"));
    if !cwd.starts_with('/') {
        return refuse("is not an absolute path".into());
    }
    if cwd.contains('\0') {
        return refuse("contains a NUL byte".into());
    }
    if Path::new(cwd)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return refuse("has a '..' component".into());
    }
    let resolved = match resolve_in_root(rootfs, cwd) {
        Ok(resolved) => resolved,
        Err(why) => return refuse(why.into()),
    };
    let shown = |parts: &[OsString]| {
        let parts: Vec<_> = parts.iter().map(|c| c.to_string_lossy()).collect();
        format!("/{}", parts.join("/"))
    };
    // /proc, and the links the runtime makes in the /dev crid mounts (its own tmpfs, whose
    // content the image does not decide) into /proc: /dev/fd -> /proc/self/fd, /dev/stdin,
    // stdout, stderr -> /proc/self/fd/0..2, /dev/core -> /proc/kcore. `/dev/fd/7` is
    // CVE-2024-21626's `/proc/self/fd/7` by another name. The rest of /dev (/dev/shm, often a
    // memory-backed emptyDir, /dev/mqueue) is a working directory like any other. Each is
    // taken both as written and where the image's own symlinks lead it (the runtime follows
    // them when it mounts /dev).
    for top in ["proc", "dev"] {
        let written = [OsString::from(top)];
        let image_top = resolve_in_root(rootfs, top).unwrap_or_else(|_| written.to_vec());
        for prefix in [&written[..], &image_top[..]] {
            let into_proc = match top {
                "proc" => resolved.starts_with(prefix),
                _ => {
                    resolved.starts_with(prefix)
                        && resolved.get(prefix.len()).is_some_and(|name| {
                            RUNTIME_PROC_LINKS_IN_DEV.iter().any(|link| name == *link)
                        })
                }
            };
            if into_proc {
                let why = match top {
                    "proc" => {
                        "which CVE-2024-21626 used to reach host files through the \
                               runtime's file descriptors"
                    }
                    _ => {
                        "where the runtime links into /proc (/dev/fd to /proc/self/fd: \
                          CVE-2024-21626's class)"
                    }
                };
                let through = if prefix == written.as_slice() {
                    String::new()
                } else {
                    format!(", and the image's /{top} resolves to {}", shown(prefix))
                };
                return refuse(format!(
                    "is under /{top} (it resolves to {} in the image{through}), {why}",
                    shown(&resolved)
                ));
            }
        }
    }
    Ok(())
}

/// The components of `path` as seen from inside `rootfs`: each symlink the image holds on
/// the way is followed (an absolute target restarts at the root, `..` never leaves it); from
/// the first component that is absent or not a directory, the rest is taken as written, with
/// `..` applied lexically (the runtime may create what is missing).
fn resolve_in_root(rootfs: &Path, path: &str) -> Result<Vec<OsString>, &'static str> {
    let mut pending: VecDeque<OsString> = parts(path.as_bytes()).collect();
    let mut resolved: Vec<(OsString, OwnedFd)> = Vec::new();
    let mut tail: Vec<OsString> = Vec::new();
    let root = fsops::open_path_dir(None, &path_c(rootfs.as_os_str())).ok();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let Some(root) = root.as_ref() else {
            tail.push(part);
            continue;
        };
        let dir: BorrowedFd<'_> = resolved
            .last()
            .map(|(_, fd)| fd.as_fd())
            .unwrap_or(root.as_fd());
        let name = path_c(&part);
        match fsops::lstat(dir, &name) {
            Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err("goes through too many symlinks in the image");
                }
                let Ok(target) = fsops::readlink(dir, &name) else {
                    tail.push(part);
                    break;
                };
                if target.first() == Some(&b'/') {
                    resolved.clear();
                }
                for (i, p) in parts(&target).enumerate() {
                    pending.insert(i, p);
                }
            }
            Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                match fsops::open_path_dir(Some(dir), &name) {
                    Ok(fd) => resolved.push((part, fd)),
                    Err(_) => {
                        tail.push(part);
                        break;
                    }
                }
            }
            _ => {
                tail.push(part);
                break;
            }
        }
    }
    let mut out: Vec<OsString> = resolved.into_iter().map(|(name, _)| name).collect();
    for part in tail.into_iter().chain(pending) {
        if part == ".." {
            out.pop();
        } else {
            out.push(part);
        }
    }
    Ok(out)
}

/// The components of a path, `..` kept, `.` and empty ones dropped.
fn parts(path: &[u8]) -> impl Iterator<Item = OsString> + '_ {
    path.split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .map(|p| OsStr::from_bytes(p).to_owned())
}

/// A path or name without NUL (checked by the caller; readlink never returns one).
fn path_c(path: &OsStr) -> CString {
    CString::new(path.as_bytes()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_that_does_not_parse_is_an_error() {
        assert!(ImageConfig::parse("not json").is_err());
        assert!(ImageConfig::parse(r#"{"config":{"User":1000}}"#).is_err());
        assert!(ImageConfig::parse(r#"{"config":{"User":"1000","Env":[1]}}"#).is_err());
        assert!(ImageConfig::parse(r#"{"config":{"WorkingDir":5}}"#).is_err());
        assert!(ImageConfig::parse(r#"{"config":"root"}"#).is_err());
        // Go's zero values: null is "not set", as encoding/json reads it.
        let c = ImageConfig::parse(r#"{"config":{"User":null,"Env":null,"Cmd":["sh"]}}"#)
            .expect("nulls");
        assert_eq!(c.config.user, "");
        assert_eq!(c.config.cmd, Some(vec!["sh".to_owned()]));
        let c = ImageConfig::parse(r#"{"config":null}"#).expect("null config");
        assert_eq!(c.config.user, "");
        let c = ImageConfig::parse(r#"{"config":{"User":"1000:1000","Unknown":1}}"#)
            .expect("unknown fields are fine");
        assert_eq!(c.config.user, "1000:1000");
    }

    #[test]
    fn a_pull_parses_the_whole_config_and_checks_every_diff_id() {
        let good = Digest::of(b"layer");
        let doc = |user: &str, diff: &str| {
            format!(
                r#"{{"config":{{"User":{user}}},"rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#
            )
        };
        let pulled = parse_pulled(&doc("\"1000\"", &good), 1).expect("good");
        assert_eq!(pulled.diff_ids, vec![good.clone()]);
        assert_eq!(pulled.runtime.user, "1000");
        assert!(matches!(
            parse_pulled(&doc("\"1000\"", &good), 2),
            Err(ConfigError::LayerCount { .. })
        ));
        assert!(matches!(
            parse_pulled(&doc("1000", &good), 1),
            Err(ConfigError::Parse(_))
        ));
        for hostile in ["sha256:../../../../etc", "sha256:a/b", "sha256:\\u0000"] {
            assert!(
                matches!(
                    parse_pulled(&doc("\"0\"", hostile), 1),
                    Err(ConfigError::DiffId { index: 0, .. })
                ),
                "{hostile}"
            );
        }
    }

    fn check(rootfs: &Path, cwd: &str) -> Result<(), String> {
        check_working_dir(rootfs, "", cwd, "example/image")
    }

    #[test]
    fn working_dirs_under_proc_relative_or_with_dotdot_are_refused() {
        let none = Path::new("/nonexistent-rootfs");
        for ok in [
            "/",
            "/app",
            "/srv/proc",
            "/procfs",
            "//app/./x",
            "/srv/dev",
            "/device",
            "/dev",
            "/dev/shm",
            "/dev/mqueue/q",
            "/dev/fdx",
        ] {
            check(none, ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("/proc/self/fd/7", "under /proc"),
            ("/proc", "under /proc"),
            ("//proc/./self/cwd", "under /proc"),
            ("/dev/fd/7", "under /dev"),
            ("/dev/./fd/7", "under /dev"),
            ("/dev/stdin", "under /dev"),
            ("/dev/stderr/x", "under /dev"),
            ("//dev//core", "under /dev"),
            ("app", "absolute"),
            ("./proc", "absolute"),
            ("/tmp/../proc/self/fd/7", "'..'"),
            ("/a\0b", "NUL"),
        ] {
            let err = check(none, bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("WorkingDir of image example/image"), "{err}");
        }
        // The request's working_dir wins and is checked the same way.
        let err = check_working_dir(none, "/proc/1/root", "/app", "img").expect_err("request");
        assert!(err.starts_with("config.working_dir"), "{err}");
        check_working_dir(none, "/app", "/proc/self/fd/7", "img").expect("request wins");
        let err = check_working_dir(none, "/dev/fd/7", "/app", "img").expect_err("request");
        assert!(
            err.starts_with("config.working_dir \"/dev/fd/7\" is under /dev"),
            "{err}"
        );
    }

    #[test]
    fn symlinks_in_the_image_are_followed_inside_its_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc")).expect("mkdir");
        std::fs::create_dir_all(root.join("srv/data")).expect("mkdir");
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).expect("symlink")
        };
        link("/proc/self/fd/7", "w");
        link("proc", "p");
        link("../../../../proc/self", "up");
        link("/srv/data", "data");
        link("missing/../../proc/1/cwd", "dangling");
        link("loop2", "loop1");
        link("loop1", "loop2");
        for bad in ["/w", "/p/self/cwd", "/up/fd/3", "/dangling"] {
            let err = check(root, bad).expect_err(bad);
            assert!(err.contains("under /proc"), "{bad}: {err}");
        }
        let err = check(root, "/loop1").expect_err("loop");
        assert!(err.contains("too many symlinks"), "{err}");
        for ok in ["/data", "/data/sub", "/srv/data", "/new/dir"] {
            check(root, ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn working_dirs_under_dev_are_refused_through_the_images_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("srv/devices")).expect("mkdir");
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).expect("symlink")
        };
        link("/dev/fd/7", "w");
        link("dev", "d");
        link("../../dev/stdin", "srv/in");
        for bad in ["/w", "/d/fd/3", "/srv/in", "/dev/fd/7"] {
            let err = check(root, bad).expect_err(bad);
            assert!(err.contains("under /dev"), "{bad}: {err}");
        }
        check(root, "/srv/devices").expect("a directory named like /dev elsewhere");
        // The runtime mounts crid's /dev where the image's /dev symlink leads: that place
        // is refused too.
        link("/srv/devices", "dev");
        check(root, "/srv/devices").expect("crid's /dev itself");
        for bad in ["/srv/devices/fd/7", "/srv/devices/stdout", "/dev/fd/7"] {
            let err = check(root, bad).expect_err(bad);
            assert!(
                err.contains("it resolves to /srv/devices")
                    && err.contains("the image's /dev resolves to /srv/devices"),
                "{bad}: {err}"
            );
        }
        check(root, "/srv/data").expect("elsewhere");
    }
}
