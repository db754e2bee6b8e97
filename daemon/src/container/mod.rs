//! Containers: OCI spec generation, the process user, and the lifecycle through crimon and
//! the OCI runtime.

pub mod apparmor;
pub mod cgroup;
pub mod lifecycle;
pub mod mounts;
pub mod resources;
pub mod seccomp;
pub mod security;
pub mod spec;
pub mod user;
