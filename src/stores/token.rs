//! The one token manager of the stores that log in (Vault, GCP, Azure,
//! Infisical): a token is obtained once, cached, and renewed or replaced by
//! a background loop two thirds into its life, so a Pod's request never
//! waits for the identity provider. The request path obtains a token only
//! on a cold start, after the token expired while every background attempt
//! failed, or once after the store refused it.
//!
//! The loop is the store's upkeep: [`TokenCache::upkeep`] hands it to the
//! caller, which runs it as a task; nothing is spawned here.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
// Tokio's clock, so that tests with paused time exercise expiry and refresh.
use tokio::time::Instant;

use super::common::Retry;
use super::{SecretValue, StoreError};

/// A token as the identity provider issued (or renewed) it.
pub(crate) struct AccessToken {
    pub value: SecretValue,
    /// `None` for tokens that do not expire (Infisical service tokens, a
    /// Vault root token).
    pub lifetime: Option<Duration>,
    /// Whether the provider can extend it ([`TokenProvider::renew`]).
    pub renewable: bool,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &self.value)
            .field("lifetime", &self.lifetime)
            .field("renewable", &self.renewable)
            .finish()
    }
}

/// The token in use, as a provider's [`TokenProvider::renew`] sees it.
pub(crate) struct Issued<'a> {
    pub value: &'a SecretValue,
    /// The lifetime it had right after the login that produced it.
    pub(crate) login_lifetime: Option<Duration>,
}

/// One way of obtaining a token (metadata server, key exchange, login).
#[async_trait]
pub(crate) trait TokenProvider: Send + Sync + 'static {
    /// Asks the identity provider for a new token. Errors name the failure
    /// class and a provider error code, never the credential.
    async fn obtain(&self) -> Result<AccessToken, StoreError>;

    /// Extends a renewable token that is still valid. `Ok(None)`: it
    /// cannot be extended (enough), so a new one is obtained instead.
    async fn renew(&self, _current: &Issued<'_>) -> Result<Option<AccessToken>, StoreError> {
        Ok(None)
    }

    /// How often a token that never expires is obtained again anyway (a
    /// token read from a file may have been replaced); `None`: never.
    fn recheck(&self) -> Option<Duration> {
        None
    }
}

/// The longest lifetime the token manager counts with. Lifetimes are what
/// a store answers (Vault's `lease_duration`, an OAuth `expires_in`), and a
/// store is trusted only so far: `2^64-1` seconds would overflow every
/// instant computed from it and panic the upkeep task. Ten years is no
/// limit for a real token.
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A lifetime as the store gave it, at most [`MAX_LIFETIME`].
fn bounded(lifetime: Option<Duration>) -> Option<Duration> {
    lifetime.map(|life| life.min(MAX_LIFETIME))
}

struct Current {
    value: SecretValue,
    /// When the token was obtained or last renewed; its lifetime counts from here.
    obtained: Instant,
    /// When the login that produced it happened.
    logged_in: Instant,
    lifetime: Option<Duration>,
    login_lifetime: Option<Duration>,
    renewable: bool,
    generation: u64,
}

impl Current {
    /// Usable on the request path: not within the last tenth (at most a
    /// minute) of its life, so it does not expire in flight.
    fn usable(&self, now: Instant) -> bool {
        match self.lifetime {
            None => true,
            Some(life) => now + (life / 10).min(Duration::from_secs(60)) < self.obtained + life,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.lifetime.is_some_and(|life| self.obtained + life <= now)
    }

    /// When the background loop renews or replaces it: two thirds into its
    /// life, leaving a third for failed attempts.
    fn refresh_at(&self) -> Option<Instant> {
        self.lifetime.map(|life| self.obtained + life / 3 * 2)
    }
}

/// A token handed to one request; `generation` lets a refusal invalidate
/// exactly the token that was refused and not a newer one.
pub struct Token {
    pub value: SecretValue,
    generation: u64,
    logged_in: Instant,
}

impl Token {
    #[cfg(any(feature = "gcp", feature = "azure", feature = "infisical", test))]
    pub fn as_str(&self) -> Result<&str, StoreError> {
        self.value
            .expose_str()
            .ok_or_else(|| StoreError::InvalidResponse("the access token is not text".into()))
    }

