//! StartContainer, StopContainer, RemoveContainer and recovery after a restart: crid starts,
//! signals and deletes a container through the runtime and learns of its exit from the
//! monitor (or its exit record).

use std::time::Duration;

use crate::error::DaemonError;
use crate::monitor_client::MonitorConnection;
use crate::oci_runtime::OciRuntime;
use crate::state::container::{Container, Finished, Phase};
use crate::state::{persist, State};

/// How long a SIGKILLed container may take to be reaped before StopContainer gives up.
const KILL_GRACE: Duration = Duration::from_secs(30);
/// How often the exit record is looked for when the monitor cannot be asked.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// The configured OCI runtime's command line (for `<runtime> exec`; the rest goes through
/// `state.host.runtime`).
pub fn runtime(state: &State) -> OciRuntime {
    crate::host::oci_runtime(&state.config)
}

/// How long RemoveContainer waits for an exited container's monitor to finish (it deletes the
/// container from the runtime, then ends).
const MONITOR_EXIT_WAIT: Duration = Duration::from_secs(5);

/// Removes everything of a container that exists: runtime state, rootfs mount, directory,
/// exit record. The directory is moved to the trash at once (its name and id are free when
/// this returns); its rootfs unmount and removal, and the runtime's delete when the monitor
/// has not done it, finish in the background (the trash is emptied again at startup).
pub(super) async fn dispose(state: &State, container: &Container) -> Result<(), DaemonError> {
    let exit = crid_common::monitor_paths::exit_record(&state.paths.exits, &container.id);
    match std::fs::remove_file(&exit) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(DaemonError::Io {
                what: "remove",
                path: exit,
                err,
            })
        }
        _ => {}
    }
    let trashed = state.paths.trash.join(&container.id);
    match std::fs::rename(&container.dir, &trashed) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(DaemonError::Io {
                what: "move to the trash",
                path: container.dir.clone(),
                err,
            })
        }
        _ => {}
    }
    let socket = crid_common::monitor_paths::control_socket(&state.paths.monitors, &container.id);
    let rt = state.host.runtime.clone();
    let id = container.id.clone();
    tokio::spawn(async move {
        // The monitor deletes the container from the runtime after its exit; let it finish
        // rather than race it, and only call the runtime when something is left (a failed
        // create, a monitor that was killed).
        let deadline = tokio::time::Instant::now() + MONITOR_EXIT_WAIT;
        while socket.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if rt.has_state(&id) {
            if let Err(err) = rt.delete(&id).await {
                tracing::error!(container = %id, error = %crid_common::error_chain::error_chain(&err), "deleting the container from the runtime failed");
            }
        }
        let emptied =
            tokio::task::spawn_blocking(move || crate::state::trash::empty_one(&trashed)).await;
        if let Ok(Err(err)) = emptied {
            tracing::error!(container = %id, error = %err.chain(), "removing the container's files failed");
        }
    });
    Ok(())
}

/// Starts a created container.
pub async fn start(state: &State, container: &Container) -> Result<(), DaemonError> {
    let _guard = container.lifecycle.lock().await;
    match container.phase(&state.paths.exits) {
        Phase::Created => {}
        Phase::Running => {
            return Err(DaemonError::FailedPrecondition(format!(
                "container {} is already running",
                container.id
            )))
        }
        Phase::Exited => {
            return Err(DaemonError::FailedPrecondition(format!(
                "container {} has exited; it cannot be started again",
                container.id
            )))
        }
    }
    // The process runs from within `runc start`; a container that exits at once must not
    // show a start after its finish.
    let starting = persist::now_nanos();
    if let Err(err) = state.host.runtime.start(&container.id).await {
        // A process that exits at once races `runc start`'s removal of the exec fifo with
        // the monitor's delete after the exit: the start did happen when the exit is
        // recorded (the monitor writes it before it deletes).
        if container.finished(&state.paths.exits).is_none() {
            return Err(err.into());
        }
        tracing::debug!(container = %container.id, error = %err, "the runtime's start raced the container's exit");
    }
    container.update(|r| r.started_at = Some(starting))
}

