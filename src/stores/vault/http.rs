//! One exchange with Vault over HTTP: the URL of an API path, the
//! namespace and token headers, retries, and Vault's error text.

use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::stores::common::{status_error, transport_error, Retry};
use crate::stores::{SecretValue, StoreError};

/// The HTTP client of one store, with Vault's address and namespace.
pub(super) struct Http {
    http: reqwest::Client,
    pub(super) base: Url,
    pub(super) namespace: Option<String>,
    retry: Retry,
}

/// Why a single HTTP exchange failed, with the 403 kept apart: only a token
/// problem is worth a re-login.
pub(super) enum CallError {
    Denied(StoreError),
    Other(StoreError),
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Denied(e) | CallError::Other(e) => e,
        }
    }
}

impl Http {
    pub(super) fn new(http: reqwest::Client, base: Url, namespace: Option<String>) -> Self {
        Self {
            http,
            base,
            namespace,
            retry: Retry::default(),
        }
    }

    pub(super) fn url(&self, segments: &[&str]) -> Result<Url, StoreError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| StoreError::InvalidRequest("the address cannot take a path".into()))?;
            path.pop_if_empty().push("v1");
            for segment in segments {
                // Each piece may itself hold several segments (a mount like kv/team-a).
                for part in segment.split('/') {
                    path.push(part);
                }
            }
        }
        Ok(url)
    }

    /// One exchange with Vault: method, path, optional token and JSON body.
    async fn call(
        &self,
        method: Method,
        url: Url,
        token: Option<&SecretValue>,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, bytes::Bytes), CallError> {
        let mut headers = HeaderMap::new();
        if let Some(ns) = &self.namespace {
            if let Ok(v) = HeaderValue::from_str(ns) {
                headers.insert("X-Vault-Namespace", v);
            }
        }
        if let Some(token) = token {
            let mut v = HeaderValue::from_bytes(token.expose()).map_err(|_| {
                CallError::Other(StoreError::Unauthorized("the token is not a valid header".into()))
            })?;
            v.set_sensitive(true);
            headers.insert("X-Vault-Token", v);
        }
        let mut request = self.http.request(method, url).headers(headers);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Other(transport_error(&e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Other(transport_error(&e)))?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok((status, bytes));
        }
        let err = status_error(status, vault_reason(&bytes));
        Err(if status == StatusCode::FORBIDDEN {
            CallError::Denied(err)
        } else {
            CallError::Other(err)
        })
    }

    /// `call` with retries on throttling and server failures.
    pub(super) async fn call_retrying(
        &self,
        method: Method,
        url: &Url,
        token: Option<&SecretValue>,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, bytes::Bytes), CallError> {
        let denied = AtomicBool::new(false);
        let result = self
            .retry
            .run(|| async {
                match self.call(method.clone(), url.clone(), token, body).await {
                    Ok(v) => Ok(v),
                    Err(CallError::Denied(e)) => {
                        denied.store(true, Ordering::Relaxed);
                        Err(e)
                    }
                    Err(CallError::Other(e)) => Err(e),
                }
            })
            .await;
        result.map_err(|e| {
            if denied.load(Ordering::Relaxed) {
                CallError::Denied(e)
            } else {
                CallError::Other(e)
            }
        })
    }
}

pub(super) fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|_| StoreError::InvalidResponse(format!("the {what} answer is not the expected JSON")))
}

/// What Vault's error text (`{"errors": [...]}`) says, as one of a fixed
/// set of reasons, or `""`. The text itself is never repeated: Vault's
/// messages may quote the request (an AppRole login error echoed its
/// `secret_id`), and a store is trusted only so far.
fn vault_reason(body: &[u8]) -> &'static str {
    const REASONS: &[(&str, &str)] = &[
        ("permission denied", "permission denied"),
        ("invalid role or secret id", "invalid credentials"),
        ("invalid secret id", "invalid credentials"),
        ("invalid role id", "invalid credentials"),
        ("failed to validate credentials", "invalid credentials"),
        ("missing client token", "missing client token"),
        ("no handler for route", "no such mount or path"),
        ("unsupported path", "no such mount or path"),
        ("vault is sealed", "sealed"),
        ("node not active", "standby node"),
    ];
    let Ok(text) = std::str::from_utf8(body) else {
        return "";
    };
    let text = text.to_ascii_lowercase();
    REASONS
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map_or("", |(_, reason)| reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_each_segment() {
        let client = Http::new(
            reqwest::Client::new(),
            Url::parse("https://vault:8200/").unwrap(),
            None,
        );
        let url = client.url(&["kv/team-a", "data", "apps/my app/a?b:c"]).unwrap();
        assert_eq!(
            url.as_str(),
            "https://vault:8200/v1/kv/team-a/data/apps/my%20app/a%3Fb:c"
        );
    }

    /// Vault's text is read for a fixed reason, never repeated: an AppRole
    /// login error that echoes its request must not carry the secret id on.
    #[test]
    fn vault_error_text_becomes_a_fixed_reason() {
        let body = br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#;
        assert_eq!(vault_reason(body), "permission denied");
        let echo = br#"{"errors":["invalid secret id \"3f0c-77aa-secret\" for role \"sesame\""]}"#;
        assert_eq!(vault_reason(echo), "invalid credentials");
        let e = status_error(StatusCode::BAD_REQUEST, vault_reason(echo));
        assert!(!e.to_string().contains("3f0c"), "{e}");
        assert_eq!(vault_reason(br#"{"errors":["something new: 3f0c"]}"#), "");
        assert_eq!(vault_reason(b"not json"), "");
    }
}
