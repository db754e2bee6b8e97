//! Formats and rules both crid and crimon rely on.
//!
//! Everything here is read or written by both sides (or by operators), so it changes only
//! with care: the exit record, the CRI log line, container ids and the monitor's file names;
//! and rules two programs must apply alike (the sysctl checks of crid and crid-pinns, the
//! capability names of crid's spec and its direct exec); and how a file someone else names
//! is read (a container's /etc/passwd, a seccomp profile path: never a device or a FIFO).

#![deny(unsafe_code)]

pub mod capabilities;
pub mod error_chain;
pub mod exit_record;
pub mod id;
pub mod limits;
pub mod log_line;
pub mod monitor_paths;
pub mod proc_stat;
pub mod regular_file;
pub mod sysctl;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod timestamp;
