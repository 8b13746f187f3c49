//! The cache in front of every store: a hit is a read-locked map lookup (no
//! I/O, no await); concurrent misses for one secret share one fetch; a failed
//! fetch may serve a value younger than `max_stale` (stale-if-error).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{RequestLimit, SecretData, SecretLocator, Store, StoreError, DEFAULT_MAX_CONCURRENCY};
use crate::telemetry::Metrics;

type Answer = Result<Arc<SecretData>, StoreError>;

struct Entry {
    data: Arc<SecretData>,
    fetched: Instant,
}

/// A store behind its cache. Values live `ttl`; after a store failure they
/// are still served until `max_stale` (zero turns stale serving off).
pub struct CachedStore {
    name: String,
    inner: Arc<dyn Store>,
    ttl: Duration,
    max_stale: Duration,
    entries: RwLock<HashMap<SecretLocator, Entry>>,
    inflight: Mutex<HashMap<SecretLocator, watch::Receiver<Option<Answer>>>>,
    /// The store's `maxConcurrency`, held by every request the provider sends.
    limit: RequestLimit,
    metrics: Arc<Metrics>,
    /// Cancelled when the store is dropped: its upkeep stops with it.
    dropped: DropGuard,
    /// Whether its upkeep was handed out to run.
    upkeep_taken: AtomicBool,
}

enum Slot {
    Ready(Answer),
    Wait(watch::Receiver<Option<Answer>>),
    Lead(watch::Sender<Option<Answer>>),
}

impl CachedStore {
    pub fn new(
        name: String,
        inner: Arc<dyn Store>,
        ttl: Duration,
        max_stale: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_concurrency(name, inner, ttl, max_stale, DEFAULT_MAX_CONCURRENCY, metrics)
    }

