//! Port-forward for the streaming server: a TCP connection to a port of the pod's loopback,
//! made from inside the pod's network namespace (no `socat`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::DaemonError;
use crate::state::State;

/// How long a connection to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect: the pod's pinned network namespace, or the host's (host network).
pub fn pod_netns(state: &State, pod_id: &str) -> Result<Option<PathBuf>, DaemonError> {
    let pod = state.pod(pod_id)?;
    let record = pod.record();
    if !record.ready {
        return Err(DaemonError::FailedPrecondition(format!(
            "pod sandbox {} is not ready",
            pod.id
        )));
    }
    Ok(record.namespaces.net)
}

/// Connects to `port` on the pod's loopback (IPv4, then IPv6), as containerd and CRI-O do.
fn connect_loopback(port: u16) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(stream) => Ok(stream),
        Err(v4_err) => TcpStream::connect_timeout(
            &SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            CONNECT_TIMEOUT,
        )
        .map_err(|_| v4_err),
    }
}

/// Opens a connection to `port` inside the pod.
pub async fn connect(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let (done, result) = tokio::sync::oneshot::channel();
    // A thread of its own: setns changes the calling thread's namespace, and a thread of
    // tokio's pools must never be left in a pod's. The socket keeps its namespace after.
    std::thread::Builder::new()
        .name("crid-portfwd".into())
        .spawn(move || {
            let connected = (|| -> std::io::Result<TcpStream> {
                if let Some(path) = &netns {
                    let ns = std::fs::File::open(path)?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                }
                let stream = connect_loopback(port)?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })();
            let _ = done.send(connected);
        })?;
    let stream = result
        .await
        .map_err(|_| std::io::Error::other("port-forward connect thread died"))??;
    tokio::net::TcpStream::from_std(stream)
}
