//! Containers: OCI spec generation, the process user, and the lifecycle through crimon and
//! the OCI runtime.

pub mod apparmor;
pub mod cgroup;
pub mod create;
pub mod lifecycle;
pub mod mounts;
pub mod resources;
pub mod running;
pub mod seccomp;
pub mod security;
pub mod spec;
pub mod user;
pub mod userns;

use crate::error::DaemonError;

/// An InvalidArgument error (the message names the field).
fn invalid(message: impl Into<String>) -> DaemonError {
    DaemonError::InvalidArgument(message.into())
}