    pub(crate) fn with_concurrency(
        name: String,
        inner: Arc<dyn Store>,
        ttl: Duration,
        max_stale: Duration,
        max_concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            name,
            inner,
            ttl,
            max_stale,
            entries: RwLock::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            limit: RequestLimit::new(max_concurrency),
            metrics,
            dropped: CancellationToken::new().drop_guard(),
            upkeep_taken: AtomicBool::new(false),
        }
    }

    /// True the first time only: the store's upkeep runs once, however
    /// many reloads keep the store.
    pub(crate) fn take_upkeep(&self) -> bool {
        !self.upkeep_taken.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Cancelled once this store is dropped (replaced by a reload, or at
    /// exit), for the task that runs its upkeep.
    pub fn dropped(&self) -> CancellationToken {
        self.dropped.token().clone()
    }

    pub fn provider(&self) -> &'static str {
        self.inner.provider()
    }

    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    fn fresh(&self, locator: &SecretLocator) -> Option<Arc<SecretData>> {
        let entries = self.entries.read().ok()?;
        let entry = entries.get(locator)?;
        (entry.fetched.elapsed() < self.ttl).then(|| entry.data.clone())
    }

    /// The store's own spelling of a version ([`Store::canonical_version`]).
    pub fn canonical_version<'a>(&self, version: &'a str) -> std::borrow::Cow<'a, str> {
        self.inner.canonical_version(version)
    }

    /// `locator` with its store's canonical version: the one cache key.
    fn canonical(&self, locator: &SecretLocator) -> Option<SecretLocator> {
        let version = locator.version.as_deref()?;
        match self.inner.canonical_version(version) {
            std::borrow::Cow::Borrowed(same) if same == version => None,
            other => Some(SecretLocator::new(locator.path.clone(), Some(other.into_owned()))),
        }
    }

    /// Resolves each locator through the cache; answers are parallel to
    /// `locators`. Two spellings of one version are one entry and one fetch.
    pub async fn get_many(&self, locators: &[SecretLocator]) -> Vec<Answer> {
        let canonical: Vec<SecretLocator>;
        let locators = if locators.iter().any(|l| self.canonical(l).is_some()) {
            canonical = locators
                .iter()
                .map(|l| self.canonical(l).unwrap_or_else(|| l.clone()))
                .collect();
            &canonical[..]
        } else {
            locators
        };
        let mut answers: Vec<Option<Answer>> = vec![None; locators.len()];
        let mut waits = Vec::new();
        let mut leads: Vec<(usize, watch::Sender<Option<Answer>>)> = Vec::new();
        for (i, locator) in locators.iter().enumerate() {
            match self.slot(locator) {
                Slot::Ready(answer) => answers[i] = Some(answer),
                Slot::Wait(rx) => waits.push((i, rx)),
                Slot::Lead(tx) => leads.push((i, tx)),
            }
        }
        if !leads.is_empty() {
            let wanted: Vec<SecretLocator> = leads.iter().map(|(i, _)| locators[*i].clone()).collect();
            let fetched = self.fetch_uncached(&wanted).await;
            for ((i, tx), answer) in leads.into_iter().zip(fetched) {
                let _ = tx.send(Some(answer.clone()));
                answers[i] = Some(answer);
            }
        }
        for (i, mut rx) in waits {
            let answer = match rx.wait_for(Option::is_some).await {
                Ok(value) => value.clone(),
                // The leading request was cancelled: fetch on our own.
                Err(_) => None,
            };
            answers[i] = Some(match answer {
                Some(a) => a,
                None => self
                    .fetch_uncached(std::slice::from_ref(&locators[i]))
                    .await
                    .pop()
                    .unwrap_or(Err(StoreError::Timeout)),
            });
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(StoreError::Timeout)))
            .collect()
    }

    /// Decides, under the in-flight lock, whether this request reads the
    /// cache, waits for a fetch under way, or leads a new fetch.
    fn slot(&self, locator: &SecretLocator) -> Slot {
        if let Some(data) = self.fresh(locator) {
            self.metrics.cache_hit(&self.name);
            return Slot::Ready(Ok(data));
        }
        let Ok(mut inflight) = self.inflight.lock() else {
            return Slot::Ready(Err(StoreError::InvalidResponse("cache lock poisoned".into())));
        };
        if let Some(rx) = inflight.get(locator) {
            if rx.has_changed().is_ok() {
                self.metrics.cache_hit(&self.name);
                return Slot::Wait(rx.clone());
            }
        }
        // Another request may have filled the cache while we took the lock.
        if let Some(data) = self.fresh(locator) {
            self.metrics.cache_hit(&self.name);
            return Slot::Ready(Ok(data));
        }
        self.metrics.cache_miss(&self.name);
        let (tx, rx) = watch::channel(None);
        inflight.insert(locator.clone(), rx);
        Slot::Lead(tx)
    }

    async fn fetch_uncached(&self, locators: &[SecretLocator]) -> Vec<Answer> {
        let started = Instant::now();
        let results = self.inner.fetch(locators, &self.limit).await;
        self.metrics
            .store_request(&self.name, self.inner.provider(), started.elapsed());
        let mut answers = Vec::with_capacity(locators.len());
        let mut entries = self.entries.write().ok();
        let mut inflight = self.inflight.lock().ok();
        for (locator, result) in locators.iter().zip(results) {
            let answer = match result {
                Ok(data) => {
                    let data = Arc::new(data);
                    if let Some(entries) = entries.as_mut() {
                        entries.insert(
                            locator.clone(),
                            Entry {
                                data: data.clone(),
                                fetched: Instant::now(),
                            },
                        );
                    }
                    Ok(data)
                }
                Err(err) => {
                    self.metrics.store_error(&self.name, err.class());
                    if err.is_not_found() {
                        if let Some(entries) = entries.as_mut() {
                            entries.remove(locator);
                        }
                        Err(err)
                    } else {
                        match entries.as_ref().and_then(|e| e.get(locator)) {
                            Some(e) if err.is_transient() && e.fetched.elapsed() < self.max_stale => {
                                self.metrics.stale_served(&self.name);
                                tracing::warn!(store = %self.name, error_class = err.class(), "store failed; serving a cached value within maxStale");
                                Ok(e.data.clone())
                            }
                            _ => Err(err),
                        }
                    }
                }
            };
            if let Some(inflight) = inflight.as_mut() {
                inflight.remove(locator);
            }
            answers.push(answer);
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::SecretValue;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A store that counts fetches, can be slowed down and can be switched to failing.
    struct Counting {
        calls: AtomicUsize,
        fail: AtomicBool,
        delay: Duration,
    }

    #[async_trait]
    impl Store for Counting {
        fn provider(&self) -> &'static str {
            "counting"
        }
        async fn read(&self, l: &SecretLocator) -> Result<SecretData, StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                Err(StoreError::Unreachable("connection refused".into()))
            } else if l.path == "missing" {
                Err(StoreError::NotFound)
            } else {
                Ok(SecretData::Value(SecretValue::from(l.path.as_str())))
            }
        }

        /// Counts batches: the cache's single flight shows as one call.
        async fn fetch(
            &self,
            locators: &[SecretLocator],
            limit: &RequestLimit,
        ) -> Vec<Result<SecretData, StoreError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            limit.each(locators, |l| self.read(l)).await
        }
    }

    fn cached(delay: Duration, ttl: Duration, max_stale: Duration) -> (Arc<Counting>, Arc<CachedStore>) {
        let inner = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            delay,
        });
        let store = CachedStore::new(
            "s".into(),
            inner.clone(),
            ttl,
            max_stale,
            Arc::new(Metrics::new()),
        );
        (inner, Arc::new(store))
    }

    fn loc(p: &str) -> SecretLocator {
        SecretLocator::new(p, None)
    }

    #[tokio::test]
    async fn hit_does_not_fetch_again() {
        let (inner, store) = cached(Duration::ZERO, Duration::from_secs(60), Duration::ZERO);
        let a = store.get_many(&[loc("a"), loc("b")]).await;
        assert!(a.iter().all(Result::is_ok));
        let b = store.get_many(&[loc("a"), loc("b")]).await;
        assert_eq!(b[1].as_ref().unwrap().get(None).unwrap().expose(), b"b");
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            1,
            "one batched fetch, then hits"
        );
    }

    /// A store whose versions are numbers.
    struct Numbered(Counting);

    #[async_trait]
    impl Store for Numbered {
        fn provider(&self) -> &'static str {
            "numbered"
        }
        async fn read(&self, l: &SecretLocator) -> Result<SecretData, StoreError> {
            self.0.read(l).await
        }
        async fn fetch(
            &self,
            locators: &[SecretLocator],
            limit: &RequestLimit,
        ) -> Vec<Result<SecretData, StoreError>> {
            self.0.calls.fetch_add(locators.len(), Ordering::SeqCst);
            limit.each(locators, |l| self.read(l)).await
        }
        fn canonical_version<'a>(&self, version: &'a str) -> std::borrow::Cow<'a, str> {
            crate::stores::canonical_number(version)
        }
    }

    #[tokio::test]
    async fn two_spellings_of_a_numbered_version_are_one_fetch_and_one_entry() {
        let inner = Arc::new(Numbered(Counting {
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            delay: Duration::ZERO,
        }));
        let store = CachedStore::new(
            "s".into(),
            inner.clone(),
            Duration::from_secs(60),
            Duration::ZERO,
            Arc::new(Metrics::new()),
        );
        let v = |v: &str| SecretLocator::new("a", Some(v.into()));
        let answers = store.get_many(&[v("01"), v("1"), v("001")]).await;
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(inner.0.calls.load(Ordering::SeqCst), 1, "one locator fetched");
        store.get_many(&[v("0001")]).await;
        assert_eq!(inner.0.calls.load(Ordering::SeqCst), 1, "a cache hit");
        assert_eq!(store.entries.read().unwrap().len(), 1);
        // Stores with opaque versions keep them apart.
        let (opaque, plain) = cached(Duration::ZERO, Duration::from_secs(60), Duration::ZERO);
        plain.get_many(&[v("01"), v("1")]).await;
        assert_eq!(plain.entries.read().unwrap().len(), 2);
        drop(opaque);
    }

    #[tokio::test]
    async fn concurrent_misses_are_coalesced() {
        let (inner, store) = cached(Duration::from_millis(50), Duration::from_secs(60), Duration::ZERO);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.get_many(&[loc("a")]).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap()[0].is_ok());
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expired_entries_are_fetched_again() {
        let (inner, store) = cached(Duration::ZERO, Duration::from_millis(20), Duration::ZERO);
        store.get_many(&[loc("a")]).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        store.get_many(&[loc("a")]).await;
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn stale_if_error_within_max_stale_only() {
        let (inner, store) = cached(
            Duration::ZERO,
            Duration::from_millis(10),
            Duration::from_millis(200),
        );
        store.get_many(&[loc("a")]).await;
        inner.fail.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stale = store.get_many(&[loc("a")]).await;
        assert!(stale[0].is_ok(), "served stale within maxStale");
        tokio::time::sleep(Duration::from_millis(220)).await;
        let failed = store.get_many(&[loc("a")]).await;
        assert_eq!(failed[0].as_ref().unwrap_err().class(), "unreachable");
    }

    #[tokio::test]
    async fn not_found_is_not_cached_as_success() {
        let (_inner, store) = cached(Duration::ZERO, Duration::from_secs(60), Duration::from_secs(60));
        let r = store.get_many(&[loc("missing")]).await;
        assert!(r[0].as_ref().unwrap_err().is_not_found());
    }
}
