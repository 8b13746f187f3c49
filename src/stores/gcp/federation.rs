//! Workload identity federation and service-account impersonation, on the
//! documented wire formats (Google's auth libraries would bring a second
//! HTTP stack and token manager; see docs/stores.md):
//!
//! - `external_account` credential configurations (AIP-4117): a subject
//!   token from a file, a URL or an executable, exchanged at the Security
//!   Token Service (`POST https://sts.googleapis.com/v1/token`, the OAuth
//!   2.0 token exchange of RFC 8693), then optionally impersonating a
//!   service account;
//! - impersonation per store (`impersonate`): IAM Credentials
//!   `projects.serviceAccounts.generateAccessToken` with the base token;
//! - `identity: pod`: the Pod's ServiceAccount token as the subject token
//!   of the exchange, against the store's workload identity provider.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::SCOPE;
use crate::stores::bearer::{oauth_token, send_once, Answer};
use crate::stores::common::error_code;
use crate::stores::identity::{PodIdentity, WorkloadIdentity};
use crate::stores::token::{AccessToken, TokenProvider};
use crate::stores::{SecretValue, StoreError};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub(super) const DEFAULT_STS: &str = "https://sts.googleapis.com";
pub(super) const DEFAULT_IAM_CREDENTIALS: &str = "https://iamcredentials.googleapis.com";
/// What Google's libraries ask of executable sources, and why: running a
/// command named in a credential file must be switched on by whoever runs
/// the process.
const ALLOW_EXECUTABLES: &str = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES";

/// An `external_account` credential configuration (the fields Sesame uses).
#[derive(Deserialize)]
pub(super) struct ExternalAccount {
    audience: String,
    subject_token_type: String,
    #[serde(default = "default_token_url")]
    token_url: String,
    credential_source: CredentialSourceConfig,
    #[serde(default)]
    service_account_impersonation_url: Option<String>,
    #[serde(default)]
    service_account_impersonation: Option<ImpersonationOptions>,
}

fn default_token_url() -> String {
    format!("{DEFAULT_STS}/v1/token")
}

#[derive(Deserialize)]
struct ImpersonationOptions {
    #[serde(default)]
    token_lifetime_seconds: Option<u64>,
}

/// Exactly one of `file`, `url` or `executable`.
#[derive(Deserialize)]
struct CredentialSourceConfig {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    executable: Option<ExecutableConfig>,
    #[serde(default)]
    format: Option<SourceFormat>,
}

#[derive(Deserialize)]
struct SourceFormat {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    subject_token_field_name: Option<String>,
}

#[derive(Deserialize)]
struct ExecutableConfig {
    command: String,
    #[serde(default)]
    timeout_millis: Option<u64>,
    #[serde(default)]
    output_file: Option<PathBuf>,
}

/// What an executable prints (and may cache in its output file).
#[derive(Deserialize)]
struct ExecutableResponse {
    version: u32,
    success: bool,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    saml_response: Option<String>,
    #[serde(default)]
    expiration_time: Option<u64>,
    #[serde(default)]
    code: Option<String>,
}

