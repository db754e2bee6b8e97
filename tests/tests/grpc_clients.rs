//! gRPC clients other than grpc-go get normal answers over the unix socket: Debian's Python
//! grpcio with default options, and with the `:authority` values that other clients send on a
//! unix socket (gRPC core since 1.57: the percent-encoded path; grpc-java: the raw path).

use std::process::Command;

use crid_tests::harness::crid::{CridOptions, CridProcess};

/// Debian's Python (the pyenv or venv Python first in $PATH may lack python3-grpcio).
const PYTHON: &str = "/usr/bin/python3";

/// Calls Version, Status, ListPodSandbox and ImageFsInfo three times each on one channel (so
/// later calls reuse the client's HPACK table), then reads GetContainerEvents (a server
/// stream) until its deadline. Messages are encoded by hand: the script needs no generated
/// code. Prints one line per check.
const CLIENT: &str = r#"
import sys, grpc
target, authority = sys.argv[1], sys.argv[2]
options = [("grpc.default_authority", authority)] if authority else []
channel = grpc.insecure_channel(target, options=options)
def call(method):
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)
for _ in range(3):
    version = call("/runtime.v1.RuntimeService/Version")(b"", timeout=10)
    assert b"crid" in version, version
    status = call("/runtime.v1.RuntimeService/Status")(b"", timeout=10)
    assert b"RuntimeReady" in status, status
    call("/runtime.v1.RuntimeService/ListPodSandbox")(b"", timeout=10)
    call("/runtime.v1.ImageService/ImageFsInfo")(b"", timeout=10)
print("unary ok")
events = channel.unary_stream("/runtime.v1.RuntimeService/GetContainerEvents",
                              request_serializer=None, response_deserializer=None)(b"", timeout=1)
try:
    for _ in events:
        pass
except grpc.RpcError as err:
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
print("stream ok")
try:
    call("/runtime.v1.RuntimeService/PodSandboxStatus")(b"\n\x07missing", timeout=10)
    raise SystemExit("PodSandboxStatus of a missing pod succeeded")
except grpc.RpcError as err:
    assert err.code() == grpc.StatusCode.NOT_FOUND, err
print("errors ok")
"#;

fn python_grpc_client(target: &str, authority: &str) {
    let has_grpc = Command::new(PYTHON)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_grpc,
        "missing: {PYTHON} with the grpc module (Debian's python3-grpcio; packaging/setup.sh test installs it)"
    );
    let out = Command::new(PYTHON)
        .args(["-c", CLIENT, target, authority])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("errors ok"),
        "python grpcio client (target {target}, authority {authority:?}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_grpcio_with_every_authority_clients_send() {
    let crid = CridProcess::start(&CridOptions::default());
    let path = crid.socket.display().to_string();
    let encoded = path.trim_start_matches('/').replace('/', "%2F");
    // Default options, in both spellings of a unix target.
    python_grpc_client(&format!("unix://{path}"), "");
    python_grpc_client(&format!("unix:{path}"), "");
    // What newer gRPC-core clients (Python, C++, Ruby) send by default.
    python_grpc_client(&format!("unix:{path}"), &encoded);
    // What grpc-java and old grpc-go send.
    python_grpc_client(&format!("unix:{path}"), &path);
}
