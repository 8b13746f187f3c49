//! Secret stores: the `Store` trait every provider implements, the cache in
//! front of them, and the registry that resolves a Pod's references
//! concurrently within one time budget.

pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
#[cfg(any(feature = "gcp", feature = "azure", feature = "infisical"))]
mod bearer;
mod cache;
pub mod common;
mod config;
pub mod file;
#[cfg(feature = "gcp")]
pub mod gcp;
pub mod identity;
#[cfg(feature = "infisical")]
pub(crate) mod infisical;
pub mod kubernetes;
mod limit;
pub mod token;
mod value;
pub mod vault;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use cache::CachedStore;
pub(crate) use config::{validate_stores, ProviderConfig, StoreConfig};
pub use identity::{IdentityMode, PodIdentity, PodIdentityConfig, ServiceAccountTokens, WorkloadIdentity};
pub use limit::RequestLimit;
pub(crate) use limit::DEFAULT_MAX_CONCURRENCY;
pub(crate) use value::json_properties;
pub use value::{PropertyError, SecretData, SecretValue};

use crate::telemetry::Metrics;

/// What a store fetches: one secret (all of its properties) at one version.
/// Properties are picked out after the fetch, so two references to different
/// properties of the same secret cost one fetch and one cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretLocator {
    /// Provider-specific path or name, already validated by the grammar.
    pub path: String,
    /// Version id or stage; `None` means the current version.
    pub version: Option<String>,
}

impl SecretLocator {
    pub fn new(path: impl Into<String>, version: Option<String>) -> Self {
        Self {
            path: path.into(),
            version,
        }
    }
}

/// Why a store could not return a secret. Messages name the failure class and
/// a safe detail (a status code, a provider error code); never a value or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("secret not found")]
    NotFound,
    #[error("version not found")]
    VersionNotFound,
    #[error("unauthorised: {0}")]
    Unauthorized(String),
    /// The store refused the Pod's own ServiceAccount (`identity: pod`):
    /// its access control said no, as Sesame's policy may.
    #[error("the store denied the Pod's ServiceAccount: {0}")]
    Denied(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("throttled by the store")]
    Throttled,
    #[error("no answer within the time budget")]
    Timeout,
    #[error("unexpected answer: {0}")]
    InvalidResponse(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl StoreError {
    /// Failure class, used as a metric label and in deny messages.
    pub fn class(&self) -> &'static str {
        match self {
            Self::NotFound | Self::VersionNotFound => "not_found",
            Self::Unauthorized(_) => "unauthorised",
            Self::Denied(_) => "denied",
            Self::Unreachable(_) => "unreachable",
            Self::Throttled => "throttled",
            Self::Timeout => "timeout",
            Self::InvalidResponse(_) => "invalid_response",
            Self::InvalidRequest(_) => "invalid_request",
        }
    }

    /// A missing secret is the only failure an optional reference may skip.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound | Self::VersionNotFound)
    }

    /// The store is out of service for Sesame (unreachable, no answer, 5xx
    /// or an unexpected answer, throttled, or its credentials refused):
    /// not an answer about the secret or the Pod. A Pod whose managed
    /// Secret exists may then be admitted against it.
    pub fn is_outage(&self) -> bool {
        self.is_transient() || matches!(self, Self::Unauthorized(_))
    }

    /// Worth serving a stale value for (and retrying): the store, not the
    /// reference, is the problem.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_) | Self::Throttled | Self::Timeout | Self::InvalidResponse(_)
        )
    }
}

/// A secret store provider. Implementations are built once at start and
/// shared. `fetch` takes a batch so that providers with a batch API (AWS
/// `BatchGetSecretValue`) can use it; every request it sends holds a
/// permit of the store's `limit`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Provider kind, e.g. `file`, `vault`; used in metrics and messages.
    fn provider(&self) -> &'static str;

    /// Reads one secret with one request.
    async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError>;

    /// Reads each locator; the answers are parallel to `locators`. The
    /// default reads them one request each, at most `limit` at once.
    async fn fetch(
        &self,
        locators: &[SecretLocator],
        limit: &RequestLimit,
    ) -> Vec<Result<SecretData, StoreError>> {
        limit.each(locators, |l| self.read(l)).await
    }

    /// The one spelling of `version` that names the same version, so that
    /// the cache and the Secret a Pod gets see one secret however the Pod
    /// wrote it. Stores whose versions are numbers (Vault KV v2, GCP,
    /// Infisical) drop leading zeros: `version=01` is `version=1`, one fetch
    /// and one cache entry. The default keeps the text: versions that are
    /// opaque ids or stages are compared as written.
    fn canonical_version<'a>(&self, version: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(version)
    }

    /// Reads each locator as the Pod's ServiceAccount (`identity: pod`);
    /// the answers are parallel to `locators`. Providers that can log in as
    /// a workload override it; the others refuse.
    async fn fetch_as(
        &self,
        identity: &WorkloadIdentity,
        locators: &[SecretLocator],
        limit: &RequestLimit,
    ) -> Vec<Result<SecretData, StoreError>> {
        let _ = (identity, limit);
        let refused = StoreError::InvalidRequest(format!(
            "the {} store cannot read as a Pod's ServiceAccount",
            self.provider()
        ));
        vec![Err(refused); locators.len()]
    }

    /// Whether paths start with a namespace (`namespace/name`). The pipeline
    /// then qualifies a bare `name` with the Pod's namespace before policy
    /// and fetch, and the policy grants other namespaces only by name.
    fn namespaced(&self) -> bool {
        false
    }

    /// Checks that the store is usable (credentials, reachability); the
    /// server is not ready until every store passes.
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Background work the store needs while it is in use (keeping a token
    /// or credentials fresh), for the caller to run as a task: it ends once
    /// the store is dropped. Nothing is spawned by the store itself.
    fn upkeep(&self) -> Option<Upkeep> {
        None
    }
}

