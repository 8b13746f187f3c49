//! GCP Secret Manager, through its v1 REST API on reqwest: one call per
//! secret (`projects.secrets.versions.access`), which does not justify the
//! size of Google's client libraries. Tokens come from the metadata server
//! (GKE Workload Identity, GCE) or from a service-account key, exchanged for
//! an access token with an RS256 JWT signed by `ring`, which rustls already
//! builds into the binary.
//!
//! References: `my-secret` (in the configured project, or the key's project,
//! or the metadata server's project) or a full resource name
//! `projects/<project>/secrets/<secret>` (also with `locations/<location>/`
//! for regional secrets, against a regional endpoint). The version is
//! `latest` unless the reference names one (a number or an alias).
//!
//! `credentials` may also be an `external_account` configuration
//! (workload identity federation outside GKE), `impersonate` names a
//! service account to act as, and `identity: pod` exchanges the Pod's
//! ServiceAccount token at the workload identity provider: `gcp/federation.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::bearer::{oauth_token, send_once, unauthorized};
use super::common::{error_code, http_client, status_error, transport_error, CredentialSource, Retry};
use super::identity::{check_template, fetch_in_session, PodIdentity, Sessions, WorkloadIdentity};
use super::token::{AccessToken, TokenCache, TokenProvider};
use super::{RequestLimit, SecretData, SecretLocator, SecretValue, Store, StoreError, Upkeep};
use crate::validate::{check_url, FieldError};

mod federation;

use federation::{ExternalAccount, Impersonated, PodFederation};

const DEFAULT_ENDPOINT: &str = "https://secretmanager.googleapis.com";
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The `gcp` section of a store.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcpStoreConfig {
    /// Project of short references; defaults to the key's `project_id`, then
    /// to the metadata server's project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// A service-account key (JSON). Without it, tokens come from the
    /// metadata server (GKE Workload Identity, GCE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialSource>,
    /// Secret Manager API endpoint, e.g. a regional or private endpoint.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Metadata server `host[:port]`; defaults to `$GCE_METADATA_HOST`, then
    /// `metadata.google.internal`, as Google's own clients do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metadata_host: Option<String>,
    /// Timeout of one HTTP request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A service account to act as (IAM Credentials `generateAccessToken`
    /// with the store's own token); with `identity: pod` a template such
    /// as `{namespace}-{serviceAccount}@project.iam.gserviceaccount.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonate: Option<String>,
    /// `identity: pod`: the workload identity provider the Pod's token is
    /// exchanged at, `//iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity_provider: Option<String>,
    /// The Security Token Service (for `identity: pod`).
    #[serde(default = "default_sts")]
    pub sts_endpoint: String,
    /// The IAM Service Account Credentials API (for `impersonate`).
    #[serde(default = "default_iam_credentials")]
    pub iam_credentials_endpoint: String,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}

fn default_sts() -> String {
    federation::DEFAULT_STS.to_owned()
}

fn default_iam_credentials() -> String {
    federation::DEFAULT_IAM_CREDENTIALS.to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl GcpStoreConfig {
    /// The checks of `identity: pod`; fields are below the section.
    pub fn validate_pod_identity(&self) -> Result<(), FieldError> {
        match &self.workload_identity_provider {
            None => {
                return Err(FieldError::new(
                    "workloadIdentityProvider",
                    "is needed with identity: pod: the provider that trusts the cluster's ServiceAccount tokens",
                ))
            }
            Some(p) if !federation::is_provider_name(p) => {
                return Err(FieldError::new(
                    "workloadIdentityProvider",
                    "must be //iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>",
                ))
            }
            Some(_) => {}
        }
        if self.credentials.is_some() {
            return Err(FieldError::new(
                "credentials",
                "is Sesame's own identity; with identity: pod each Pod's token is exchanged instead",
            ));
        }
        if let Some(template) = &self.impersonate {
            check_template(template, "impersonate")?;
        }
        Ok(())
    }

    /// Checks the fields serde cannot; fields are below the section.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(email) = &self.impersonate {
            let sample = email
                .replace("{namespace}", "ns")
                .replace("{serviceAccount}", "sa");
            if !federation::is_service_account_email(&sample) {
                return Err(FieldError::new(
                    "impersonate",
                    "must be a service account's e-mail address such as reader@project.iam.gserviceaccount.com",
                ));
            }
        }
        if self.workload_identity_provider.is_some() && self.credentials.is_some() {
            return Err(FieldError::new(
                "workloadIdentityProvider",
                "is for identity: pod; Sesame's own federation goes in an external_account credentials file",
            ));
        }
        check_url(&self.sts_endpoint, "stsEndpoint")?;
        check_url(&self.iam_credentials_endpoint, "iamCredentialsEndpoint")?;
        if let Some(c) = &self.credentials {
            c.validate().map_err(|e| e.within("credentials"))?;
        }
        if let Some(p) = &self.project {
            if !is_project_id(p) {
                return Err(FieldError::new(
                    "project",
                    format!("\"{p}\" is not a project id or number"),
                ));
            }
        }
        check_url(&self.endpoint, "endpoint")
    }
}

