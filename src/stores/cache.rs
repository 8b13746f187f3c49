//! The cache in front of every store: a hit is a read-locked map lookup (no
//! I/O, no await); concurrent misses for one secret share one fetch; a failed
//! fetch may serve a value younger than `max_stale` (stale-if-error), and
//! so may a fetch that does not answer by the caller's deadline: a store
//! that hangs is a failing store, not a reason to wait out the budget.
//! With `identity: pod` every entry belongs to one ServiceAccount: the key
//! is the identity and the secret, so no Pod is ever served what was read
//! as another's.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    IdentityMode, RequestLimit, SecretData, SecretLocator, Store, StoreError, WorkloadIdentity,
    DEFAULT_MAX_CONCURRENCY,
};
use crate::telemetry::Metrics;

type Answer = Result<Arc<SecretData>, StoreError>;

/// Whose read, of what: the identity is `None` for stores that read with
/// Sesame's own identity.
type Key = (Option<WorkloadIdentity>, SecretLocator);

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
    /// Whose identity the store reads with.
    mode: IdentityMode,
    entries: RwLock<HashMap<Key, Entry>>,
    inflight: Mutex<HashMap<Key, watch::Receiver<Option<Answer>>>>,
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
            mode: IdentityMode::Sesame,
            entries: RwLock::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            limit: RequestLimit::new(max_concurrency),
            metrics,
            dropped: CancellationToken::new().drop_guard(),
            upkeep_taken: AtomicBool::new(false),
        }
    }

    /// The store reads with `mode`'s identity (`identity: pod`).
    pub fn reading_as(mut self, mode: IdentityMode) -> Self {
        self.mode = mode;
        self
    }

    /// Whose identity the store reads with.
    pub fn mode(&self) -> IdentityMode {
        self.mode
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

    fn fresh(&self, key: &Key) -> Option<Arc<SecretData>> {
        let entries = self.entries.read().ok()?;
        let entry = entries.get(key)?;
        (entry.fetched.elapsed() < self.ttl).then(|| entry.data.clone())
    }

    /// Whether the cache still holds `data` as the fresh answer for
    /// `locator`, read as `identity` the way [`Self::get_many_as`] reads:
    /// a look-up that counts as a cache hit, and never a fetch.
    pub(crate) fn still_holds(
        &self,
        identity: Option<&WorkloadIdentity>,
        locator: &SecretLocator,
        data: &Arc<SecretData>,
    ) -> bool {
        let identity = match self.mode {
            IdentityMode::Sesame => None,
            IdentityMode::Pod => match identity {
                Some(identity) => Some(identity.clone()),
                None => return false,
            },
        };
        let locator = self.canonical(locator).unwrap_or_else(|| locator.clone());
        let held = self
            .fresh(&(identity, locator))
            .is_some_and(|fresh| Arc::ptr_eq(&fresh, data));
        if held {
            self.metrics.cache_hit(&self.name);
        }
        held
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

    /// Resolves each locator through the cache with Sesame's own identity;
    /// answers are parallel to `locators`.
    pub async fn get_many(&self, locators: &[SecretLocator]) -> Vec<Answer> {
        self.get_many_as(None, locators).await
    }

    /// Resolves each locator through the cache, as `identity` when the
    /// store reads as the Pod (`identity: pod`; it refuses without one) and
    /// as Sesame otherwise; answers are parallel to `locators`.
    pub async fn get_many_as(
        &self,
        identity: Option<&WorkloadIdentity>,
        locators: &[SecretLocator],
    ) -> Vec<Answer> {
        self.get_many_by(identity, locators, None).await
    }

    /// [`Self::get_many_as`], answering by `deadline`: a fetch (or a wait
    /// for another request's fetch) still under way then counts as a
    /// [`StoreError::Timeout`], which serves a cached value within
    /// `max_stale` like any other transient failure.
    pub async fn get_many_by(
        &self,
        identity: Option<&WorkloadIdentity>,
        locators: &[SecretLocator],
        deadline: Option<tokio::time::Instant>,
    ) -> Vec<Answer> {
        let identity = match (self.mode, identity) {
            (IdentityMode::Sesame, _) => None,
            (IdentityMode::Pod, Some(identity)) => Some(identity),
            (IdentityMode::Pod, None) => {
                let refused = StoreError::Unauthorized(
                    "the store reads as the Pod's ServiceAccount (identity: pod), and no ServiceAccount was given"
                        .into(),
                );
                return vec![Err(refused); locators.len()];
            }
        };
        // Two spellings of one version are one entry and one fetch.
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
        let keys: Vec<Key> = locators.iter().map(|l| (identity.cloned(), l.clone())).collect();
        let mut answers: Vec<Option<Answer>> = vec![None; keys.len()];
        let mut waits = Vec::new();
        let mut leads: Vec<(usize, watch::Sender<Option<Answer>>)> = Vec::new();
        for (i, locator) in keys.iter().enumerate() {
            match self.slot(locator) {
                Slot::Ready(answer) => answers[i] = Some(answer),
                Slot::Wait(rx) => waits.push((i, rx)),
                Slot::Lead(tx) => leads.push((i, tx)),
            }
        }
        if !leads.is_empty() {
            let wanted: Vec<SecretLocator> = leads.iter().map(|(i, _)| locators[*i].clone()).collect();
            let fetched = self.fetch_uncached(identity, &wanted, deadline).await;
            for ((i, tx), answer) in leads.into_iter().zip(fetched) {
                let _ = tx.send(Some(answer.clone()));
                answers[i] = Some(answer);
            }
        }
        for (i, mut rx) in waits {
            let wait = async { rx.wait_for(Option::is_some).await.map(|value| value.clone()) };
            let waited = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, wait).await.ok(),
                None => Some(wait.await),
            };
            let answer = match waited {
                Some(Ok(value)) => value,
                // The leading request was cancelled: fetch on our own.
                Some(Err(_)) => None,
                // Another request's fetch is still under way at our deadline.
                None => Some(self.stale_or(&keys[i], StoreError::Timeout)),
            };
            answers[i] = Some(match answer {
                Some(a) => a,
                None => self
                    .fetch_uncached(identity, std::slice::from_ref(&locators[i]), deadline)
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

    /// A cached value within `max_stale` for `key` when `err` is
    /// transient, else `err`.
    fn stale_or(&self, key: &Key, err: StoreError) -> Answer {
        let entries = self.entries.read().ok();
        self.stale_entry(entries.as_ref().and_then(|e| e.get(key)), err)
    }

    fn stale_entry(&self, entry: Option<&Entry>, err: StoreError) -> Answer {
        match entry {
            Some(e) if err.is_transient() && e.fetched.elapsed() < self.max_stale => {
                self.metrics.stale_served(&self.name);
                tracing::warn!(store = %self.name, error_class = err.class(), "store failed; serving a cached value within maxStale");
                Ok(e.data.clone())
            }
            _ => Err(err),
        }
    }

    /// Decides, under the in-flight lock, whether this request reads the
    /// cache, waits for a fetch under way, or leads a new fetch.
    fn slot(&self, locator: &Key) -> Slot {
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

    async fn fetch_uncached(
        &self,
        identity: Option<&WorkloadIdentity>,
        locators: &[SecretLocator],
        deadline: Option<tokio::time::Instant>,
    ) -> Vec<Answer> {
        let started = Instant::now();
        let fetch = async {
            match identity {
                None => self.inner.fetch(locators, &self.limit).await,
                Some(identity) => self.inner.fetch_as(identity, locators, &self.limit).await,
            }
        };
        let results = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, fetch)
                .await
                .unwrap_or_else(|_| vec![Err(StoreError::Timeout); locators.len()]),
            None => fetch.await,
        };
        let results = match identity {
            None => results,
            Some(identity) => {
                let mut results = results;
                // Refused credentials are the Pod's, not Sesame's: the
                // store's own access control denied the workload.
                for result in &mut results {
                    if let Err(StoreError::Unauthorized(detail)) = result {
                        *result = Err(StoreError::Denied(format!("{identity}: {detail}")));
                    }
                }
                results
            }
        };
        self.metrics
            .store_request(&self.name, self.inner.provider(), started.elapsed());
        let mut answers = Vec::with_capacity(locators.len());
        let mut entries = self.entries.write().ok();
        let mut inflight = self.inflight.lock().ok();
        for (locator, result) in locators.iter().zip(results) {
            let locator = &(identity.cloned(), locator.clone());
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
                        let entry = entries.as_ref().and_then(|e| e.get(locator));
                        self.stale_entry(entry, err)
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

    /// Answers as whoever asks: the value names the ServiceAccount, and the
    /// account `denied` is refused.
    struct AsWorkload(AtomicUsize);

    #[async_trait]
    impl Store for AsWorkload {
        fn provider(&self) -> &'static str {
            "as-workload"
        }
        async fn read(&self, _: &SecretLocator) -> Result<SecretData, StoreError> {
            Ok(SecretData::Value(SecretValue::from("sesame's")))
        }
        async fn fetch_as(
            &self,
            identity: &WorkloadIdentity,
            locators: &[SecretLocator],
            _: &RequestLimit,
        ) -> Vec<Result<SecretData, StoreError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            locators
                .iter()
                .map(|_| match identity.service_account.as_str() {
                    "denied" => Err(StoreError::Unauthorized("HTTP 403 (permission denied)".into())),
                    sa => Ok(SecretData::Value(SecretValue::from(sa))),
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn with_identity_pod_no_account_is_served_another_accounts_value() {
        let inner = Arc::new(AsWorkload(AtomicUsize::new(0)));
        let store = CachedStore::new(
            "s".into(),
            inner.clone(),
            Duration::from_secs(60),
            Duration::from_secs(60),
            Arc::new(Metrics::new()),
        )
        .reading_as(IdentityMode::Pod);
        let a = WorkloadIdentity::new("ns", "a").unwrap();
        let b = WorkloadIdentity::new("ns", "b").unwrap();
        let value = |r: &Answer| r.as_ref().unwrap().get(None).unwrap().expose().to_vec();
        assert_eq!(value(&store.get_many_as(Some(&a), &[loc("x")]).await[0]), b"a");
        // Same secret, another account: its own read, never a's cached value.
        assert_eq!(value(&store.get_many_as(Some(&b), &[loc("x")]).await[0]), b"b");
        assert_eq!(value(&store.get_many_as(Some(&a), &[loc("x")]).await[0]), b"a");
        assert_eq!(inner.0.load(Ordering::SeqCst), 2, "a's second read was a hit");
        // Without an identity the store refuses; it never reads as Sesame.
        let none = store.get_many(&[loc("x")]).await;
        assert_eq!(none[0].as_ref().unwrap_err().class(), "unauthorised");
        // The store's refusal is the Pod's denial, naming the account.
        let denied = WorkloadIdentity::new("ns", "denied").unwrap();
        let err = store
            .get_many_as(Some(&denied), &[loc("x")])
            .await
            .remove(0)
            .unwrap_err();
        assert_eq!(err.class(), "denied");
        assert!(err.to_string().contains("ns/denied"), "{err}");

        // A store with Sesame's identity ignores the Pod's: one shared entry.
        let (inner, shared) = cached(Duration::ZERO, Duration::from_secs(60), Duration::ZERO);
        shared.get_many_as(Some(&a), &[loc("x")]).await;
        shared.get_many_as(Some(&b), &[loc("x")]).await;
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn not_found_is_not_cached_as_success() {
        let (_inner, store) = cached(Duration::ZERO, Duration::from_secs(60), Duration::from_secs(60));
        let r = store.get_many(&[loc("missing")]).await;
        assert!(r[0].as_ref().unwrap_err().is_not_found());
    }
}
