//! crid: a CRI v1 runtime. The binary (`main.rs`) parses flags and starts [`server::run`].

#![deny(unsafe_code)]

pub mod config;
pub mod container;
pub mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod idmap;
pub mod logging;
pub mod monitor_client;
pub mod namespaces;
pub mod oci_runtime;
pub mod sandbox;
pub mod server;
pub mod spec_error;
pub mod state;
pub mod status;
pub mod streaming;
pub(crate) mod sys;
