//! Infisical (cloud or self-hosted), through its REST API on reqwest: the v3
//! raw secrets endpoints and the machine-identity logins (universal auth,
//! Kubernetes auth) or a static service token.
//!
//! A store is bound to one project (workspace id) and one environment slug.
//! References name a secret by its folder and key: `backend/db/DB_PASSWORD`
//! is the key `DB_PASSWORD` in the folder `/backend/db`; `DB_PASSWORD` alone
//! is in the root folder. A reference whose last segment is `@all` reads the
//! whole folder before it (`backend/db/@all`; `@all` for the root folder),
//! including secrets imported into it, as properties for `env-from` and
//! `dir` injections. A single secret whose value is a JSON object is split
//! into properties.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::bearer::{send_once, Answer};
use super::common::{error_code, http_client, status_error, CredentialSource, Retry};
use super::token::{AccessToken, TokenCache, TokenProvider};
use super::{SecretData, SecretLocator, SecretValue, Store, StoreError, Upkeep};
use crate::validate::{check_url, FieldError};

/// The last path segment that reads a whole folder.
pub(crate) const FOLDER_MARKER: &str = "@all";
const DEFAULT_API_URL: &str = "https://app.infisical.com";
const DEFAULT_SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The `infisical` section of a store.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InfisicalStoreConfig {
    /// Infisical Cloud (`https://app.infisical.com`, `https://eu.infisical.com`)
    /// or a self-hosted instance.
    #[serde(default = "default_api_url")]
    pub(crate) api_url: String,
    /// The project (workspace) id.
    pub project_id: String,
    /// Environment slug, e.g. `dev`, `staging`, `prod`.
    pub environment: String,
    /// How Sesame signs in: exactly one method.
    pub auth: InfisicalAuthConfig,
    /// Extra CA bundle (PEM) for a self-hosted instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Timeout of one HTTP request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Sign-in methods; exactly one is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InfisicalAuthConfig {
    /// Machine identity with a client id and client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) universal_auth: Option<UniversalAuth>,
    /// Machine identity that signs in with a Kubernetes service-account token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kubernetes_auth: Option<KubernetesAuth>,
    /// A static service token (`st.…`), Infisical's older mechanism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_token: Option<ServiceTokenAuth>,
}

