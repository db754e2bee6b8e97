//! Test fixtures shared by every end-to-end test and benchmark of crid and crimon.
//!
//! Everything here drives real parts: runc, Debian's busybox-static, docker-registry, skopeo
//! and umoci. A missing part fails the test with a message naming it; nothing is skipped.

pub mod harness;
