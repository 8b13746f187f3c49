//! Logs (tracing, text or JSON) and Prometheus metrics. Labels are store
//! names, outcomes and failure classes: never paths or values.

mod escape;
mod process;

use std::sync::Mutex;
use std::time::Duration;

pub(crate) use process::max_open_files;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PortLabels {
    pub port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShedLabels {
    pub port: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildLabels {
    pub version: String,
    pub features: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreLabels {
    pub store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreProviderLabels {
    pub store: String,
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreErrorLabels {
    pub store: String,
    pub class: String,
}

/// Every metric Sesame exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// The standard, unprefixed `process_*` metrics.
    process: Registry,
    reviews: Family<OutcomeLabels, Counter>,
    reviews_in_flight: Gauge,
    review_duration: Histogram,
    connections: Family<PortLabels, Gauge>,
    requests_in_flight: Family<PortLabels, Gauge>,
    connections_shed: Family<ShedLabels, Counter>,
    accept_errors: Family<PortLabels, Counter>,
    store_duration: Family<StoreProviderLabels, Histogram>,
    store_errors: Family<StoreErrorLabels, Counter>,
    cache_hits: Family<StoreLabels, Counter>,
    cache_misses: Family<StoreLabels, Counter>,
    stale_served: Family<StoreLabels, Counter>,
    secret_writes: Family<OutcomeLabels, Counter>,
    plan_memo: Family<ResultLabels, Counter>,
    secret_write_duration: Family<OutcomeLabels, Histogram>,
    config_reloads: Family<OutcomeLabels, Counter>,
    ready: Gauge,
    store_up: Family<StoreLabels, Gauge>,
    last_known_good: Family<StoreLabels, Counter>,
    workload_reviews: Family<OutcomeLabels, Counter>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sesame");
        let reviews = Family::<OutcomeLabels, Counter>::default();
        let reviews_in_flight = Gauge::default();
        let review_duration = Histogram::new(latency_buckets());
        let connections = Family::<PortLabels, Gauge>::default();
        let requests_in_flight = Family::<PortLabels, Gauge>::default();
        let connections_shed = Family::<ShedLabels, Counter>::default();
        let accept_errors = Family::<PortLabels, Counter>::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                features: compiled_features().join(","),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the version and the store features compiled in",
            build_info,
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(process::ProcessCollector));
        let store_duration = Family::<StoreProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        let cache_hits = Family::<StoreLabels, Counter>::default();
        let cache_misses = Family::<StoreLabels, Counter>::default();
        let stale_served = Family::<StoreLabels, Counter>::default();
        let secret_writes = Family::<OutcomeLabels, Counter>::default();
        let plan_memo = Family::<ResultLabels, Counter>::default();
        let secret_write_duration =
            Family::<OutcomeLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        let config_reloads = Family::<OutcomeLabels, Counter>::default();
        let ready = Gauge::default();
        let store_up = Family::<StoreLabels, Gauge>::default();
        let last_known_good = Family::<StoreLabels, Counter>::default();
        let workload_reviews = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "workload_reviews",
            "Workload reviews (apply-time warnings) by outcome (skipped, clean, warned, denied, refused, bad_request, error)",
            workload_reviews.clone(),
        );
        registry.register(
            "admission_last_known_good",
            "Pods admitted against their existing managed Secret because a store failed, by store",
            last_known_good.clone(),
        );
        registry.register(
            "admission_reviews",
            "Admission reviews by outcome (allowed, mutated, denied_<class>, error)",
            reviews.clone(),
        );
        registry.register(
            "admission_review_duration_seconds",
            "Time to answer one admission review",
            review_duration.clone(),
        );
        registry.register(
            "admission_reviews_in_flight",
            "Admission reviews being answered now",
            reviews_in_flight.clone(),
        );
        registry.register(
            "connections",
            "Open connections by port (webhook, admin)",
            connections.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being answered by port",
            requests_in_flight.clone(),
        );
        registry.register(
            "connections_shed",
            "Connections closed at a full port: evicted (the longest idle, to make room) or refused (all busy)",
            connections_shed.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accept calls by port (e.g. out of file descriptors)",
            accept_errors.clone(),
        );
        registry.register(
            "store_request_duration_seconds",
            "Time of one batched store fetch",
            store_duration.clone(),
        );
        registry.register("store_errors", "Store failures by class", store_errors.clone());
        registry.register(
            "cache_hits",
            "References served from the cache (or a fetch under way)",
            cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "References that needed a store fetch",
            cache_misses.clone(),
        );
        registry.register(
            "cache_stale_served",
            "Cached values served past their TTL because the store failed",
            stale_served.clone(),
        );
        registry.register(
            "secret_writes",
            "Managed Secret writes by outcome",
            secret_writes.clone(),
        );
        registry.register(
            "plan_memo",
            "Pod reviews answered from the verdict of an identical Pod (hit), evaluated (miss), or too large to keep (skipped)",
            plan_memo.clone(),
        );
        registry.register(
            "secret_write_duration_seconds",
            "Time the managed Secret step of a review took, by outcome (applied is the cold path: an API call)",
            secret_write_duration.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by outcome",
            config_reloads.clone(),
        );
        registry.register(
            "ready",
            "1 when the webhook serves reviews (store health is sesame_store_up)",
            ready.clone(),
        );
        registry.register(
            "store_up",
            "1 when the store passed its last periodic check, 0 when it failed",
            store_up.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            process,
            reviews,
            reviews_in_flight,
            review_duration,
            connections,
            requests_in_flight,
            connections_shed,
            accept_errors,
            store_duration,
            store_errors,
            cache_hits,
            cache_misses,
            stale_served,
            secret_writes,
            plan_memo,
            secret_write_duration,
            config_reloads,
            ready,
            store_up,
            last_known_good,
            workload_reviews,
        }
    }

    /// Lets other components (the Kubernetes side) register their metrics.
    pub(crate) fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> Option<R> {
        self.registry.lock().ok().map(|mut r| f(&mut r))
    }

    pub fn review(&self, outcome: &str, elapsed: Duration) {
        self.reviews
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.review_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one review of the workload path.
    pub(crate) fn workload_review(&self, outcome: &str) {
        self.workload_reviews
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a review in flight until the guard is dropped.
    pub(crate) fn review_started(&self) -> InFlight {
        self.reviews_in_flight.inc();
        InFlight(self.reviews_in_flight.clone())
    }

    pub(crate) fn set_connections(&self, port: &str, open: usize) {
        self.connections
            .get_or_create(&PortLabels {
                port: port.to_owned(),
            })
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// The gauge of `port`'s HTTP requests in flight.
    pub(crate) fn requests_in_flight(&self, port: &str) -> Gauge {
        self.requests_in_flight
            .get_or_create(&PortLabels {
                port: port.to_owned(),
            })
            .clone()
    }

    pub(crate) fn connection_shed(&self, port: &str, action: &str) {
        self.connections_shed
            .get_or_create(&ShedLabels {
                port: port.to_owned(),
                action: action.to_owned(),
            })
            .inc();
    }

    pub(crate) fn accept_error(&self, port: &str) {
        self.accept_errors
            .get_or_create(&PortLabels {
                port: port.to_owned(),
            })
            .inc();
    }

    pub fn store_request(&self, store: &str, provider: &str, elapsed: Duration) {
        self.store_duration
            .get_or_create(&StoreProviderLabels {
                store: store.to_owned(),
                provider: provider.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn store_error(&self, store: &str, class: &str) {
        self.store_errors
            .get_or_create(&StoreErrorLabels {
                store: store.to_owned(),
                class: class.to_owned(),
            })
            .inc();
    }

    pub fn cache_hit(&self, store: &str) {
        self.cache_hits
            .get_or_create(&StoreLabels {
                store: store.to_owned(),
            })
            .inc();
    }

    pub fn cache_miss(&self, store: &str) {
        self.cache_misses
            .get_or_create(&StoreLabels {
                store: store.to_owned(),
            })
            .inc();
    }

    pub fn stale_served(&self, store: &str) {
        self.stale_served
            .get_or_create(&StoreLabels {
                store: store.to_owned(),
            })
            .inc();
    }

    /// How long the managed Secret step of one review took (cache look-up,
    /// and the API call when one was needed), by the same outcome label.
    pub fn secret_write_duration(&self, outcome: &str, elapsed: Duration) {
        self.secret_write_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn secret_write(&self, outcome: &str) {
        self.secret_writes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// `hit`: a review answered from the verdict of an identical Pod.
    pub fn plan_memo(&self, result: &'static str) {
        self.plan_memo
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn config_reload(&self, outcome: &str) {
        self.config_reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn set_store_up(&self, store: &str, up: bool) {
        self.store_up
            .get_or_create(&StoreLabels {
                store: store.to_owned(),
            })
            .set(i64::from(up));
    }

    pub fn last_known_good(&self, store: &str) {
        self.last_known_good
            .get_or_create(&StoreLabels {
                store: store.to_owned(),
            })
            .inc();
    }

    /// A store removed by a reload no longer has a health series.
    pub(crate) fn forget_store(&self, store: &str) {
        self.store_up.remove(&StoreLabels {
            store: store.to_owned(),
        });
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = encode_registry(&mut out, &registry);
        }
        let _ = encode_registry(&mut out, &self.process);
        let _ = encode_eof(&mut out);
        out
    }
}

/// A review in flight; dropping it ends the count.
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The store features this binary was built with.
fn compiled_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "aws") {
        features.push("aws");
    }
    if cfg!(feature = "gcp") {
        features.push("gcp");
    }
    if cfg!(feature = "azure") {
        features.push("azure");
    }
    if cfg!(feature = "infisical") {
        features.push("infisical");
    }
    features
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides `level`.
///
/// Lines are written by a background thread through a buffer that is
/// flushed whenever no more lines are waiting: under load many audit lines
/// share one `write`, instead of one system call per review on the request
/// path. It never drops lines (it blocks when far behind). Keep the guard
/// until exit: dropping it flushes what is left.
pub fn init_logging(format: LogFormat, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("sesame-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    // Colour only for a person at a terminal: in a container the escape codes
    // end up in the log store, and writing them costs time on every review.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Also routes the `log` records of dependencies (rustls) into tracing.
    let _ = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber(format, level, ansi, writer));
    guard
}

/// The subscriber `init_logging` installs, writing to `writer`.
pub(crate) fn subscriber<W>(
    format: LogFormat,
    level: &str,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                // The review span's fields (uid, namespace, pod) as one `span` object.
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        // Fields and messages escaped: one event is one line, read as written.
        LogFormat::Text => Box::new(builder.fmt_fields(escape::EscapedFields::default()).finish()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects everything the subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat) -> String {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = subscriber(format, "info", false, move || writer.clone());
        let key = "sesame.dev/env.X\n2030-01-01T00:00:00Z  INFO admission decision allowed=true";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("review", pod = %"web\r\u{1b}[2Kfake", uid = "u\n1");
            let _enter = span.enter();
            tracing::info!(
                allowed = false,
                reason = %format!("annotation \"{key}\": not allowed"),
                debug = ?key,
                plain = key,
                "admission decision \u{202e}{}",
                "eurt=dewolla"
            );
        });
        let bytes = capture.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    #[test]
    fn text_logs_escape_control_and_bidi_characters_in_every_field_and_the_message() {
        let text = logged(LogFormat::Text);
        assert_eq!(text.lines().count(), 1, "one event, one line: {text}");
        // The message and the three fields that quote the key.
        assert_eq!(text.matches("admission decision").count(), 4, "{text}");
        assert!(text.contains("allowed=false"), "{text}");
        assert!(
            !text.contains("allowed=true\n") && !text.contains("allowed=true "),
            "{text}"
        );
        assert!(
            !text
                .trim_end_matches('\n')
                .chars()
                .any(|c| c.is_control() || c == '\u{202e}'),
            "{text:?}"
        );
        assert!(text.contains("\\n2030-01-01"), "readable escapes: {text}");
        assert!(text.contains("web\\r\\u{1b}[2Kfake"), "span fields too: {text}");
        assert!(text.contains("\\u{202e}eurt=dewolla"), "the message too: {text}");
    }

    #[test]
    fn json_logs_are_one_line_with_the_values_intact() {
        let text = logged(LogFormat::Json);
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap_or_default();
        assert_eq!(line["allowed"], false, "{text}");
        assert!(
            line["reason"].as_str().is_some_and(|r| r.contains("X\n2030")),
            "{text}"
        );
        assert_eq!(line["span"]["pod"], "web\r\u{1b}[2Kfake", "{text}");
    }
}
