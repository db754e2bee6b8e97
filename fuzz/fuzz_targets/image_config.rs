//! An image config (image/config.rs: ImageConfig::parse, parse_pulled, the working
//! directory check against a rootfs full of hostile symlinks).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crid_daemon::fuzzing::run("image_config", data));