/// The one sign-in method that is set.
#[derive(Debug, Clone, Copy)]
pub enum InfisicalAuth<'a> {
    UniversalAuth(&'a UniversalAuth),
    KubernetesAuth(&'a KubernetesAuth),
    ServiceToken(&'a ServiceTokenAuth),
}

impl InfisicalAuthConfig {
    pub fn method(&self) -> Option<InfisicalAuth<'_>> {
        match (&self.universal_auth, &self.kubernetes_auth, &self.service_token) {
            (Some(a), None, None) => Some(InfisicalAuth::UniversalAuth(a)),
            (None, Some(a), None) => Some(InfisicalAuth::KubernetesAuth(a)),
            (None, None, Some(a)) => Some(InfisicalAuth::ServiceToken(a)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UniversalAuth {
    pub client_id: String,
    pub client_secret: CredentialSource,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesAuth {
    /// The machine identity's id.
    pub(crate) identity_id: String,
    /// The service-account token; default the Pod's own token.
    #[serde(default = "default_sa_token")]
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceTokenAuth {
    pub token: CredentialSource,
}

fn default_api_url() -> String {
    DEFAULT_API_URL.to_owned()
}

fn default_sa_token() -> PathBuf {
    PathBuf::from(DEFAULT_SA_TOKEN)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl InfisicalStoreConfig {
    /// Checks the fields serde cannot; fields are below the section.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_url(&self.api_url, "apiUrl")?;
        for (name, value) in [
            ("projectId", &self.project_id),
            ("environment", &self.environment),
        ] {
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            {
                return Err(FieldError::new(name, "must be letters, digits, '-' and '_'"));
            }
        }
        let Some(method) = self.auth.method() else {
            return Err(FieldError::new(
                "auth",
                "set exactly one of universalAuth, kubernetesAuth, serviceToken",
            ));
        };
        match method {
            InfisicalAuth::UniversalAuth(a) => {
                if a.client_id.trim().is_empty() {
                    return Err(FieldError::new(
                        "auth.universalAuth.clientId",
                        "must not be empty",
                    ));
                }
                a.client_secret
                    .validate()
                    .map_err(|e| e.within("auth.universalAuth.clientSecret"))
            }
            InfisicalAuth::KubernetesAuth(a) if a.identity_id.trim().is_empty() => Err(FieldError::new(
                "auth.kubernetesAuth.identityId",
                "must not be empty",
            )),
            InfisicalAuth::KubernetesAuth(_) => Ok(()),
            InfisicalAuth::ServiceToken(a) => a
                .token
                .validate()
                .map_err(|e| e.within("auth.serviceToken.token")),
        }
    }
}

/// A store reading one Infisical project environment.
pub(crate) struct InfisicalStore {
    client: reqwest::Client,
    api_url: String,
    project_id: String,
    environment: String,
    tokens: TokenCache,
    retry: Retry,
}

/// What a reference path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Secret { folder: String, key: &'a str },
    Folder(String),
}

fn target(path: &str) -> Target<'_> {
    let (parent, last) = match path.rsplit_once('/') {
        Some((parent, last)) => (format!("/{parent}"), last),
        None => ("/".to_owned(), path),
    };
    if last == FOLDER_MARKER {
        Target::Folder(parent)
    } else {
        Target::Secret {
            folder: parent,
            key: last,
        }
    }
}

impl InfisicalStore {
    pub fn new(config: &InfisicalStoreConfig, base_dir: &Path) -> anyhow::Result<Self> {
        let ca = config.ca_file.as_ref().map(|p| base_dir.join(p));
        let client = http_client(ca.as_deref(), config.timeout)?;
        let api_url = config.api_url.trim_end_matches('/').to_owned();
        let retry = Retry::default();
        let login = |kind: &'static str, credential| Login {
            client: client.clone(),
            url: format!("{api_url}/api/v1/auth/{kind}/login"),
            credential,
            base_dir: base_dir.to_path_buf(),
        };
        let method = config
            .auth
            .method()
            .ok_or_else(|| anyhow::anyhow!("infisical: set exactly one auth method"))?;
        let tokens = match method {
            InfisicalAuth::UniversalAuth(a) => TokenCache::new(
                "infisical",
                login(
                    "universal-auth",
                    LoginCredential::Universal {
                        client_id: a.client_id.clone(),
                        client_secret: a.client_secret.clone(),
                    },
                ),
                retry,
            ),
            InfisicalAuth::KubernetesAuth(a) => TokenCache::new(
                "infisical",
                login(
                    "kubernetes-auth",
                    LoginCredential::Kubernetes {
                        identity_id: a.identity_id.clone(),
                        token: CredentialSource::from_file(&a.token_file),
                    },
                ),
                retry,
            ),
            InfisicalAuth::ServiceToken(a) => TokenCache::new(
                "infisical",
                StaticToken {
                    source: a.token.clone(),
                    base_dir: base_dir.to_path_buf(),
                },
                retry,
            ),
        };
        Ok(Self {
            client,
            api_url,
            project_id: config.project_id.clone(),
            environment: config.environment.clone(),
            tokens,
            retry,
        })
    }

    fn url(&self, key: Option<&str>) -> Result<reqwest::Url, StoreError> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v3/secrets/raw", self.api_url))
            .map_err(|_| StoreError::InvalidRequest("the API URL is malformed".into()))?;
        if let Some(key) = key {
            // Encodes whatever the key holds; it cannot leave the path.
            url.path_segments_mut()
                .map_err(|_| StoreError::InvalidRequest("the API URL is malformed".into()))?
                .push(key);
        }
        Ok(url)
    }

    async fn get(
        &self,
        url: reqwest::Url,
        query: &[(&str, &str)],
        version_named: bool,
    ) -> Result<Answer, StoreError> {
        let answer = self
            .tokens
            .send(
                &self.retry,
                |token| {
                    self.client
                        .get(url.clone())
                        .query(&[
                            ("workspaceId", self.project_id.as_str()),
                            ("environment", self.environment.as_str()),
                        ])
                        .query(query)
                        .bearer_auth(token)
                },
                token_rejected,
            )
            .await?;
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(api_error(answer.status, &answer.body, version_named))
        }
    }

    async fn read_secret(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        match target(&locator.path) {
            Target::Secret { folder, key } => {
                let version = locator.version.as_deref();
                if version.is_some_and(|v| v.parse::<u32>().is_err()) {
                    return Err(StoreError::InvalidRequest(
                        "an Infisical version is a number".into(),
                    ));
                }
                let mut query = vec![("secretPath", folder.as_str())];
                if let Some(v) = version {
                    query.push(("version", v));
                }
                let answer: SecretAnswer = self
                    .get(self.url(Some(key))?, &query, version.is_some())
                    .await?
                    .json()?;
                let value = Zeroizing::new(answer.secret.secret_value);
                Ok(SecretData::from_text(&value))
            }
            Target::Folder(folder) => {
                if locator.version.is_some() {
                    return Err(StoreError::InvalidRequest("a folder has no versions".into()));
                }
                let query = [
                    ("secretPath", folder.as_str()),
                    ("include_imports", "true"),
                    ("recursive", "false"),
                ];
                let answer: ListAnswer = self.get(self.url(None)?, &query, false).await?.json()?;
                // Imported secrets first: the folder's own keys override them,
                // as they do in Infisical itself.
                let mut properties = BTreeMap::new();
                for secret in answer
                    .imports
                    .into_iter()
                    .flat_map(|i| i.secrets)
                    .chain(answer.secrets)
                {
                    properties.insert(secret.secret_key, SecretValue::from(secret.secret_value));
                }
                // An empty or missing folder is most likely a wrong reference.
                if properties.is_empty() {
                    return Err(StoreError::NotFound);
                }
                Ok(SecretData::Properties(properties))
            }
        }
    }
}

#[async_trait]
impl Store for InfisicalStore {
    fn provider(&self) -> &'static str {
        "infisical"
    }

    async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        self.read_secret(locator).await
    }

    /// Infisical versions are numbers.
    fn canonical_version<'a>(&self, version: &'a str) -> std::borrow::Cow<'a, str> {
        super::canonical_number(version)
    }

    /// Signs in.
    async fn check(&self) -> Result<(), StoreError> {
        self.tokens.token().await.map(|_| ())
    }

    /// Signs in again before the token expires.
    fn upkeep(&self) -> Option<Upkeep> {
        Some(Box::pin(self.tokens.upkeep()))
    }
}

