//! StartContainer, StopContainer, RemoveContainer and recovery after a restart: crid starts,
//! signals and deletes a container through the runtime and learns of its exit from the
//! monitor (or its exit record).

use std::time::Duration;

use crate::error::DaemonError;
use crate::monitor_client::MonitorConnection;
use crate::oci_runtime::OciRuntime;
use crate::state::container::{Container, Finished, Phase, StopTicket};
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

/// Ends a created container that is not to be kept (a check after the runtime's create
/// failed): SIGKILL, then the monitor's exit record, so that [`dispose`] removes the record
/// rather than race the monitor writing it for a container crid has forgotten.
pub(super) async fn end_created(state: &State, container: &Container) {
    if let Err(err) = state
        .host
        .runtime
        .kill(&container.id, libc::SIGKILL, true)
        .await
    {
        tracing::debug!(container = %container.id, error = %crid_common::error_chain::error_chain(&err), "kill of a refused container");
    }
    if !wait_exit(state, container, KILL_GRACE).await {
        tracing::warn!(container = %container.id, "a refused container did not exit within {KILL_GRACE:?} of SIGKILL");
    }
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
/// when it never started). An exited container is fine. A stop already under way (holding
/// the lifecycle lock, waiting out its own timeout) is hastened to this one's deadline.
pub async fn stop(
    state: &State,
    container: &Container,
    timeout_secs: i64,
) -> Result<(), DaemonError> {
    let limit = super::request_timeout(timeout_secs).unwrap_or(Duration::ZERO);
    // Seen at once by a stop under way, which sends SIGKILL by then at the latest.
    let ticket = container
        .stop_requests
        .register(tokio::time::Instant::now() + limit);
    let _guard = container.lifecycle.lock().await;
    // The grace period counts from here: the wait for the lock is not the container's time.
    let deadline = tokio::time::Instant::now() + limit;
    stop_locked(state, container, &ticket, deadline).await
}

/// Waits for the container's exit until `deadline`, or the earlier one another stop or a
/// removal asks for; true once it has exited.
async fn wait_exit_until(
    state: &State,
    container: &Container,
    ticket: &StopTicket<'_>,
    deadline: tokio::time::Instant,
) -> bool {
    let mut hastened = container.stop_requests.subscribe();
    loop {
        hastened.borrow_and_update();
        let until = container
            .stop_requests
            .earliest_but(ticket)
            .map_or(deadline, |d| d.min(deadline));
        let now = tokio::time::Instant::now();
        if until <= now {
            return container.finished(&state.paths.exits).is_some();
        }
        tokio::select! {
            exited = wait_exit(state, container, until - now) => {
                if exited {
                    return true;
                }
            }
            _ = hastened.changed() => {}
        }
    }
}

async fn stop_locked(
    state: &State,
    container: &Container,
    ticket: &StopTicket<'_>,
    deadline: tokio::time::Instant,
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
    if record.started_at.is_some()
        && deadline > tokio::time::Instant::now()
        && record.stop_signal != libc::SIGKILL
    {
        exited(rt.kill(&container.id, record.stop_signal, false).await)?;
        if wait_exit_until(state, container, ticket, deadline).await {
            return Ok(());
        }
        tracing::info!(container = %container.id, "stop signal did not end the container in time; sending SIGKILL");
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
    let ticket = container
        .stop_requests
        .register(tokio::time::Instant::now());
    let _guard = container.lifecycle.lock().await;
    stop_locked(state, container, &ticket, tokio::time::Instant::now()).await?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crid_proto::cri;

    use crate::fake_host::Fakes;
    use crate::host::OciRuntimeOps;
    use crate::state::container::{Container, ContainerRecord, Finished, Phase};
    use crate::state::{new_id, State};

    /// A container recorded as created (or, with `started`, running), with its own PID
    /// namespace, stopped by SIGTERM.
    fn container(fakes: &Fakes, state: &State, started: bool) -> Arc<Container> {
        let id = new_id();
        let dir = state.paths.containers.join(&id);
        std::fs::create_dir_all(&dir).expect("container dir");
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: "pod".into(),
            name: format!("k8s_c_{id}"),
            started_at: started.then_some(1),
            pid: 4242,
            stop_signal: libc::SIGTERM,
            own_pid_namespace: true,
            ..Default::default()
        };
        let container = Arc::new(Container::new(dir, cri::ContainerConfig::default(), record));
        container.save_config().expect("config");
        container.update(|_| {}).expect("record");
        fakes.runtime.containers.lock().expect("lock").insert(id);
        state.insert_container(container.clone());
        container
    }

    #[tokio::test]
    async fn a_container_that_ignores_the_stop_signal_is_killed_after_the_timeout() {
        let fakes = Fakes::new();
        let state = fakes.state();
        let c = container(&fakes, &state, true);
        *fakes.runtime.exits_on.lock().expect("lock") = vec![libc::SIGKILL];
        let begun = Instant::now();
        super::stop(&state, &c, 1).await.expect("stop");
        let took = begun.elapsed();
        assert!(
            took >= Duration::from_secs(1),
            "SIGKILL before the timeout: {took:?}"
        );
        assert!(took < Duration::from_secs(10), "stop took {took:?}");
        assert_eq!(
            fakes.calls.of("kill"),
            [
                format!("kill {} {} all=false", c.id, libc::SIGTERM),
                format!("kill {} {} all=false", c.id, libc::SIGKILL),
            ]
        );
        let finished = c.finished(&state.paths.exits).expect("exited");
        assert_eq!(finished.exit_code, 128 + libc::SIGKILL);
        assert!(!finished.lost);
    }

    #[tokio::test]
    async fn a_container_that_exits_on_the_stop_signal_gets_no_sigkill() {
        let fakes = Fakes::new();
        let state = fakes.state();
        let c = container(&fakes, &state, true);
        let begun = Instant::now();
        super::stop(&state, &c, 30).await.expect("stop");
        assert!(
            begun.elapsed() < Duration::from_secs(10),
            "waited for the timeout"
        );
        assert_eq!(
            fakes.calls.of("kill"),
            [format!("kill {} {} all=false", c.id, libc::SIGTERM)]
        );
        assert_eq!(c.phase(&state.paths.exits), Phase::Exited);
        assert_eq!(
            c.finished(&state.paths.exits).map(|f| f.exit_code),
            Some(128 + libc::SIGTERM)
        );
        // Stopping an exited container does nothing more.
        super::stop(&state, &c, 30).await.expect("second stop");
        assert_eq!(fakes.calls.of("kill").len(), 1);
    }

    #[tokio::test]
    async fn without_a_timeout_or_a_start_the_container_is_killed_at_once() {
        let fakes = Fakes::new();
        let state = fakes.state();
        let running = container(&fakes, &state, true);
        super::stop(&state, &running, 0).await.expect("stop");
        let created = container(&fakes, &state, false);
        super::stop(&state, &created, 30).await.expect("stop");
        assert_eq!(
            fakes.calls.of("kill"),
            [
                format!("kill {} {} all=false", running.id, libc::SIGKILL),
                format!("kill {} {} all=false", created.id, libc::SIGKILL),
            ]
        );
    }

    #[tokio::test]
    async fn sigkill_reaches_every_process_of_a_shared_pid_namespace() {
        let fakes = Fakes::new();
        let state = fakes.state();
        let c = container(&fakes, &state, true);
        c.update(|r| r.own_pid_namespace = false).expect("record");
        *fakes.runtime.exits_on.lock().expect("lock") = vec![libc::SIGKILL];
        super::stop(&state, &c, 1).await.expect("stop");
        assert_eq!(
            fakes.calls.of("kill"),
            [
                // The stop signal goes to the init alone, as runc kill does.
                format!("kill {} {} all=false", c.id, libc::SIGTERM),
                format!("kill {} {} all=true", c.id, libc::SIGKILL),
            ]
        );
    }

    #[tokio::test]
    async fn a_lost_container_is_deleted_from_the_runtime_on_stop_and_removed() {
        let fakes = Fakes::new();
        let state = fakes.state();
        let c = container(&fakes, &state, true);
        assert!(super::mark_lost(&state, &c));
        assert!(!super::mark_lost(&state, &c), "marked twice");
        super::stop(&state, &c, 30).await.expect("stop");
        assert!(fakes.calls.of("kill").is_empty(), "{:?}", fakes.calls.all());
        assert_eq!(fakes.calls.of("delete"), [format!("delete {}", c.id)]);
        super::remove(&state, &c).await.expect("remove");
        assert!(state.container(&c.id).is_err(), "still known");
        assert!(!c.dir.exists(), "directory left");
        // The name is free again.
        state
            .reserve_name(&c.record().name, "other", crate::state::Kind::Container)
            .expect("name released");
    }

    #[tokio::test]
    async fn a_started_container_is_started_once() {
        let fakes = Fakes::new();
        let state = fakes.state();
        let c = container(&fakes, &state, false);
        super::start(&state, &c).await.expect("start");
        assert_eq!(c.phase(&state.paths.exits), Phase::Running);
        let again = super::start(&state, &c).await.expect_err("second start");
        assert!(
            matches!(again, crate::error::DaemonError::FailedPrecondition(_)),
            "{again:?}"
        );
        assert_eq!(fakes.calls.of("start"), [format!("start {}", c.id)]);
    }

    #[tokio::test]
    async fn after_a_restart_containers_without_monitor_or_exit_record_are_lost() {
        let fakes = Fakes::new();
        let state = fakes.state();
        let exited = container(&fakes, &state, true);
        let watched = container(&fakes, &state, true);
        let lost = container(&fakes, &state, true);
        // The first exited while crid was down: its monitor wrote the record.
        fakes
            .runtime
            .kill(&exited.id, libc::SIGTERM, false)
            .await
            .expect("kill");
        fakes
            .monitors
            .answering
            .lock()
            .expect("lock")
            .insert(watched.id.clone());
        drop(state);
        let state = fakes.state();
        super::recover(&state);
        let finished = |c: &Container| {
            state
                .container(&c.id)
                .expect("known after restart")
                .finished(&state.paths.exits)
        };
        let exit = finished(&exited).expect("exited");
        assert_eq!((exit.exit_code, exit.lost), (128 + libc::SIGTERM, false));
        assert_eq!(
            finished(&watched),
            None,
            "a live monitor's container marked"
        );
        let Some(Finished {
            exit_code,
            lost: was_lost,
            ..
        }) = finished(&lost)
        else {
            panic!("the container without a monitor is not marked");
        };
        assert_eq!((exit_code, was_lost), (255, true));
    }
}