/// A version number without its leading zeros (`007` is `7`, `000` is
/// `0`); anything that is not all digits is left as it is. For stores
/// whose versions are numbers ([`Store::canonical_version`]).
pub(crate) fn canonical_number(version: &str) -> Cow<'_, str> {
    if version.len() > 1 && version.starts_with('0') && version.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = version.trim_start_matches('0');
        Cow::Borrowed(if trimmed.is_empty() { "0" } else { trimmed })
    } else {
        Cow::Borrowed(version)
    }
}

/// A store's background work; see [`Store::upkeep`].
pub(crate) type Upkeep = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// How long before the end of a resolve budget the cache stops waiting
/// for a store: time to look up a stale value and build the answer.
fn answer_margin(budget: Duration) -> Duration {
    (budget / 20).clamp(Duration::from_millis(5), Duration::from_millis(200))
}

/// Builds a provider from its configuration. `kube` is the Kubernetes
/// client, when there is one (for the `kubernetes` provider, and for the
/// ServiceAccount tokens of `identity: pod`).
pub async fn build_store(
    config: &StoreConfig,
    base_dir: &std::path::Path,
    kube: Option<&::kube::Client>,
) -> anyhow::Result<Arc<dyn Store>> {
    let provider = config
        .provider()
        .map_err(|e| e.within(&format!("stores[{}]", config.name)))?;
    let pod = config.identity.is_pod().then(|| {
        let tokens: Arc<dyn ServiceAccountTokens> = match kube {
            Some(client) => Arc::new(identity::KubeTokens::new(client.clone())),
            None => Arc::new(identity::NoCluster),
        };
        PodIdentity::new(config.pod_identity.clone().unwrap_or_default(), tokens)
    });
    match provider {
        ProviderConfig::File(file) => Ok(Arc::new(file::FileStore::new(file, base_dir))),
        ProviderConfig::Vault(vault) => Ok(Arc::new(
            vault::VaultStore::with_identity(vault, base_dir, pod).await?,
        )),
        ProviderConfig::Aws(aws) => aws::build(aws, pod).await,
        #[cfg(feature = "gcp")]
        ProviderConfig::Gcp(c) => Ok(Arc::new(gcp::GcpStore::with_identity(c, base_dir, pod)?)),
        #[cfg(feature = "azure")]
        ProviderConfig::Azure(c) => Ok(Arc::new(azure::AzureStore::with_identity(c, base_dir, pod)?)),
        #[cfg(feature = "infisical")]
        ProviderConfig::Infisical(c) => Ok(Arc::new(infisical::InfisicalStore::new(c, base_dir)?)),
        ProviderConfig::Kubernetes(_) => Ok(kubernetes::build(kube)),
    }
}

/// Whether two sections build the same store. `refreshInterval` is
/// rotation's business, not the store's: changing it keeps the store.
fn same_store(a: &StoreConfig, b: &StoreConfig) -> bool {
    let without_refresh = |c: &StoreConfig| StoreConfig {
        refresh_interval: None,
        ..c.clone()
    };
    without_refresh(a) == without_refresh(b)
}

/// All configured stores, each behind its cache, by name.
#[derive(Clone, Default)]
pub struct Stores {
    stores: HashMap<String, Arc<CachedStore>>,
    /// What each store was built from, so that a reload keeps the stores
    /// whose section did not change.
    built_from: HashMap<String, (StoreConfig, PathBuf)>,
}

/// One reference to resolve: which store, which secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreRequest {
    pub store: String,
    pub locator: SecretLocator,
}

