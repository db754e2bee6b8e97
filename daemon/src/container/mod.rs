//! Containers: OCI spec generation, the process user, and the lifecycle through crimon and
//! the OCI runtime.

pub(crate) mod apparmor;
pub(crate) mod cgroup;
pub(crate) mod create;
pub(crate) mod lifecycle;
pub mod mounts;
pub(crate) mod resources;
pub(crate) mod running;
pub(crate) mod seccomp;
pub(crate) mod security;
pub(crate) mod spec;
pub(crate) mod user;
pub(crate) mod userns;

use crate::error::DaemonError;

/// An InvalidArgument error (the message names the field).
fn invalid(message: impl Into<String>) -> DaemonError {
    DaemonError::InvalidArgument(message.into())
}
