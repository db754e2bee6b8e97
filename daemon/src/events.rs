//! The container event hub behind GetContainerEvents: a broadcast channel with a bounded
//! buffer. Sending never waits; a client that falls more than `EVENT_BUFFER` events behind
//! loses its stream (and relists, as kubelet's evented PLEG does on a broken stream) instead
//! of holding crid back.

use crid_proto::cri;
use tokio::sync::broadcast;

/// Events kept for clients that have not read them yet.
pub const EVENT_BUFFER: usize = 1024;

pub struct EventHub {
    sender: broadcast::Sender<cri::ContainerEventResponse>,
}

impl Default for EventHub {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(EVENT_BUFFER);
        EventHub { sender }
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

    /// Whether anyone listens (events are not even built otherwise).
    pub fn has_clients(&self) -> bool {
        self.sender.receiver_count() > 0
    }
}
