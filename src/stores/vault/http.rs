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

#[derive(Deserialize)]
struct ErrorsAnswer {
    #[serde(default)]
    errors: Vec<String>,
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
        let detail = vault_errors(&bytes);
        let err = status_error(status, &detail);
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

/// Vault's own error text (`{"errors": [...]}`), shortened. Vault's messages
/// name the failure ("permission denied"), never a secret's data.
fn vault_errors(body: &[u8]) -> String {
    let Ok(answer) = serde_json::from_slice::<ErrorsAnswer>(body) else {
        return String::new();
    };
    let joined = answer
        .errors
        .iter()
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ");
    joined.chars().take(160).collect()
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

    #[test]
    fn vault_error_text_is_short_and_flat() {
        let body = br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#;
        assert_eq!(vault_errors(body), "1 error occurred: * permission denied");
        assert_eq!(vault_errors(b"not json"), "");
    }
}
