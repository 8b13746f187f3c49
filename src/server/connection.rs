//! One connection, from accept to close: the TLS handshake under its
//! timeout, HTTP/2 or HTTP/1.1 as ALPN chose, and a watchdog that closes
//! the connection gracefully when it has had no request in flight for too
//! long (the first request gets the client timeout, later ones the idle
//! timeout), when the port needs its place for a newcomer, or at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::table::{Activity, Entry, Slot};
use super::Limits;

/// The HTTP settings shared by every connection of a port.
pub(crate) struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// Streams one HTTP/2 connection may have open at once (the API server
/// opens another connection when it needs more).
const MAX_CONCURRENT_STREAMS: u32 = 100;

impl Protocols {
    pub(crate) fn new() -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // The watchdog below bounds the wait for each request's headers
        // (through the idle clock), for HTTP/1.1 and HTTP/2 alike.
        http1.header_read_timeout(None).keep_alive(true);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // Pings find dead peers; they do not count as activity.
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        Self { http1, http2 }
    }
}

/// How long an idle connection being closed gets to say goodbye.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy)]
enum Close {
    Idle,
    Evicted,
    Shutdown,
}

/// Everything one connection task needs.
pub(crate) struct Connection {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) entry: Entry,
    pub(crate) acceptor: Option<TlsAcceptor>,
    pub(crate) protocols: Arc<Protocols>,
    pub(crate) router: Router,
    pub(crate) limits: Limits,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Connection {
    pub(crate) async fn run(self) {
        let Self {
            stream,
            peer,
            entry,
            acceptor,
            protocols,
            router,
            limits,
            mut shutdown,
        } = self;
        let slot = entry.slot().clone();
        let service = Tracked {
            router,
            slot: slot.clone(),
        };
        let Some(acceptor) = acceptor else {
            let conn = protocols.http1.serve_connection(TokioIo::new(stream), service);
            return watch_over(conn, &slot, &limits, &mut shutdown, peer).await;
        };
        let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream));
        let tls = tokio::select! {
            r = handshake => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = slot.evicted() => return,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        slot.restart_idle_clock();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(tls);
        if h2 {
            let conn = protocols.http2.serve_connection(io, service);
            watch_over(conn, &slot, &limits, &mut shutdown, peer).await;
        } else {
            let conn = protocols.http1.serve_connection(io, service);
            watch_over(conn, &slot, &limits, &mut shutdown, peer).await;
        }
    }
}

/// The router, with each request marked in flight on the connection's
/// slot until its response body is dropped (fully written or abandoned).
#[derive(Clone)]
struct Tracked {
    router: Router,
    slot: Arc<Slot>,
}

type ResponseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<hyper::Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let guard = self.slot.begin_request();
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(request).await?;
            Ok(response.map(move |body| {
                Body::new(body.map_frame(move |frame| {
                    let _in_flight = &guard;
                    frame
                }))
            }))
        })
    }
}

/// The deadline by which an idle connection is closed.
fn idle_deadline(activity: Activity, limits: &Limits) -> Option<Instant> {
    match activity {
        Activity::Busy(_) => None,
        Activity::Idle { since, served } => Some(
            since
                + if served {
                    limits.idle_timeout
                } else {
                    limits.header_read_timeout
                },
        ),
    }
}

async fn watch_over<C>(
    conn: C,
    slot: &Slot,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let reason = loop {
        // Look again after an idle timeout at the latest: requests may have
        // come and gone meanwhile, and the deadline is then recomputed from
        // when the connection last became idle.
        let recheck = Instant::now() + limits.idle_timeout;
        let wake = idle_deadline(slot.activity(), limits).map_or(recheck, |d| d.min(recheck));
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if idle_deadline(slot.activity(), limits).is_some_and(|d| d <= Instant::now()) {
                    break Close::Idle;
                }
            }
            _ = slot.evicted() => break Close::Evicted,
            _ = shutdown.wait_for(|s| *s) => break Close::Shutdown,
        }
    };
    tracing::debug!(%peer, ?reason, "closing connection");
    // HTTP/1.1 closes at once when idle, or after the response in flight;
    // HTTP/2 sends GOAWAY and lets open streams finish. A request in flight
    // gets the drain timeout (at shutdown, the port's drain covers all). Without one there is nothing to wait for but
    // the goodbye to be written: an idle connection gets a moment for it (a
    // client half-way through its headers gets no more), and an evicted one
    // a single attempt, since its descriptor is wanted now.
    conn.as_mut().graceful_shutdown();
    let grace = match (reason, slot.activity()) {
        // The port's drain bounds the whole shutdown, and says when it cuts one off.
        (Close::Shutdown, _) => None,
        (_, Activity::Busy(_)) => Some(limits.drain_timeout),
        (Close::Idle, _) => Some(IDLE_CLOSE_GRACE),
        (Close::Evicted, _) => Some(Duration::ZERO),
    };
    let closed = async {
        let Some(grace) = grace else {
            return Ok(conn.as_mut().await);
        };
        tokio::select! {
            biased;
            ended = conn.as_mut() => Ok(ended),
            _ = tokio::time::sleep(grace) => Err(()),
        }
    };
    match closed.await {
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        Ok(Ok(())) => {}
        Err(()) => tracing::debug!(%peer, "connection did not close in time; dropped"),
    }
}
