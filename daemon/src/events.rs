//! The container event hub behind GetContainerEvents: a broadcast channel with a bounded
//! buffer. Sending never waits; a client that falls more than `EVENT_BUFFER` events behind
//! loses its stream (and relists, as kubelet's evented PLEG does on a broken stream) instead
//! of holding crid back.

use std::collections::HashMap;
use std::sync::Mutex;

use crid_proto::cri;
use tokio::sync::broadcast;

/// Events kept for clients that have not read them yet.
pub const EVENT_BUFFER: usize = 1024;

pub struct EventHub {
    sender: broadcast::Sender<cri::ContainerEventResponse>,
    /// Containers StartContainer is starting, and whether their STOPPED event waits: a
    /// container that exits at once is noticed by the exit watch while StartContainer is
    /// still returning, and its STARTED must come first.
    starting: Mutex<HashMap<String, bool>>,
}

impl Default for EventHub {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(EVENT_BUFFER);
        EventHub {
            sender,
            starting: Mutex::default(),
        }
    }
}

impl EventHub {
    /// Publishes an event to every connected client (none connected is fine).
    pub fn publish(&self, event: cri::ContainerEventResponse) {
        let _ = self.sender.send(event);
    }

    /// A new client's receiver: it sees events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.sender.subscribe()
    }

    /// A start of `id` begins: its STOPPED event waits until [`EventHub::end_start`].
    pub fn begin_start(&self, id: &str) {
        self.starting().insert(id.to_owned(), false);
    }

    /// Holds back `id`'s STOPPED event if it is being started; true if held.
    pub fn hold_stop(&self, id: &str) -> bool {
        match self.starting().get_mut(id) {
            Some(held) => {
                *held = true;
                true
            }
            None => false,
        }
    }

    /// The start of `id` is over (its STARTED event out, or it failed); true if a STOPPED
    /// event was held back and is now due.
    pub fn end_start(&self, id: &str) -> bool {
        self.starting().remove(id).unwrap_or(false)
    }

    fn starting(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.starting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether anyone listens (events are not even built otherwise).
    pub fn has_clients(&self) -> bool {
        self.sender.receiver_count() > 0
    }
}