#[derive(Deserialize)]
struct SecretAnswer {
    secret: RawSecret,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSecret {
    secret_key: String,
    secret_value: String,
}

#[derive(Deserialize)]
struct ListAnswer {
    #[serde(default)]
    secrets: Vec<RawSecret>,
    #[serde(default)]
    imports: Vec<Import>,
}

#[derive(Deserialize)]
struct Import {
    #[serde(default)]
    secrets: Vec<RawSecret>,
}

/// Infisical's error body: `{"statusCode":404,"message":"…","error":"NotFound"}`.
#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    error: Option<String>,
}

/// Infisical refuses an expired or malformed access token with 403
/// `TokenError`, a revoked or unknown one with 401.
fn token_rejected(status: reqwest::StatusCode, body: &[u8]) -> bool {
    match status.as_u16() {
        401 => true,
        403 => error_name(body).as_deref() == Some("TokenError"),
        _ => false,
    }
}

fn error_name(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ApiError>(body)
        .ok()
        .and_then(|e| e.error)
}

/// The error names Infisical's API answers with (`error`); any other name
/// is not repeated.
const ERROR_NAMES: &[&str] = &[
    "BadRequest",
    "BadRequestError",
    "Unauthorized",
    "UnauthorizedError",
    "Forbidden",
    "ForbiddenError",
    "PermissionDenied",
    "TokenError",
    "NotFound",
    "NotFoundError",
    "RateLimitError",
    "InternalServerError",
    "GatewayTimeoutError",
    "DatabaseError",
];