/// Waits up to `limit` for the container's exit; true once it has exited.
async fn wait_exit(state: &State, container: &Container, limit: Duration) -> bool {
    let exits = &state.paths.exits;
    if container.finished(exits).is_some() {
        return true;
    }
    let deadline = tokio::time::Instant::now() + limit;
    if let Ok(conn) = MonitorConnection::connect(&state.paths.monitors, &container.id).await {
        match tokio::time::timeout_at(deadline, conn.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {} // The monitor went away; the exit record tells.
            Err(_) => return container.finished(exits).is_some(),
        }
    }
    loop {
        if container.finished(exits).is_some() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// Stops a container: its stop signal, then SIGKILL after `timeout_secs` (at once when 0 or
/// when it never started). An exited container is fine.
pub async fn stop(
    state: &State,
    container: &Container,
    timeout_secs: i64,
) -> Result<(), DaemonError> {
    let _guard = container.lifecycle.lock().await;
    stop_locked(state, container, timeout_secs).await
}

async fn stop_locked(
    state: &State,
    container: &Container,
    timeout_secs: i64,
) -> Result<(), DaemonError> {
    let rt = &state.host.runtime;
    if let Some(finished) = container.finished(&state.paths.exits) {
        // A container whose monitor died may still run: the runtime kills and forgets it.
        if finished.lost {
            rt.delete(&container.id).await?;
        }
        return Ok(());
    }
    let record = container.record();
    let all = !record.own_pid_namespace;
    // A signal may race with the container's own exit (and the monitor's delete of it from
    // the runtime); a failed kill of a container that has exited is no failure. What an
    // exited init left behind in a shared PID namespace is killed by that delete.
    let exited = |result: Result<(), crate::oci_runtime::RuntimeError>| match result {
        Err(_) if container.finished(&state.paths.exits).is_some() => Ok(()),
        other => other,
    };
    if record.started_at.is_some() && timeout_secs > 0 && record.stop_signal != libc::SIGKILL {
        exited(rt.kill(&container.id, record.stop_signal, false).await)?;
        let limit = Duration::from_secs(timeout_secs.unsigned_abs());
        if wait_exit(state, container, limit).await {
            return Ok(());
        }
        tracing::info!(container = %container.id, timeout_secs, "stop signal did not end the container; sending SIGKILL");
    }
    exited(rt.kill(&container.id, libc::SIGKILL, all).await)?;
    if wait_exit(state, container, KILL_GRACE).await {
        return Ok(());
    }
    Err(DaemonError::DeadlineExceeded(format!(
        "container {} did not exit within {KILL_GRACE:?} of SIGKILL",
        container.id
    )))
}

/// Removes a container, killing it first if it runs.
pub async fn remove(state: &State, container: &Container) -> Result<(), DaemonError> {
    let _guard = container.lifecycle.lock().await;
    stop_locked(state, container, 0).await?;
    dispose(state, container).await?;
    state.forget_container(&container.id);
    Ok(())
}

/// After a restart: containers whose monitor is gone without an exit record (the host
/// rebooted, or the monitor was killed) are recorded as exited with an unknown code. Live
/// monitors are watched from then on (`server::monitors`).
pub fn recover(state: &State) {
    for container in state.containers() {
        if container.finished(&state.paths.exits).is_some() {
            continue;
        }
        if state
            .host
            .monitors
            .answers(&state.paths.monitors, &container.id)
        {
            continue;
        }
        mark_lost(state, container.as_ref());
    }
}

/// Records a container whose monitor is gone as exited with an unknown code, unless the
/// monitor wrote its exit record first (it does before it exits). True if it was marked.
pub fn mark_lost(state: &State, container: &Container) -> bool {
    if container.finished(&state.paths.exits).is_some() {
        return false;
    }
    tracing::warn!(container = %container.id, "monitor gone without an exit record; marking the container exited");
    let lost = Finished {
        exit_code: 255,
        finished_at: persist::now_nanos(),
        oom_killed: false,
        lost: true,
    };
    if let Err(err) = container.update(|r| r.finished = Some(lost)) {
        tracing::error!(container = %container.id, error = %err.chain(), "cannot record the lost exit");
        return false;
    }
    true
}