/// Project ids, numbers and domain-scoped ids (`example.com:project`).
fn is_project_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':'))
}

/// Secret ids, location ids and version ids or aliases.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// A store reading GCP Secret Manager.
pub struct GcpStore {
    client: reqwest::Client,
    endpoint: String,
    tokens: TokenCache,
    retry: Retry,
    project: tokio::sync::OnceCell<String>,
    configured_project: Option<String>,
    key: Option<(CredentialSource, PathBuf)>,
    metadata_base: String,
    /// `identity: pod`: a federated token per ServiceAccount.
    workloads: Option<Workloads>,
}

/// The per-ServiceAccount side of a store with `identity: pod`.
struct Workloads {
    pod: PodIdentity,
    provider: String,
    token_url: String,
    impersonate: Option<String>,
    iam_credentials: String,
    sessions: Sessions<TokenCache>,
}

impl GcpStore {
    /// `new`, or with `pod` a store that reads as each Pod's ServiceAccount.
    pub fn with_identity(
        config: &GcpStoreConfig,
        base_dir: &Path,
        pod: Option<PodIdentity>,
    ) -> anyhow::Result<Self> {
        let mut store = Self::new(config, base_dir)?;
        if let Some(pod) = pod {
            config
                .validate_pod_identity()
                .map_err(|e| anyhow::anyhow!("{}", e.within("gcp")))?;
            store.workloads = Some(Workloads {
                sessions: pod.sessions(),
                pod,
                provider: config.workload_identity_provider.clone().unwrap_or_default(),
                token_url: format!("{}/v1/token", config.sts_endpoint.trim_end_matches('/')),
                impersonate: config.impersonate.clone(),
                iam_credentials: config.iam_credentials_endpoint.clone(),
            });
        }
        Ok(store)
    }

