//! Azure Key Vault secrets, through the Key Vault REST API (Get Secret,
//! api-version 2025-07-01) on reqwest. Tokens come from Microsoft Entra ID (client
//! secret, or workload identity with the federated token file AKS mounts) or
//! from the instance metadata service (managed identity). Three token flows
//! and one GET do not justify the Azure SDK's dependency tree.
//!
//! A vault in another tenant or cloud says in its 401 challenge which
//! tenant and resource its tokens come from: `azure/challenge.rs`.
//!
//! References: the secret name (`db-password`); the reference's version is
//! the Key Vault version id. A secret whose value is a JSON object is split
//! into properties.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::bearer::{oauth_token, send_once, unauthorized};
use super::common::{error_code, http_client, status_error, CredentialSource, Retry};
use super::identity::{fetch_in_session, PodIdentity, Sessions, WorkloadIdentity};
use super::token::{AccessToken, TokenCache, TokenProvider};
use super::{RequestLimit, SecretData, SecretLocator, SecretValue, Store, StoreError, Upkeep};
use crate::validate::{check_url, FieldError};

mod challenge;

use challenge::Challenge;

const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const DEFAULT_IMDS: &str = "http://169.254.169.254";
const DEFAULT_RESOURCE: &str = "https://vault.azure.net";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The audience Microsoft Entra expects of a federated credential's token.
const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

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
    /// `identity: pod`: the app registration or user-assigned identity of
    /// each `<namespace>/<serviceAccount>` (its federated credential trusts
    /// that account); the others use `clientId`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub client_ids: BTreeMap<String, String>,
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

