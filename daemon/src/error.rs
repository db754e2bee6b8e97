//! The daemon's error type. It wraps the errors of the crates below (`#[from]`); the mapping
//! to gRPC status codes is the server's alone (`server::grpc_status`).

use std::path::PathBuf;

/// Errors of the daemon's services.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not implemented by crid yet")]
    Unimplemented(&'static str),
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Image(#[from] crid_image::ImageError),
    #[error(transparent)]
    Overlay(#[from] crid_image::overlay::OverlayError),
    #[error(transparent)]
    Mount(#[from] crid_mount::MountError),
    #[error(transparent)]
    Cni(#[from] crid_cni::CniError),
    #[error(transparent)]
    Namespace(#[from] crate::namespaces::NamespaceError),
    #[error(transparent)]
    Runtime(#[from] crate::oci_runtime::RuntimeError),
    #[error(transparent)]
    Monitor(#[from] crate::monitor_client::MonitorClientError),
    #[error(transparent)]
    Spec(#[from] crate::spec_error::SpecError),
}

impl DaemonError {
    /// The message with every cause, as clients see it.
    pub fn chain(&self) -> String {
        crid_common::error_chain::error_chain(self)
    }
}
