//! The attach socket: `<socket-dir>/<id>.attach`, SOCK_SEQPACKET, as conmon serves it.
//!
//! Every client gets every output packet: one stream-id byte (2 stdout, 3 stderr) and at most
//! 8192 bytes of data. Bytes a client sends go to the container's stdin. Sends never block
//! the loop: a client whose socket buffer is full is *behind*; the rest of that read waits for
//! it (the [`Backlog`], one read at most) and the loop stops reading the container's output
//! until every client has caught up. A client still behind after [`CLIENT_STALL_MAX`] is
//! disconnected (the bytes it missed are counted in `attach_dropped_bytes`), so a client that
//! keeps reading gets every byte, and a stuck one holds the container and its log back for a
//! bounded time only. (conmon blocks on a stuck client for ever; dropping packets instead, as
//! crimon did first, lost 3 % of a flood to a client that was only a little slow.)

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crid_common::monitor_paths::ATTACH_PACKET_PAYLOAD_MAX;

use crate::shared::Counters;
use crate::sys::{self, Epoll};

/// Most attach clients at once; more are refused (closed at accept).
pub const MAX_ATTACH_CLIENTS: usize = 64;
/// Bytes read from a client per read; one read is the most stdin input held in memory.
pub const CLIENT_READ_MAX: usize = 32 * 1024;
/// Socket send buffer per client: how far a client may lag before it is behind.
const CLIENT_SEND_BUFFER: libc::c_int = 512 * 1024;
/// How long the container's output waits for a client that is behind before that client is
/// disconnected.
pub const CLIENT_STALL_MAX: Duration = Duration::from_secs(5);

struct Client {
    fd: OwnedFd,
    /// Still reading the client's input (false after it shut down its sending side).
    reading: bool,
    /// Offset into the backlog from which this client still has to be sent output.
    behind: Option<usize>,
}

/// The output read last, kept while some client has not taken all of it.
struct Backlog {
    stream: u8,
    data: Vec<u8>,
    since: Instant,
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

/// Sends `data[from..]` in packets; returns where it stopped (`data.len()` when all went).
fn send_from(fd: BorrowedFd<'_>, stream: u8, data: &[u8], from: usize) -> io::Result<usize> {
    let mut at = from;
    while at < data.len() {
        let end = data.len().min(at + ATTACH_PACKET_PAYLOAD_MAX);
        match sys::send_packet(fd, stream, &data[at..end]) {
            Ok(()) => at = end,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// The listening socket and its clients.
pub struct AttachServer {
    listener: OwnedFd,
    clients: Vec<Option<Client>>,
    token_base: u64,
    backlog: Option<Backlog>,
    /// Client input is paused while the container's stdin is backed up.
    input_paused: bool,
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
            backlog: None,
            input_paused: false,
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
            let events = if self.input_paused {
                0
            } else {
                (libc::EPOLLIN | libc::EPOLLRDHUP) as u32
            };
            if epoll
                .add(&fd, events, self.token_base + slot as u64)
                .is_err()
            {
                continue;
            }
            self.clients[slot] = Some(Client {
                fd,
                reading: true,
                behind: None,
            });
            Counters::add(&counters.attach_clients, 1);
        }
    }

    /// Sends output to every client, in packets of at most 8192 bytes of data. A client that
    /// cannot take all of it is behind: the rest is kept for it and [`Self::is_stalled`] holds
    /// until it catches up or [`Self::evict_stalled`] drops it.
    pub fn broadcast(&mut self, stream: u8, data: &[u8], epoll: &Epoll, counters: &Counters) {
        debug_assert!(self.backlog.is_none(), "broadcast while stalled");
        let mut any_behind = false;
        for slot in 0..self.clients.len() {
            let Some(client) = &mut self.clients[slot] else {
                continue;
            };
            match send_from(client.fd.as_fd(), stream, data, 0) {
                Ok(at) if at == data.len() => {}
                Ok(at) => {
                    client.behind = Some(at);
                    any_behind = true;
                    self.watch(slot, epoll);
                }
                Err(_) => self.remove(slot, epoll, counters),
            }
        }
        if any_behind {
            self.backlog = Some(Backlog {
                stream,
                data: data.to_vec(),
                since: Instant::now(),
            });
        }
    }

    /// Whether some client is behind (the container's output must wait).
    pub fn is_stalled(&self) -> bool {
        self.backlog.is_some()
    }

    /// When the clients that are behind get disconnected.
    pub fn stall_deadline(&self) -> Option<Instant> {
        self.backlog.as_ref().map(|b| b.since + CLIENT_STALL_MAX)
    }

    /// Disconnects every client that is still behind.
    pub fn evict_stalled(&mut self, epoll: &Epoll, counters: &Counters) {
        let Some(backlog) = self.backlog.take() else {
            return;
        };
        for slot in 0..self.clients.len() {
            let Some(at) = self.clients[slot].as_ref().and_then(|c| c.behind) else {
                continue;
            };
            Counters::add(
                &counters.attach_dropped_bytes,
                (backlog.data.len() - at) as u64,
            );
            if let Some(client) = &self.clients[slot] {
                let _ = nix::sys::socket::shutdown(
                    client.fd.as_raw_fd(),
                    nix::sys::socket::Shutdown::Both,
                );
            }
            self.remove(slot, epoll, counters);
        }
    }

    /// Sends a client that is behind what it still lacks.
    fn catch_up(&mut self, slot: usize, epoll: &Epoll, counters: &Counters) {
        let (Some(backlog), Some(client)) = (&self.backlog, self.clients[slot].as_mut()) else {
            return;
        };
        let Some(from) = client.behind else { return };
        match send_from(client.fd.as_fd(), backlog.stream, &backlog.data, from) {
            Ok(at) if at == backlog.data.len() => {
                client.behind = None;
                self.watch(slot, epoll);
                self.settle();
            }
            Ok(at) => client.behind = Some(at),
            Err(_) => self.remove(slot, epoll, counters),
        }
    }

    /// Drops the backlog once no client is behind.
    fn settle(&mut self) {
        if self.clients.iter().flatten().all(|c| c.behind.is_none()) {
            self.backlog = None;
        }
    }

    /// Sets what epoll reports for a client: input while it sends and input is not paused,
    /// writability while it is behind.
    fn watch(&self, slot: usize, epoll: &Epoll) {
        let Some(client) = &self.clients[slot] else {
            return;
        };
        let mut events = 0;
        if client.reading && !self.input_paused {
            events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if client.behind.is_some() {
            events |= libc::EPOLLOUT as u32;
        }
        let _ = epoll.modify(&client.fd, events, self.token_base + slot as u64);
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
        if events & libc::EPOLLOUT as u32 != 0 {
            self.catch_up(slot, epoll, counters);
        }
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
            self.watch(slot, epoll);
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
    pub fn pause_input(&mut self, paused: bool, epoll: &Epoll) {
        self.input_paused = paused;
        for slot in 0..self.clients.len() {
            self.watch(slot, epoll);
        }
    }

    fn remove(&mut self, slot: usize, epoll: &Epoll, counters: &Counters) {
        if let Some(client) = self.clients[slot].take() {
            epoll.delete(&client.fd);
            counters
                .attach_clients
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(client);
            self.settle();
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
