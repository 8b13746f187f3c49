//! The admin port (plain HTTP, not for the API server): liveness,
//! start-up, readiness and Prometheus metrics. It is the first port bound,
//! so that start-up shows its progress: `/livez` answers 200 from then on,
//! `/startupz` 503 until start-up has finished, and both `/startupz` and
//! `/readyz` say in their body which step Sesame waits for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::telemetry::Metrics;

/// What the probes are told: whether start-up has finished, whether the
/// server is ready, and why not. Not ready until start-up has finished and
/// every store passed its check, and again from the start of the drain.
#[derive(Debug)]
pub struct Readiness {
    started: AtomicBool,
    ready: AtomicBool,
    /// Why not ready: the start-up step, the failing stores, the drain.
    reason: ArcSwap<String>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            started: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            reason: ArcSwap::from_pointee("starting".to_owned()),
        }
    }
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Not ready, and why (shown by `/readyz`).
    pub(crate) fn unready(&self, reason: impl Into<String>) {
        self.reason.store(Arc::new(reason.into()));
        self.set(false);
    }

    /// Start-up now waits for `what` (shown by `/startupz` and `/readyz`).
    pub(crate) fn starting(&self, what: &str) {
        tracing::info!(waiting_for = what, "starting");
        self.unready(format!("starting: waiting for {what}"));
    }

    /// Start-up has finished: both ports listen. Readiness follows the
    /// store checks from here on.
    pub(crate) fn started(&self) {
        self.unready("waiting for the first check of the stores");
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    fn reason(&self) -> Arc<String> {
        self.reason.load_full()
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

pub(crate) fn router(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/livez", get(live))
        .route("/healthz", get(live))
        .route("/startupz", get(startup))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { readiness, metrics })
}

async fn live() -> &'static str {
    "ok\n"
}

async fn startup(State(s): State<AdminState>) -> impl IntoResponse {
    if s.readiness.is_started() {
        (StatusCode::OK, "started\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", s.readiness.reason()),
        )
    }
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.readiness.get() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", s.readiness.reason()),
        )
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(readiness: &Arc<Readiness>, path: &str) -> (u16, String) {
        let app = router(readiness.clone(), Arc::new(Metrics::new()));
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn start_up_shows_the_step_it_waits_for_and_liveness_answers_throughout() {
        let r = Arc::new(Readiness::default());
        r.starting("the serving certificate (Secret sesame-system/sesame-certs)");
        assert_eq!(get(&r, "/livez").await, (200, "ok\n".into()));
        let waiting = "starting: waiting for the serving certificate (Secret sesame-system/sesame-certs)";
        assert_eq!(get(&r, "/startupz").await, (503, format!("{waiting}\n")));
        assert_eq!(get(&r, "/readyz").await, (503, format!("not ready: {waiting}\n")));

        r.starting("the caches of managed Secrets and Namespaces");
        let (code, body) = get(&r, "/readyz").await;
        assert_eq!(code, 503);
        assert!(body.contains("caches"), "{body}");

        r.started();
        assert_eq!(get(&r, "/startupz").await, (200, "started\n".into()));
        let (code, body) = get(&r, "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (503, "not ready: waiting for the first check of the stores\n")
        );

        r.set(true);
        assert_eq!(get(&r, "/readyz").await, (200, "ready\n".into()));
        r.unready("shutting down");
        assert_eq!(
            get(&r, "/readyz").await,
            (503, "not ready: shutting down\n".into())
        );
        // Start-up stays finished through the drain; liveness answers.
        assert_eq!(get(&r, "/startupz").await.0, 200);
        assert_eq!(get(&r, "/livez").await.0, 200);
    }
}
