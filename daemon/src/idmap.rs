//! The user-namespace options of a pod (CRI `userns_options`, KEP-127), checked; the
//! mappings and the id-mapped mounts themselves are `crid_mount::idmap`'s.
//!
//! The mappings come from kubelet (trusted), but they still decide which host ids a
//! container runs as, so their form is checked: one mapping each for uids and gids (what
//! kubelet sends and containerd accepts; id-mapped layers take one range), starting at
//! container id 0, not empty, not wrapping past the last id.

pub(crate) use crid_mount::idmap::{
    open_userns, stage_volume, IdMapping, IdmappedLayers, PodIdMappings,
};
use crid_proto::cri;

/// Why a pod's `userns_options` were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernsError {
    #[error("mode {0:?} is not a user namespace mode (POD or NODE)")]
    Mode(cri::NamespaceMode),
    #[error("mode NODE takes no mappings ({uids} uid and {gids} gid mappings given)")]
    MappingsWithNode { uids: usize, gids: usize },
    #[error("{field}: mode POD needs exactly one mapping, {count} given")]
    MappingCount { field: &'static str, count: usize },
    #[error(
        "{field}: the mapping must start at container id 0 (container root), not {container_id}"
    )]
    RootNotMapped {
        field: &'static str,
        container_id: u32,
    },
    #[error("{field}: the mapping's length is 0")]
    Empty { field: &'static str },
    #[error("{field}: {id} + {length} goes past the last id")]
    Overflow {
        field: &'static str,
        id: u32,
        length: u32,
    },
    #[error("user namespace mode POD cannot share the host's {0} namespace")]
    HostNamespace(&'static str),
    #[error("the container's user namespace ({container}) differs from its pod's ({pod})")]
    DiffersFromPod { container: String, pod: String },
}

fn one_mapping(field: &'static str, list: &[cri::IdMapping]) -> Result<IdMapping, UsernsError> {
    let [m] = list else {
        return Err(UsernsError::MappingCount {
            field,
            count: list.len(),
        });
    };
    if m.container_id != 0 {
        return Err(UsernsError::RootNotMapped {
            field,
            container_id: m.container_id,
        });
    }
    if m.length == 0 {
        return Err(UsernsError::Empty { field });
    }
    // The kernel refuses a range whose end wraps (id 4294967295 is never an id).
    for id in [m.container_id, m.host_id] {
        if id.checked_add(m.length).is_none() {
            return Err(UsernsError::Overflow {
                field,
                id,
                length: m.length,
            });
        }
    }
    Ok(IdMapping {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    })
}

/// The mappings of a pod's own user namespace, or None for the host's (no options, or mode
/// NODE).
pub fn pod_mappings(
    options: Option<&cri::UserNamespace>,
) -> Result<Option<PodIdMappings>, UsernsError> {
    let Some(options) = options else {
        return Ok(None);
    };
    match cri::NamespaceMode::try_from(options.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if options.uids.is_empty() && options.gids.is_empty() {
                Ok(None)
            } else {
                Err(UsernsError::MappingsWithNode {
                    uids: options.uids.len(),
                    gids: options.gids.len(),
                })
            }
        }
        Ok(cri::NamespaceMode::Pod) => Ok(Some(PodIdMappings {
            uid: one_mapping("uids", &options.uids)?,
            gid: one_mapping("gids", &options.gids)?,
        })),
        Ok(mode) => Err(UsernsError::Mode(mode)),
        Err(_) => Err(UsernsError::Mode(cri::NamespaceMode::Target)),
    }
}

fn describe(mappings: Option<&PodIdMappings>) -> String {
    match mappings {
        None => "the host's".to_owned(),
        Some(m) => format!("uids {} gids {}", m.uid.to_arg(), m.gid.to_arg()),
    }
}