/// The current Key Vault data-plane version ("Get Secret", REST API
/// 2025-07-01); older ones stay selectable with `apiVersion`.
fn default_api_version() -> String {
    "2025-07-01".to_owned()
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
    /// The checks of `identity: pod`; fields are below the section.
    pub fn validate_pod_identity(&self) -> Result<(), FieldError> {
        let Some(AzureAuth::WorkloadIdentity(a)) = self.auth.method() else {
            return Err(FieldError::new(
                "auth",
                "identity: pod signs in with workloadIdentity: the Pod's token is the client assertion of a federated credential",
            ));
        };
        if a.token_file.is_some() {
            return Err(FieldError::new(
                "auth.workloadIdentity.tokenFile",
                "is Sesame's own token; with identity: pod each Pod's token is requested",
            ));
        }
        if a.client_id.is_none() && a.client_ids.is_empty() {
            return Err(FieldError::new(
                "auth.workloadIdentity",
                "needs clientId or clientIds with identity: pod (AZURE_CLIENT_ID is Sesame's own)",
            ));
        }
        Ok(())
    }

    /// The checks of Sesame's own identity: `clientIds` is for `identity: pod`.
    pub fn validate_own_identity(&self) -> Result<(), FieldError> {
        match self.auth.method() {
            Some(AzureAuth::WorkloadIdentity(a)) if !a.client_ids.is_empty() => Err(FieldError::new(
                "auth.workloadIdentity.clientIds",
                "is read with identity: pod only",
            )),
            _ => Ok(()),
        }
    }

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
            AzureAuth::WorkloadIdentity(a) => {
                for (account, id) in &a.client_ids {
                    let named = account
                        .split_once('/')
                        .is_some_and(|(ns, sa)| WorkloadIdentity::new(ns, sa).is_ok());
                    if !named || !is_directory_id(id) {
                        return Err(FieldError::new(
                            "auth.workloadIdentity.clientIds",
                            format!(
                                "\"{account}\" must be <namespace>/<serviceAccount> with a client id GUID"
                            ),
                        ));
                    }
                }
                vec![
                    ("workloadIdentity.tenantId", a.tenant_id.as_ref()),
                    ("workloadIdentity.clientId", a.client_id.as_ref()),
                ]
            }
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
pub struct AzureStore {
    client: reqwest::Client,
    vault_url: String,
    /// The vault's host, which a challenge's resource must lie within.
    vault_host: String,
    api_version: String,
    signin: Signin,
    /// Tokens for the configured tenant and resource.
    tokens: Session,
    /// Tokens for what the vault's challenge asked instead, once it did.
    challenged: std::sync::RwLock<Option<std::sync::Arc<Session>>>,
    retry: Retry,
    /// `identity: pod`: a federated sign-in per ServiceAccount.
    workloads: Option<Workloads>,
}

/// The per-ServiceAccount side of a store with `identity: pod`.
struct Workloads {
    pod: PodIdentity,
    token_url: String,
    scope: String,
    client_id: Option<String>,
    client_ids: BTreeMap<String, String>,
    sessions: Sessions<TokenCache>,
}

/// Tokens for one tenant and resource.
struct Session {
    tenant: Option<String>,
    resource: String,
    tokens: TokenCache,
}

impl Session {
    /// Whether the challenge asks for what this session already has.
    fn answers(&self, challenge: &Challenge) -> bool {
        self.resource
            .trim_end_matches('/')
            .eq_ignore_ascii_case(&challenge.resource)
            && match (&self.tenant, &challenge.tenant) {
                // Managed identity signs in to its own tenant only.
                (None, _) | (_, None) => true,
                (Some(mine), Some(asked)) => mine.eq_ignore_ascii_case(asked),
            }
    }
}

/// How Sesame signs in, kept so that a challenge can ask for tokens of
/// another tenant or resource with the same credential.
#[derive(Clone)]
enum Signin {
    Entra {
        /// The configured authority host; a challenge never changes it.
        authority: String,
        tenant: String,
        client_id: String,
        credential: EntraCredential,
    },
    Imds {
        endpoint: String,
        client_id: Option<String>,
    },
}

impl Signin {
    fn session(
        &self,
        client: &reqwest::Client,
        retry: Retry,
        tenant: Option<&str>,
        resource: &str,
    ) -> Result<Session, StoreError> {
        let resource = resource.trim_end_matches('/');
        match self {
            Self::Entra {
                authority,
                tenant: configured,
                client_id,
                credential,
            } => {
                let tenant = tenant.unwrap_or(configured);
                Ok(Session {
                    tenant: Some(tenant.to_owned()),
                    resource: resource.to_owned(),
                    tokens: TokenCache::new(
                        "azure",
                        EntraAuth {
                            client: client.clone(),
                            token_url: format!("{authority}/{tenant}/oauth2/v2.0/token"),
                            client_id: client_id.clone(),
                            scope: format!("{resource}/.default"),
                            credential: credential.clone(),
                        },
                        retry,
                    ),
                })
            }
            Self::Imds { endpoint, client_id } => {
                let mut url = reqwest::Url::parse(&format!(
                    "{}/metadata/identity/oauth2/token",
                    endpoint.trim_end_matches('/')
                ))
                .map_err(|_| StoreError::InvalidRequest("imdsEndpoint is not a URL".into()))?;
                url.query_pairs_mut()
                    .append_pair("api-version", "2018-02-01")
                    .append_pair("resource", resource);
                if let Some(id) = client_id {
                    url.query_pairs_mut().append_pair("client_id", id);
                }
                Ok(Session {
                    tenant: None,
                    resource: resource.to_owned(),
                    tokens: TokenCache::new(
                        "azure",
                        ImdsAuth {
                            client: client.clone(),
                            url,
                        },
                        retry,
                    ),
                })
            }
        }
    }
}

impl AzureStore {
    pub fn with_identity(
        config: &AzureStoreConfig,
        base_dir: &Path,
        pod: Option<PodIdentity>,
    ) -> anyhow::Result<Self> {
        let Some(pod) = pod else {
            return Self::new(config, base_dir);
        };
        config
            .validate_pod_identity()
            .map_err(|e| anyhow::anyhow!("{}", e.within("azure")))?;
        let Some(AzureAuth::WorkloadIdentity(a)) = config.auth.method() else {
            anyhow::bail!("azure: identity: pod needs auth.workloadIdentity");
        };
        let tenant = a
            .tenant_id
            .clone()
            .or_else(|| std::env::var("AZURE_TENANT_ID").ok().filter(|v| !v.is_empty()))
            .filter(|t| is_directory_id(t))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "azure: identity: pod needs auth.workloadIdentity.tenantId (or AZURE_TENANT_ID)"
                )
            })?;
        // Sesame's own sign-in refuses: such a store reads as Pods only.
        let mut own = config.clone();
        own.auth.workload_identity = Some(WorkloadIdentityAuth {
            tenant_id: Some(tenant.clone()),
            client_id: Some(a.client_id.clone().unwrap_or_else(|| "pods-only".into())),
            token_file: Some(PathBuf::new()),
            client_ids: BTreeMap::new(),
        });
        let mut store = Self::new(&own, base_dir)?;
        if let Signin::Entra { credential, .. } = &mut store.signin {
            *credential = EntraCredential::PodsOnly;
        }
        store.tokens = store
            .signin
            .session(&store.client, store.retry, None, &config.resource)?;
        let Signin::Entra { authority, .. } = &store.signin else {
            anyhow::bail!("azure: identity: pod needs auth.workloadIdentity");
        };
        store.workloads = Some(Workloads {
            token_url: format!("{authority}/{tenant}/oauth2/v2.0/token"),
            scope: format!("{}/.default", config.resource.trim_end_matches('/')),
            client_id: a.client_id.clone(),
            client_ids: a.client_ids.clone(),
            sessions: pod.sessions(),
            pod,
        });
        Ok(store)
    }

    /// The federated sign-in of one ServiceAccount (`identity: pod`).
    fn pod_tokens(
        &self,
        workloads: &Workloads,
        identity: &WorkloadIdentity,
    ) -> Result<std::sync::Arc<TokenCache>, StoreError> {
        let client_id = workloads
            .client_ids
            .get(&identity.to_string())
            .or(workloads.client_id.as_ref())
            .ok_or_else(|| {
                StoreError::Unauthorized(format!("auth.workloadIdentity names no client id for {identity}"))
            })?;
        Ok(workloads.sessions.get(identity, || {
            TokenCache::new(
                "azure",
                EntraAuth {
                    client: self.client.clone(),
                    token_url: workloads.token_url.clone(),
                    client_id: client_id.clone(),
                    scope: workloads.scope.clone(),
                    credential: EntraCredential::Pod(workloads.pod.clone(), identity.clone()),
                },
                self.retry,
            )
        }))
    }

    pub fn new(config: &AzureStoreConfig, base_dir: &Path) -> anyhow::Result<Self> {
        let client = http_client(None, config.timeout)?;
        let retry = Retry::default();
        let authority = config
            .authority_host
            .clone()
            .or_else(|| {
                std::env::var("AZURE_AUTHORITY_HOST")
                    .ok()
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_AUTHORITY.to_owned());
        let authority = authority.trim_end_matches('/').to_owned();
        let method = config
            .auth
            .method()
            .ok_or_else(|| anyhow::anyhow!("azure: set exactly one auth method"))?;
        let signin = match method {
            AzureAuth::ClientSecret(a) => Signin::Entra {
                authority,
                tenant: a.tenant_id.clone(),
                client_id: a.client_id.clone(),
                credential: EntraCredential::Secret(a.client_secret.clone(), base_dir.to_path_buf()),
            },
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
                Signin::Entra {
                    authority,
                    tenant,
                    client_id,
                    credential: EntraCredential::FederatedToken(base_dir.join(token_file)),
                }
            }
            AzureAuth::ManagedIdentity(a) => Signin::Imds {
                endpoint: config.imds_endpoint.clone(),
                client_id: a.client_id.clone(),
            },
        };
        let tokens = signin
            .session(&client, retry, None, &config.resource)
            .map_err(|e| anyhow::anyhow!("azure: {e}"))?;
        let vault_url = config.vault_url.trim_end_matches('/').to_owned();
        let vault_host = reqwest::Url::parse(&vault_url)?
            .host_str()
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            client,
            vault_url,
            vault_host,
            api_version: config.api_version.clone(),
            signin,
            tokens,
            challenged: std::sync::RwLock::new(None),
            retry,
            workloads: None,
        })
    }

    /// The tokens to send: what the vault's challenge asked for, if it did.
    fn current(&self) -> Option<std::sync::Arc<Session>> {
        self.challenged.read().ok().and_then(|c| c.clone())
    }

    async fn send(&self, tokens: &TokenCache, url: &str) -> Result<super::bearer::Answer, StoreError> {
        tokens
            .send(
                &self.retry,
                |token| {
                    self.client
                        .get(url)
                        .query(&[("api-version", self.api_version.as_str())])
                        .bearer_auth(token)
                },
                unauthorized,
            )
            .await
    }

    /// A secret as the Pod's ServiceAccount: its own tenant's token, no
    /// challenge followed (the federated credential names its tenant).
    async fn get_secret_as(
        &self,
        tokens: &TokenCache,
        locator: &SecretLocator,
    ) -> Result<SecretData, StoreError> {
        let url = self.secret_url(locator)?;
        let answer = self.send(tokens, &url).await?;
        secret_of(&answer, locator)
    }

    fn secret_url(&self, locator: &SecretLocator) -> Result<String, StoreError> {
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
        Ok(url)
    }

    async fn get_secret(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        let url = self.secret_url(locator)?;
        let current = self.current();
        let session = current.as_deref().unwrap_or(&self.tokens);
        let mut answer = self.send(&session.tokens, &url).await?;
        if answer.status == reqwest::StatusCode::UNAUTHORIZED {
            // A vault in another tenant or cloud: sign in where it says.
            let challenge = match answer.challenge.as_deref() {
                Some(header) => Challenge::read(header, &self.vault_host)?,
                None => None,
            };
            if let Some(challenge) = challenge.filter(|c| !session.answers(c)) {
                tracing::info!(
                    tenant = challenge.tenant.as_deref().unwrap_or("-"),
                    resource = %challenge.resource,
                    "the vault asks for tokens of another tenant or resource"
                );
                let adopted = std::sync::Arc::new(self.signin.session(
                    &self.client,
                    self.retry,
                    challenge.tenant.as_deref(),
                    &challenge.resource,
                )?);
                answer = self.send(&adopted.tokens, &url).await?;
                // Kept whatever the vault answered: its tokens were issued,
                // and a second challenge alike would only repeat the sign-in.
                if let Ok(mut slot) = self.challenged.write() {
                    *slot = Some(adopted);
                }
            }
        }
        secret_of(&answer, locator)
    }
}

