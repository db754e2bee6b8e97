//! What a CRI mount may ask for, given the host: propagation needs the source's mount to
//! propagate (shared for bidirectional, shared or slave for host-to-container), and
//! recursive read-only needs `ro`, private propagation and a runtime that knows `rro`.

use std::path::Path;
use std::sync::OnceLock;

use crate::spec_error::SpecError;

/// How a host mount propagates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Private,
    Slave,
    Shared,
}

/// The mount point holding `path` (longest matching mount in /proc/self/mountinfo) and its
/// propagation.
pub fn propagation_of(path: &Path) -> Option<(String, Propagation)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(String, Propagation)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(target) = fields.get(4) else {
            continue;
        };
        if !path.starts_with(target) {
            continue;
        }
        let optional = fields
            .iter()
            .skip(6)
            .take_while(|f| **f != "-")
            .copied()
            .collect::<Vec<_>>();
        let kind = if optional.iter().any(|f| f.starts_with("shared:")) {
            Propagation::Shared
        } else if optional.iter().any(|f| f.starts_with("master:")) {
            Propagation::Slave
        } else {
            Propagation::Private
        };
        // Later lines mount over earlier ones at the same target.
        if best.as_ref().is_none_or(|(t, _)| target.len() >= t.len()) {
            best = Some(((*target).to_owned(), kind));
        }
    }
    best
}

/// Checks that the host mount of `source` can give the requested propagation.
pub fn check_propagation(
    source: &Path,
    wanted: Propagation,
    container_path: &str,
) -> Result<(), SpecError> {
    if wanted == Propagation::Private {
        return Ok(());
    }
    let (mount, actual) = propagation_of(source).unwrap_or(("/".into(), Propagation::Private));
    let ok = match wanted {
        Propagation::Shared => actual == Propagation::Shared,
        Propagation::Slave => actual != Propagation::Private,
        Propagation::Private => true,
    };
    if ok {
        return Ok(());
    }
    let need = if wanted == Propagation::Shared {
        "a shared mount (bidirectional propagation)"
    } else {
        "a shared or slave mount (host-to-container propagation)"
    };
    Err(SpecError::Invalid(format!(
        "config.mounts: {container_path}: source {} is on {mount}, which is {actual:?}; it needs {need}",
        source.display()
    )))
}

/// Whether the OCI runtime knows the `rro` (recursive read-only) mount option, from its
/// `features` output; asked once.
pub fn runtime_supports_rro(runtime: &Path) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    // `features` prints a few KiB of JSON at once; a runtime that hangs or floods is taken
    // for one without `rro` (and killed).
    const FEATURES_BOUNDS: crid_child::Bounds = crid_child::Bounds {
        stdout: 1 << 20,
        stderr: 64 << 10,
        timeout: std::time::Duration::from_secs(10),
    };
    *SUPPORTED.get_or_init(|| {
        let mut features = std::process::Command::new(runtime);
        features.arg("features");
        crid_child::run_blocking(features, None, FEATURES_BOUNDS)
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|doc| {
                doc["mountOptions"]
                    .as_array()
                    .map(|opts| opts.iter().any(|o| o == "rro"))
            })
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_mount_is_found() {
        let (mount, _) = propagation_of(Path::new("/proc/self")).expect("a mount");
        assert_eq!(mount, "/proc");
        assert!(check_propagation(Path::new("/"), Propagation::Private, "/x").is_ok());
    }
}
