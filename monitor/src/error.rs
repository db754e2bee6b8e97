//! crimon's errors, and their one mapping to ttrpc status codes.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed to {what} {path}")]
    Path {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("failed to {what}")]
    Sys {
        what: &'static str,
        #[source]
        err: io::Error,
    },
    #[error("runtime failed: {0}")]
    Runtime(String),
    #[error("container {0} has exited")]
    Exited(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("control server: {0}")]
    Ttrpc(String),
}

/// Shorthand for this crate's results.
pub type Result<T> = std::result::Result<T, MonitorError>;

impl MonitorError {
    /// An error about a system call.
    pub fn sys(what: &'static str, err: impl Into<io::Error>) -> Self {
        MonitorError::Sys {
            what,
            err: err.into(),
        }
    }

    /// An error about a file system path.
    pub fn path(what: &'static str, path: impl Into<PathBuf>, err: impl Into<io::Error>) -> Self {
        MonitorError::Path {
            what,
            path: path.into(),
            err: err.into(),
        }
    }

    /// The full message with its chain of causes, for reporting to a caller.
    pub fn chain(&self) -> String {
        crid_common::error_chain::error_chain(self)
    }
}

impl From<MonitorError> for crid_proto::ttrpc::Error {
    fn from(err: MonitorError) -> Self {
        use crid_proto::ttrpc::Code;
        let code = match &err {
            MonitorError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            MonitorError::Exited(_) | MonitorError::FailedPrecondition(_) => {
                Code::FAILED_PRECONDITION
            }
            MonitorError::Path { .. }
            | MonitorError::Sys { .. }
            | MonitorError::Runtime(_)
            | MonitorError::Ttrpc(_) => Code::INTERNAL,
        };
        crid_proto::ttrpc::Error::RpcStatus(crid_proto::ttrpc::get_status(code, err.chain()))
    }
}