    /// Time since the login that produced it (renewals do not count).
    pub fn age(&self) -> Duration {
        self.logged_in.elapsed()
    }
}

/// How often tokens were obtained and renewed, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TokenCounts {
    /// Tokens obtained: at start, in the background and on the request path.
    pub(crate) obtained: u64,
    /// Successful renewals.
    pub renewed: u64,
    /// Tokens a request had to obtain itself (none usable, or one refused).
    pub(crate) request_path: u64,
}

struct Inner {
    provider: Box<dyn TokenProvider>,
    retry: Retry,
    current: RwLock<Option<Current>>,
    /// One obtain or renewal at a time: concurrent cold requests share it.
    obtaining: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    obtained: AtomicU64,
    renewed: AtomicU64,
    request_path: AtomicU64,
    name: &'static str,
}

/// The cached token of one store.
pub(crate) struct TokenCache {
    inner: Arc<Inner>,
}

impl TokenCache {
    /// `name` says which store kind the token is for, in logs; `retry`
    /// wraps each attempt to obtain one.
    pub fn new(name: &'static str, provider: impl TokenProvider, retry: Retry) -> Self {
        Self {
            inner: Arc::new(Inner {
                provider: Box::new(provider),
                retry,
                current: RwLock::new(None),
                obtaining: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                obtained: AtomicU64::new(0),
                renewed: AtomicU64::new(0),
                request_path: AtomicU64::new(0),
                name,
            }),
        }
    }

    /// Which store kind the token is for.
    #[cfg(any(feature = "gcp", feature = "azure", feature = "infisical"))]
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Obtains the first token at start, not on a request's behalf.
    pub(crate) async fn prime(&self) -> Result<(), StoreError> {
        let _guard = self.inner.obtaining.lock().await;
        self.inner.obtain_and_store().await
    }

    /// The current token, obtaining one only when none is usable.
    pub async fn token(&self) -> Result<Token, StoreError> {
        if let Some(token) = self.inner.usable() {
            return Ok(token);
        }
        let _guard = self.inner.obtaining.lock().await;
        if let Some(token) = self.inner.usable() {
            return Ok(token);
        }
        self.inner.request_path.fetch_add(1, Ordering::Relaxed);
        self.inner.obtain_and_store().await?;
        self.inner
            .usable()
            .ok_or_else(|| StoreError::Unauthorized("the identity provider issued an expired token".into()))
    }

    /// Forgets a token the store refused (unless a newer one replaced it).
    pub(crate) fn invalidate(&self, token: &Token) {
        if let Ok(mut current) = self.inner.current.write() {
            if current.as_ref().is_some_and(|c| c.generation == token.generation) {
                *current = None;
            }
        }
    }

    /// Obtains and renewals so far.
    pub fn counts(&self) -> TokenCounts {
        TokenCounts {
            obtained: self.inner.obtained.load(Ordering::Relaxed),
            renewed: self.inner.renewed.load(Ordering::Relaxed),
            request_path: self.inner.request_path.load(Ordering::Relaxed),
        }
    }

    /// The background upkeep: renews or replaces the token before it
    /// expires, and on failure tries again with backoff while the old token
    /// is still served. It ends once the cache is dropped; the caller runs
    /// it as a task.
    pub fn upkeep(&self) -> impl Future<Output = ()> + Send + 'static {
        keep_fresh(Arc::downgrade(&self.inner))
    }
}

impl Inner {
    fn usable(&self) -> Option<Token> {
        let current = self.current.read().ok()?;
        let current = current.as_ref()?;
        current.usable(Instant::now()).then(|| Token {
            value: current.value.clone(),
            generation: current.generation,
            logged_in: current.logged_in,
        })
    }

