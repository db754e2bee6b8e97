//! The monitor's event loop: one thread, epoll, level-triggered.
//!
//! It owns every container-facing fd: the output pipes (or the PTY), stdin, the attach socket
//! and its clients, the OOM watch, and the SIGCHLD signalfd. Control threads reach it only
//! through [`LoopCommand`]s and an eventfd.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use crid_common::log_line::Stream;
use crid_common::monitor_paths::attach_stream;

use crate::attach::{AttachServer, ClientInput};
use crate::error::{MonitorError, Result};
use crate::log_writer::LogWriter;
use crate::oom::OomWatcher;
use crate::shared::{Counters, LoopCommand, Shared};
use crate::sys::{self, Epoll};

/// Bytes read from a container stream at once. A line longer than this is logged as `P`
/// records ending with an `F` (conmon splits at 8 KiB; a bigger buffer keeps more lines whole
/// and cuts the system calls under heavy output). At 128 KiB glibc maps it on its own, so
/// only the pages a read actually filled are ever resident.
pub const READ_BUFFER: usize = 128 * 1024;

const TOKEN_SIGNAL: u64 = 1;
const TOKEN_WAKE: u64 = 2;
const TOKEN_STDOUT: u64 = 3;
const TOKEN_STDERR: u64 = 4;
const TOKEN_ATTACH: u64 = 5;
const TOKEN_OOM: u64 = 6;
const TOKEN_STDIN: u64 = 7;
/// Attach clients use tokens from here on.
pub const TOKEN_CLIENT_BASE: u64 = 100;

/// The container's stdio as the monitor holds it.
pub struct ContainerIo {
    /// Standard output; with a terminal, the PTY master (which also carries stderr).
    pub stdout: Option<OwnedFd>,
    /// Standard error (pipe mode only).
    pub stderr: Option<OwnedFd>,
    /// Where attach input goes: the stdin pipe, or a dup of the PTY master.
    pub stdin: Option<OwnedFd>,
    /// The PTY master, for resizing.
    pub pty: Option<OwnedFd>,
}

/// How the loop ended.
pub struct LoopOutcome {
    pub wait_status: libc::c_int,
    pub oom_killed: bool,
}