impl Stores {
    /// Builds every configured store.
    pub async fn from_config(
        configs: &[StoreConfig],
        base_dir: &std::path::Path,
        metrics: &Arc<Metrics>,
        kube: Option<&::kube::Client>,
    ) -> anyhow::Result<Self> {
        Self::default().rebuilt(configs, base_dir, metrics, kube).await
    }

    /// The stores of a new configuration: a store whose section (and base
    /// directory) did not change is kept as it is, with its cache, its
    /// client and its token; the others are built anew.
    pub(crate) async fn rebuilt(
        &self,
        configs: &[StoreConfig],
        base_dir: &Path,
        metrics: &Arc<Metrics>,
        kube: Option<&::kube::Client>,
    ) -> anyhow::Result<Self> {
        let mut stores = HashMap::new();
        let mut built_from = HashMap::new();
        for config in configs {
            let unchanged = self
                .built_from
                .get(&config.name)
                .is_some_and(|(old, dir)| dir == base_dir && same_store(old, config));
            let cached = match self.stores.get(&config.name) {
                Some(existing) if unchanged => existing.clone(),
                _ => {
                    let store = build_store(config, base_dir, kube).await?;
                    Arc::new(
                        CachedStore::with_concurrency(
                            config.name.clone(),
                            store,
                            config.cache_ttl,
                            config.max_stale,
                            config.max_concurrency,
                            metrics.clone(),
                        )
                        .reading_as(config.identity),
                    )
                }
            };
            stores.insert(config.name.clone(), cached);
            built_from.insert(config.name.clone(), (config.clone(), base_dir.to_path_buf()));
        }
        Ok(Self { stores, built_from })
    }

    /// Adds a store under a name (tests and embedders).
    pub fn insert(&mut self, name: impl Into<String>, store: Arc<CachedStore>) {
        self.stores.insert(name.into(), store);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<CachedStore>> {
        self.stores.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.stores.keys().map(String::as_str)
    }

    /// The upkeep of every store whose upkeep was not handed out before
    /// (a store kept by a reload keeps its running one), by store name,
    /// with the token that is cancelled when that store is dropped, for the
    /// caller to run.
    pub(crate) fn upkeeps(&self) -> Vec<(String, tokio_util::sync::CancellationToken, Upkeep)> {
        self.stores
            .iter()
            .filter(|(_, store)| store.take_upkeep())
            .filter_map(|(name, store)| {
                let upkeep = store.inner().upkeep()?;
                Some((name.clone(), store.dropped(), upkeep))
            })
            .collect()
    }

    /// Resolves many references: grouped per store, every store in parallel,
    /// the whole batch bounded by `budget`. One slow store times out on its
    /// own; the answers of the others are kept. `identity` is the Pod's: the
    /// stores with `identity: pod` read as it (and refuse without it), the
    /// others ignore it.
    pub async fn resolve(
        &self,
        requests: &[StoreRequest],
        identity: Option<&WorkloadIdentity>,
        budget: Duration,
    ) -> Vec<Result<Arc<SecretData>, StoreError>> {
        let mut results: Vec<Option<Result<Arc<SecretData>, StoreError>>> = vec![None; requests.len()];
        let mut groups: HashMap<&str, (Vec<usize>, Vec<SecretLocator>)> = HashMap::new();
        for (i, req) in requests.iter().enumerate() {
            if self.stores.contains_key(&req.store) {
                let entry = groups.entry(req.store.as_str()).or_default();
                entry.0.push(i);
                entry.1.push(req.locator.clone());
            } else {
                results[i] = Some(Err(StoreError::InvalidRequest(format!(
                    "unknown store \"{}\"",
                    req.store
                ))));
            }
        }
        // The cache answers by a deadline a little inside the budget, so
        // that a store that hangs gets the same stale-if-error as one that
        // fails; the budget itself stays the bound of the whole batch.
        let deadline = tokio::time::Instant::now() + budget.saturating_sub(answer_margin(budget));
        let futures = groups.into_iter().filter_map(|(name, (indexes, locators))| {
            let store = self.stores.get(name)?.clone();
            Some(async move {
                let answers = match tokio::time::timeout(
                    budget,
                    store.get_many_by(identity, &locators, Some(deadline)),
                )
                .await
                {
                    Ok(answers) => answers,
                    Err(_) => vec![Err(StoreError::Timeout); locators.len()],
                };
                (indexes, answers)
            })
        });
        for (indexes, answers) in futures::future::join_all(futures).await {
            for (i, answer) in indexes.into_iter().zip(answers) {
                results[i] = Some(answer);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Timeout)))
            .collect()
    }