    async fn obtain_and_store(&self) -> Result<(), StoreError> {
        let token = self.retry.run(|| self.provider.obtain()).await?;
        if token.value.is_empty() {
            return Err(StoreError::Unauthorized(
                "the identity provider returned an empty token".into(),
            ));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let lifetime = bounded(token.lifetime);
        if let Ok(mut current) = self.current.write() {
            *current = Some(Current {
                value: token.value,
                obtained: now,
                logged_in: now,
                lifetime,
                login_lifetime: lifetime,
                renewable: token.renewable,
                generation,
            });
        }
        self.obtained.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(store = self.name, lifetime = ?token.lifetime, "obtained an access token");
        Ok(())
    }

    /// Renews the token when it can be renewed, else obtains a new one.
    async fn refresh(&self) -> Result<(), StoreError> {
        let renewable = {
            let current = self.current.read().ok();
            current.and_then(|c| {
                c.as_ref()
                    .filter(|c| c.renewable && !c.expired(Instant::now()))
                    .map(|c| (c.value.clone(), c.login_lifetime, c.generation))
            })
        };
        if let Some((value, login_lifetime, generation)) = renewable {
            let issued = Issued {
                value: &value,
                login_lifetime,
            };
            if let Some(renewed) = self.provider.renew(&issued).await? {
                if let Ok(mut current) = self.current.write() {
                    if let Some(c) = current.as_mut().filter(|c| c.generation == generation) {
                        c.obtained = Instant::now();
                        c.lifetime = bounded(renewed.lifetime);
                        c.renewable = renewed.renewable;
                    }
                }
                self.renewed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(store = self.name, lifetime = ?renewed.lifetime, "renewed the access token");
                return Ok(());
            }
        }
        self.obtain_and_store().await
    }

    /// When the loop should next act: `None` for a token that never expires
    /// and is never rechecked; now when there is no token.
    fn next_refresh(&self) -> Option<Instant> {
        let current = self.current.read().ok()?;
        match current.as_ref() {
            None => Some(Instant::now()),
            Some(c) => c
                .refresh_at()
                .or_else(|| self.provider.recheck().map(|d| c.obtained + d)),
        }
    }

    /// How long the current token still lives, if it expires.
    fn time_left(&self) -> Option<Duration> {
        let current = self.current.read().ok()?;
        let c = current.as_ref()?;
        c.lifetime
            .map(|life| (c.obtained + life).saturating_duration_since(Instant::now()))
    }
}

/// The upkeep loop. It holds the cache weakly, so it ends when the store
/// that owns the cache is dropped.
async fn keep_fresh(weak: Weak<Inner>) {
    let mut failures: u32 = 0;
    loop {
        let due = {
            let Some(inner) = weak.upgrade() else { return };
            if failures > 0 {
                // Back off, but try again before the token runs out.
                let backoff = Duration::from_millis(500)
                    .saturating_mul(1 << failures.min(6))
                    .min(Duration::from_secs(30));
                let wait = match inner.time_left() {
                    Some(left) if left > Duration::ZERO => backoff.min(left / 2),
                    _ => backoff,
                };
                Some(Instant::now() + wait)
            } else {
                inner.next_refresh()
            }
        };
        let Some(due) = due else {
            // Nothing will ever be due: wait for the store to go away.
            while weak.strong_count() > 0 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            return;
        };
        // Never spin, even on a token that lives a second.
        tokio::time::sleep_until(due.max(Instant::now() + Duration::from_millis(200))).await;
        let Some(inner) = weak.upgrade() else { return };
        let _guard = inner.obtaining.lock().await;
        // A request may have obtained a new token (after a refusal) meanwhile.
        if failures == 0 && inner.next_refresh().is_some_and(|at| at > Instant::now()) {
            continue;
        }
        match inner.refresh().await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(store = inner.name, error = %e, class = e.class(), "background token refresh failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    struct Counting {
        calls: Arc<AtomicU32>,
        renewals: Arc<AtomicU32>,
        lifetime: Option<Duration>,
        renewable: bool,
    }

    #[async_trait]
    impl TokenProvider for Counting {
        async fn obtain(&self) -> Result<AccessToken, StoreError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(AccessToken {
                value: SecretValue::from(format!("token-{n}")),
                lifetime: self.lifetime,
                renewable: self.renewable,
            })
        }

        async fn renew(&self, current: &Issued<'_>) -> Result<Option<AccessToken>, StoreError> {
            self.renewals.fetch_add(1, Ordering::SeqCst);
            Ok(Some(AccessToken {
                value: current.value.clone(),
                lifetime: self.lifetime,
                renewable: true,
            }))
        }
    }

    fn cache(lifetime: Option<Duration>, renewable: bool) -> (TokenCache, Arc<AtomicU32>, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let renewals = Arc::new(AtomicU32::new(0));
        let provider = Counting {
            calls: calls.clone(),
            renewals: renewals.clone(),
            lifetime,
            renewable,
        };
        (
            TokenCache::new("test", provider, Retry::default()),
            calls,
            renewals,
        )
    }

    #[tokio::test]
    async fn concurrent_cold_requests_share_one_obtain() {
        let (cache, calls, _) = cache(Some(Duration::from_secs(3600)), false);
        let (a, b) = tokio::join!(cache.token(), cache.token());
        assert_eq!(a.unwrap().as_str().unwrap(), "token-1");
        assert_eq!(b.unwrap().as_str().unwrap(), "token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.counts().request_path, 1);
    }

    #[tokio::test]
    async fn invalidate_only_drops_the_rejected_generation() {
        let (cache, calls, _) = cache(None, false);
        let first = cache.token().await.unwrap();
        cache.invalidate(&first);
        let second = cache.token().await.unwrap();
        assert_eq!(second.as_str().unwrap(), "token-2");
        // A late refusal of the old token must not throw away the new one.
        cache.invalidate(&first);
        assert_eq!(cache.token().await.unwrap().as_str().unwrap(), "token-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_upkeep_replaces_the_token_before_it_expires() {
        let (cache, calls, _) = cache(Some(Duration::from_secs(3)), false);
        cache.prime().await.unwrap();
        let upkeep = tokio::spawn(cache.upkeep());
        // Due two thirds into its life, at 2 s.
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The request path gets the new token without obtaining one.
        assert_eq!(cache.token().await.unwrap().as_str().unwrap(), "token-2");
        assert_eq!(cache.counts().request_path, 0);
        drop(cache);
        upkeep.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewable_token_is_renewed_not_replaced() {
        let (cache, calls, renewals) = cache(Some(Duration::from_secs(3)), true);
        cache.prime().await.unwrap();
        let _upkeep = tokio::spawn(cache.upkeep());
        tokio::time::sleep(Duration::from_millis(4500)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one login");
        assert_eq!(renewals.load(Ordering::SeqCst), 2, "renewed at 2 s and at 4 s");
        assert_eq!(cache.counts().renewed, 2);
        assert_eq!(cache.token().await.unwrap().as_str().unwrap(), "token-1");
    }

    #[tokio::test(start_paused = true)]
    async fn the_upkeep_ends_with_the_cache() {
        let (cache, calls, _) = cache(Some(Duration::from_millis(600)), false);
        cache.token().await.unwrap();
        let upkeep = tokio::spawn(cache.upkeep());
        drop(cache);
        upkeep.await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A Vault answer with `lease_duration = 2^64-1` panicked the upkeep
    /// (an instant plus that overflows), which then died silently.
    #[tokio::test(start_paused = true)]
    async fn a_lifetime_of_2_64_seconds_saturates() {
        let (cache, calls, _) = cache(Some(Duration::from_secs(u64::MAX)), true);
        cache.prime().await.unwrap();
        let upkeep = tokio::spawn(cache.upkeep());
        assert_eq!(cache.token().await.unwrap().as_str().unwrap(), "token-1");
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        assert!(!upkeep.is_finished(), "the upkeep is alive");
        assert_eq!(cache.token().await.unwrap().as_str().unwrap(), "token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        upkeep.abort();
    }

    #[tokio::test]
    async fn debug_hides_the_token() {
        let t = AccessToken {
            value: SecretValue::from("ya29.secret"),
            lifetime: None,
            renewable: false,
        };
        assert!(!format!("{t:?}").contains("ya29"));
    }
}
