//! The end of an exec or attach session's output: after the process exited, its output is
//! still copied while it flows, within bounds (shared by the pipe and terminal sessions).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// After the process exited, its output is still copied while it flows; the session ends at
/// end of file, once nothing came for this long (a background child that inherited the pipes
/// must not hold the session open), or at [`DRAIN_LIMIT`] after the exit.
const DRAIN_IDLE: Duration = Duration::from_millis(500);
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// When output last arrived, for the drain after the exit.
pub(super) struct OutputActivity {
    start: tokio::time::Instant,
    /// Milliseconds after `start`.
    last: std::sync::atomic::AtomicU64,
}

impl OutputActivity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(OutputActivity {
            start: tokio::time::Instant::now(),
            last: Default::default(),
        })
    }

    /// Notes that output arrived now.
    pub(super) fn touch(&self) {
        let elapsed = self.start.elapsed().as_millis() as u64;
        self.last
            .store(elapsed, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        let ms = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.start + Duration::from_millis(ms)
    }
}

/// Lets `outputs` finish after the process exited, within the bounds of [`DRAIN_IDLE`] and
/// [`DRAIN_LIMIT`].
pub(super) async fn drain(
    mut outputs: std::pin::Pin<&mut impl Future<Output = ()>>,
    activity: &OutputActivity,
) {
    let limit = tokio::time::Instant::now() + DRAIN_LIMIT;
    activity.touch();
    loop {
        let deadline = (activity.last() + DRAIN_IDLE).min(limit);
        tokio::select! {
            () = &mut outputs => return,
            () = tokio::time::sleep_until(deadline) => {
                let now = tokio::time::Instant::now();
                if now >= limit || now >= activity.last() + DRAIN_IDLE {
                    return;
                }
            }
        }
    }
}
