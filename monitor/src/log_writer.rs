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

/// Smallest bound honoured; a smaller `--log-size-max` is raised to it (a record header alone
/// is 41 bytes, and a bound below a few lines would truncate on every write).
pub const MIN_LOG_SIZE_MAX: u64 = 4096;

/// Records are gathered here and written with one write(2). At 256 KiB glibc maps it on its
/// own, so only the pages a burst of output filled are resident.
const OUT_BUFFER: usize = 256 * 1024;

/// The log file and its bound.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max: Option<u64>,
    out: Vec<u8>,
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
            max: max.filter(|m| *m > 0).map(|m| m.max(MIN_LOG_SIZE_MAX)),
            out: Vec::new(),
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
        // With a bound, no record may be larger than the bound: longer text is cut into P
        // records.
        let piece_max = self.max.map_or(usize::MAX, |m| m as usize - HEADER_MAX - 1);

        let mut records = 0u64;
        let mut rest = data;
        while !rest.is_empty() {
            let (mut line, ends_line) = match memchr::memchr(b'\n', rest) {
                Some(end) => (&rest[..=end], true),
                None => (rest, false),
            };
            rest = &rest[line.len()..];
            while line.len() > piece_max {
                self.emit([partial, &line[..piece_max], b"\n"], counters);
                line = &line[piece_max..];
                records += 1;
            }
            if ends_line {
                self.emit([full, line, b""], counters);
            } else {
                self.emit([partial, line, b"\n"], counters);
            }
            records += 1;
        }
        self.flush(counters);
        Counters::add(&counters.log_bytes, data.len() as u64);
        Counters::add(&counters.log_lines, records);
    }

    /// Adds one record (header, text, terminator) to the output buffer, first making room
    /// under the bound. Records are copied into one buffer and written with one write(2): for
    /// short lines that costs far less than a writev of many tiny segments.
    fn emit(&mut self, parts: [&[u8]; 3], counters: &Counters) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if let Some(max) = self.max {
            if self.size + (self.out.len() + len) as u64 > max {
                self.flush(counters);
                if self.size > 0 && self.file.set_len(0).is_ok() {
                    Counters::add(&counters.log_dropped_bytes, self.size);
                    self.size = 0;
                }
            }
        }
        if self.out.len() + len > OUT_BUFFER {
            self.flush(counters);
        }
        if len > OUT_BUFFER {
            // A record longer than the buffer goes out on its own, uncopied.
            let mut iov = parts.map(IoSlice::new);
            self.write_all(&mut iov, counters);
            return;
        }
        if self.out.capacity() == 0 {
            // Allocated on first use: a container that never logs never pays for it.
            self.out.reserve_exact(OUT_BUFFER);
        }
        for part in parts {
            self.out.extend_from_slice(part);
        }
    }

    fn flush(&mut self, counters: &Counters) {
        if self.out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.out);
        self.write_all(&mut [IoSlice::new(&out)], counters);
        self.out = out;
        self.out.clear();
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
        assert_eq!(Counters::get(&counters.log_bytes), 18);
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
        let mut w = LogWriter::open(&path, Some(MIN_LOG_SIZE_MAX)).expect("open");
        let line = b"0123456789012345678901234567890123456789\n".repeat(200);
        w.write_chunk(Stream::Stdout, &line, &counters);
        let len = std::fs::metadata(&path).expect("stat").len();
        assert!(len <= MIN_LOG_SIZE_MAX, "log is {len} bytes");
        assert!(Counters::get(&counters.log_dropped_bytes) > 0);
        // One record longer than the bound is cut into pieces that each fit.
        w.write_chunk(Stream::Stdout, &vec![b'z'; 10_000], &counters);
        let len = std::fs::metadata(&path).expect("stat").len();
        assert!(len <= MIN_LOG_SIZE_MAX, "log is {len} bytes");
    }
}
