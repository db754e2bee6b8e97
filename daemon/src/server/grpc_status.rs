//! The one mapping of crid's errors to gRPC status codes: every RPC's error goes through
//! `impl From<DaemonError> for tonic::Status`, and nothing below the server names a code.

use crate::error::DaemonError;

impl From<DaemonError> for tonic::Status {
    fn from(err: DaemonError) -> Self {
        let message = err.chain();
        match err {
            DaemonError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            DaemonError::NotFound(_) => tonic::Status::not_found(message),
            DaemonError::AlreadyExists(_) => tonic::Status::already_exists(message),
            DaemonError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            DaemonError::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            DaemonError::Unimplemented(_) => tonic::Status::unimplemented(message),
            DaemonError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(message),
            DaemonError::Io { .. } | DaemonError::Internal(_) => tonic::Status::internal(message),
            DaemonError::Namespace(ref ns) if ns.timed_out() => {
                tonic::Status::deadline_exceeded(message)
            }
            DaemonError::Overlay(_) | DaemonError::Mount(_) | DaemonError::Namespace(_) => {
                tonic::Status::internal(message)
            }
            // A plugin's or the runtime's own failure: its message says what went wrong.
            DaemonError::Cni(crid_cni::CniError::NoConfig(_)) => {
                tonic::Status::failed_precondition(message)
            }
            DaemonError::Cni(ref cni) if cni.timed_out() => {
                tonic::Status::deadline_exceeded(message)
            }
            DaemonError::Cni(crid_cni::CniError::InvalidValue { .. }) => {
                tonic::Status::invalid_argument(message)
            }
            DaemonError::Cni(_) => tonic::Status::unknown(message),
            DaemonError::Runtime(crate::oci_runtime::RuntimeError::TimedOut { .. }) => {
                tonic::Status::deadline_exceeded(message)
            }
            DaemonError::Runtime(_) => tonic::Status::unknown(message),
            DaemonError::Monitor(monitor) => {
                use crate::monitor_client::MonitorClientError as M;
                match monitor {
                    M::CreateFailed { .. } => tonic::Status::unknown(message),
                    M::CreateTimedOut { .. } => tonic::Status::deadline_exceeded(message),
                    M::Call { .. } => tonic::Status::unavailable(message),
                    M::Spawn { .. } | M::BadReport { .. } | M::ExecOutput { .. } => {
                        tonic::Status::internal(message)
                    }
                }
            }
            DaemonError::Spec(crate::spec_error::SpecError::Invalid(_)) => {
                tonic::Status::invalid_argument(message)
            }
            DaemonError::Spec(_) => tonic::Status::internal(message),
            DaemonError::Image(image) => {
                use crid_image::ImageError as E;
                match image {
                    E::InvalidReference { .. } | E::InvalidAuth(_) => {
                        tonic::Status::invalid_argument(message)
                    }
                    E::NotFound(_) => tonic::Status::not_found(message),
                    E::Unauthorized { .. } => tonic::Status::unauthenticated(message),
                    E::Blocked { .. } => tonic::Status::permission_denied(message),
                    E::Unavailable(_) => tonic::Status::unavailable(message),
                    // The registry stopped sending: like the other deadlines crid enforces.
                    E::Stalled { .. } => tonic::Status::deadline_exceeded(message),
                    E::Registries(_) => tonic::Status::failed_precondition(message),
                    // The image itself is unacceptable: bad digests, hostile layers.
                    E::Invalid(_) | E::Unpack(_) => tonic::Status::failed_precondition(message),
                    E::Registry { .. } | E::PullFailed(_) => tonic::Status::unknown(message),
                    E::LayerIo(_) | E::Store(_) => tonic::Status::internal(message),
                }
            }
        }
    }
}
