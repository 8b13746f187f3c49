//! What remote providers share: where credentials come from, one HTTP client
//! per store, retries with jittered backoff for throttling and 5xx, and the
//! mapping of HTTP statuses to failure classes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{SecretValue, StoreError};
use crate::validate::FieldError;

/// Where a credential (token, client secret, key file) is read from. Never
/// from the configuration file itself: only a pointer to it lives there.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CredentialSource {
    /// A file, e.g. a mounted Secret or a projected service-account token; re-read on every use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// An environment variable of the Sesame process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl CredentialSource {
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self {
            file: Some(path.into()),
            env: None,
        }
    }

    /// Checks that exactly one source is set.
    pub fn validate(&self) -> Result<(), FieldError> {
        match (&self.file, &self.env) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(FieldError::new("", "set exactly one of file or env")),
        }
    }

    /// Reads the credential, trimmed of surrounding whitespace.
    pub async fn read(&self, base_dir: &Path) -> Result<SecretValue, StoreError> {
        let raw = match (&self.file, &self.env) {
            (Some(path), _) => {
                let path = base_dir.join(path);
                tokio::fs::read(&path).await.map_err(|e| {
                    StoreError::Unauthorized(format!(
                        "cannot read credential file {}: {}",
                        path.display(),
                        e.kind()
                    ))
                })?
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| StoreError::Unauthorized(format!("credential env var {var} is not set")))?
                .into_bytes(),
            (None, None) => return Err(StoreError::Unauthorized("no credential source configured".into())),
        };
        let text = String::from_utf8_lossy(&raw);
        Ok(SecretValue::from(text.trim()))
    }
}

/// Redirects a store client follows, each to the origin it asked (scheme,
/// host and port unchanged); see [`same_origin_only`].
const MAX_REDIRECTS: usize = 3;

/// One HTTP client per store, with TLS (rustls) and an optional extra CA for
/// self-hosted servers. It follows a redirect only within the origin of the
/// request and sends no `Referer`: store requests carry credentials in
/// headers (`X-Vault-Token`, bearer tokens) that a client would otherwise
/// repeat to whatever host a redirect names, and paths that name secrets.
pub fn http_client(ca_file: Option<&Path>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::custom(same_origin_only))
        .referer(false)
        .user_agent(concat!("sesame/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("CA file {}: {e}", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// The redirect policy of every store client: follow at most
/// [`MAX_REDIRECTS`] hops, and only while scheme, host and port stay those
/// of the first request. Any other redirect is not followed: the 3xx answer
/// itself comes back, and [`status_error`] makes it an error.
fn same_origin_only(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let same = attempt
        .previous()
        .first()
        .is_some_and(|first| first.origin() == attempt.url().origin());
    if same && attempt.previous().len() <= MAX_REDIRECTS {
        attempt.follow()
    } else {
        attempt.stop()
    }
}

/// A provider's error code when it is one of `known`, the codes that its
/// API documents; anything else gives `""`. Stores are trusted only so far:
/// an error body may echo the request (a login's secret), so no text of
/// theirs is ever copied into a message or a log, only one of our own
/// constants.
pub(crate) fn error_code(code: Option<&str>, known: &[&'static str]) -> &'static str {
    code.and_then(|c| known.iter().find(|k| **k == c))
        .copied()
        .unwrap_or("")
}

/// Failure class of an HTTP status. 404 is left to the caller (a missing
/// secret or a missing version means different things per provider).
/// `detail` is one of our own constants (a known provider code), never
/// text from the answer.
pub(crate) fn status_error(status: reqwest::StatusCode, detail: &'static str) -> StoreError {
    match status.as_u16() {
        401 | 403 => StoreError::Unauthorized(format!("HTTP {status}{}", suffix(detail))),
        404 => StoreError::NotFound,
        429 => StoreError::Throttled,
        400..=499 => StoreError::InvalidRequest(format!("HTTP {status}{}", suffix(detail))),
        // A redirect that was not followed (another origin, or too many).
        300..=399 => StoreError::InvalidResponse(format!(
            "HTTP {status}: a redirect Sesame does not follow (to another origin, or more than {MAX_REDIRECTS})"
        )),
        _ => StoreError::Unreachable(format!("HTTP {status}{}", suffix(detail))),
    }
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

/// Failure class of a transport error. The error text carries no secret (it
/// may carry the URL, which holds only the store address and secret path).
pub(crate) fn transport_error(e: &reqwest::Error) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else if e.is_decode() {
        StoreError::InvalidResponse("the answer could not be decoded".into())
    } else {
        StoreError::Unreachable(if e.is_connect() {
            "connection failed".into()
        } else {
            "request failed".into()
        })
    }
}

/// Retry policy: only throttling and server-side failures are retried, with
/// full-jitter exponential backoff. The caller's time budget still bounds
/// the whole (it cancels the future).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 3,
            base: Duration::from_millis(50),
            max: Duration::from_millis(800),
        }
    }
}

impl Retry {
    /// Runs `op` until it succeeds, fails for good, or attempts run out.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt + 1 < self.attempts && retryable(&e) => {
                    let cap = self.base.saturating_mul(1 << attempt.min(10)).min(self.max);
                    let wait = Duration::from_micros(fastrand::u64(0..=cap.as_micros() as u64));
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn retryable(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Throttled | StoreError::Unreachable(_) | StoreError::Timeout
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_throttling_then_succeeds() {
        let calls = AtomicU32::new(0);
        let r = Retry {
            attempts: 4,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        }
        .run(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(StoreError::Throttled)
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn does_not_retry_client_errors() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = Retry::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::Unauthorized("HTTP 403".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn credential_sources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cr3t\n").unwrap();
        let v = CredentialSource::from_file("token")
            .read(dir.path())
            .await
            .unwrap();
        assert_eq!(v.expose(), b"s3cr3t");
        let missing = CredentialSource {
            file: None,
            env: Some("SESAME_TEST_UNSET_VAR".into()),
        };
        let e = missing.read(dir.path()).await.unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"));
        assert!(CredentialSource {
            file: None,
            env: None
        }
        .validate()
        .is_err());
    }
}
