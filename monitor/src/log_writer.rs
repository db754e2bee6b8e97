//! Writes container output to the CRI log file.
//!
//! Every read from a container stream becomes records that share one timestamp: each complete
//! line an `F` record, a trailing piece without newline a `P` record (written at once, so
//! nothing waits in memory and nothing is lost if the monitor is killed). Records go out with
//! `writev` straight from the read buffer: no copy, no allocation per line.
//!
//! Size bound: when writing the next batch would take the file past `--log-size-max`, the file
//! is truncated to zero first and writing goes on (conmon does the same). The kubelet rotates
//! logs well before such a bound through ReopenLog; the bound is the last line of defence
//! against a container filling the disk. Truncated bytes are counted in `log_dropped_bytes`.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crid_common::log_line::{self, Stream, Tag, HEADER_MAX};
use crid_common::timestamp::{self, TIMESTAMP_LEN};

use crate::error::{MonitorError, Result};
use crate::shared::Counters;

/// iovecs per writev; below IOV_MAX (1024).
const IOVECS_PER_WRITE: usize = 512;

/// The log file and its bound.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max: Option<u64>,
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| MonitorError::path("open log file", path, e))
}

impl LogWriter {
    /// Opens (appending to) the log file. An existing file's size counts toward the bound.
    pub fn open(path: &Path, max: Option<u64>) -> Result<Self> {
        let file = open_log(path)?;
        let size = file
            .metadata()
            .map_err(|e| MonitorError::path("stat log file", path, e))?
            .len();
        Ok(LogWriter {
            path: path.to_owned(),
            file,
            size,
            max: max.filter(|m| *m > 0),
        })
    }

    /// Opens the path anew (the kubelet renamed the old file away) and switches to it. The old
    /// file got every record written before this call; the new one gets every record after.
    pub fn reopen(&mut self) -> Result<()> {
        let file = open_log(&self.path)?;
        let size = file
            .metadata()
            .map_err(|e| MonitorError::path("stat log file", &self.path, e))?
            .len();
        let _ = self.file.sync_data();
        self.file = file;
        self.size = size;
        Ok(())
    }

    /// Flushes the file to disk (at exit).
    pub fn sync(&self) {
        let _ = self.file.sync_all();
    }

    /// Writes the records for one chunk read from `stream`.
    pub fn write_chunk(&mut self, stream: Stream, data: &[u8], counters: &Counters) {
        if data.is_empty() {
            return;
        }
        let mut ts = [0u8; TIMESTAMP_LEN];
        timestamp::format_into(SystemTime::now(), &mut ts);
        let mut full = [0u8; HEADER_MAX];
        let full_len = log_line::header_into(&ts, stream, Tag::Full, &mut full);
        let mut partial = [0u8; HEADER_MAX];
        let partial_len = log_line::header_into(&ts, stream, Tag::Partial, &mut partial);
        let (full, partial) = (&full[..full_len], &partial[..partial_len]);

        let lines = memchr_count(data) as u64;
        let trailing = !data.ends_with(b"\n");
        let records = lines + u64::from(trailing);
        let total = data.len() as u64 + lines * full.len() as u64
            + if trailing { partial.len() as u64 + 1 } else { 0 };
        self.make_room(total, counters);

        let mut iov = [IoSlice::new(&[]); IOVECS_PER_WRITE];
        let mut used = 0;
        let mut rest = data;
        while !rest.is_empty() {
            if used + 3 > IOVECS_PER_WRITE {
                self.write_all(&mut iov[..used], counters);
                used = 0;
            }
            match rest.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    iov[used] = IoSlice::new(full);
                    iov[used + 1] = IoSlice::new(&rest[..=end]);
                    used += 2;
                    rest = &rest[end + 1..];
                }
                None => {
                    iov[used] = IoSlice::new(partial);
                    iov[used + 1] = IoSlice::new(rest);
                    iov[used + 2] = IoSlice::new(b"\n");
                    used += 3;
                    rest = &[];
                }
            }
        }
        self.write_all(&mut iov[..used], counters);
        Counters::add(&counters.log_bytes, data.len() as u64);
        Counters::add(&counters.log_lines, records);
    }

    fn make_room(&mut self, incoming: u64, counters: &Counters) {
        let Some(max) = self.max else { return };
        if self.size > 0 && self.size.saturating_add(incoming) > max {
            if self.file.set_len(0).is_ok() {
                Counters::add(&counters.log_dropped_bytes, self.size);
                self.size = 0;
            }
        }
    }

    fn write_all(&mut self, mut iov: &mut [IoSlice<'_>], counters: &Counters) {
        while !iov.is_empty() {
            match self.file.write_vectored(iov) {
                Ok(0) => break,
                Ok(n) => {
                    self.size += n as u64;
                    IoSlice::advance_slices(&mut iov, n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // Disk full or a dead file system: count the loss, keep the container going.
                    let lost: usize = iov.iter().map(|s| s.len()).sum();
                    Counters::add(&counters.log_dropped_bytes, lost as u64);
                    break;
                }
            }
        }
    }
}

fn memchr_count(data: &[u8]) -> usize {
    data.iter().filter(|b| **b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_log(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crimon-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir.join("ctr.log")
    }

    #[test]
    fn splits_lines_and_partials() {
        let path = temp_log("split");
        let counters = Counters::default();
        let mut w = LogWriter::open(&path, None).expect("open");
        w.write_chunk(Stream::Stdout, b"one\ntwo\nthr", &counters);
        w.write_chunk(Stream::Stderr, b"err\n", &counters);
        w.write_chunk(Stream::Stdout, b"ee\n", &counters);
        let text = std::fs::read(&path).expect("read");
        let recs: Vec<_> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let r = log_line::parse(l).expect("record");
                (r.stream, r.tag, r.text.to_vec())
            })
            .collect();
        assert_eq!(
            recs,
            vec![
                (Stream::Stdout, Tag::Full, b"one".to_vec()),
                (Stream::Stdout, Tag::Full, b"two".to_vec()),
                (Stream::Stdout, Tag::Partial, b"thr".to_vec()),
                (Stream::Stderr, Tag::Full, b"err".to_vec()),
                (Stream::Stdout, Tag::Full, b"ee".to_vec()),
            ]
        );
        assert_eq!(Counters::get(&counters.log_lines), 5);
        assert_eq!(Counters::get(&counters.log_bytes), 15);
    }

    #[test]
    fn many_lines_span_several_writes() {
        let path = temp_log("many");
        let counters = Counters::default();
        let mut w = LogWriter::open(&path, None).expect("open");
        let mut data = Vec::new();
        for i in 0..2000 {
            data.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        w.write_chunk(Stream::Stdout, &data, &counters);
        let text = std::fs::read(&path).expect("read");
        let lines = log_line::join_lines(&text);
        assert_eq!(lines.len(), 2000);
        assert_eq!(lines[1999].1, b"line 1999");
    }

    #[test]
    fn truncates_at_bound() {
        let path = temp_log("bound");
        let counters = Counters::default();
        let mut w = LogWriter::open(&path, Some(200)).expect("open");
        for _ in 0..10 {
            w.write_chunk(Stream::Stdout, b"0123456789012345678901234567890123456789\n", &counters);
        }
        let len = std::fs::metadata(&path).expect("stat").len();
        assert!(len <= 200, "log is {len} bytes");
        assert!(Counters::get(&counters.log_dropped_bytes) > 0);
    }
}
