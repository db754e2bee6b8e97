//! crid: a CRI v1 runtime. The binary (`main.rs`) parses flags and starts [`server::run`].

#![deny(unsafe_code)]

// Public: what `crid` (main.rs), the end-to-end tests and the fuzz targets use; the rest is
// the crate's own.

pub mod config;
pub mod container;
pub(crate) mod error;
pub(crate) mod events;
#[cfg(test)]
mod fake_host;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod host;
pub(crate) mod idmap;
pub mod logging;
pub mod monitor_client;
pub(crate) mod namespaces;
pub(crate) mod oci_runtime;
pub(crate) mod sandbox;
pub mod server;
pub(crate) mod spec_error;
pub(crate) mod state;
pub(crate) mod status;
pub(crate) mod streaming;
