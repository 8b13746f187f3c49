//! Access tokens for the cloud stores (GCP, Azure, Infisical): obtained once,
//! cached, and refreshed by a background task before they expire, so a Pod's
//! request never waits for the identity provider. The request path obtains a
//! token only on a cold start, after the token expired while every background
//! refresh failed, or once after the store answered 401.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::AbortHandle;
// Tokio's clock, so that tests with paused time exercise expiry and refresh.
use tokio::time::Instant;

use super::common::{status_error, transport_error, Retry};
use super::{SecretValue, StoreError};

/// A token as the identity provider issued it.
pub struct AccessToken {
    pub value: SecretValue,
    /// `None` for tokens that do not expire (Infisical service tokens).
    pub lifetime: Option<Duration>,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &self.value)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// One way of obtaining a token (metadata server, key exchange, login).
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// Asks the identity provider for a new token. Errors name the failure
    /// class and a provider error code, never the credential.
    async fn obtain(&self) -> Result<AccessToken, StoreError>;
}

struct Current {
    value: SecretValue,
    obtained: Instant,
    lifetime: Option<Duration>,
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

    /// When the background task replaces it: a quarter of its life (at most
    /// ten minutes) before it expires, leaving room for failed attempts.
    fn refresh_at(&self) -> Option<Instant> {
        self.lifetime
            .map(|life| self.obtained + life - (life / 4).min(Duration::from_secs(600)))
    }
}

/// A token handed to one request; `generation` lets a 401 invalidate exactly
/// the token that was rejected and not a newer one.
pub struct Token {
    pub value: SecretValue,
    generation: u64,
}

impl Token {
    pub fn as_str(&self) -> Result<&str, StoreError> {
        self.value
            .expose_str()
            .ok_or_else(|| StoreError::InvalidResponse("the access token is not text".into()))
    }
}

struct Inner {
    provider: Box<dyn TokenProvider>,
    retry: Retry,
    current: RwLock<Option<Current>>,
    /// One obtain at a time: concurrent cold requests share it.
    obtaining: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    refresher: Mutex<Option<AbortHandle>>,
    name: &'static str,
}

/// The cached token of one store and its background refresher (stopped when
/// the cache is dropped).
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl TokenCache {
    /// `name` says which store kind the token is for, in logs.
    pub fn new(name: &'static str, provider: impl TokenProvider, retry: Retry) -> Self {
        Self {
            inner: Arc::new(Inner {
                provider: Box::new(provider),
                retry,
                current: RwLock::new(None),
                obtaining: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                refresher: Mutex::new(None),
                name,
            }),
        }
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
        self.inner.obtain_and_store().await?;
        self.inner.ensure_refresher();
        self.inner
            .usable()
            .ok_or_else(|| StoreError::Unauthorized("the identity provider issued an expired token".into()))
    }

    /// Forgets a token the store rejected (unless a newer one replaced it).
    pub fn invalidate(&self, token: &Token) {
        if let Ok(mut current) = self.inner.current.write() {
            if current.as_ref().is_some_and(|c| c.generation == token.generation) {
                *current = None;
            }
        }
    }

    /// Sends a request built with the current bearer token and reads the
    /// answer. Throttling and 5xx are retried with `retry`; when `rejected`
    /// says the store refused the token (401, or a provider's own code), a
    /// new token is obtained once and the request sent again. Any other
    /// answer is returned for the caller to interpret.
    pub async fn send<F, R>(&self, retry: &Retry, build: F, rejected: R) -> Result<Answer, StoreError>
    where
        F: Fn(&str) -> reqwest::RequestBuilder,
        R: Fn(reqwest::StatusCode, &[u8]) -> bool,
    {
        let mut token = self.token().await?;
        let mut renewed = false;
        loop {
            let bearer = token.as_str()?;
            let answer = retry
                .run(|| async { Answer::read(send_once(build(bearer)).await?).await })
                .await?;
            if !renewed && rejected(answer.status, &answer.body) {
                tracing::debug!(store = self.inner.name, status = %answer.status, "token rejected; obtaining a new one");
                self.invalidate(&token);
                token = self.token().await?;
                renewed = true;
                continue;
            }
            return Ok(answer);
        }
    }
}

