//! Why an OCI spec could not be made: the error of the CRI -> OCI translation
//! (`container::spec` and its helpers). A module of its own, below `error` (which wraps it)
//! and below `state` and `container`.

use std::path::PathBuf;

/// Why a spec could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("oci spec")]
    Oci(#[from] oci_spec::OciSpecError),
}
