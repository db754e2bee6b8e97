//! Watches every container's monitor, so that a crimon that dies (killed, crashed) is noticed
//! at once rather than at the next call that waits on it: the container is recorded as
//! exited with the reason that its monitor died, and a STOPPED event goes out. StopContainer
//! and RemoveContainer then clean up what the runtime still has.
//!
//! The watch is a pidfd per monitor (one fd in crid, nothing in the monitor). The monitor's
//! pid is the parent of the container's init (the monitor is its subreaper), or, once the
//! init is gone, what the monitor says over its control socket; either is checked again after
//! the pidfd is open, so a pid reused between the two is never watched by mistake.

use std::sync::Arc;

use crid_common::proc_stat::parent as parent_of;

use super::events;
use crate::container::lifecycle;
use crate::monitor_client::MonitorConnection;
use crate::state::container::Container;
use crate::state::State;

/// Starts watching the monitor of `container` (no-op once it has exited).
pub fn watch(state: Arc<State>, container: Arc<Container>) {
    tokio::spawn(async move {
        if container.finished(&state.paths.exits).is_some() {
            return;
        }
        let monitor = match watched_pidfd(&state, &container).await {
            Some(fd) => fd,
            // The monitor does not answer: it is gone (or never came up).
            None => return lost(&state, &container),
        };
        // Readable once the process has exited.
        let _ = monitor.readable().await;
        lost(&state, &container);
    });
}

/// A pidfd for the monitor of `container`, registered with tokio; None if it is gone.
async fn watched_pidfd(
    state: &State,
    container: &Container,
) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // While the container's init lives, its parent is its monitor (a subreaper): no call to
    // the monitor needed (each connection costs the monitor memory).
    let init = container.record().pid;
    if init > 0 {
        if let Some(parent) = parent_of(init).filter(|p| *p > 1) {
            if let Ok(pidfd) = crid_enter::sys::pidfd_open(parent) {
                // Still its parent once the pidfd is open: the pid named the monitor.
                if parent_of(init) == Some(parent) {
                    return crid_enter::sys::async_fd(pidfd).ok();
                }
            }
        }
    }
    // The init is gone (or unknown): ask the monitor for its pid.
    let conn = MonitorConnection::connect(&state.paths.monitors, &container.id)
        .await
        .ok()?;
    let pid = conn.state().await.ok()?.monitor_pid;
    let pidfd = crid_enter::sys::pidfd_open(pid).ok()?;
    // Still the same monitor after the pidfd was taken: the pid was not reused meanwhile.
    if conn.state().await.ok()?.monitor_pid != pid {
        return None;
    }
    drop(conn);
    crid_enter::sys::async_fd(pidfd).ok()
}

/// The monitor is gone: unless it recorded the exit first, the container is lost.
fn lost(state: &State, container: &Container) {
    if lifecycle::mark_lost(state, container) {
        events::publish_stopped(state, container);
    }
}
