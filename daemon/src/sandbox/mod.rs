//! Pod sandboxes: namespaces pinned by crid-pinns (no infra container; the client is
//! `crate::namespaces`), CNI networking, the pod's /dev/shm and files (the sysctl rules are
//! `crid_common::sysctl`).

pub mod files;
pub mod lifecycle;
pub mod shm;
