//! The HTTPS webhook server and the plain-HTTP admin server: accept loops
//! with a connection cap and back-off, TLS, the timeouts of each phase of a
//! connection, review scheduling, graceful drain on shutdown. `run` serves
//! the admin port on a thread and runtime of its own ([`serve_std`] under
//! `Tasks::spawn_on_own_thread`), so that it answers however busy the
//! webhook port is, and stops it last, so that it answers through the drain.

mod accept;
pub mod admin;
mod connection;
mod limits;
mod offload;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::telemetry::Metrics;
use accept::{AcceptBackoff, LogLimiter};
use connection::{Connection, Protocols};
pub use limits::ConnectionArgs;
pub(crate) use limits::Limits;
pub use offload::ReviewLane;
use table::ConnectionTable;

#[derive(Clone)]
struct Webhook {
    admission: Arc<Admission>,
    lane: Arc<ReviewLane>,
    limits: Limits,
}

/// The webhook routes: `POST /mutate` (Pods) and `POST /validate-workloads`
/// (apply-time warnings for workloads), nothing else.
pub(crate) fn webhook_router(admission: Arc<Admission>, limits: Limits) -> Router {
    let lane = Arc::new(ReviewLane::new(limits.offload_above_bytes));
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate-workloads", post(validate_workloads))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: Sesame serves POST /mutate and POST /validate-workloads\n",
            )
        })
        .with_state(Webhook {
            admission,
            lane,
            limits,
        })
}

async fn mutate(
    State(webhook): State<Webhook>,
    RawQuery(query): RawQuery,
    version: Version,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The API server appends its own deadline as `?timeout=5s`.
    let timeout = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("timeout="))
            .and_then(|t| humantime::parse_duration(t).ok())
    });
    let body = match read_body(&webhook.limits, version, &headers, body).await {
        Ok(b) => b,
        Err(refusal) => return refusal,
    };
    let received = Instant::now();
    let answer = webhook
        .lane
        .review(&webhook.admission, body, timeout, received)
        .await;
    respond(answer)
}

/// A workload review: a large one is parsed on the blocking pool, as a
/// large Pod is.
async fn validate_workloads(
    State(webhook): State<Webhook>,
    version: Version,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(&webhook.limits, version, &headers, body).await {
        Ok(b) => b,
        Err(refusal) => return refusal,
    };
    respond(webhook.lane.review_workload(&webhook.admission, body).await)
}

