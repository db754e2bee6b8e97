//! The streaming server: the HTTP/1.1 endpoint behind the URLs that Exec, Attach and
//! PortForward return (`/exec/<token>`, `/attach/<token>`, `/portforward/<token>`), upgrading
//! to SPDY/3.1 or WebSocket (reference §2, §3.1).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crid_proto::cri;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::tokens::{TokenCache, TokenError};
use super::{attach, exec, port_forward, spdy, Outcome, PortForward, RemoteCommand};
use crate::config::StreamingConfig;
use crate::error::DaemonError;
use crate::state::State;

/// A CRI request waiting for its client to connect.
enum Pending {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

/// Why the streaming server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("failed to listen on streaming address {address}")]
    Listen {
        address: String,
        #[source]
        err: std::io::Error,
    },
    #[error("streaming TLS: {0}")]
    Tls(String),
}

/// The running server; the CRI service asks it for URLs.
pub struct StreamingServer {
    base_url: String,
    tokens: TokenCache<Pending>,
    sessions: Arc<tokio::sync::Semaphore>,
    idle: Duration,
    state: Arc<State>,
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

impl StreamingServer {
    /// Binds the configured address and serves until the process ends.
    pub async fn start(
        config: &StreamingConfig,
        state: Arc<State>,
    ) -> Result<Arc<Self>, StreamingError> {
        let listener = tokio::net::TcpListener::bind(&config.address)
            .await
            .map_err(|err| StreamingError::Listen {
                address: config.address.clone(),
                err,
            })?;
        let local = listener
            .local_addr()
            .map_err(|err| StreamingError::Listen {
                address: config.address.clone(),
                err,
            })?;
        let tls = super::tls::acceptor(config).map_err(StreamingError::Tls)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(StreamingServer {
            base_url: format!("{scheme}://{local}"),
            tokens: TokenCache::new(
                Duration::from_secs(config.token_ttl_secs),
                config.max_pending_tokens,
            ),
            sessions: Arc::new(tokio::sync::Semaphore::new(config.max_sessions)),
            idle: Duration::from_secs(config.idle_timeout_secs),
            state,
        });
        tracing::info!(url = %server.base_url, "streaming server listening");
        let serving = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // Interactive shells need every keystroke sent at once.
                let _ = tcp.set_nodelay(true);
                let server = serving.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => match tls.accept(tcp).await {
                            Ok(stream) => server.serve_connection(stream).await,
                            Err(err) => {
                                tracing::debug!(error = %err, "streaming TLS handshake failed")
                            }
                        },
                        None => server.serve_connection(tcp).await,
                    }
                });
            }
        });
        Ok(server)
    }

    async fn serve_connection<S>(self: Arc<Self>, io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let server = self.clone();
            async move { Ok::<_, Infallible>(server.handle(req)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await;
    }

    fn url(&self, kind: &str, pending: Pending) -> Result<String, DaemonError> {
        let token = self.tokens.insert(pending).map_err(|e| match e {
            TokenError::TooMany(_) => DaemonError::ResourceExhausted(e.to_string()),
            TokenError::Random(_) => DaemonError::Internal(e.to_string()),
        })?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// A URL for an Exec request (checked as the kubelet library checks it).
    pub fn exec_url(&self, request: cri::ExecRequest) -> Result<String, DaemonError> {
        check_streams(
            &request.container_id,
            request.tty,
            request.stdin,
            request.stdout,
            request.stderr,
        )?;
        if request.cmd.is_empty() {
            return Err(DaemonError::InvalidArgument("cmd is empty".into()));
        }
        let container = self.state.container(&request.container_id)?;
        exec::check_running(&self.state, &container)?;
        let request = cri::ExecRequest {
            container_id: container.id.clone(),
            ..request
        };
        self.url("exec", Pending::Exec(request))
    }

    /// A URL for an Attach request.
    pub fn attach_url(&self, request: cri::AttachRequest) -> Result<String, DaemonError> {
        check_streams(
            &request.container_id,
            request.tty,
            request.stdin,
            request.stdout,
            request.stderr,
        )?;
        attach::check(&self.state, &request.container_id, request.stdin)?;
        let id = self.state.container(&request.container_id)?.id.clone();
        let request = cri::AttachRequest {
            container_id: id,
            ..request
        };
        self.url("attach", Pending::Attach(request))
    }

    /// A URL for a PortForward request.
    pub fn port_forward_url(
        &self,
        request: cri::PortForwardRequest,
    ) -> Result<String, DaemonError> {
        if request.pod_sandbox_id.is_empty() {
            return Err(DaemonError::InvalidArgument(
                "pod_sandbox_id is empty".into(),
            ));
        }
        if let Some(port) = request.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(DaemonError::InvalidArgument(format!(
                "port {port} is not a TCP port"
            )));
        }
        let pod = self.state.pod(&request.pod_sandbox_id)?;
        port_forward::pod_netns(&self.state, &pod.id)?;
        let request = cri::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            ..request
        };
        self.url("portforward", Pending::PortForward(request))
    }

    fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        const NOT_FOUND: &str = "404 page not found\n";
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
        let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
            return text(StatusCode::NOT_FOUND, NOT_FOUND);
        };
        if !matches!(kind, "exec" | "attach" | "portforward") || token.contains('/') {
            return text(StatusCode::NOT_FOUND, NOT_FOUND);
        }
        let Some(pending) = self.tokens.consume(token) else {
            return text(StatusCode::NOT_FOUND, NOT_FOUND);
        };
        let matching = matches!(
            (kind, &pending),
            ("exec", Pending::Exec(_))
                | ("attach", Pending::Attach(_))
                | ("portforward", Pending::PortForward(_))
        );
        if !matching {
            return text(StatusCode::NOT_FOUND, NOT_FOUND);
        }
        let Ok(permit) = self.sessions.clone().try_acquire_owned() else {
            let mut response = text(
                StatusCode::TOO_MANY_REQUESTS,
                "too many streaming sessions\n",
            );
            response
                .headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("60"));
            return response;
        };
        let headers = req.headers();
        let upgrade = header_values(headers, "upgrade");
        let websocket = upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"));
        let spdy = upgrade.iter().any(|u| u.eq_ignore_ascii_case("spdy/3.1"));
        let connection_upgrade = header_values(headers, "connection")
            .iter()
            .any(|c| c.eq_ignore_ascii_case("upgrade"));
        if !connection_upgrade || !(websocket || spdy) {
            return text(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: missing upgrade headers in request\n",
            );
        }
        if websocket {
            return self.upgrade_websocket(req, pending, permit);
        }
        let supported: &[&str] = match pending {
            Pending::PortForward(_) => &[spdy::PORT_FORWARD_PROTOCOL],
            _ => &spdy::REMOTE_COMMAND_PROTOCOLS,
        };
        let offered = header_values(headers, "x-stream-protocol-version");
        if offered.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: X-Stream-Protocol-Version is required\n",
            );
        }
        // The first protocol the client offers that crid speaks.
        let Some(protocol) = offered
            .iter()
            .find(|p| supported.contains(&p.as_str()))
            .cloned()
        else {
            let mut response = text(
                StatusCode::FORBIDDEN,
                &format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}\n"),
            );
            for p in supported {
                response.headers_mut().append(
                    "x-accepted-stream-protocol-versions",
                    hyper::header::HeaderValue::from_static(p),
                );
            }
            return response;
        };
        let on_upgrade = hyper::upgrade::on(req);
        let server = self.clone();
        let protocol_for_session = protocol.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(upgraded) = upgraded(on_upgrade).await else {
                return;
            };
            match server.session(pending) {
                Session::Remote(session) => {
                    spdy::serve_remote_command(
                        upgraded,
                        &protocol_for_session,
                        server.idle,
                        session,
                    )
                    .await
                }
                Session::PortForward(session) => {
                    spdy::serve_port_forward(upgraded, server.idle, session).await
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(
            "connection",
            hyper::header::HeaderValue::from_static("Upgrade"),
        );
        h.insert(
            "upgrade",
            hyper::header::HeaderValue::from_static("SPDY/3.1"),
        );
        if let Ok(value) = hyper::header::HeaderValue::from_str(&protocol) {
            h.insert("x-stream-protocol-version", value);
        }
        response
    }

    fn upgrade_websocket(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        pending: Pending,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Response<Body> {
        use super::websocket::{self, Endpoint, Protocol};
        let endpoint = match pending {
            Pending::PortForward(_) => Endpoint::PortForward,
            _ => Endpoint::RemoteCommand,
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _body) = req.into_parts();
        let (response, protocol) = match websocket::accept(&parts, endpoint) {
            Ok(accepted) => accepted,
            Err(refused) => return refused.map(|b| Full::new(Bytes::from(b))),
        };
        let server = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(upgraded) = upgraded(on_upgrade).await else {
                return;
            };
            let idle = server.idle;
            match server.session(pending) {
                Session::Remote(session) => {
                    websocket::serve_remote_command(upgraded, protocol, idle, session).await
                }
                Session::PortForward(session) if protocol == Protocol::SpdyTunnel => {
                    let tunnel = websocket::tunnel(upgraded).await;
                    spdy::serve_port_forward(tunnel, idle, session).await
                }
                Session::PortForward(session) => {
                    websocket::serve_port_forward_legacy(upgraded, protocol, idle, session).await
                }
            }
        });
        response.map(|()| Full::new(Bytes::new()))
    }

    /// Binds a consumed request to what runs it.
    fn session(&self, pending: Pending) -> Session {
        let state = self.state.clone();
        match pending {
            Pending::Exec(r) => {
                let cmd = r.cmd.clone();
                Session::Remote(RemoteCommand {
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    tty: r.tty,
                    cmd: r.cmd,
                    run: Box::new(move |io| {
                        Box::pin(async move {
                            match exec::exec(&state, &r.container_id, &cmd, r.tty, io).await {
                                Ok(code) => Outcome::Exited(code),
                                Err(err) => Outcome::Failed(err.to_string()),
                            }
                        })
                    }),
                })
            }
            Pending::Attach(r) => Session::Remote(RemoteCommand {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
                cmd: Vec::new(),
                run: Box::new(move |io| {
                    Box::pin(async move {
                        match attach::attach(&state, &r.container_id, io).await {
                            Ok(()) => Outcome::Done,
                            Err(err) => Outcome::Failed(err.to_string()),
                        }
                    })
                }),
            }),
            Pending::PortForward(r) => {
                let netns = port_forward::pod_netns(&state, &r.pod_sandbox_id)
                    .ok()
                    .flatten();
                Session::PortForward(PortForward {
                    pod_id: r.pod_sandbox_id,
                    ports: r
                        .port
                        .iter()
                        .filter_map(|p| u16::try_from(*p).ok())
                        .collect(),
                    connect: Arc::new(move |port| {
                        let netns = netns.clone();
                        Box::pin(port_forward::connect(netns, port))
                    }),
                })
            }
        }
    }
}

/// The connection once hyper has handed it over after the 101.
async fn upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match on_upgrade.await {
        Ok(upgraded) => Some(TokioIo::new(upgraded)),
        Err(err) => {
            tracing::debug!(error = %err, "streaming upgrade failed");
            None
        }
    }
}

enum Session {
    Remote(RemoteCommand),
    PortForward(PortForward),
}

/// Every value of a header: all its lines, comma-split, trimmed (clients send the protocol
/// list both ways).
fn header_values(headers: &hyper::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The kubelet library's checks of an exec or attach request.
fn check_streams(
    container_id: &str,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<(), DaemonError> {
    if container_id.is_empty() {
        return Err(DaemonError::InvalidArgument("container_id is empty".into()));
    }
    if tty && stderr {
        return Err(DaemonError::InvalidArgument(
            "tty and stderr cannot both be true".into(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(DaemonError::InvalidArgument(
            "one of stdin, stdout, or stderr must be set".into(),
        ));
    }
    Ok(())
}