/// A container's `userns_options` must be its pod's (as containerd checks): absent and NODE
/// are the same, and mode POD has the same mappings.
pub fn check_container(
    container: Option<&cri::UserNamespace>,
    pod: Option<&PodIdMappings>,
) -> Result<(), UsernsError> {
    let container = pod_mappings(container)?;
    if container.as_ref() != pod {
        return Err(UsernsError::DiffersFromPod {
            container: describe(container.as_ref()),
            pod: describe(pod),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping {
            container_id,
            host_id,
            length,
        }
    }

    fn pod(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::UserNamespace {
        cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids,
            gids,
        }
    }

    #[test]
    fn pod_mode_takes_one_mapping_from_root() {
        let ok = pod(
            vec![mapping(0, 1000, 100000)],
            vec![mapping(0, 2000, 65536)],
        );
        let mappings = pod_mappings(Some(&ok)).expect("valid").expect("own userns");
        assert_eq!(mappings.host_root(), (1000, 2000));
        assert_eq!(mappings.uid.to_host(99999), Some(100999));
        assert_eq!(mappings.uid.to_host(100000), None);
        assert_eq!(mappings.uid.to_arg(), "0:1000:100000");
        // critest's "more than one mapping" and "container ID 0 is not mapped".
        let two = pod(
            vec![mapping(0, 1000, 100000), mapping(0, 2000, 100000)],
            vec![mapping(0, 1000, 100000)],
        );
        assert!(matches!(
            pod_mappings(Some(&two)),
            Err(UsernsError::MappingCount {
                field: "uids",
                count: 2
            })
        ));
        let from_one = pod(
            vec![mapping(1, 1000, 100000)],
            vec![mapping(1, 1000, 100000)],
        );
        assert!(matches!(
            pod_mappings(Some(&from_one)),
            Err(UsernsError::RootNotMapped { .. })
        ));
        for bad in [
            pod(vec![mapping(0, 1000, 1)], vec![]),
            pod(vec![mapping(0, 1000, 0)], vec![mapping(0, 1000, 1)]),
            pod(vec![mapping(0, u32::MAX - 10, 11)], vec![mapping(0, 1, 1)]),
            pod(vec![mapping(0, 1, 1)], vec![mapping(0, 1, u32::MAX)]),
        ] {
            assert!(pod_mappings(Some(&bad)).is_err(), "{bad:?}");
        }
        // The host's own map: `0 0 4294967295`.
        let whole = pod(
            vec![mapping(0, 0, u32::MAX)],
            vec![mapping(0, u32::MAX - 10, 10)],
        );
        assert!(pod_mappings(Some(&whole)).is_ok());
    }

    #[test]
    fn node_is_the_host_and_other_modes_are_refused() {
        assert_eq!(pod_mappings(None), Ok(None));
        let node = cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        };
        assert_eq!(pod_mappings(Some(&node)), Ok(None));
        let node_with_mappings = cri::UserNamespace {
            uids: vec![mapping(0, 1000, 1)],
            ..node.clone()
        };
        assert!(pod_mappings(Some(&node_with_mappings)).is_err());
        for mode in [cri::NamespaceMode::Container, cri::NamespaceMode::Target] {
            let options = cri::UserNamespace {
                mode: mode as i32,
                ..Default::default()
            };
            assert_eq!(pod_mappings(Some(&options)), Err(UsernsError::Mode(mode)));
        }
        let unknown = cri::UserNamespace {
            mode: 17,
            ..Default::default()
        };
        assert!(pod_mappings(Some(&unknown)).is_err());
    }

    #[test]
    fn containers_share_their_pods_user_namespace() {
        let options = pod(vec![mapping(0, 1000, 10)], vec![mapping(0, 1000, 10)]);
        let mappings = pod_mappings(Some(&options)).expect("valid");
        assert!(check_container(Some(&options), mappings.as_ref()).is_ok());
        assert!(check_container(None, None).is_ok());
        assert!(check_container(None, mappings.as_ref()).is_err());
        assert!(check_container(Some(&options), None).is_err());
        let other = pod(vec![mapping(0, 5000, 10)], vec![mapping(0, 1000, 10)]);
        assert!(check_container(Some(&other), mappings.as_ref()).is_err());
    }
}