    /// Whether every answer of `requests` (parallel to `data`) is still
    /// the cache's fresh one, as read for `identity`: a verdict made from
    /// them stands. Looks up, never fetches.
    pub(crate) fn still_cached(
        &self,
        requests: &[StoreRequest],
        identity: Option<&WorkloadIdentity>,
        data: &[Arc<SecretData>],
    ) -> bool {
        requests.len() == data.len()
            && requests.iter().zip(data).all(|(r, d)| {
                self.stores
                    .get(&r.store)
                    .is_some_and(|store| store.still_holds(identity, &r.locator, d))
            })
    }

    /// Runs every store's `check` concurrently; returns the failures by name.
    pub async fn check_all(&self, budget: Duration) -> Vec<(String, StoreError)> {
        let checks = self.stores.iter().map(|(name, store)| async move {
            let result = match tokio::time::timeout(budget, store.inner().check()).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout),
            };
            (name.clone(), result)
        });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(|(name, r)| r.err().map(|e| (name, e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every fetch after `delay` with the path as the value.
    struct Slow {
        delay: Duration,
    }

    #[async_trait]
    impl Store for Slow {
        fn provider(&self) -> &'static str {
            "slow"
        }
        async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
            tokio::time::sleep(self.delay).await;
            Ok(SecretData::Value(SecretValue::from(locator.path.as_str())))
        }
    }

    fn stores() -> Stores {
        let metrics = Arc::new(Metrics::new());
        let mut stores = Stores::default();
        for (name, delay) in [("fast", Duration::ZERO), ("hung", Duration::from_secs(3600))] {
            let cached = CachedStore::new(
                name.into(),
                Arc::new(Slow { delay }),
                Duration::from_secs(60),
                Duration::ZERO,
                metrics.clone(),
            );
            stores.insert(name, Arc::new(cached));
        }
        stores
    }

    fn req(store: &str, path: &str) -> StoreRequest {
        StoreRequest {
            store: store.into(),
            locator: SecretLocator::new(path, None),
        }
    }

    #[test]
    fn numbers_lose_their_leading_zeros_and_other_versions_stay() {
        for (given, canonical) in [
            ("01", "1"),
            ("0001", "1"),
            ("10", "10"),
            ("0", "0"),
            ("000", "0"),
            ("007a", "007a"),
            ("latest", "latest"),
            ("099999999999999999999999", "99999999999999999999999"),
        ] {
            assert_eq!(canonical_number(given), canonical, "{given}");
        }
    }

    /// Answers once, then never again.
    struct AnswersOnce(std::sync::atomic::AtomicBool);

    #[async_trait]
    impl Store for AnswersOnce {
        fn provider(&self) -> &'static str {
            "once"
        }
        async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
            if self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                futures::future::pending::<()>().await;
            }
            Ok(SecretData::Value(SecretValue::from(locator.path.as_str())))
        }
    }

    #[tokio::test]
    async fn a_store_that_hangs_serves_a_value_within_max_stale() {
        let metrics = Arc::new(Metrics::new());
        let mut stores = Stores::default();
        for (name, max_stale) in [
            ("stale-ok", Duration::from_secs(3600)),
            ("no-stale", Duration::ZERO),
        ] {
            let cached = CachedStore::new(
                name.into(),
                Arc::new(AnswersOnce(Default::default())),
                Duration::ZERO,
                max_stale,
                metrics.clone(),
            );
            stores.insert(name, Arc::new(cached));
        }
        let requests = [req("stale-ok", "a"), req("no-stale", "b")];
        let first = stores.resolve(&requests, None, Duration::from_secs(5)).await;
        assert!(first.iter().all(Result::is_ok), "{first:?}");
        // Both now hang; the TTL of zero sends every read to the store.
        let second = stores.resolve(&requests, None, Duration::from_millis(200)).await;
        assert_eq!(second[0].as_ref().unwrap().get(None).unwrap().expose(), b"a");
        assert_eq!(second[1].as_ref().unwrap_err(), &StoreError::Timeout);
        let text = metrics.encode();
        assert!(
            text.contains("sesame_cache_stale_served_total{store=\"stale-ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sesame_store_errors_total{store=\"stale-ok\",class=\"timeout\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_hung_store_times_out_alone_and_the_others_answer() {
        let stores = stores();
        let requests = [
            req("fast", "a"),
            req("hung", "b"),
            req("fast", "c"),
            req("nope", "d"),
        ];
        // The hung store would take an hour: returning at all shows the budget bounds it.
        let answers = stores.resolve(&requests, None, Duration::from_millis(100)).await;
        assert_eq!(answers[0].as_ref().unwrap().get(None).unwrap().expose(), b"a");
        assert_eq!(answers[1].as_ref().unwrap_err(), &StoreError::Timeout);
        assert_eq!(answers[2].as_ref().unwrap().get(None).unwrap().expose(), b"c");
        assert!(matches!(answers[3], Err(StoreError::InvalidRequest(_))));
    }
}
