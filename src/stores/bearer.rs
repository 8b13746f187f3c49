//! What the cloud stores (GCP, Azure, Infisical) share on top of the token
//! manager: requests with a bearer token (a refused token is replaced once),
//! answers read whole, provider error codes, and OAuth 2.0 token answers.

use super::common::{status_error, transport_error, Retry};
use super::token::TokenCache;
use super::StoreError;

impl TokenCache {
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
                tracing::debug!(store = self.name(), status = %answer.status, "token rejected; obtaining a new one");
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
pub(crate) struct Answer {
    pub status: reqwest::StatusCode,
    pub body: bytes::Bytes,
    /// The `WWW-Authenticate` challenge of a refusal (Azure Key Vault names
    /// the tenant and resource it wants a token for).
    pub challenge: Option<String>,
}

impl Answer {
    /// Reads the whole body.
    pub async fn read(response: reqwest::Response) -> Result<Self, StoreError> {
        let status = response.status();
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        Ok(Self {
            status,
            body,
            challenge,
        })
    }

    /// The body as JSON, without letting a decode error quote it (serde
    /// messages can contain the offending text, which may be a secret).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_slice(&self.body)
            .map_err(|_| StoreError::InvalidResponse("the answer is not the expected JSON".into()))
    }
}

/// One attempt: transport failures, 429 and 5xx become retryable errors.
pub(crate) async fn send_once(request: reqwest::RequestBuilder) -> Result<reqwest::Response, StoreError> {
    let response = request.send().await.map_err(|e| transport_error(&e))?;
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(status_error(status, ""));
    }
    Ok(response)
}

#[cfg(any(feature = "gcp", feature = "azure"))]
pub(crate) use oauth::{oauth_token, unauthorized};

/// OAuth 2.0 token answers (Google, Microsoft Entra, Azure IMDS).
#[cfg(any(feature = "gcp", feature = "azure"))]
mod oauth {
    use std::time::Duration;

    use super::Answer;
    use crate::stores::common::error_code;
    use crate::stores::token::AccessToken;
    use crate::stores::{SecretValue, StoreError};

    /// The usual sign of a refused token.
    pub(crate) fn unauthorized(status: reqwest::StatusCode, _body: &[u8]) -> bool {
        status == reqwest::StatusCode::UNAUTHORIZED
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

    /// The error codes of RFC 6749 §5.2, of bearer-token use (RFC 6750 §3.1)
    /// and resource indicators (RFC 8707), and the ones Microsoft Entra and
    /// Google add; any other `error` is not repeated.
    const OAUTH_ERRORS: &[&str] = &[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
        "invalid_token",
        "insufficient_scope",
        "invalid_target",
        "invalid_resource",
        "interaction_required",
        "consent_required",
    ];

    /// An OAuth 2.0 error answer (RFC 6749 §5.2); only `error` is kept.
    #[derive(serde::Deserialize)]
    struct OAuthError {
        error: Option<String>,
    }

    /// Turns a token endpoint's answer into a token, or into an error that names
    /// the endpoint, the status and the OAuth error code.
    pub(crate) async fn oauth_token(
        response: reqwest::Response,
        endpoint: &str,
    ) -> Result<AccessToken, StoreError> {
        let answer = Answer::read(response).await?;
        let status = answer.status;
        if !status.is_success() {
            let code = serde_json::from_slice::<OAuthError>(&answer.body)
                .ok()
                .and_then(|e| e.error);
            let detail = format!(
                "{endpoint}: HTTP {status}{}",
                suffix(error_code(code.as_deref(), OAUTH_ERRORS))
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
            renewable: false,
        })
    }

    fn suffix(code: &str) -> String {
        if code.is_empty() {
            String::new()
        } else {
            format!(" ({code})")
        }
    }
}
