//! Container events: built with the pod's and its containers' statuses (what kubelet's
//! evented PLEG reads), published on the state's hub; exits noticed through the exit records
//! the monitors write (an inotify watch on their directory, so a container that ends on its
//! own is reported without polling or a call held open in every monitor).

use std::pin::Pin;

use crid_proto::cri;
use tokio_stream::Stream;
use tonic::Status;

use super::cri_views;
use crate::state::State;

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

/// Publishes an event for `container_id` (a container, or a pod for pod events).
pub fn publish(state: &State, kind: cri::ContainerEventType, container_id: &str, pod_id: &str) {
    if kind == cri::ContainerEventType::ContainerStoppedEvent
        && state.events.hold_stop(container_id)
    {
        // Published by `start_finished` after the STARTED event.
        return;
    }
    if !state.events.has_clients() {
        return;
    }
    let pod_sandbox_status = state.pod(pod_id).ok().map(|p| cri_views::pod_status(&p));
    let containers_statuses = state
        .containers_of(pod_id)
        .iter()
        .map(|c| cri_views::container_status(state, c))
        .collect();
    state.events.publish(cri::ContainerEventResponse {
        container_id: container_id.to_owned(),
        container_event_type: kind as i32,
        created_at: crate::state::persist::now_nanos(),
        pod_sandbox_status,
        containers_statuses,
    });
}

/// StartContainer of `container_id` is over: publishes its STARTED event if it started, then
/// a STOPPED event the exit watch held back meanwhile.
pub fn start_finished(state: &State, container_id: &str, pod_id: &str, started: bool) {
    if started {
        publish(
            state,
            cri::ContainerEventType::ContainerStartedEvent,
            container_id,
            pod_id,
        );
    }
    if state.events.end_start(container_id) {
        publish(
            state,
            cri::ContainerEventType::ContainerStoppedEvent,
            container_id,
            pod_id,
        );
    }
}

/// A client's stream: every event from now on; ends with an error if the client falls
/// behind the hub's buffer.
pub fn stream(state: &State) -> EventStream {
    let mut receiver = state.events.subscribe();
    Box::pin(async_stream(move |yield_| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => {
                    if yield_.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    let _ = yield_
                        .send(Err(Status::resource_exhausted(format!(
                            "event client fell {missed} events behind (buffer {}); reconnect and relist",
                            crate::events::EVENT_BUFFER
                        ))))
                        .await;
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }))
}

/// A stream fed by a task through a one-slot channel (the task waits for the client).
fn async_stream<F, Fut>(body: F) -> impl Stream<Item = Result<cri::ContainerEventResponse, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<cri::ContainerEventResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(body(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Publishes `container`'s STOPPED event unless it is out already: the exit watch, which
/// learns of the exit from the record, may come after StopContainer has returned and the
/// client has removed the container; a client must still see STOPPED before DELETED.
pub fn publish_stopped(state: &State, container: &crate::state::container::Container) {
    if !container
        .stopped_event
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        publish(
            state,
            cri::ContainerEventType::ContainerStoppedEvent,
            &container.id,
            &container.pod_id,
        );
    }
}

/// Watches the exit record directory and publishes a STOPPED event for each new record.
pub fn watch_exits(state: std::sync::Arc<State>) -> std::io::Result<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(std::io::Error::from)?;
    inotify
        .add_watch(&state.paths.exits, AddWatchFlags::IN_MOVED_TO)
        .map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("exit-watch".into())
        .spawn(move || loop {
            let Ok(events) = inotify.read_events() else {
                // EINTR and friends; never spin on a persistent failure.
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            };
            for event in events {
                let Some(name) = event.name.as_ref().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                if let Ok(container) = state.container(name) {
                    if container.id == name {
                        publish_stopped(&state, &container);
                    }
                }
            }
        })?;
    Ok(())
}
