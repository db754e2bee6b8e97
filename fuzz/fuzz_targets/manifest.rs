//! A registry's manifest or index body (image/manifest.rs parse_document) and the
//! descriptors it names; the first byte picks the Content-Type.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crid_daemon::fuzzing::run("manifest", data));