fn unauthorized(message: impl Into<String>) -> StoreError {
    StoreError::Unauthorized(message.into())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl ExternalAccount {
    pub(super) fn parse(raw: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(raw)
            .map_err(|_| unauthorized("the credentials are not an external_account configuration"))
    }

    /// The token from the credential source, as the exchange's subject.
    async fn subject_token(
        &self,
        client: &reqwest::Client,
        base_dir: &Path,
    ) -> Result<Zeroizing<String>, StoreError> {
        let source = &self.credential_source;
        let raw = match (&source.file, &source.url, &source.executable) {
            (Some(file), None, None) => {
                let path = base_dir.join(file);
                let bytes = tokio::fs::read(&path).await.map_err(|e| {
                    unauthorized(format!(
                        "cannot read the subject token file {}: {}",
                        path.display(),
                        e.kind()
                    ))
                })?;
                Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned())
            }
            (None, Some(url), None) => {
                let mut request = client.get(url);
                for (name, value) in source.headers.iter().flatten() {
                    request = request.header(name, value);
                }
                let answer = Answer::read(send_once(request).await?).await?;
                if !answer.status.is_success() {
                    return Err(unauthorized(format!(
                        "the subject token URL answered HTTP {}",
                        answer.status
                    )));
                }
                Zeroizing::new(String::from_utf8_lossy(&answer.body).into_owned())
            }
            (None, None, Some(executable)) => return self.run(executable).await,
            _ => {
                return Err(unauthorized(
                    "credential_source needs exactly one of file, url or executable",
                ))
            }
        };
        let token = match source.format.as_ref() {
            Some(SourceFormat {
                kind: Some(kind),
                subject_token_field_name,
            }) if kind == "json" => {
                let field = subject_token_field_name
                    .as_deref()
                    .ok_or_else(|| unauthorized("credential_source.format needs subject_token_field_name"))?;
                let value: serde_json::Value = serde_json::from_str(&raw)
                    .map_err(|_| unauthorized("the subject token source is not JSON"))?;
                let token = value
                    .get(field)
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| unauthorized("the subject token source has no such field"))?;
                Zeroizing::new(token.to_owned())
            }
            _ => Zeroizing::new(raw.trim().to_owned()),
        };
        if token.is_empty() {
            return Err(unauthorized("the subject token is empty"));
        }
        Ok(token)
    }

    /// Runs an executable source (only where `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`),
    /// or uses its unexpired cached answer in `output_file`.
    async fn run(&self, executable: &ExecutableConfig) -> Result<Zeroizing<String>, StoreError> {
        if std::env::var(ALLOW_EXECUTABLES).as_deref() != Ok("1") {
            return Err(unauthorized(format!(
                "executable credential sources run only with {ALLOW_EXECUTABLES}=1"
            )));
        }
        if let Some(cached) = &executable.output_file {
            if let Ok(bytes) = tokio::fs::read(cached).await {
                if let Ok(response) = serde_json::from_slice::<ExecutableResponse>(&bytes) {
                    if response.expiration_time.is_some_and(|t| t > now_secs() + 30) {
                        if let Ok(token) = executable_token(response) {
                            return Ok(token);
                        }
                    }
                }
            }
        }
        let mut parts = executable.command.split_whitespace();
        let program = parts
            .next()
            .ok_or_else(|| unauthorized("the executable command is empty"))?;
        let timeout =
            Duration::from_millis(executable.timeout_millis.unwrap_or(30_000).clamp(5_000, 120_000));
        let mut command = tokio::process::Command::new(program);
        command
            .args(parts)
            .env("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", &self.audience)
            .env("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE", &self.subject_token_type)
            .env("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(email) = self
            .service_account_impersonation_url
            .as_deref()
            .and_then(impersonated_email)
        {
            command.env("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL", email);
        }
        if let Some(file) = &executable.output_file {
            command.env("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE", file);
        }
        let output = tokio::time::timeout(timeout, command.output())
            .await
            .map_err(|_| unauthorized("the credential executable timed out"))?
            .map_err(|e| unauthorized(format!("the credential executable could not run: {}", e.kind())))?;
        let stdout = Zeroizing::new(output.stdout);
        if !output.status.success() {
            return Err(unauthorized(format!(
                "the credential executable failed ({})",
                output.status
            )));
        }
        let response: ExecutableResponse = serde_json::from_slice(&stdout)
            .map_err(|_| unauthorized("the credential executable's answer is not the documented JSON"))?;
        executable_token(response)
    }

    /// Exchanges the subject token, then impersonates the service account
    /// the configuration names, if any.
    pub(super) async fn token(
        &self,
        client: &reqwest::Client,
        base_dir: &Path,
    ) -> Result<AccessToken, StoreError> {
        let subject = self.subject_token(client, base_dir).await?;
        let federated = exchange(
            client,
            &self.token_url,
            &self.audience,
            &subject,
            &self.subject_token_type,
        )
        .await?;
        let Some(url) = &self.service_account_impersonation_url else {
            return Ok(federated);
        };
        let lifetime = self
            .service_account_impersonation
            .as_ref()
            .and_then(|o| o.token_lifetime_seconds)
            .unwrap_or(3600);
        generate_access_token(client, url, &federated.value, lifetime).await
    }
}

