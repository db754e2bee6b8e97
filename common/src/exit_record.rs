//! The exit record crimon writes when the container exits: `<exit-dir>/<id>`, JSON.
//!
//! It is the durable truth about how a container ended: written to a temp file, fsynced,
//! renamed into place and the directory fsynced, before any waiter is told.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest exit record we read (they are about 80 bytes).
const MAX_RECORD_BYTES: u64 = 4096;

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, or 128 + signal for a death by signal.
    pub exit_code: i32,
    /// RFC 3339 with nanoseconds, UTC.
    pub finished_at: String,
    /// Whether the kernel OOM killer killed a process of the container.
    pub oom_killed: bool,
}

/// Errors reading or writing an exit record.
#[derive(Debug, thiserror::Error)]
pub enum ExitRecordError {
    #[error("failed to write exit record {path}")]
    Write {
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("failed to read exit record {path}")]
    Read {
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("exit record {path} is malformed")]
    Malformed {
        path: PathBuf,
        #[source]
        err: serde_json::Error,
    },
    #[error("exit record {path} is larger than {MAX_RECORD_BYTES} bytes")]
    TooLarge { path: PathBuf },
}

impl ExitRecord {
    /// Writes the record to `path` atomically and durably.
    pub fn write_durably(&self, path: &Path) -> Result<(), ExitRecordError> {
        let wrap = |err| ExitRecordError::Write {
            path: path.to_owned(),
            err,
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        let json = serde_json::to_vec(self).map_err(|e| wrap(io::Error::other(e)))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(wrap)?;
        file.write_all(&json).map_err(wrap)?;
        file.sync_all().map_err(wrap)?;
        drop(file);
        fs::rename(&tmp, path).map_err(wrap)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(wrap)?;
        Ok(())
    }

    /// Reads the record at `path`.
    pub fn read(path: &Path) -> Result<Self, ExitRecordError> {
        use std::io::Read;
        let file = File::open(path).map_err(|err| ExitRecordError::Read {
            path: path.to_owned(),
            err,
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| ExitRecordError::Read {
                path: path.to_owned(),
                err,
            })?;
        if bytes.len() as u64 > MAX_RECORD_BYTES {
            return Err(ExitRecordError::TooLarge {
                path: path.to_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|err| ExitRecordError::Malformed {
            path: path.to_owned(),
            err,
        })
    }
}

/// The exit code of a wait status: the status, or 128 + signal, as shells and kubelet expect.
pub fn exit_code_from_wait_status(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("crid-exit-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let rec = ExitRecord {
            exit_code: 137,
            finished_at: "2026-01-01T00:00:00.000000000Z".into(),
            oom_killed: true,
        };
        let path = dir.join("ctr");
        rec.write_durably(&path).expect("write");
        assert_eq!(ExitRecord::read(&path).expect("read"), rec);
        let text = fs::read_to_string(&path).expect("read text");
        assert_eq!(
            text,
            r#"{"exit_code":137,"finished_at":"2026-01-01T00:00:00.000000000Z","oom_killed":true}"#
        );
        assert!(!dir.join(".ctr.tmp").exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
