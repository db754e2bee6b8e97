//! The attach socket: `<socket-dir>/<id>.attach`, SOCK_SEQPACKET, as conmon serves it.
//!
//! Every client gets every output packet: one stream-id byte (2 stdout, 3 stderr) and at most
//! 8192 bytes of data. Bytes a client sends go to the container's stdin. Sends never block:
//! a client whose socket buffer is full misses that packet (counted in
//! `attach_dropped_bytes`), so a slow or dead client can stall neither the log nor the
//! container.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crid_common::monitor_paths::ATTACH_PACKET_PAYLOAD_MAX;

use crate::shared::Counters;
use crate::sys::{self, Epoll};

/// Most attach clients at once; more are refused (closed at accept).
pub const MAX_ATTACH_CLIENTS: usize = 64;
/// Bytes read from a client per read; one read is the most stdin input held in memory.
pub const CLIENT_READ_MAX: usize = 32 * 1024;
/// Socket send buffer per client: how far a client may lag before it misses output.
const CLIENT_SEND_BUFFER: libc::c_int = 512 * 1024;

struct Client {
    fd: OwnedFd,
    /// Still reading the client's input (false after it shut down its sending side).
    reading: bool,
}

/// What a client event produced.
pub enum ClientInput {
    /// Nothing to do.
    None,
    /// Bytes for the container's stdin (in the caller's buffer, this many).
    Data(usize),
    /// The client closed its sending side (or went away).
    Closed,
}

/// The listening socket and its clients.
pub struct AttachServer {
    listener: OwnedFd,
    clients: Vec<Option<Client>>,
    token_base: u64,
}

impl AttachServer {
    /// Binds the socket (mode 0600). Client tokens are `token_base + slot`.
    pub fn bind(path: &Path, token_base: u64) -> io::Result<Self> {
        let listener = sys::seqpacket_listener(path, 16)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(AttachServer {
            listener,
            clients: Vec::new(),
            token_base,
        })
    }

    pub fn listener(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// The slot of a client token, if it is one of ours.
    pub fn slot_of(&self, token: u64) -> Option<usize> {
        let slot = token.checked_sub(self.token_base)? as usize;
        (slot < MAX_ATTACH_CLIENTS).then_some(slot)
    }

    /// Accepts every pending connection.
    pub fn accept_all(&mut self, epoll: &Epoll, counters: &Counters) {
        while let Ok(Some(fd)) = sys::accept(self.listener.as_fd()) {
            let slot = match self.clients.iter().position(Option::is_none) {
                Some(slot) => slot,
                None if self.clients.len() < MAX_ATTACH_CLIENTS => {
                    self.clients.push(None);
                    self.clients.len() - 1
                }
                None => continue, // full: dropping `fd` closes the connection
            };
            sys::set_send_buffer(fd.as_fd(), CLIENT_SEND_BUFFER);
            let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
            if epoll
                .add(&fd, events, self.token_base + slot as u64)
                .is_err()
            {
                continue;
            }
            self.clients[slot] = Some(Client { fd, reading: true });
            Counters::add(&counters.attach_clients, 1);
        }
    }

    /// Sends output to every client, in packets of at most 8192 bytes of data.
    pub fn broadcast(&mut self, stream: u8, data: &[u8], epoll: &Epoll, counters: &Counters) {
        for slot in 0..self.clients.len() {
            let Some(client) = &self.clients[slot] else {
                continue;
            };
            let mut sent = 0;
            let mut gone = false;
            for chunk in data.chunks(ATTACH_PACKET_PAYLOAD_MAX) {
                match sys::send_packet(client.fd.as_fd(), stream, chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            Counters::add(&counters.attach_dropped_bytes, (data.len() - sent) as u64);
            if gone {
                self.remove(slot, epoll, counters);
            }
        }
    }

    /// Handles readiness on a client; input lands in `buf`.
    pub fn on_client_event(
        &mut self,
        slot: usize,
        events: u32,
        buf: &mut [u8],
        epoll: &Epoll,
        counters: &Counters,
    ) -> ClientInput {
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return ClientInput::None;
        };
        if client.reading && events & libc::EPOLLIN as u32 != 0 {
            let want = buf.len().min(CLIENT_READ_MAX);
            match nix::unistd::read(client.fd.as_fd(), &mut buf[..want]) {
                Ok(0) => {}
                Ok(n) => return ClientInput::Data(n),
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                    return ClientInput::None
                }
                Err(_) => {}
            }
            // End of the client's input; it may still be reading output.
            client.reading = false;
            let _ = epoll.modify(&client.fd, 0, self.token_base + slot as u64);
            if events & libc::EPOLLHUP as u32 != 0 {
                self.remove(slot, epoll, counters);
            }
            return ClientInput::Closed;
        }
        if events & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
            let was_reading = client.reading;
            self.remove(slot, epoll, counters);
            if was_reading {
                return ClientInput::Closed;
            }
        }
        ClientInput::None
    }

    /// Stops (or resumes) reading input from every client: used while stdin is backed up.
    pub fn pause_input(&self, paused: bool, epoll: &Epoll) {
        let events = if paused {
            0
        } else {
            (libc::EPOLLIN | libc::EPOLLRDHUP) as u32
        };
        for (slot, client) in self.clients.iter().enumerate() {
            if let Some(client) = client.as_ref().filter(|c| c.reading) {
                let _ = epoll.modify(&client.fd, events, self.token_base + slot as u64);
            }
        }
    }

    fn remove(&mut self, slot: usize, epoll: &Epoll, counters: &Counters) {
        if let Some(client) = self.clients[slot].take() {
            epoll.delete(&client.fd);
            counters
                .attach_clients
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(client);
        }
    }

    /// Closes every client (at exit, so they see end of output).
    pub fn close_all(&mut self) {
        for client in self.clients.iter_mut().filter_map(Option::take) {
            // SAFETY-free: shutdown through nix; errors mean the client is gone already.
            let _ =
                nix::sys::socket::shutdown(client.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }
}