/// A store's answer, read whole.
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub body: bytes::Bytes,
}

impl Answer {
    /// Reads the whole body.
    pub async fn read(response: reqwest::Response) -> Result<Self, StoreError> {
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        Ok(Self { status, body })
    }

    /// The body as JSON, without letting a decode error quote it (serde
    /// messages can contain the offending text, which may be a secret).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_slice(&self.body)
            .map_err(|_| StoreError::InvalidResponse("the answer is not the expected JSON".into()))
    }
}

/// The usual sign of a refused token.
pub fn unauthorized(status: reqwest::StatusCode, _body: &[u8]) -> bool {
    status == reqwest::StatusCode::UNAUTHORIZED
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        if let Ok(mut handle) = self.inner.refresher.lock() {
            if let Some(handle) = handle.take() {
                handle.abort();
            }
        }
    }
}

/// One attempt: transport failures, 429 and 5xx become retryable errors.
pub async fn send_once(request: reqwest::RequestBuilder) -> Result<reqwest::Response, StoreError> {
    let response = request.send().await.map_err(|e| transport_error(&e))?;
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(status_error(status, ""));
    }
    Ok(response)
}

/// A provider error code (`SecretNotFound`, `PERMISSION_DENIED`,
/// `invalid_client`) if it looks like one; free text is dropped because it
/// may quote names or values.
pub fn error_code(code: Option<&str>) -> String {
    match code {
        Some(c)
            if !c.is_empty()
                && c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) =>
        {
            c.to_owned()
        }
        _ => String::new(),
    }
}