    pub fn new(config: &GcpStoreConfig, base_dir: &Path) -> anyhow::Result<Self> {
        let client = http_client(None, config.timeout)?;
        let metadata_host = config
            .metadata_host
            .clone()
            .or_else(|| std::env::var("GCE_METADATA_HOST").ok())
            .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned());
        let metadata_base = format!("http://{metadata_host}/computeMetadata/v1");
        let retry = Retry::default();
        let key = config.credentials.clone().map(|c| (c, base_dir.to_path_buf()));
        let base: Box<dyn TokenProvider> = match &key {
            Some((source, base_dir)) => Box::new(ServiceAccountAuth {
                client: client.clone(),
                source: source.clone(),
                base_dir: base_dir.clone(),
            }),
            None => Box::new(MetadataAuth {
                client: client.clone(),
                url: format!("{metadata_base}/instance/service-accounts/default/token"),
            }),
        };
        // `impersonate` on Sesame's own identity: act as that account. (A
        // template is for identity: pod, and rendered per ServiceAccount.)
        let tokens = match config.impersonate.as_deref().filter(|e| !e.contains('{')) {
            Some(email) => TokenCache::new(
                "gcp",
                Impersonated {
                    base,
                    client: client.clone(),
                    url: federation::impersonation_url(&config.iam_credentials_endpoint, email),
                },
                retry,
            ),
            None => TokenCache::new("gcp", BoxedProvider(base), retry),
        };
        Ok(Self {
            client,
            endpoint: config.endpoint.trim_end_matches('/').to_owned(),
            tokens,
            retry,
            project: tokio::sync::OnceCell::new(),
            configured_project: config.project.clone(),
            key,
            metadata_base,
            workloads: None,
        })
    }

    /// The token manager of one ServiceAccount (`identity: pod`).
    fn session(
        &self,
        workloads: &Workloads,
        identity: &WorkloadIdentity,
    ) -> Result<std::sync::Arc<TokenCache>, StoreError> {
        let impersonate = match &workloads.impersonate {
            None => None,
            Some(template) => {
                let email = identity.render(template);
                if !federation::is_service_account_email(&email) {
                    return Err(StoreError::InvalidRequest(
                        "the impersonate template gives no service account e-mail for this ServiceAccount"
                            .into(),
                    ));
                }
                Some(federation::impersonation_url(&workloads.iam_credentials, &email))
            }
        };
        Ok(workloads.sessions.get(identity, || {
            TokenCache::new(
                "gcp",
                PodFederation {
                    client: self.client.clone(),
                    pod: workloads.pod.clone(),
                    identity: identity.clone(),
                    provider: workloads.provider.clone(),
                    token_url: workloads.token_url.clone(),
                    impersonate,
                },
                self.retry,
            )
        }))
    }

    /// The project of short references, found once.
    async fn default_project(&self) -> Result<&str, StoreError> {
        self.project
            .get_or_try_init(|| async {
                if let Some(p) = &self.configured_project {
                    return Ok(p.clone());
                }
                if let Some((source, base_dir)) = &self.key {
                    // An external_account configuration names no project.
                    let raw = source.read(base_dir).await?;
                    if !is_external_account(raw.expose()) {
                        let key = ServiceAccountKey::parse(raw.expose())?;
                        if let Some(p) = key.project_id.as_deref().filter(|p| is_project_id(p)) {
                            return Ok(p.to_owned());
                        }
                    }
                }
                let url = format!("{}/project/project-id", self.metadata_base);
                let response = self
                    .retry
                    .run(|| send_once(self.client.get(&url).header("Metadata-Flavor", "Google")))
                    .await
                    .map_err(|e| {
                        StoreError::InvalidRequest(format!(
                            "no project configured and the metadata server did not name one ({e})"
                        ))
                    })?;
                if !response.status().is_success() {
                    return Err(StoreError::InvalidRequest(format!(
                        "no project configured and the metadata server answered HTTP {}",
                        response.status()
                    )));
                }
                let text = response.text().await.map_err(|e| transport_error(&e))?;
                let text = text.trim();
                if is_project_id(text) {
                    Ok(text.to_owned())
                } else {
                    Err(StoreError::InvalidResponse(
                        "the metadata server's project id is malformed".into(),
                    ))
                }
            })
            .await
            .map(String::as_str)
    }

    /// The secret's resource name for a reference path.
    async fn resource_name(&self, path: &str) -> Result<String, StoreError> {
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            [secret] if is_id(secret) => Ok(format!(
                "projects/{}/secrets/{secret}",
                self.default_project().await?
            )),
            ["projects", project, "secrets", secret] if is_project_id(project) && is_id(secret) => {
                Ok(path.to_owned())
            }
            ["projects", project, "locations", location, "secrets", secret]
                if is_project_id(project) && is_id(location) && is_id(secret) =>
            {
                Ok(path.to_owned())
            }
            _ => Err(StoreError::InvalidRequest(
                "a GCP reference is a secret id or projects/<project>/secrets/<secret>".into(),
            )),
        }
    }

    async fn access(&self, tokens: &TokenCache, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        let name = self.resource_name(&locator.path).await?;
        let version = locator.version.as_deref().unwrap_or("latest");
        if !is_id(version) {
            return Err(StoreError::InvalidRequest(
                "a GCP version is a number, latest or an alias".into(),
            ));
        }
        let url = format!("{}/v1/{name}/versions/{version}:access", self.endpoint);
        let answer = tokens
            .send(
                &self.retry,
                |token| self.client.get(&url).bearer_auth(token),
                unauthorized,
            )
            .await?;
        if !answer.status.is_success() {
            return Err(api_error(answer.status, &answer.body, locator.version.is_some()));
        }
        let access: AccessResponse = answer.json()?;
        payload_data(access.payload)
    }
}

#[async_trait]
impl Store for GcpStore {
    fn provider(&self) -> &'static str {
        "gcp"
    }

    async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        if self.workloads.is_some() {
            return Err(StoreError::Unauthorized(
                "the store reads as the Pod's ServiceAccount (identity: pod) only".into(),
            ));
        }
        self.access(&self.tokens, locator).await
    }

    /// Secret Manager versions are numbers (or aliases such as `latest`, kept as written).
    fn canonical_version<'a>(&self, version: &'a str) -> std::borrow::Cow<'a, str> {
        super::canonical_number(version)
    }

    /// Reads with the ServiceAccount's federated (or impersonated) token.
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
            |workloads| self.session(workloads, identity),
            |tokens, l| async move { self.access(&tokens, l).await },
        )
        .await
    }

    /// Obtains a token (none of Sesame's own with `identity: pod`).
    async fn check(&self) -> Result<(), StoreError> {
        if self.workloads.is_some() {
            return Ok(());
        }
        self.tokens.token().await.map(|_| ())
    }

    /// Obtains a new token before the current one expires.
    fn upkeep(&self) -> Option<Upkeep> {
        if self.workloads.is_some() {
            return None;
        }
        Some(Box::pin(self.tokens.upkeep()))
    }
}

