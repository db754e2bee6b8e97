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

/// The longest wait a request's timeout can ask for. Kubernetes lets a pod author set
/// `terminationGracePeriodSeconds` to `i64::MAX`, and kubelet passes it on as StopContainer's
/// timeout; a deadline that far overflows the clock (`Instant + Duration` panics, and a panic
/// aborts crid). A century is as good as forever.
pub(crate) const LONGEST_REQUEST_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A request's timeout in seconds as a wait: none when 0 or negative, at most
/// [`LONGEST_REQUEST_TIMEOUT`].
pub(crate) fn request_timeout(seconds: i64) -> Option<std::time::Duration> {
    (seconds > 0).then(|| {
        std::time::Duration::from_secs(seconds.unsigned_abs()).min(LONGEST_REQUEST_TIMEOUT)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeouts_are_bounded() {
        assert_eq!(request_timeout(0), None);
        assert_eq!(request_timeout(-5), None);
        assert_eq!(
            request_timeout(30),
            Some(std::time::Duration::from_secs(30))
        );
        for huge in [i64::MAX, i64::MAX - 1, 1 << 40] {
            let limit = request_timeout(huge).expect("a wait");
            assert_eq!(limit, LONGEST_REQUEST_TIMEOUT);
            // The deadline it makes, in milliseconds as crimon gets it, holds.
            let _ = tokio::time::Instant::now() + limit;
            assert!(u64::try_from(limit.as_millis()).is_ok());
        }
    }
}
