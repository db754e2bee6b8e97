//! Helpers for the tests of crid's crates (feature `test-util`).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// A FIFO with a writer blocked in open(2) on a thread of its own: the kernel wakes a waiting
/// writer on any reader's open, even one closed at once, so it tells whether code under test
/// opened the FIFO for reading (what crid must never do to a file someone else names).
#[derive(Debug)]
pub struct FifoProbe {
    path: PathBuf,
    opened: mpsc::Receiver<()>,
    writer: std::thread::JoinHandle<()>,
}

impl FifoProbe {
    /// Makes the FIFO at `path` and starts its writer; returns once the writer waits in
    /// open(2) (the kernel wakes only writers already waiting).
    pub fn new(path: &Path) -> FifoProbe {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
        let (sender, opened) = mpsc::channel();
        let (tid_sender, tid) = mpsc::channel();
        let writer_path = path.to_owned();
        let writer = std::thread::spawn(move || {
            // "<pid>/task/<tid>"
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|link| link.file_name().map(|n| n.to_string_lossy().into_owned()));
            let _ = tid_sender.send(tid.expect("this thread's id"));
            let _fd = std::fs::OpenOptions::new()
                .write(true)
                .open(&writer_path)
                .expect("open the fifo for writing");
            let _ = sender.send(());
        });
        let tid = tid.recv().expect("the writer's thread id");
        // /proc/self/task/<tid>/syscall starts with the number of the call it waits in.
        let waiting = format!("{} ", libc::SYS_openat);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
            .is_ok_and(|call| call.starts_with(&waiting))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the fifo's writer never waited in open"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        FifoProbe {
            path: path.to_owned(),
            opened,
            writer,
        }
    }

    /// Whether someone opened the FIFO for reading (waiting up to `wait` for it); releases
    /// the writer either way, so that no test hangs on it.
    pub fn was_opened(self, wait: Duration) -> bool {
        let opened = self.opened.recv_timeout(wait).is_ok();
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
            .expect("open the fifo for reading");
        self.writer.join().expect("the fifo's writer");
        opened
    }
}