/// `AccessSecretVersionResponse`.
#[derive(Deserialize)]
struct AccessResponse {
    payload: Option<Payload>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    #[serde(default)]
    data: Option<String>,
    /// int64 in proto3 JSON: a string, though a number is accepted too.
    #[serde(default)]
    data_crc32c: Option<serde_json::Value>,
}

/// Decodes and checks the payload: UTF-8 text goes through
/// `SecretData::from_text` (JSON objects become properties), other bytes
/// stay one value.
fn payload_data(payload: Option<Payload>) -> Result<SecretData, StoreError> {
    let payload = payload.ok_or_else(|| StoreError::InvalidResponse("the answer has no payload".into()))?;
    let encoded = Zeroizing::new(payload.data.unwrap_or_default());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .map_err(|_| StoreError::InvalidResponse("the payload is not base64".into()))?;
    let bytes = Zeroizing::new(bytes);
    let expected = match &payload.data_crc32c {
        None => None,
        Some(serde_json::Value::String(s)) => s.parse::<u64>().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(_) => None,
    };
    if payload.data_crc32c.is_some() && expected != Some(u64::from(crc32c(&bytes))) {
        return Err(StoreError::InvalidResponse(
            "the payload failed its CRC32C check".into(),
        ));
    }
    Ok(match std::str::from_utf8(&bytes) {
        Ok(text) => SecretData::from_text(text),
        Err(_) => SecretData::Value(SecretValue::new(bytes.to_vec())),
    })
}

/// Google API error body (`google.rpc.Status` in JSON).
#[derive(Deserialize)]
struct ApiError {
    error: ApiErrorBody,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The canonical codes of `google.rpc.Code`, the only `status` values
/// Google APIs send; anything else is not repeated.
const RPC_CODES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The `type`s of Google credential files, for a message that names a wrong one.
const CREDENTIAL_TYPES: &[&str] = &[
    "authorized_user",
    "external_account",
    "external_account_authorized_user",
    "impersonated_service_account",
    "gdch_service_account",
];

fn api_error(status: reqwest::StatusCode, body: &[u8], version_named: bool) -> StoreError {
    let parsed = serde_json::from_slice::<ApiError>(body).ok().map(|e| e.error);
    let code = error_code(parsed.as_ref().and_then(|e| e.status.as_deref()), RPC_CODES);
    // The message is read, never repeated: "Secret Version [...] not found"
    // versus "Secret [...] not found or has no versions".
    let about_version = parsed
        .as_ref()
        .and_then(|e| e.message.as_deref())
        .is_some_and(|m| m.starts_with("Secret Version"));
    match (status.as_u16(), code) {
        (404, _) if version_named && about_version => StoreError::VersionNotFound,
        (404, _) => StoreError::NotFound,
        // A disabled or destroyed version.
        (400, "FAILED_PRECONDITION") => StoreError::VersionNotFound,
        _ => status_error(status, code),
    }
}

/// Tokens from the metadata server.
struct MetadataAuth {
    client: reqwest::Client,
    url: String,
}

#[async_trait]
impl TokenProvider for MetadataAuth {
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        let response = send_once(self.client.get(&self.url).header("Metadata-Flavor", "Google")).await?;
        oauth_token(response, "metadata server").await
    }
}

/// Tokens from a service-account key: a JWT signed with the key, exchanged
/// at the key's `token_uri` (OAuth 2.0 JWT bearer grant, RFC 7523).
struct ServiceAccountAuth {
    client: reqwest::Client,
    source: CredentialSource,
    base_dir: PathBuf,
}

/// Whether a credentials file is an `external_account` configuration
/// rather than a service-account key.
fn is_external_account(raw: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    serde_json::from_slice::<Kind>(raw).is_ok_and(|k| k.kind.as_deref() == Some("external_account"))
}

/// A provider chosen at start, as the token manager takes it.
struct BoxedProvider(Box<dyn TokenProvider>);