/// The HTTP answer to a review: the AdmissionReview, or a 400 for a
/// request that is not one, or a 500.
fn respond(answer: Result<Vec<u8>, crate::admission::ReviewError>) -> Response {
    match answer {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) if e.is_bad_request() => {
            tracing::debug!(error = %e, "request is not an admission review");
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "review failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// Reads the whole body within the body timeout and the size limit.
async fn read_body(
    limits: &Limits,
    version: Version,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, Response> {
    let max = limits.max_body_bytes;
    let too_large = || {
        refuse(
            version,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {max} bytes\n"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // Answered before the body is touched, so no `100 Continue` goes out. An
    // HTTP/1.1 client that sends its body unasked gets its 413 after the
    // first `max` bytes: closing on a body still being written could reset
    // the connection before the client reads the answer.
    if declared.is_some_and(|n| n > max as u64) && (expects_continue || version == Version::HTTP_2) {
        return Err(too_large());
    }
    match tokio::time::timeout(limits.body_timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "request body could not be read");
            Err(refuse(
                version,
                StatusCode::BAD_REQUEST,
                "the request body could not be read\n".into(),
            ))
        }
        Err(_) => Err(refuse(
            version,
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {}\n",
                humantime::format_duration(limits.body_timeout)
            ),
        )),
    }
}

/// An error answer to a request whose body was not read (in full): an
/// HTTP/1.1 connection cannot carry another request after it.
fn refuse(version: Version, status: StatusCode, message: String) -> Response {
    let mut response = (status, message).into_response();
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// One listening port's settings.
#[derive(Clone)]
pub(crate) struct Port {
    /// `webhook` or `admin`: the `port` label of its metrics and logs.
    pub(crate) name: &'static str,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) max_connections: usize,
    pub(crate) limits: Limits,
}

impl Port {
    /// The HTTPS port for the API server. The connection caps of both ports
    /// are lowered, with a warning, when the open-file limit cannot hold them.
    pub(crate) fn webhook(tls: Arc<rustls::ServerConfig>, limits: Limits) -> Self {
        let fitted = fitted(limits);
        if fitted.max_connections != limits.max_connections
            || fitted.admin_max_connections != limits.admin_max_connections
        {
            tracing::warn!(
                max_fds = crate::telemetry::max_open_files(),
                max_connections = fitted.max_connections,
                admin_max_connections = fitted.admin_max_connections,
                "the open-file limit is too low for the connection caps; lowered them to fit"
            );
        }
        Self {
            name: "webhook",
            tls: Some(tls),
            max_connections: fitted.max_connections,
            limits: fitted,
        }
    }

    /// The plain-HTTP admin port: probes and metrics, a short drain.
    pub(crate) fn admin(limits: Limits) -> Self {
        let limits = Limits {
            drain_timeout: Duration::from_secs(1),
            ..fitted(limits)
        };
        Self {
            name: "admin",
            tls: None,
            max_connections: limits.admin_max_connections,
            limits,
        }
    }
}

fn fitted(limits: Limits) -> Limits {
    match crate::telemetry::max_open_files() {
        Some(n) => limits.fit_to_fd_limit(n),
        None => limits,
    }
}

/// Serves `router` on `listener` until `shutdown` flips to true, then stops
/// accepting and waits up to the drain timeout for open connections.
pub(crate) async fn serve(
    listener: TcpListener,
    port: Port,
    router: Router,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = port.name;
    let limits = port.limits;
    let acceptor = port.tls.map(TlsAcceptor::from);
    let protocols = Arc::new(Protocols::new());
    let table = ConnectionTable::new(port.max_connections, metrics.requests_in_flight(name));
    let mut backoff = AcceptBackoff::default();
    let mut shed_log = LogLimiter::default();
    let (mut evicted, mut refused) = (0u64, 0u64);
    // Every connection task, so that those still open after the drain can be closed.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff.succeeded();
                x
            }
            Err(e) => {
                metrics.accept_error(name);
                let step = backoff.failed(Instant::now());
                if let Some(failures) = step.log {
                    tracing::warn!(
                        port = name,
                        error = %e,
                        failures,
                        "accept failed; pausing before accepting again (logged at most every {}s)",
                        accept::LOG_INTERVAL.as_secs()
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(step.pause) => continue,
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        };
        let entry = match table.admit() {
            table::Admission::Accepted {
                entry,
                evicted: made_room,
            } => {
                if made_room {
                    metrics.connection_shed(name, "evicted");
                    evicted += 1;
                }
                Some(entry)
            }
            table::Admission::Refused => {
                metrics.connection_shed(name, "refused");
                refused += 1;
                None
            }
        };
        if (evicted > 0 || refused > 0) && shed_log.due(Instant::now()) {
            tracing::warn!(
                port = name,
                max_connections = port.max_connections,
                evicted,
                refused,
                "connection cap reached: closed the longest idle connections to make room, and refused new ones while all were busy (counts since the last such line)"
            );
            (evicted, refused) = (0, 0);
        }
        let Some(entry) = entry else {
            drop(stream);
            continue;
        };
        metrics.set_connections(name, table.len());
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            peer,
            entry,
            acceptor: acceptor.clone(),
            protocols: protocols.clone(),
            router: router.clone(),
            limits,
            shutdown: shutdown.clone(),
        };
        let (metrics, table) = (metrics.clone(), table.clone());
        connections.spawn(async move {
            connection.run().await;
            metrics.set_connections(name, table.len());
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain timeout passed; closing remaining connections");
    }
    connections.shutdown().await;
    metrics.set_connections(name, 0);
}

/// [`serve`] for a listener taken out of the runtime that bound it
/// (`TcpListener::into_std`): it is registered with the runtime that runs
/// this future, such as the admin port's own.
pub(crate) async fn serve_std(
    listener: std::net::TcpListener,
    port: Port,
    router: Router,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    match TcpListener::from_std(listener) {
        Ok(listener) => serve(listener, port, router, metrics, shutdown).await,
        Err(e) => tracing::error!(port = port.name, error = %e, "the port could not be served"),
    }
}

/// Binds a TCP listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// SIGTERM and SIGINT, caught from the moment [`Signals::install`] returns.
/// In a container Sesame is PID 1, for which the kernel ignores a signal
/// that has no handler: `serve` installs this before anything else, so that
/// a stop during start-up (a certificate that does not come) is prompt.
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves on SIGTERM or SIGINT (never, when no handler can be installed).
pub(crate) async fn wait_for_signal() {
    match Signals::install() {
        Ok(mut signals) => signals.recv().await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGTERM/SIGINT handlers");
            std::future::pending::<()>().await;
        }
    }
}
