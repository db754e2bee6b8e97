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
    /// Makes the FIFO at `path` and starts its writer.
    pub fn new(path: &Path) -> FifoProbe {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
        let (sender, opened) = mpsc::channel();
        let writer_path = path.to_owned();
        let writer = std::thread::spawn(move || {
            let _fd = std::fs::OpenOptions::new()
                .write(true)
                .open(&writer_path)
                .expect("open the fifo for writing");
            let _ = sender.send(());
        });
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