#[async_trait]
impl TokenProvider for BoxedProvider {
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        self.0.obtain().await
    }
}

#[async_trait]
impl TokenProvider for ServiceAccountAuth {
    /// A service-account key, or an `external_account` configuration
    /// (workload identity federation), whichever the file holds.
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        // Re-read on every exchange, so a rotated key is picked up.
        let raw = self.source.read(&self.base_dir).await?;
        if is_external_account(raw.expose()) {
            return ExternalAccount::parse(raw.expose())?
                .token(&self.client, &self.base_dir)
                .await;
        }
        let key = ServiceAccountKey::parse(raw.expose())?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let assertion = Zeroizing::new(key.assertion(now)?);
        let form = [("grant_type", JWT_BEARER), ("assertion", assertion.as_str())];
        let response = send_once(self.client.post(&key.token_uri).form(&form)).await?;
        oauth_token(response, "token endpoint").await
    }
}

/// The fields of a service-account key file that Sesame uses.
#[derive(Deserialize)]
struct ServiceAccountKey {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".to_owned()
}

impl Drop for ServiceAccountKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.private_key);
    }
}

impl ServiceAccountKey {
    fn parse(raw: &[u8]) -> Result<Self, StoreError> {
        let key: Self = serde_json::from_slice(raw).map_err(|_| {
            StoreError::Unauthorized("the credentials are not a service-account key JSON".into())
        })?;
        if key.kind != "service_account" {
            let kind = match error_code(Some(&key.kind), CREDENTIAL_TYPES) {
                "" => "another type".to_owned(),
                known => format!("type \"{known}\""),
            };
            return Err(StoreError::Unauthorized(format!(
                "the credentials are of {kind}, not service_account"
            )));
        }
        Ok(key)
    }

    /// The signed JWT: `iss` the service account, `aud` the token URI,
    /// valid for an hour (the most Google accepts).
    fn assertion(&self, now: u64) -> Result<String, StoreError> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let signing_input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let signature = sign_rs256(self.private_key.as_bytes(), signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64.encode(signature)))
    }
}

/// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) over `message` with a PKCS#8 PEM key.
fn sign_rs256(pem: &[u8], message: &[u8]) -> Result<Vec<u8>, StoreError> {
    use rustls_pki_types::pem::PemObject;
    let invalid =
        || StoreError::Unauthorized("the service-account private key is not a PKCS#8 RSA key".into());
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| invalid())?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|_| invalid())?;
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        message,
        &mut signature,
    )
    .map_err(|_| StoreError::Unauthorized("signing the token request failed".into()))?;
    Ok(signature)
}

/// CRC32C (Castagnoli), as Secret Manager computes `dataCrc32c`.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn payload_crc_mismatch_is_rejected_without_the_value() {
        let payload = Payload {
            data: Some(base64::engine::general_purpose::STANDARD.encode("hunter2")),
            data_crc32c: Some(serde_json::Value::String("1".into())),
        };
        let e = payload_data(Some(payload)).unwrap_err();
        assert!(matches!(e, StoreError::InvalidResponse(_)));
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn binary_payload_is_one_value() {
        let bytes = vec![0xff, 0x00, 0xfe];
        let payload = Payload {
            data: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            data_crc32c: Some(serde_json::Value::String(crc32c(&bytes).to_string())),
        };
        let data = payload_data(Some(payload)).unwrap();
        assert_eq!(data.get(None).unwrap().expose(), &bytes[..]);
    }

    #[test]
    fn error_bodies_map_to_classes() {
        let body = br#"{"error":{"code":404,"message":"Secret Version [projects/1/secrets/a/versions/9] not found.","status":"NOT_FOUND"}}"#;
        assert_eq!(
            api_error(reqwest::StatusCode::NOT_FOUND, body, true),
            StoreError::VersionNotFound
        );
        let body = br#"{"error":{"code":404,"message":"Secret [projects/1/secrets/a] not found or has no versions.","status":"NOT_FOUND"}}"#;
        assert_eq!(
            api_error(reqwest::StatusCode::NOT_FOUND, body, true),
            StoreError::NotFound
        );
        let body = br#"{"error":{"code":403,"message":"Permission 'secretmanager.versions.access' denied","status":"PERMISSION_DENIED"}}"#;
        let e = api_error(reqwest::StatusCode::FORBIDDEN, body, false);
        assert_eq!(
            e,
            StoreError::Unauthorized("HTTP 403 Forbidden (PERMISSION_DENIED)".into())
        );
    }
}
