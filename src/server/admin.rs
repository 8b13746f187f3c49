//! The admin port (plain HTTP, not for the API server): liveness,
//! start-up, readiness and Prometheus metrics. It is the first port bound,
//! so that start-up shows its progress: `/livez` answers 200 from then on,
//! `/startupz` 503 until start-up has finished, and both `/startupz` and
//! `/readyz` say in their body which step Sesame waits for. Readiness means
//! "can serve reviews"; the stores' health is shown beside it, in
//! `/readyz?verbose` and the `sesame_store_up` gauge, and never makes a
//! replica unready: one store's outage must not take every Pod's admission
//! down with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::telemetry::Metrics;

/// What the probes are told: whether start-up has finished, whether the
/// server is ready, and why not. Not ready until start-up has finished (TLS
/// material loaded, configuration valid, the Kubernetes caches synced when
/// there is an API), and again from the start of the drain. The stores'
/// health is reported beside it and does not change it.
#[derive(Debug)]
pub struct Readiness {
    started: AtomicBool,
    ready: AtomicBool,
    /// Why not ready: the start-up step, the drain.
    reason: ArcSwap<String>,
    /// The last check of each store, by name.
    stores: ArcSwap<Vec<StoreState>>,
}

/// One store's health as its periodic check last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreState {
    pub store: String,
    pub up: bool,
    /// When the store entered this state (the first check that saw it).
    pub since: SystemTime,
    /// The failure class of the last failed check (`StoreError::class`); never a body.
    pub error_class: Option<&'static str>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            started: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            reason: ArcSwap::from_pointee("starting".to_owned()),
            stores: ArcSwap::from_pointee(Vec::new()),
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

    /// Start-up has finished: certificates loaded, configuration valid,
    /// caches synced and both ports listening. Ready from here until the drain.
    pub(crate) fn started(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.set(true);
    }

    /// The stores' health as last checked (shown by `/readyz?verbose`).
    pub(crate) fn set_stores(&self, stores: Vec<StoreState>) {
        self.stores.store(Arc::new(stores));
    }

    /// The stores' health as last checked.
    pub fn stores(&self) -> Arc<Vec<StoreState>> {
        self.stores.load_full()
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

async fn ready(State(s): State<AdminState>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let (code, mut body) = if s.readiness.get() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", s.readiness.reason()),
        )
    };
    let verbose = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
    if verbose {
        body.push_str(&stores_text(&s.readiness.stores()));
    }
    (code, body)
}

/// One line per store, sorted by name: `store NAME: up|down since TIME
/// (CLASS)`. Names come from the configuration and classes are fixed
/// words, so no value can show here.
fn stores_text(stores: &[StoreState]) -> String {
    let mut stores: Vec<&StoreState> = stores.iter().collect();
    stores.sort_by(|a, b| a.store.cmp(&b.store));
    let mut out = String::new();
    for s in stores {
        let state = if s.up { "up" } else { "down" };
        let since = humantime::format_rfc3339_seconds(s.since);
        out.push_str(&format!("store {}: {state} since {since}", s.store));
        if let Some(class) = s.error_class {
            out.push_str(&format!(" ({class})"));
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("stores: not checked yet\n");
    }
    out
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

    #[tokio::test]
    async fn a_store_down_is_listed_by_verbose_and_leaves_readiness_alone() {
        let r = Arc::new(Readiness::default());
        r.started();
        assert_eq!(
            get(&r, "/readyz?verbose").await,
            (200, "ready\nstores: not checked yet\n".into())
        );
        let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        r.set_stores(vec![
            StoreState {
                store: "vault".into(),
                up: false,
                since,
                error_class: Some("unreachable"),
            },
            StoreState {
                store: "aws".into(),
                up: true,
                since,
                error_class: None,
            },
        ]);
        assert_eq!(get(&r, "/readyz").await, (200, "ready\n".into()));
        assert_eq!(
            get(&r, "/readyz?verbose").await,
            (
                200,
                "ready\nstore aws: up since 2027-01-15T08:00:00Z\nstore vault: down since 2027-01-15T08:00:00Z (unreachable)\n"
                    .into()
            )
        );
        r.unready("shutting down");
        let (code, body) = get(&r, "/readyz?verbose=1").await;
        assert_eq!(code, 503);
        assert!(
            body.starts_with("not ready: shutting down\nstore aws: up"),
            "{body}"
        );
    }
}