/// The token of an executable's answer, checked as the documented format asks.
fn executable_token(response: ExecutableResponse) -> Result<Zeroizing<String>, StoreError> {
    if response.version > 1 {
        return Err(unauthorized(
            "the credential executable answered an unknown version",
        ));
    }
    if !response.success {
        // The executable is configured by the platform, but its code is free text.
        let code = error_code(response.code.as_deref(), &[]);
        return Err(unauthorized(
            format!("the credential executable reported failure {code}")
                .trim_end()
                .to_owned(),
        ));
    }
    if response.expiration_time.is_some_and(|t| t <= now_secs()) {
        return Err(unauthorized("the credential executable's token has expired"));
    }
    let token = match response.token_type.as_deref() {
        Some("urn:ietf:params:oauth:token-type:id_token" | "urn:ietf:params:oauth:token-type:jwt") => {
            response.id_token
        }
        Some("urn:ietf:params:oauth:token-type:saml2") => response.saml_response,
        _ => None,
    };
    token
        .filter(|t| !t.is_empty())
        .map(Zeroizing::new)
        .ok_or_else(|| unauthorized("the credential executable's answer has no token"))
}

/// The service account of an impersonation URL
/// (`.../serviceAccounts/<email>:generateAccessToken`).
fn impersonated_email(url: &str) -> Option<&str> {
    url.rsplit_once("/serviceAccounts/")?
        .1
        .strip_suffix(":generateAccessToken")
}

/// Service-account e-mail addresses: `name@project.iam.gserviceaccount.com`
/// and the like; nothing that could leave the URL path segment.
pub(super) fn is_service_account_email(email: &str) -> bool {
    email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && email
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'@'))
        })
        && email.matches('@').count() == 1
}

/// The token exchange (RFC 8693) at Google's Security Token Service:
/// `projects/.../workloadIdentityPools/.../providers/...` as the audience.
pub(super) async fn exchange(
    client: &reqwest::Client,
    token_url: &str,
    audience: &str,
    subject_token: &str,
    subject_token_type: &str,
) -> Result<AccessToken, StoreError> {
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("audience", audience),
        ("scope", SCOPE),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("subject_token", subject_token),
        ("subject_token_type", subject_token_type),
    ];
    let response = send_once(client.post(token_url).form(&form)).await?;
    oauth_token(response, "Security Token Service").await
}

/// IAM Credentials `generateAccessToken` for the service account of `url`
/// (`.../v1/projects/-/serviceAccounts/<email>:generateAccessToken`), with
/// `base` as the caller's token.
pub(super) async fn generate_access_token(
    client: &reqwest::Client,
    url: &str,
    base: &SecretValue,
    lifetime_secs: u64,
) -> Result<AccessToken, StoreError> {
    let bearer = base
        .expose_str()
        .ok_or_else(|| StoreError::InvalidResponse("the access token is not text".into()))?;
    let body = serde_json::json!({
        "scope": [SCOPE],
        "lifetime": format!("{}s", lifetime_secs.clamp(600, 43_200)),
    });
    let response = send_once(client.post(url).bearer_auth(bearer).json(&body)).await?;
    let answer = Answer::read(response).await?;
    if !answer.status.is_success() {
        let code = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["error"]["status"].as_str().map(str::to_owned));
        let code = error_code(code.as_deref(), super::RPC_CODES);
        let detail = format!(
            "generateAccessToken: HTTP {}{}",
            answer.status,
            if code.is_empty() {
                String::new()
            } else {
                format!(" ({code})")
            }
        );
        return Err(match answer.status.as_u16() {
            400..=404 => StoreError::Unauthorized(detail),
            429 => StoreError::Throttled,
            _ => StoreError::Unreachable(detail),
        });
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Generated {
        access_token: String,
        expire_time: String,
    }
    let generated: Generated = answer.json()?;
    let expires = generated
        .expire_time
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map_err(|_| StoreError::InvalidResponse("generateAccessToken's expireTime is not a time".into()))?;
    let left = expires
        .as_second()
        .saturating_sub(k8s_openapi::jiff::Timestamp::now().as_second());
    Ok(AccessToken {
        value: SecretValue::from(generated.access_token),
        lifetime: Some(Duration::from_secs(u64::try_from(left).unwrap_or(0).max(1))),
        renewable: false,
    })
}