/// The secret of a Get Secret answer, or its error.
fn secret_of(answer: &super::bearer::Answer, locator: &SecretLocator) -> Result<SecretData, StoreError> {
    if !answer.status.is_success() {
        return Err(api_error(answer.status, &answer.body, locator.version.is_some()));
    }
    let bundle: SecretBundle = answer.json()?;
    let value = Zeroizing::new(bundle.value.unwrap_or_default());
    Ok(SecretData::from_text(&value))
}

#[async_trait]
impl Store for AzureStore {
    fn provider(&self) -> &'static str {
        "azure"
    }

    async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        self.get_secret(locator).await
    }

    /// Reads with the ServiceAccount's federated sign-in (`identity: pod`).
    async fn fetch_as(
        &self,
        identity: &WorkloadIdentity,
        locators: &[SecretLocator],
        limit: &RequestLimit,
    ) -> Vec<Result<SecretData, StoreError>> {
        fetch_in_session(
            self.workloads.as_ref(),
            locators,
            limit,
            |workloads| self.pod_tokens(workloads, identity),
            |tokens, l| async move { self.get_secret_as(&tokens, l).await },
        )
        .await
    }

    /// Obtains a token (none of Sesame's own with `identity: pod`).
    async fn check(&self) -> Result<(), StoreError> {
        if self.workloads.is_some() {
            return Ok(());
        }
        self.tokens.tokens.token().await.map(|_| ())
    }

    /// Obtains a new token before the current one expires (the configured
    /// tenant's; a challenged tenant's is obtained when it is due).
    fn upkeep(&self) -> Option<Upkeep> {
        if self.workloads.is_some() {
            return None;
        }
        Some(Box::pin(self.tokens.tokens.upkeep()))
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

#[derive(Clone)]
enum EntraCredential {
    Secret(CredentialSource, PathBuf),
    FederatedToken(PathBuf),
    /// `identity: pod`: a token of this ServiceAccount, requested per sign-in.
    Pod(PodIdentity, WorkloadIdentity),
    /// Sesame's own sign-in of a store with `identity: pod`: there is none.
    PodsOnly,
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
            EntraCredential::Pod(pod, identity) => (
                "client_assertion",
                pod.token(identity, FEDERATION_AUDIENCE).await?,
                true,
            ),
            EntraCredential::PodsOnly => {
                return Err(StoreError::Unauthorized(
                    "the store reads as the Pod's ServiceAccount (identity: pod) only".into(),
                ))
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
