//! Pod sandboxes: namespaces pinned by crid-pinns (no infra container), CNI networking, the
//! pod's /dev/shm and files, and the sysctl rules.

pub mod files;
pub mod lifecycle;
pub mod namespaces;
pub mod network;
pub mod shm;
pub mod sysctl;
