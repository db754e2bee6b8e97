//! A RunPodSandbox request as protobuf bytes: every check before anything is made
//! (metadata, sysctls, hostname, DNS, cgroup parent, namespace and user namespace options).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crid_daemon::fuzzing::run("pod_request", data));
