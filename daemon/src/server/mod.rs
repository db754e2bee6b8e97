//! The CRI gRPC server on a unix socket.

mod authority;
mod cri_views;
mod events;
mod grpc_status;
mod image_service;
mod listener;
mod monitors;
mod requests;
mod runtime_service;
mod stats;
mod unimplemented;

use std::sync::Arc;

use crid_proto::cri::image_service_server::ImageServiceServer;
use crid_proto::cri::runtime_service_server::RuntimeServiceServer;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt as _;

use crate::config::Config;

pub use listener::{ListenError, SocketGuard};

/// How long in-flight calls may run on after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Largest gRPC message crid accepts or sends (kubelet uses 16 MiB).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Serves CRI on `config.listen` until `shutdown` completes, then finishes in-flight calls
/// and removes the socket.
pub async fn run(
    config: Arc<Config>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let lock = listener::lock(&config.listen)?;
    // Ready (leftovers of interrupted pulls cleaned) before the socket accepts a call.
    let store = crid_image::ImageStore::open(config.root.clone(), config.image.clone())
        .map_err(ServeError::ImageStore)?;
    let store = Arc::new(store);
    let state = Arc::new(
        crate::state::State::load(config.clone(), store.clone()).map_err(ServeError::State)?,
    );
    crate::container::lifecycle::recover(&state);
    for container in state.containers() {
        monitors::watch(state.clone(), container);
    }
    crate::sandbox::lifecycle::recover(&state);
    // The runtime's `features` and the id-mapping probe run once, here and off the async
    // workers; the calls that need them later (create, Status) read the cached answers.
    let probe = config.clone();
    let _ = tokio::task::spawn_blocking(move || {
        // Both, whatever the first answers (handler_features stops at a kernel that can).
        crate::container::mounts::runtime_supports_rro(&probe.runtime.runtime_path);
        crate::status::handler_features(&probe)
    })
    .await;
    // Before the socket accepts: RuntimeDefault containers get crid-default where the kernel
    // has AppArmor. Not fatal: without it they run unconfined, with a warning each.
    if let Err(err) =
        crate::container::apparmor::load_default_profile(&crate::container::apparmor::Kernel).await
    {
        tracing::error!(error = %crid_common::error_chain::error_chain(&err), "RuntimeDefault containers will run without an AppArmor profile");
    }
    events::watch_exits(state.clone()).map_err(ServeError::ExitWatch)?;
    let streaming =
        crate::streaming::server::StreamingServer::start(&config.streaming, state.clone())
            .await
            .map_err(ServeError::Streaming)?;
    let (listener, guard) = listener::bind(&config.listen, lock)?;
    tracing::info!(socket = %config.listen.display(), "serving CRI v1");
    let runtime = RuntimeServiceServer::new(runtime_service::Runtime::new(
        config.clone(),
        state.clone(),
        streaming,
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let image = ImageServiceServer::new(image_service::Images::new(store, state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let serve = tonic::transport::Server::builder()
        .add_service(runtime)
        .add_service(image)
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|conn| conn.map(authority::AuthorityFix::new)),
            signal,
        );
    // Graceful shutdown waits for every connection to close, and a client may hold an idle
    // one forever (kubelet does): in-flight calls get SHUTDOWN_GRACE, then we leave.
    let grace = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        result = serve => result.map_err(ServeError::Transport),
        () = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; exiting");
            Ok(())
        }
    };
    drop(guard);
    result
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot open the image store")]
    ImageStore(#[source] crid_image::ImageError),
    #[error("cannot load pod and container records")]
    State(#[source] crate::error::DaemonError),
    #[error("cannot watch the exit record directory")]
    ExitWatch(#[source] std::io::Error),
    #[error("grpc server failed")]
    Transport(#[source] tonic::transport::Error),
    #[error("cannot start the streaming server")]
    Streaming(#[source] crate::streaming::server::StreamingError),
}