/// An OAuth 2.0 token answer (RFC 6749 §5.1): Google's token endpoint and
/// metadata server, Microsoft Entra and Azure IMDS. IMDS sends `expires_in`
/// as a string, the others as a number.
#[derive(serde::Deserialize)]
struct OAuthToken {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// An OAuth 2.0 error answer (RFC 6749 §5.2); only `error` is kept.
#[derive(serde::Deserialize)]
struct OAuthError {
    error: Option<String>,
}

/// Turns a token endpoint's answer into a token, or into an error that names
/// the endpoint, the status and the OAuth error code.
pub async fn oauth_token(response: reqwest::Response, endpoint: &str) -> Result<AccessToken, StoreError> {
    let answer = Answer::read(response).await?;
    let status = answer.status;
    if !status.is_success() {
        let code = serde_json::from_slice::<OAuthError>(&answer.body)
            .ok()
            .and_then(|e| e.error);
        let detail = format!(
            "{endpoint}: HTTP {status}{}",
            suffix(&error_code(code.as_deref()))
        );
        return Err(match status.as_u16() {
            400..=403 => StoreError::Unauthorized(detail),
            404 => StoreError::Unauthorized(detail),
            429 => StoreError::Throttled,
            _ => StoreError::Unreachable(detail),
        });
    }
    let token: OAuthToken = answer.json()?;
    let seconds = match token.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok(AccessToken {
        value: SecretValue::from(token.access_token),
        // A token without a stated lifetime is treated as living an hour
        // (the usual default) so that it is still refreshed.
        lifetime: Some(Duration::from_secs(seconds.unwrap_or(3600))),
    })
}

fn suffix(code: &str) -> String {
    if code.is_empty() {
        String::new()
    } else {
        format!(" ({code})")
    }
}

impl Inner {
    fn usable(&self) -> Option<Token> {
        let current = self.current.read().ok()?;
        let current = current.as_ref()?;
        current.usable(Instant::now()).then(|| Token {
            value: current.value.clone(),
            generation: current.generation,
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
        if let Ok(mut current) = self.current.write() {
            *current = Some(Current {
                value: token.value,
                obtained: Instant::now(),
                lifetime: token.lifetime,
                generation,
            });
        }
        tracing::debug!(store = self.name, lifetime = ?token.lifetime, "obtained an access token");
        Ok(())
    }

    /// When the background task should next act: `None` when the token never
    /// expires; now when there is no token.
    fn next_refresh(&self) -> Option<Instant> {
        let current = self.current.read().ok()?;
        match current.as_ref() {
            Some(c) => c.refresh_at(),
            None => Some(Instant::now()),
        }
    }

    fn ensure_refresher(self: &Arc<Self>) {
        let Ok(mut slot) = self.refresher.lock() else {
            return;
        };
        if slot.is_some() || self.next_refresh().is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        *slot = Some(runtime.spawn(refresh_loop(weak)).abort_handle());
    }
}

/// Keeps the token fresh: sleeps until it is due, obtains a new one, and on
/// failure tries again with backoff while the old token is still served.
async fn refresh_loop(weak: Weak<Inner>) {
    let mut failures: u32 = 0;
    loop {
        let due = {
            let Some(inner) = weak.upgrade() else { return };
            match inner.next_refresh() {
                None => return,
                Some(at) if failures == 0 => at,
                Some(_) => Instant::now() + Duration::from_secs(1 << failures.min(5)),
            }
        };
        // Never spin, even on a token that lives a second.
        let due = due.max(Instant::now() + Duration::from_millis(200));
        tokio::time::sleep_until(due).await;
        let Some(inner) = weak.upgrade() else { return };
        let _guard = inner.obtaining.lock().await;
        // A request may have obtained a new token (after a 401) meanwhile.
        if inner.next_refresh().is_some_and(|at| at > Instant::now()) {
            failures = 0;
            continue;
        }
        match inner.obtain_and_store().await {
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
        lifetime: Option<Duration>,
    }

    #[async_trait]
    impl TokenProvider for Counting {
        async fn obtain(&self) -> Result<AccessToken, StoreError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(AccessToken {
                value: SecretValue::from(format!("token-{n}")),
                lifetime: self.lifetime,
            })
        }
    }

    fn cache(lifetime: Option<Duration>) -> (TokenCache, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let provider = Counting {
            calls: calls.clone(),
            lifetime,
        };
        (TokenCache::new("test", provider, Retry::default()), calls)
    }

    #[tokio::test]
    async fn concurrent_cold_requests_share_one_obtain() {
        let (cache, calls) = cache(Some(Duration::from_secs(3600)));
        let (a, b) = tokio::join!(cache.token(), cache.token());
        assert_eq!(a.unwrap().as_str().unwrap(), "token-1");
        assert_eq!(b.unwrap().as_str().unwrap(), "token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidate_only_drops_the_rejected_generation() {
        let (cache, calls) = cache(None);
        let first = cache.token().await.unwrap();
        cache.invalidate(&first);
        let second = cache.token().await.unwrap();
        assert_eq!(second.as_str().unwrap(), "token-2");
        // A late 401 for the old token must not throw away the new one.
        cache.invalidate(&first);
        assert_eq!(cache.token().await.unwrap().as_str().unwrap(), "token-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refreshes_in_the_background_before_expiry() {
        let (cache, calls) = cache(Some(Duration::from_secs(2)));
        assert_eq!(cache.token().await.unwrap().as_str().unwrap(), "token-1");
        // Refresh is due a quarter of the lifetime before expiry (at 1.5 s).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The request path gets the refreshed token without obtaining one.
        assert_eq!(cache.token().await.unwrap().as_str().unwrap(), "token-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_refresher_stops_with_the_cache() {
        let (cache, calls) = cache(Some(Duration::from_millis(400)));
        cache.token().await.unwrap();
        drop(cache);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn debug_hides_the_token() {
        let t = AccessToken {
            value: SecretValue::from("ya29.secret"),
            lifetime: None,
        };
        assert!(!format!("{t:?}").contains("ya29"));
    }
}