/// The `generateAccessToken` URL of a service account.
pub(super) fn impersonation_url(iam_credentials: &str, email: &str) -> String {
    format!(
        "{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
        iam_credentials.trim_end_matches('/')
    )
}

/// Another token provider's token, exchanged for a token of the service
/// account `email` (`impersonate` on a store).
pub(super) struct Impersonated {
    pub(super) base: Box<dyn TokenProvider>,
    pub(super) client: reqwest::Client,
    pub(super) url: String,
}

#[async_trait]
impl TokenProvider for Impersonated {
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        let base = self.base.obtain().await?;
        generate_access_token(&self.client, &self.url, &base.value, 3600).await
    }
}

/// `identity: pod`: the Pod's ServiceAccount token exchanged at the STS
/// for a federated token of the workload identity provider, and, when the
/// store impersonates (`impersonate` template), that service account's.
pub(super) struct PodFederation {
    pub(super) client: reqwest::Client,
    pub(super) pod: PodIdentity,
    pub(super) identity: WorkloadIdentity,
    /// `//iam.googleapis.com/projects/<n>/locations/global/workloadIdentityPools/<pool>/providers/<p>`.
    pub(super) provider: String,
    pub(super) token_url: String,
    /// The rendered e-mail's `generateAccessToken` URL, if any.
    pub(super) impersonate: Option<String>,
}

#[async_trait]
impl TokenProvider for PodFederation {
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        // The provider's default allowed audience is its own resource URL.
        let default_audience = format!("https:{}", self.provider);
        let token = self.pod.token(&self.identity, &default_audience).await?;
        let subject = token
            .expose_str()
            .ok_or_else(|| StoreError::InvalidResponse("the ServiceAccount token is not text".into()))?;
        let federated = exchange(&self.client, &self.token_url, &self.provider, subject, JWT_TYPE).await?;
        match &self.impersonate {
            None => Ok(federated),
            Some(url) => generate_access_token(&self.client, url, &federated.value, 3600).await,
        }
    }
}

/// Workload identity provider resource names.
pub(super) fn is_provider_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("//iam.googleapis.com/projects/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(parts.as_slice(), [project, "locations", "global", "workloadIdentityPools", pool, "providers", provider]
        if !project.is_empty() && project.bytes().all(|b| b.is_ascii_digit())
            && [pool, provider].iter().all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(is_provider_name(
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/k8s"
        ));
        assert!(!is_provider_name(
            "//iam.googleapis.com/projects/abc/locations/global/workloadIdentityPools/p/providers/k"
        ));
        assert!(!is_provider_name("https://evil.example/providers/k"));
        assert!(is_service_account_email("reader@proj.iam.gserviceaccount.com"));
        assert!(!is_service_account_email("a/b@proj.iam.gserviceaccount.com"));
        assert!(!is_service_account_email("a@b@c.com"));
        assert_eq!(
            impersonated_email("https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/r@p.iam.gserviceaccount.com:generateAccessToken"),
            Some("r@p.iam.gserviceaccount.com")
        );
    }

    #[test]
    fn executable_answers_are_checked() {
        let ok = |json: serde_json::Value| executable_token(serde_json::from_value(json).unwrap());
        let future = now_secs() + 600;
        assert_eq!(
            ok(serde_json::json!({"version": 1, "success": true, "token_type": "urn:ietf:params:oauth:token-type:id_token", "id_token": "h.p.s", "expiration_time": future}))
                .unwrap()
                .as_str(),
            "h.p.s"
        );
        assert!(
            ok(serde_json::json!({"version": 1, "success": false, "code": "401", "message": "no"})).is_err()
        );
        assert!(ok(serde_json::json!({"version": 2, "success": true, "token_type": "urn:ietf:params:oauth:token-type:jwt", "id_token": "x"})).is_err());
        assert!(ok(serde_json::json!({"version": 1, "success": true, "token_type": "urn:ietf:params:oauth:token-type:jwt", "id_token": "x", "expiration_time": 1})).is_err());
    }
}
