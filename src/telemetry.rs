//! Logs (tracing, text or JSON) and Prometheus metrics. Labels are store
//! names, outcomes and failure classes: never paths or values.

use std::sync::Mutex;
use std::time::Duration;

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
    reviews: Family<OutcomeLabels, Counter>,
    review_duration: Histogram,
    store_duration: Family<StoreProviderLabels, Histogram>,
    store_errors: Family<StoreErrorLabels, Counter>,
    cache_hits: Family<StoreLabels, Counter>,
    cache_misses: Family<StoreLabels, Counter>,
    stale_served: Family<StoreLabels, Counter>,
    secret_writes: Family<OutcomeLabels, Counter>,
    config_reloads: Family<OutcomeLabels, Counter>,
    ready: Gauge,
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
        let review_duration = Histogram::new(latency_buckets());
        let store_duration = Family::<StoreProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        let cache_hits = Family::<StoreLabels, Counter>::default();
        let cache_misses = Family::<StoreLabels, Counter>::default();
        let stale_served = Family::<StoreLabels, Counter>::default();
        let secret_writes = Family::<OutcomeLabels, Counter>::default();
        let config_reloads = Family::<OutcomeLabels, Counter>::default();
        let ready = Gauge::default();
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
            "config_reloads",
            "Configuration reloads by outcome",
            config_reloads.clone(),
        );
        registry.register(
            "ready",
            "1 when the webhook serves and every store is usable",
            ready.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            reviews,
            review_duration,
            store_duration,
            store_errors,
            cache_hits,
            cache_misses,
            stale_served,
            secret_writes,
            config_reloads,
            ready,
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

    pub fn secret_write(&self, outcome: &str) {
        self.secret_writes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
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

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
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
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("sesame-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colour only for a person at a terminal: in a container the escape codes
    // end up in the log store, and writing them costs time on every review.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // The review span's fields (uid, namespace, pod) as one `span` object.
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}
