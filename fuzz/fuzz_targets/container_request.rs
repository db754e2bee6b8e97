//! A CreateContainer request as protobuf bytes: the OCI spec built from it (process,
//! environment, working directory, capabilities, seccomp, AppArmor, resources), without
//! mounts, devices or Localhost seccomp files.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crid_daemon::fuzzing::run("container_request", data));
