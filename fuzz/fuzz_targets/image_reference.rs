//! The image reference parser (image/reference.rs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crid_daemon::fuzzing::run("image_reference", data));
