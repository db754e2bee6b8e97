//! Digest::parse (image/digest.rs): only `sha256:` + 64 lowercase hex digits pass.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crid_daemon::fuzzing::run("digest", data));
