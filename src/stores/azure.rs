//! Azure Key Vault secrets, through the Key Vault REST API (Get Secret,
//! api-version 7.4) on reqwest. Tokens come from Microsoft Entra ID (client
//! secret, or workload identity with the federated token file AKS mounts) or
//! from the instance metadata service (managed identity). Three token flows
//! and one GET do not justify the Azure SDK's dependency tree.
//!
//! References: the secret name (`db-password`); the reference's version is
//! the Key Vault version id. A secret whose value is a JSON object is split
//! into properties.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::bearer::{oauth_token, send_once, unauthorized};
use super::common::{error_code, http_client, status_error, CredentialSource, Retry};
use super::token::{AccessToken, TokenCache, TokenProvider};
use super::{SecretData, SecretLocator, SecretValue, Store, StoreError, Upkeep};
use crate::validate::{check_url, FieldError};

const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const DEFAULT_IMDS: &str = "http://169.254.169.254";
const DEFAULT_RESOURCE: &str = "https://vault.azure.net";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `azure` section of a store.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AzureStoreConfig {
    /// The vault, e.g. `https://my-vault.vault.azure.net`.
    pub(crate) vault_url: String,
    /// How Sesame signs in: exactly one method.
    pub auth: AzureAuthConfig,
    /// Token audience; other clouds use e.g. `https://vault.azure.cn`.
    #[serde(default = "default_resource")]
    pub resource: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Microsoft Entra host; defaults to `$AZURE_AUTHORITY_HOST` (set by
    /// AKS workload identity), then `https://login.microsoftonline.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) authority_host: Option<String>,
    /// Instance metadata service, for managed identity.
    #[serde(default = "default_imds")]
    pub(crate) imds_endpoint: String,
    /// Timeout of one HTTP request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Sign-in methods; exactly one is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AzureAuthConfig {
    /// An app registration's client secret (OAuth client credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretAuth>,
    /// AKS workload identity: the projected service-account token is the
    /// client assertion of a federated credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) workload_identity: Option<WorkloadIdentityAuth>,
    /// The managed identity of the node (system- or user-assigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) managed_identity: Option<ManagedIdentityAuth>,
}

/// The one sign-in method that is set.
#[derive(Debug, Clone, Copy)]
pub enum AzureAuth<'a> {
    ClientSecret(&'a ClientSecretAuth),
    WorkloadIdentity(&'a WorkloadIdentityAuth),
    ManagedIdentity(&'a ManagedIdentityAuth),
}

impl AzureAuthConfig {
    pub fn method(&self) -> Option<AzureAuth<'_>> {
        match (
            &self.client_secret,
            &self.workload_identity,
            &self.managed_identity,
        ) {
            (Some(a), None, None) => Some(AzureAuth::ClientSecret(a)),
            (None, Some(a), None) => Some(AzureAuth::WorkloadIdentity(a)),
            (None, None, Some(a)) => Some(AzureAuth::ManagedIdentity(a)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientSecretAuth {
    pub(crate) tenant_id: String,
    pub client_id: String,
    pub client_secret: CredentialSource,
}

/// Every field defaults to the environment variable AKS injects.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadIdentityAuth {
    /// Default `$AZURE_TENANT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tenant_id: Option<String>,
    /// Default `$AZURE_CLIENT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Default `$AZURE_FEDERATED_TOKEN_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManagedIdentityAuth {
    /// A user-assigned identity's client id; none for the system identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

fn default_resource() -> String {
    DEFAULT_RESOURCE.to_owned()
}

fn default_api_version() -> String {
    "7.4".to_owned()
}

fn default_imds() -> String {
    DEFAULT_IMDS.to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Tenant ids (GUIDs or domains) and client ids (GUIDs).
fn is_directory_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

/// Key Vault object names: letters, digits and '-', at most 127.
fn is_secret_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 127 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl AzureStoreConfig {
    /// Checks the fields serde cannot; fields are below the section.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_url(&self.vault_url, "vaultUrl")?;
        check_url(&self.resource, "resource")?;
        check_url(&self.imds_endpoint, "imdsEndpoint")?;
        if let Some(host) = &self.authority_host {
            check_url(host, "authorityHost")?;
        }
        let Some(method) = self.auth.method() else {
            return Err(FieldError::new(
                "auth",
                "set exactly one of clientSecret, workloadIdentity, managedIdentity",
            ));
        };
        let ids = match method {
            AzureAuth::ClientSecret(a) => {
                a.client_secret
                    .validate()
                    .map_err(|e| e.within("auth.clientSecret.clientSecret"))?;
                vec![
                    ("clientSecret.tenantId", Some(&a.tenant_id)),
                    ("clientSecret.clientId", Some(&a.client_id)),
                ]
            }
            AzureAuth::WorkloadIdentity(a) => vec![
                ("workloadIdentity.tenantId", a.tenant_id.as_ref()),
                ("workloadIdentity.clientId", a.client_id.as_ref()),
            ],
            AzureAuth::ManagedIdentity(a) => vec![("managedIdentity.clientId", a.client_id.as_ref())],
        };
        for (name, id) in ids {
            if let Some(id) = id.filter(|id| !is_directory_id(id)) {
                return Err(FieldError::new(
                    format!("auth.{name}"),
                    format!("\"{id}\" is not a GUID or domain"),
                ));
            }
        }
        Ok(())
    }
}

/// A store reading Azure Key Vault secrets.
pub(crate) struct AzureStore {
    client: reqwest::Client,
    vault_url: String,
    api_version: String,
    tokens: TokenCache,
    retry: Retry,
}

impl AzureStore {
    pub fn new(config: &AzureStoreConfig, base_dir: &Path) -> anyhow::Result<Self> {
        let client = http_client(None, config.timeout)?;
        let retry = Retry::default();
        let scope = format!("{}/.default", config.resource.trim_end_matches('/'));
        let authority = config
            .authority_host
            .clone()
            .or_else(|| {
                std::env::var("AZURE_AUTHORITY_HOST")
                    .ok()
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_AUTHORITY.to_owned());
        let authority = authority.trim_end_matches('/');
        let method = config
            .auth
            .method()
            .ok_or_else(|| anyhow::anyhow!("azure: set exactly one auth method"))?;
        let tokens = match method {
            AzureAuth::ClientSecret(a) => TokenCache::new(
                "azure",
                EntraAuth {
                    client: client.clone(),
                    token_url: format!("{authority}/{}/oauth2/v2.0/token", a.tenant_id),
                    client_id: a.client_id.clone(),
                    scope,
                    credential: EntraCredential::Secret(a.client_secret.clone(), base_dir.to_path_buf()),
                },
                retry,
            ),
            AzureAuth::WorkloadIdentity(a) => {
                let from_env = |value: &Option<String>, var: &str| {
                    value
                        .clone()
                        .or_else(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
                        .ok_or_else(|| {
                            anyhow::anyhow!("azure workload identity: set {var} or the auth field")
                        })
                };
                let tenant = from_env(&a.tenant_id, "AZURE_TENANT_ID")?;
                let client_id = from_env(&a.client_id, "AZURE_CLIENT_ID")?;
                let token_file = from_env(
                    &a.token_file.as_ref().map(|p| p.display().to_string()),
                    "AZURE_FEDERATED_TOKEN_FILE",
                )?;
                if !is_directory_id(&tenant) || !is_directory_id(&client_id) {
                    anyhow::bail!("azure workload identity: the tenant or client id is not a GUID or domain");
                }
                TokenCache::new(
                    "azure",
                    EntraAuth {
                        client: client.clone(),
                        token_url: format!("{authority}/{tenant}/oauth2/v2.0/token"),
                        client_id,
                        scope,
                        credential: EntraCredential::FederatedToken(base_dir.join(token_file)),
                    },
                    retry,
                )
            }
            AzureAuth::ManagedIdentity(a) => {
                let mut url = reqwest::Url::parse(&format!(
                    "{}/metadata/identity/oauth2/token",
                    config.imds_endpoint.trim_end_matches('/')
                ))?;
                url.query_pairs_mut()
                    .append_pair("api-version", "2018-02-01")
                    .append_pair("resource", &config.resource);
                if let Some(id) = &a.client_id {
                    url.query_pairs_mut().append_pair("client_id", id);
                }
                TokenCache::new(
                    "azure",
                    ImdsAuth {
                        client: client.clone(),
                        url,
                    },
                    retry,
                )
            }
        };
        Ok(Self {
            client,
            vault_url: config.vault_url.trim_end_matches('/').to_owned(),
            api_version: config.api_version.clone(),
            tokens,
            retry,
        })
    }

    async fn get_secret(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        if !is_secret_name(&locator.path) {
            return Err(StoreError::InvalidRequest(
                "a Key Vault secret name is letters, digits and '-'".into(),
            ));
        }
        let url = match locator.version.as_deref() {
            None => format!("{}/secrets/{}", self.vault_url, locator.path),
            Some(v) if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                format!("{}/secrets/{}/{v}", self.vault_url, locator.path)
            }
            Some(_) => {
                return Err(StoreError::InvalidRequest(
                    "a Key Vault version is an id of letters and digits".into(),
                ))
            }
        };
        let answer = self
            .tokens
            .send(
                &self.retry,
                |token| {
                    self.client
                        .get(&url)
                        .query(&[("api-version", self.api_version.as_str())])
                        .bearer_auth(token)
                },
                unauthorized,
            )
            .await?;
        if !answer.status.is_success() {
            return Err(api_error(answer.status, &answer.body, locator.version.is_some()));
        }
        let bundle: SecretBundle = answer.json()?;
        let value = Zeroizing::new(bundle.value.unwrap_or_default());
        Ok(SecretData::from_text(&value))
    }
}

#[async_trait]
impl Store for AzureStore {
    fn provider(&self) -> &'static str {
        "azure"
    }

    async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        self.get_secret(locator).await
    }

    /// Obtains a token.
    async fn check(&self) -> Result<(), StoreError> {
        self.tokens.token().await.map(|_| ())
    }

    /// Obtains a new token before the current one expires.
    fn upkeep(&self) -> Option<Upkeep> {
        Some(Box::pin(self.tokens.upkeep()))
    }
}

/// `SecretBundle`; only the value is used.
#[derive(Deserialize)]
struct SecretBundle {
    value: Option<String>,
}

/// `KeyVaultError`: `{"error":{"code":..,"message":..,"innererror":{"code":..}}}`.
#[derive(Deserialize)]
struct ApiError {
    error: ApiErrorBody,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    innererror: Option<Box<ApiErrorBody>>,
}

/// Key Vault's error codes (`error.code` and `innererror.code`) that a
/// message may name; any other code is not repeated.
const KEY_VAULT_CODES: &[&str] = &[
    "BadParameter",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "ForbiddenByConnection",
    "ForbiddenByFirewall",
    "ForbiddenByPolicy",
    "ForbiddenByRbac",
    "AccessDenied",
    "InternalServerError",
    "NotFound",
    "SecretDisabled",
    "SecretNotFound",
    "ServiceUnavailable",
    "Throttled",
    "Unauthorized",
];

fn api_error(status: reqwest::StatusCode, body: &[u8], version_named: bool) -> StoreError {
    let parsed = serde_json::from_slice::<ApiError>(body).ok().map(|e| e.error);
    // The innermost code is the most precise (ForbiddenByRbac, SecretDisabled).
    let mut code = None;
    let mut level = parsed.as_ref();
    while let Some(e) = level {
        code = e.code.as_deref().or(code);
        level = e.innererror.as_deref();
    }
    let code = error_code(code, KEY_VAULT_CODES);
    match (status.as_u16(), code) {
        (404, _) if version_named => StoreError::VersionNotFound,
        (404, _) => StoreError::NotFound,
        // A disabled secret or version cannot be read by anyone: it is absent.
        (403, "SecretDisabled") if version_named => StoreError::VersionNotFound,
        (403, "SecretDisabled") => StoreError::NotFound,
        _ => status_error(status, code),
    }
}

enum EntraCredential {
    Secret(CredentialSource, PathBuf),
    FederatedToken(PathBuf),
}

/// Microsoft Entra ID token endpoint, client credentials grant with a secret
/// or with a federated client assertion.
struct EntraAuth {
    client: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    credential: EntraCredential,
}

#[async_trait]
impl TokenProvider for EntraAuth {
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        // Both credentials are re-read on every request: Kubernetes rotates
        // the projected token file, Secrets get rotated too.
        let (name, value, assertion) = match &self.credential {
            EntraCredential::Secret(source, base_dir) => {
                ("client_secret", source.read(base_dir).await?, false)
            }
            EntraCredential::FederatedToken(path) => {
                let raw = tokio::fs::read(path).await.map_err(|e| {
                    StoreError::Unauthorized(format!(
                        "cannot read the federated token file {}: {}",
                        path.display(),
                        e.kind()
                    ))
                })?;
                let text = String::from_utf8_lossy(&raw).trim().to_owned();
                ("client_assertion", SecretValue::from(text), true)
            }
        };
        let value = value
            .expose_str()
            .ok_or_else(|| StoreError::Unauthorized("the credential is not text".into()))?;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
            (name, value),
        ];
        if assertion {
            form.push(("client_assertion_type", ASSERTION_TYPE));
        }
        let response = send_once(self.client.post(&self.token_url).form(&form)).await?;
        oauth_token(response, "Microsoft Entra token endpoint").await
    }
}

/// Managed identity through the instance metadata service.
struct ImdsAuth {
    client: reqwest::Client,
    url: reqwest::Url,
}

#[async_trait]
impl TokenProvider for ImdsAuth {
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        let response = send_once(self.client.get(self.url.clone()).header("Metadata", "true")).await?;
        oauth_token(response, "instance metadata service").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_map_to_classes() {
        let not_found = br#"{"error":{"code":"SecretNotFound","message":"A secret with (name/id) db was not found in this key vault."}}"#;
        assert_eq!(
            api_error(reqwest::StatusCode::NOT_FOUND, not_found, false),
            StoreError::NotFound
        );
        assert_eq!(
            api_error(reqwest::StatusCode::NOT_FOUND, not_found, true),
            StoreError::VersionNotFound
        );
        let rbac = br#"{"error":{"code":"Forbidden","message":"Caller is not authorized","innererror":{"code":"ForbiddenByRbac"}}}"#;
        assert_eq!(
            api_error(reqwest::StatusCode::FORBIDDEN, rbac, false),
            StoreError::Unauthorized("HTTP 403 Forbidden (ForbiddenByRbac)".into())
        );
        let disabled = br#"{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}}"#;
        assert_eq!(
            api_error(reqwest::StatusCode::FORBIDDEN, disabled, false),
            StoreError::NotFound
        );
    }

    #[test]
    fn config_parses_each_auth_method() {
        for yaml in [
            "vaultUrl: https://v.vault.azure.net\nauth:\n  clientSecret: {tenantId: t, clientId: c, clientSecret: {env: X}}\n",
            "vaultUrl: https://v.vault.azure.net\nauth:\n  workloadIdentity: {}\n",
            "vaultUrl: https://v.vault.azure.net\nauth:\n  managedIdentity: {clientId: 00000000-0000-0000-0000-000000000001}\n",
        ] {
            let c: AzureStoreConfig = serde_norway::from_str(yaml).unwrap();
            c.validate().unwrap();
        }
        let bad: AzureStoreConfig =
            serde_norway::from_str("vaultUrl: not-a-url\nauth:\n  managedIdentity: {}\n").unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "vaultUrl");
    }
}
