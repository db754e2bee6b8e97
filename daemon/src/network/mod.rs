//! Pod networking.

pub mod cni;
