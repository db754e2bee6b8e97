//! A layer's tar stream (daemon/image/src/tarstream.rs): headers, GNU long names and links,
//! PAX records, entry data.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crid_daemon::fuzzing::run("tar_stream", data));
