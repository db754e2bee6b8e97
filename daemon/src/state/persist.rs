//! Records on disk: JSON for crid's own state, protobuf for the CRI configs as kubelet sent
//! them. Every write goes to a temporary file that is synced and renamed over the old one, so
//! a crash leaves either the old record or the new one.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::DaemonError;

/// Largest record file read back.
const MAX_RECORD_BYTES: u64 = 16 << 20;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_owned();
    move |err| DaemonError::Io { what, path, err }
}

/// Nanoseconds since the epoch (CRI timestamps).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Nanoseconds since the epoch of an RFC 3339 timestamp (0 when unparsable).
pub fn nanos_of(timestamp: &str) -> i64 {
    crid_common::timestamp::parse(timestamp)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The directories directly under `dir`.
pub fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), DaemonError> {
    crid_image::store::write_atomically(path, bytes).map_err(|err| match err {
        crid_image::store::StoreError::Io { what, path, err } => {
            DaemonError::Io { what, path, err }
        }
    })
}

/// Writes `bytes` to `path` atomically (temporary file, rename) but without syncing: for
/// files that matter only while the host stays up (a pod's resolv.conf, an OCI bundle's
/// config.json; after a reboot their pod is NOTREADY and kubelet makes a new one), so the
/// pod's critical path does not wait on a disk flush.
pub fn write_volatile(path: &Path, bytes: &[u8]) -> Result<(), DaemonError> {
    write_volatile_with_mode(path, bytes, 0o600)
}

/// As [`write_volatile`], with the file's mode set exactly (crid's umask does not apply):
/// the pod files are bind-mounted into containers whose users may be anyone, so they are
/// world-readable as on any host.
pub fn write_volatile_readable(path: &Path, bytes: &[u8]) -> Result<(), DaemonError> {
    write_volatile_with_mode(path, bytes, 0o644)
}

fn write_volatile_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("write", &tmp))?;
    // The umask may have cleared bits of `mode` at creation.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("chmod", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

fn read(path: &Path) -> Result<Vec<u8>, DaemonError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_RECORD_BYTES).read_to_end(&mut bytes))
        .map_err(io("read", path))?;
    Ok(bytes)
}

pub fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DaemonError> {
    serde_json::from_slice(&read(path)?)
        .map_err(|e| DaemonError::Internal(format!("decode {}: {e}", path.display())))
}

pub fn save_message<T: prost::Message>(path: &Path, message: &T) -> Result<(), DaemonError> {
    write(path, &message.encode_to_vec())
}

pub fn load_message<T: prost::Message + Default>(path: &Path) -> Result<T, DaemonError> {
    T::decode(read(path)?.as_slice())
        .map_err(|e| DaemonError::Internal(format!("decode {}: {e}", path.display())))
}

/// Removes a directory tree; an absent one is fine.
pub fn remove_dir(path: &Path) -> Result<(), DaemonError> {
    match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path)(err)),
        _ => Ok(()),
    }
}

/// A record kept in memory and saved to its file (JSON, durably) after every change.
pub struct SavedRecord<R> {
    path: PathBuf,
    /// The value and how many updates it has had.
    value: Mutex<(R, u64)>,
    /// The update count of what is on disk. Writes (and their fsync) happen under this lock,
    /// not the value's: readers never wait for a disk flush.
    written: Mutex<u64>,
}

impl<R: Clone + serde::Serialize + serde::de::DeserializeOwned> SavedRecord<R> {
    /// A record not yet on disk (the first `update` writes it).
    pub fn new(path: PathBuf, value: R) -> Self {
        SavedRecord {
            path,
            value: Mutex::new((value, 0)),
            written: Mutex::new(0),
        }
    }

    pub fn load(path: PathBuf) -> Result<Self, DaemonError> {
        let value = load_json(&path)?;
        Ok(SavedRecord::new(path, value))
    }

    /// A copy of the current value.
    pub fn get(&self) -> R {
        self.value
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Changes the value and saves it. The value changes at once; the file is written after
    /// the value's lock is released, and a write older than the one on disk is skipped, so
    /// concurrent updates leave the newest value on disk.
    pub fn update(&self, change: impl FnOnce(&mut R)) -> Result<(), DaemonError> {
        let (bytes, version) = {
            let mut value = self.value.lock().unwrap_or_else(|e| e.into_inner());
            change(&mut value.0);
            value.1 += 1;
            let bytes = serde_json::to_vec_pretty(&value.0).map_err(|e| {
                DaemonError::Internal(format!("encode {}: {e}", self.path.display()))
            })?;
            (bytes, value.1)
        };
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *written >= version {
            return Ok(());
        }
        write(&self.path, &bytes)?;
        *written = version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_updates_leave_the_newest_value_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("record.json");
        let record = std::sync::Arc::new(SavedRecord::new(path.clone(), 0u64));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let record = record.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        record.update(|n| *n += 1).expect("update");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(record.get(), 200);
        let on_disk: u64 = load_json(&path).expect("load");
        assert_eq!(on_disk, 200);
    }
}
