//! Which sysctls a pod may set. Only namespaced ones (kubelet's and CRI-O's list), and not
//! those of a namespace the pod shares with the host. Keys and values are checked: the value
//! of a sysctl once smuggled a second assignment into CRI-O (CVE-2022-0811).

/// Why a sysctl was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SysctlError {
    #[error("sysctl key {0:?} is malformed")]
    BadKey(String),
    #[error("sysctl {key} has an invalid value {value:?}")]
    BadValue { key: String, value: String },
    #[error("sysctl {0} is not namespaced; a pod may not set it")]
    NotNamespaced(String),
    #[error(
        "sysctl {key} belongs to the {namespace} namespace, which the pod shares with the host"
    )]
    HostNamespace {
        key: String,
        namespace: &'static str,
    },
}

/// The namespace a namespaced sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    Ipc,
    Net,
}

/// Namespaced sysctls: exact IPC keys, IPC prefixes, and the `net.` tree (kubelet's list).
const IPC_KEYS: &[&str] = &[
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
];
const IPC_PREFIXES: &[&str] = &["fs.mqueue."];

/// Whether a dotted sysctl key is made of non-empty `[A-Za-z0-9_-]` segments (so it cannot
/// name a path outside /proc/sys: no `..`, no `/`).
pub fn well_formed_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// Checks one sysctl for a pod that shares (or not) the host's network and IPC namespaces;
/// `/` separators are accepted as kubelet accepts them, and normalised to dots.
pub fn validate(
    key: &str,
    value: &str,
    host_network: bool,
    host_ipc: bool,
) -> Result<(String, SysctlNamespace), SysctlError> {
    let normalized = key.replace('/', ".");
    if !well_formed_key(&normalized) {
        return Err(SysctlError::BadKey(key.to_owned()));
    }
    if value.is_empty() || value.len() > 4096 || value.contains(['\n', '\r', '\0', '+', '=']) {
        return Err(SysctlError::BadValue {
            key: normalized,
            value: value.to_owned(),
        });
    }
    let namespace = if IPC_KEYS.contains(&normalized.as_str())
        || IPC_PREFIXES.iter().any(|p| normalized.starts_with(p))
    {
        SysctlNamespace::Ipc
    } else if normalized.starts_with("net.") {
        SysctlNamespace::Net
    } else {
        return Err(SysctlError::NotNamespaced(normalized));
    };
    match namespace {
        SysctlNamespace::Net if host_network => Err(SysctlError::HostNamespace {
            key: normalized,
            namespace: "network",
        }),
        SysctlNamespace::Ipc if host_ipc => Err(SysctlError::HostNamespace {
            key: normalized,
            namespace: "IPC",
        }),
        _ => Ok((normalized, namespace)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_keys_pass_and_others_fail() {
        assert_eq!(
            validate("net.ipv4.ip_forward", "1", false, false),
            Ok(("net.ipv4.ip_forward".into(), SysctlNamespace::Net))
        );
        assert_eq!(
            validate("kernel/shm_rmid_forced", "1", false, false),
            Ok(("kernel.shm_rmid_forced".into(), SysctlNamespace::Ipc))
        );
        assert!(validate("fs.mqueue.msg_max", "10", false, false).is_ok());
        assert_eq!(
            validate("kernel.core_pattern", "x", false, false),
            Err(SysctlError::NotNamespaced("kernel.core_pattern".into()))
        );
        assert!(matches!(
            validate("vm.swappiness", "1", false, false),
            Err(SysctlError::NotNamespaced(_))
        ));
        assert!(matches!(
            validate("net.ipv4.ip_forward", "1", true, false),
            Err(SysctlError::HostNamespace { .. })
        ));
        assert!(matches!(
            validate("kernel.sem", "1 2 3 4", false, true),
            Err(SysctlError::HostNamespace { .. })
        ));
    }

    #[test]
    fn hostile_keys_and_values_fail() {
        assert!(matches!(
            validate(
                "kernel.shm_rmid_forced",
                "1+kernel.core_pattern=|/evil",
                false,
                false
            ),
            Err(SysctlError::BadValue { .. })
        ));
        assert!(matches!(
            validate("net.ipv4.ip_forward", "1\nkernel.x=1", false, false),
            Err(SysctlError::BadValue { .. })
        ));
        for key in ["", "net..x", "net.ipv4/../../x", "net.ipv4.*", "../proc"] {
            assert!(
                matches!(
                    validate(key, "1", false, false),
                    Err(SysctlError::BadKey(_))
                ),
                "{key}"
            );
        }
    }
}
