//! The security context's effect on the spec: capabilities (a default set, add and drop,
//! `ALL`), privileged containers (every capability and host device, nothing masked), and the
//! masked and read-only paths.

use std::collections::BTreeSet;
use std::path::Path;

use crid_proto::cri;

use crate::spec_error::SpecError;

pub use crid_common::capabilities::ALL_CAPABILITIES;

/// The capabilities a container has unless its security context says otherwise: CRI-O's
/// nine (smaller than containerd's fourteen, which add MKNOD, NET_RAW, SETFCAP, SYS_CHROOT and
/// AUDIT_WRITE; the safer of the two, as the issue asks).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
];

/// Paths masked in /proc and /sys (containerd's list).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only (containerd's list).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// "All" capabilities: those crid itself may hand on (its bounding set; `ALL_CAPABILITIES` is in
/// kernel order, so a capability's index is its number). containerd does the same: asking the
/// runtime for a capability crid lacks fails the create.
fn current_bounding_set() -> BTreeSet<String> {
    let bounding = own_capabilities("CapBnd").unwrap_or(u64::MAX);
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

/// One of crid's own capability masks from /proc/self/status (`CapEff`, `CapBnd`, …).
pub fn own_capabilities(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let hex = l.strip_prefix(field)?.strip_prefix(':')?;
        u64::from_str_radix(hex.trim(), 16).ok()
    })
}

/// `CAP_X` for `x`, `X` or `CAP_X`; an error for a name Linux does not define.
fn canonical(name: &str) -> Result<String, SpecError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(SpecError::Invalid(format!(
            "config.linux.security_context.capabilities: unknown capability {name:?}"
        )))
    }
}

/// The capability sets of a container: (bounding = effective = permitted, ambient).
pub fn capabilities(
    requested: Option<&cri::Capability>,
    privileged: bool,
) -> Result<(BTreeSet<String>, BTreeSet<String>), SpecError> {
    let all = current_bounding_set;
    if privileged {
        return Ok((all(), BTreeSet::new()));
    }
    let mut caps: BTreeSet<String> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    let Some(requested) = requested else {
        return Ok((caps, BTreeSet::new()));
    };
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    // Drops first, then adds (so "drop ALL, add NET_BIND_SERVICE" keeps the one), as CRI-O.
    if requested.drop_capabilities.iter().any(is_all) {
        caps.clear();
    }
    for name in requested.drop_capabilities.iter().filter(|n| !is_all(n)) {
        caps.remove(&canonical(name)?);
    }
    if requested.add_capabilities.iter().any(is_all) {
        caps = all();
    }
    for name in requested.add_capabilities.iter().filter(|n| !is_all(n)) {
        caps.insert(canonical(name)?);
    }
    let mut ambient = BTreeSet::new();
    for name in &requested.add_ambient_capabilities {
        let cap = canonical(name)?;
        // An ambient capability must be permitted and inheritable as well.
        caps.insert(cap.clone());
        ambient.insert(cap);
    }
    Ok((caps, ambient))
}

/// Masked and read-only paths: none for a privileged container, the request's when it names
/// any (kubelet sends the defaults for `procMount: Default`), else the defaults.
pub fn path_lists(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    if privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |requested: Option<&Vec<String>>, default: &[&str]| match requested {
        Some(list) if !list.is_empty() => list.clone(),
        _ => default.iter().map(|p| (*p).to_owned()).collect(),
    };
    (
        pick(sc.map(|s| &s.masked_paths), MASKED_PATHS),
        pick(sc.map(|s| &s.readonly_paths), READONLY_PATHS),
    )
}

/// The host's device nodes, for a privileged container: (path, is block device), skipping the
/// per-container pseudo filesystems and the pseudo-terminals.
pub fn host_devices() -> Vec<(String, bool)> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut dirs = vec![Path::new("/dev").to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let skip = ["/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/fd"]
                    .iter()
                    .any(|s| path == Path::new(s));
                if !skip {
                    dirs.push(path);
                }
            } else if kind.is_char_device() || kind.is_block_device() {
                if path == Path::new("/dev/console") || path == Path::new("/dev/ptmx") {
                    continue;
                }
                found.push((path.display().to_string(), kind.is_block_device()));
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(add: &[&str], drop: &[&str]) -> cri::Capability {
        cri::Capability {
            add_capabilities: add.iter().map(|s| (*s).to_owned()).collect(),
            drop_capabilities: drop.iter().map(|s| (*s).to_owned()).collect(),
            add_ambient_capabilities: Vec::new(),
        }
    }

    #[test]
    fn add_drop_and_all() {
        let (caps, _) = capabilities(None, false).expect("default");
        assert_eq!(caps.len(), 9);
        let (caps, _) = capabilities(
            Some(&request(&["NET_ADMIN"], &["kill", "CAP_CHOWN"])),
            false,
        )
        .expect("add/drop");
        assert!(
            caps.contains("CAP_NET_ADMIN")
                && !caps.contains("CAP_KILL")
                && !caps.contains("CAP_CHOWN")
        );
        let (caps, _) =
            capabilities(Some(&request(&["NET_BIND_SERVICE"], &["ALL"])), false).expect("drop all");
        assert_eq!(
            caps.into_iter().collect::<Vec<_>>(),
            vec!["CAP_NET_BIND_SERVICE".to_owned()]
        );
        let (caps, _) = capabilities(Some(&request(&["ALL"], &[])), false).expect("add all");
        assert_eq!(caps, current_bounding_set());
        assert!(capabilities(Some(&request(&["CAP_FLY"], &[])), false).is_err());
        let (caps, _) = capabilities(Some(&request(&[], &["ALL"])), true).expect("privileged");
        assert_eq!(caps, current_bounding_set());
    }

    #[test]
    fn path_lists_default_override_and_privileged() {
        let (masked, readonly) = path_lists(None, false);
        assert_eq!(masked.len(), MASKED_PATHS.len());
        assert_eq!(readonly.len(), READONLY_PATHS.len());
        let sc = cri::LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/x".into()],
            ..Default::default()
        };
        assert_eq!(path_lists(Some(&sc), false).0, vec!["/proc/x".to_owned()]);
        assert_eq!(path_lists(Some(&sc), true), (Vec::new(), Vec::new()));
    }
}