/// Everything the loop works on.
pub struct EventLoop {
    epoll: Epoll,
    signals: OwnedFd,
    wake: OwnedFd,
    io: ContainerIo,
    log: LogWriter,
    attach: AttachServer,
    oom: Option<OomWatcher>,
    shared: Arc<Shared>,
    commands: Receiver<LoopCommand>,
    stdin_once: bool,
    stdin_pending: Vec<u8>,
    buf: Vec<u8>,
    exit_status: Option<libc::c_int>,
    /// Output is not being read because an attach client is behind.
    output_paused: bool,
}

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        signals: OwnedFd,
        wake: OwnedFd,
        io: ContainerIo,
        log: LogWriter,
        attach: AttachServer,
        oom: Option<OomWatcher>,
        shared: Arc<Shared>,
        commands: Receiver<LoopCommand>,
        stdin_once: bool,
    ) -> Result<Self> {
        let epoll = Epoll::new().map_err(|e| MonitorError::sys("create epoll", e))?;
        let input = libc::EPOLLIN as u32;
        let add = |fd: std::os::fd::BorrowedFd<'_>, token| {
            epoll
                .add(fd, input, token)
                .map_err(|e| MonitorError::sys("register fd with epoll", e))
        };
        add(signals.as_fd(), TOKEN_SIGNAL)?;
        add(wake.as_fd(), TOKEN_WAKE)?;
        add(attach.listener(), TOKEN_ATTACH)?;
        for (fd, token) in [(&io.stdout, TOKEN_STDOUT), (&io.stderr, TOKEN_STDERR)] {
            if let Some(fd) = fd {
                sys::set_nonblocking(fd.as_fd())
                    .map_err(|e| MonitorError::sys("set O_NONBLOCK", e))?;
                add(fd.as_fd(), token)?;
            }
        }
        if let Some(stdin) = &io.stdin {
            sys::set_nonblocking(stdin.as_fd())
                .map_err(|e| MonitorError::sys("set O_NONBLOCK", e))?;
        }
        if let Some(oom) = &oom {
            add(oom.fd(), TOKEN_OOM)?;
        }
        Ok(EventLoop {
            epoll,
            signals,
            wake,
            io,
            log,
            attach,
            oom,
            shared,
            commands,
            stdin_once,
            stdin_pending: Vec::new(),
            buf: vec![0u8; READ_BUFFER],
            exit_status: None,
            output_paused: false,
        })
    }

    /// Runs until the container's init process has been reaped and its output drained.
    pub fn run(mut self) -> (LoopOutcome, LogWriter, AttachServer) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        while self.exit_status.is_none() {
            let n = match self.epoll.wait(&mut events, self.stall_timeout_ms()) {
                Ok(n) => n,
                Err(_) => continue,
            };
            for ev in &events[..n] {
                let (token, flags) = (ev.u64, ev.events);
                self.dispatch(token, flags);
            }
            self.after_attach_events();
        }
        self.drain_output();
        let oom_killed = self.oom.as_mut().is_some_and(OomWatcher::oom_killed);
        let outcome = LoopOutcome {
            wait_status: self.exit_status.unwrap_or(0),
            oom_killed,
        };
        (outcome, self.log, self.attach)
    }

    fn dispatch(&mut self, token: u64, flags: u32) {
        match token {
            TOKEN_SIGNAL => self.reap(),
            TOKEN_WAKE => self.serve_commands(),
            // Output waits while an attach client is behind (an event fetched in the same
            // batch as the stall comes here too).
            TOKEN_STDOUT | TOKEN_STDERR if self.attach.is_stalled() => {}
            TOKEN_STDOUT | TOKEN_STDERR => {
                self.read_stream(token);
            }
            TOKEN_ATTACH => self.attach.accept_all(&self.epoll, &self.shared.counters),
            TOKEN_OOM => {
                if let Some(oom) = &mut self.oom {
                    oom.on_event();
                }
            }
            TOKEN_STDIN => self.flush_stdin(),
            other => {
                if let Some(slot) = self.attach.slot_of(other) {
                    self.on_client(slot, flags);
                }
            }
        }
    }

    fn reap(&mut self) {
        sys::drain_signalfd(self.signals.as_fd());
        while let Some((pid, status)) = sys::reap_one() {
            if pid == self.shared.pid {
                self.exit_status = Some(status);
            } else {
                // An ExecSync child, or an orphan that landed on us (subreaper).
                self.shared.children.offer(pid, status);
            }
        }
    }

    fn serve_commands(&mut self) {
        sys::eventfd_drain(self.wake.as_fd());
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                LoopCommand::ReopenLog(reply) => {
                    let result = self.log.reopen();
                    if result.is_ok() {
                        Counters::add(&self.shared.counters.log_reopens, 1);
                    }
                    let _ = reply.send(result);
                }
                LoopCommand::CloseStdin(reply) => {
                    self.close_stdin();
                    let _ = reply.send(Ok(()));
                }
                LoopCommand::Resize {
                    width,
                    height,
                    reply,
                } => {
                    let result = match &self.io.pty {
                        Some(pty) => sys::set_window_size(pty.as_fd(), width, height)
                            .map_err(|e| MonitorError::sys("set terminal size", e)),
                        None => Err(MonitorError::FailedPrecondition(format!(
                            "container {} has no terminal",
                            self.shared.id
                        ))),
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Reads one chunk from a container stream; false at end of stream.
    fn read_stream(&mut self, token: u64) -> bool {
        let slot = if token == TOKEN_STDOUT {
            &mut self.io.stdout
        } else {
            &mut self.io.stderr
        };
        let Some(fd) = slot.as_ref() else {
            return false;
        };
        match nix::unistd::read(fd.as_fd(), &mut self.buf) {
            Ok(0) | Err(nix::errno::Errno::EIO) => {
                // EOF, or EIO from a PTY whose other side is gone.
                if let Some(fd) = slot.take() {
                    self.epoll.delete(&fd);
                }
                false
            }
            Ok(n) => {
                let (stream, id) = if token == TOKEN_STDOUT {
                    (Stream::Stdout, attach_stream::STDOUT)
                } else {
                    (Stream::Stderr, attach_stream::STDERR)
                };
                let counters = &self.shared.counters;
                self.log.write_chunk(stream, &self.buf[..n], counters);
                self.attach
                    .broadcast(id, &self.buf[..n], &self.epoll, counters);
                if self.attach.is_stalled() && !self.output_paused {
                    self.watch_output(false);
                    self.output_paused = true;
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Milliseconds epoll may wait: for ever, or until attach clients that are behind are
    /// due to be disconnected.
    fn stall_timeout_ms(&self) -> libc::c_int {
        match self.attach.stall_deadline() {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                // Round up so the wake-up is not a busy loop just before the deadline.
                left.as_millis().saturating_add(1).min(i32::MAX as u128) as libc::c_int
            }
        }
    }

    /// Disconnects attach clients that stayed behind too long, and reads output again once no
    /// client is behind.
    fn after_attach_events(&mut self) {
        if let Some(deadline) = self.attach.stall_deadline() {
            if std::time::Instant::now() >= deadline {
                self.attach
                    .evict_stalled(&self.epoll, &self.shared.counters);
            }
        }
        if self.output_paused && !self.attach.is_stalled() {
            self.watch_output(true);
            self.output_paused = false;
        }
    }

    /// Stops or resumes epoll reporting the container's output. Stopping removes the fds:
    /// a pipe whose writers are gone reports EPOLLHUP whatever the interest, which would spin
    /// the loop while it waits for a client.
    fn watch_output(&self, watched: bool) {
        for (fd, token) in [
            (&self.io.stdout, TOKEN_STDOUT),
            (&self.io.stderr, TOKEN_STDERR),
        ] {
            if let Some(fd) = fd {
                if watched {
                    let _ = self.epoll.add(fd, libc::EPOLLIN as u32, token);
                } else {
                    self.epoll.delete(fd);
                }
            }
        }
    }

    /// Waits (boundedly) until no attach client is behind, serving only client events: the
    /// container is gone, but what it wrote last still reaches every client that reads.
    fn wait_attach_caught_up(&mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        while self.attach.is_stalled() {
            let n = self
                .epoll
                .wait(&mut events, self.stall_timeout_ms())
                .unwrap_or(0);
            for ev in &events[..n] {
                if let Some(slot) = self.attach.slot_of(ev.u64) {
                    self.on_client(slot, ev.events);
                }
            }
            self.after_attach_events();
        }
    }

    /// After the init process is gone: log whatever is still buffered in the pipes.
    fn drain_output(&mut self) {
        for token in [TOKEN_STDOUT, TOKEN_STDERR] {
            loop {
                self.wait_attach_caught_up();
                if !self.read_stream(token) {
                    break;
                }
            }
        }
        self.wait_attach_caught_up();
    }

    fn on_client(&mut self, slot: usize, flags: u32) {
        // Client input shares the output buffer: the loop handles one event at a time.
        let mut input = std::mem::take(&mut self.buf);
        let counters = &self.shared.counters;
        let event = self
            .attach
            .on_client_event(slot, flags, &mut input, &self.epoll, counters);
        match event {
            ClientInput::None => {}
            ClientInput::Data(n) => self.write_stdin(&input[..n]),
            ClientInput::Closed => {
                if self.stdin_once {
                    self.close_stdin();
                }
            }
        }
        self.buf = input;
    }

    /// Writes attach input to the container's stdin without blocking; what does not fit waits
    /// (and client input pauses) until stdin is writable again.
    fn write_stdin(&mut self, data: &[u8]) {
        let Some(stdin) = &self.io.stdin else { return };
        let written = match nix::unistd::write(stdin, data) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => 0,
            Err(_) => {
                self.close_stdin();
                return;
            }
        };
        if written < data.len() {
            self.stdin_pending.extend_from_slice(&data[written..]);
            let _ = self.epoll.add(stdin, libc::EPOLLOUT as u32, TOKEN_STDIN);
            self.attach.pause_input(true, &self.epoll);
        }
    }

    fn flush_stdin(&mut self) {
        let Some(stdin) = &self.io.stdin else {
            self.stdin_pending.clear();
            return;
        };
        match nix::unistd::write(stdin, &self.stdin_pending) {
            Ok(n) => {
                self.stdin_pending.drain(..n);
            }
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(_) => {
                self.close_stdin();
                return;
            }
        }
        if self.stdin_pending.is_empty() {
            self.epoll.delete(stdin);
            self.attach.pause_input(false, &self.epoll);
        }
    }

    fn close_stdin(&mut self) {
        if let Some(stdin) = self.io.stdin.take() {
            if !self.stdin_pending.is_empty() {
                self.epoll.delete(&stdin);
                self.stdin_pending = Vec::new();
                self.attach.pause_input(false, &self.epoll);
            }
            drop(stdin);
        }
    }
}