fn api_error(status: reqwest::StatusCode, body: &[u8], version_named: bool) -> StoreError {
    let code = error_code(error_name(body).as_deref(), ERROR_NAMES);
    match status.as_u16() {
        404 if version_named => StoreError::VersionNotFound,
        _ => status_error(status, code),
    }
}

enum LoginCredential {
    Universal {
        client_id: String,
        client_secret: CredentialSource,
    },
    Kubernetes {
        identity_id: String,
        token: CredentialSource,
    },
}

/// Machine-identity login; the answer is a bearer token with a lifetime.
struct Login {
    client: reqwest::Client,
    url: String,
    credential: LoginCredential,
    base_dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[async_trait]
impl TokenProvider for Login {
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        // Credentials are re-read on every login, so rotation needs no restart.
        let body = match &self.credential {
            LoginCredential::Universal {
                client_id,
                client_secret,
            } => {
                let secret = client_secret.read(&self.base_dir).await?;
                Zeroizing::new(
                    serde_json::json!({
                        "clientId": client_id,
                        "clientSecret": secret.expose_str().unwrap_or_default(),
                    })
                    .to_string(),
                )
            }
            LoginCredential::Kubernetes { identity_id, token } => {
                let jwt = token.read(&self.base_dir).await?;
                Zeroizing::new(
                    serde_json::json!({
                        "identityId": identity_id,
                        "jwt": jwt.expose_str().unwrap_or_default(),
                    })
                    .to_string(),
                )
            }
        };
        let request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.as_bytes().to_vec());
        let answer = Answer::read(send_once(request).await?).await?;
        if !answer.status.is_success() {
            let code = error_code(error_name(&answer.body).as_deref(), ERROR_NAMES);
            let code = if code.is_empty() {
                String::new()
            } else {
                format!(" ({code})")
            };
            return Err(StoreError::Unauthorized(format!(
                "login: HTTP {}{code}",
                answer.status
            )));
        }
        let answer: LoginAnswer = answer.json()?;
        Ok(AccessToken {
            value: SecretValue::from(answer.access_token),
            lifetime: Some(Duration::from_secs(answer.expires_in.unwrap_or(7200))),
            renewable: false,
        })
    }
}

/// A service token: read from its source, never expires; after a 401 it is
/// read again, so a rotated token is picked up.
struct StaticToken {
    source: CredentialSource,
    base_dir: PathBuf,
}

#[async_trait]
impl TokenProvider for StaticToken {
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        Ok(AccessToken {
            value: self.source.read(&self.base_dir).await?,
            lifetime: None,
            renewable: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_paths() {
        assert_eq!(
            target("backend/db/DB_PASSWORD"),
            Target::Secret {
                folder: "/backend/db".into(),
                key: "DB_PASSWORD"
            }
        );
        assert_eq!(
            target("API_KEY"),
            Target::Secret {
                folder: "/".into(),
                key: "API_KEY"
            }
        );
        assert_eq!(target("backend/db/@all"), Target::Folder("/backend/db".into()));
        assert_eq!(target("@all"), Target::Folder("/".into()));
    }

    #[test]
    fn error_codes_are_kept_messages_dropped() {
        let body = br#"{"reqId":"r1","statusCode":403,"message":"You are not allowed to read secret hunter2","error":"PermissionDenied"}"#;
        let e = api_error(reqwest::StatusCode::FORBIDDEN, body, false);
        assert_eq!(
            e,
            StoreError::Unauthorized("HTTP 403 Forbidden (PermissionDenied)".into())
        );
        assert!(!e.to_string().contains("hunter2"));
    }
}
