//! HashiCorp Vault and OpenBao: KV v1 and v2 over the HTTP API.
//!
//! Authentication (token, AppRole, Kubernetes) happens at start; a background
//! task renews the token (`auth/token/renew-self`) at two thirds of its TTL,
//! or logs in again when renewal no longer helps (max TTL reached, token not
//! renewable). Requests only read the current token. A request that still
//! meets a 403 logs in once more and retries, in case the token was revoked.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::common::{fetch_each, http_client, status_error, transport_error, CredentialSource, Retry};
use super::{json_properties, SecretData, SecretLocator, SecretValue, Store, StoreError};
use crate::validate::{exactly_one, is_http_url, FieldError};

/// `stores[].vault`: where Vault is, which KV mount to read, how to log in.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VaultStoreConfig {
    /// Base URL, e.g. `https://vault.vault.svc:8200`.
    pub address: String,
    /// Vault Enterprise namespace, sent as `X-Vault-Namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The KV mount, e.g. `secret` or `kv/team-a`.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// KV engine version of the mount: 1 or 2.
    #[serde(default = "default_kv_version")]
    pub kv_version: u8,
    /// Extra CA bundle (PEM) for a self-hosted server, relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How Sesame logs in: exactly one method.
    pub auth: VaultAuthConfig,
}

fn default_mount() -> String {
    "secret".into()
}

fn default_kv_version() -> u8 {
    2
}

/// Exactly one of the fields is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VaultAuthConfig {
    /// A token read from a file or env var (re-read on every re-login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<CredentialSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role: Option<AppRoleAuthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuthConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppRoleAuthConfig {
    /// The role id: not a secret by itself, so it may be written inline.
    pub role_id: RoleIdSource,
    pub secret_id: CredentialSource,
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

fn default_approle_mount() -> String {
    "approle".into()
}

/// A role id given inline or read like a credential.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RoleIdSource {
    Plain(String),
    Source(CredentialSource),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesAuthConfig {
    /// The Vault role bound to Sesame's service account.
    pub role: String,
    /// The service-account token, re-read on every login (it is rotated).
    #[serde(default = "default_sa_token_file")]
    pub token_file: PathBuf,
    #[serde(default = "default_kubernetes_mount")]
    pub mount: String,
}

fn default_sa_token_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}

impl VaultStoreConfig {
    /// Checks what serde cannot; fields are below `vault`.
    pub fn validate(&self) -> Result<(), FieldError> {
        let invalid = |field: &str, message: &str| Err(FieldError::new(field, message));
        if !is_http_url(&self.address) {
            return invalid("address", "must be an http(s) URL such as https://vault:8200");
        }
        if let Some(ns) = &self.namespace {
            if !mount_is_valid(ns) || !ns.bytes().all(|b| b.is_ascii_graphic()) {
                return invalid(
                    "namespace",
                    "must be a namespace path such as team-a or org/team-a",
                );
            }
        }
        if !mount_is_valid(&self.mount) {
            return invalid("mount", "must be a path such as secret or kv/team-a");
        }
        if !matches!(self.kv_version, 1 | 2) {
            return invalid("kvVersion", "must be 1 or 2");
        }
        let auth = &self.auth;
        let methods = [
            auth.token.as_ref().map(drop),
            auth.app_role.as_ref().map(drop),
            auth.kubernetes.as_ref().map(drop),
        ];
        if exactly_one(methods).is_err() {
            return invalid("auth", "set exactly one of token, appRole or kubernetes");
        }
        if let Some(token) = &auth.token {
            token.validate().map_err(|e| e.within("auth.token"))?;
        }
        if let Some(app_role) = &auth.app_role {
            match &app_role.role_id {
                RoleIdSource::Plain(id) if id.trim().is_empty() => {
                    return invalid("auth.appRole.roleId", "must not be empty")
                }
                RoleIdSource::Plain(_) => {}
                RoleIdSource::Source(source) => {
                    source.validate().map_err(|e| e.within("auth.appRole.roleId"))?
                }
            }
            app_role
                .secret_id
                .validate()
                .map_err(|e| e.within("auth.appRole.secretId"))?;
            if !mount_is_valid(&app_role.mount) {
                return invalid("auth.appRole.mount", "must be a path such as approle");
            }
        }
        if let Some(k8s) = &auth.kubernetes {
            if k8s.role.trim().is_empty() {
                return invalid("auth.kubernetes.role", "must not be empty");
            }
            if !mount_is_valid(&k8s.mount) {
                return invalid("auth.kubernetes.mount", "must be a path such as kubernetes");
            }
        }
        Ok(())
    }
}

fn mount_is_valid(mount: &str) -> bool {
    !mount.is_empty()
        && mount
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['%', '?', '#', ' ']))
}

/// How a token is obtained, with its credentials' sources (never the credentials).
#[derive(Clone)]
enum Login {
    Token(CredentialSource),
    AppRole {
        role_id: RoleIdSource,
        secret_id: CredentialSource,
        mount: String,
    },
    Kubernetes {
        role: String,
        token_file: CredentialSource,
        mount: String,
    },
}

impl Login {
    fn method(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::AppRole { .. } => "approle",
            Self::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// The token in use. `ttl: None` means it never expires (a root token).
struct TokenState {
    token: SecretValue,
    generation: u64,
    /// When the token was last obtained or renewed; its TTL counts from here.
    obtained: Instant,
    /// When the login that produced the token happened.
    logged_in: Instant,
    ttl: Option<Duration>,
    renewable: bool,
    /// TTL right after login. A renewal that yields less than two thirds of it
    /// means the max TTL is near: then a new login, while the token still works.
    login_ttl: Option<Duration>,
}

impl TokenState {
    fn expired(&self) -> bool {
        self.ttl.is_some_and(|ttl| self.obtained.elapsed() >= ttl)
    }

    /// When the background task should act: at two thirds of the TTL.
    fn refresh_due(&self) -> Option<Instant> {
        self.ttl.map(|ttl| self.obtained + ttl * 2 / 3)
    }
}

/// How often the token was obtained and renewed, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthCounts {
    /// Logins, in the background or at start.
    pub logins: u64,
    /// Successful `renew-self` calls.
    pub renewals: u64,
    /// Logins a request had to do itself (no valid token, or a 403).
    pub request_path_logins: u64,
}

/// Talks to Vault: the HTTP client, the address, and the token.
struct Client {
    http: reqwest::Client,
    base: Url,
    namespace: Option<String>,
    base_dir: PathBuf,
    login: Login,
    state: ArcSwapOption<TokenState>,
    /// Serialises logins so that many requests meeting a 403 log in once.
    login_lock: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    logins: AtomicU64,
    renewals: AtomicU64,
    request_path_logins: AtomicU64,
    retry: Retry,
}

/// The shape of `auth` in login and renew answers.
#[derive(Deserialize)]
struct AuthAnswer {
    auth: Option<AuthBlock>,
}

#[derive(Deserialize)]
struct AuthBlock {
    #[serde(default)]
    client_token: Option<String>,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct LookupAnswer {
    data: LookupData,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct ErrorsAnswer {
    #[serde(default)]
    errors: Vec<String>,
}

/// Why a single HTTP exchange failed, with the 403 kept apart: only a token
/// problem is worth a re-login.
enum CallError {
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

impl Client {
    fn new(
        http: reqwest::Client,
        base: Url,
        namespace: Option<String>,
        base_dir: PathBuf,
        login: Login,
    ) -> Self {
        Self {
            http,
            base,
            namespace,
            base_dir,
            login,
            state: ArcSwapOption::empty(),
            login_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            request_path_logins: AtomicU64::new(0),
            retry: Retry::default(),
        }
    }

    fn url(&self, segments: &[&str]) -> Result<Url, StoreError> {
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
    async fn call_retrying(
        &self,
        method: Method,
        url: &Url,
        token: Option<&SecretValue>,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, bytes::Bytes), CallError> {
        let denied = std::sync::atomic::AtomicBool::new(false);
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

    /// Obtains a fresh token with the configured method and installs it.
    async fn login(&self) -> Result<Arc<TokenState>, StoreError> {
        let (token, ttl, renewable) = match &self.login {
            Login::Token(source) => {
                let token = source.read(&self.base_dir).await?;
                let url = self.url(&["auth/token/lookup-self"])?;
                let (_, body) = self.call_retrying(Method::GET, &url, Some(&token), None).await?;
                let lookup: LookupAnswer = parse(&body, "token lookup")?;
                (token, lookup.data.ttl, lookup.data.renewable)
            }
            Login::AppRole {
                role_id,
                secret_id,
                mount,
            } => {
                let role_id = match role_id {
                    RoleIdSource::Plain(id) => SecretValue::from(id.as_str()),
                    RoleIdSource::Source(source) => source.read(&self.base_dir).await?,
                };
                let secret_id = secret_id.read(&self.base_dir).await?;
                let body = serde_json::json!({
                    "role_id": text(&role_id)?,
                    "secret_id": text(&secret_id)?,
                });
                self.login_call(mount, &body).await?
            }
            Login::Kubernetes {
                role,
                token_file,
                mount,
            } => {
                let jwt = token_file.read(&self.base_dir).await?;
                let body = serde_json::json!({ "role": role, "jwt": text(&jwt)? });
                self.login_call(mount, &body).await?
            }
        };
        let ttl = (ttl > 0).then(|| Duration::from_secs(ttl));
        let state = Arc::new(TokenState {
            token,
            generation: self.generation.fetch_add(1, Ordering::SeqCst) + 1,
            obtained: Instant::now(),
            logged_in: Instant::now(),
            ttl,
            renewable,
            login_ttl: ttl,
        });
        self.state.store(Some(state.clone()));
        self.logins.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(method = self.login.method(), ttl_secs = ?ttl.map(|t| t.as_secs()), "logged in to Vault");
        Ok(state)
    }

    async fn login_call(
        &self,
        mount: &str,
        body: &serde_json::Value,
    ) -> Result<(SecretValue, u64, bool), StoreError> {
        let url = self.url(&["auth", mount, "login"])?;
        // Vault refuses bad credentials with 400 or 403: either way, a failed login.
        let (status, bytes) = self
            .call_retrying(Method::POST, &url, None, Some(body))
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::InvalidRequest(m) => StoreError::Unauthorized(format!("login refused: {m}")),
                other => other,
            })?;
        if status == StatusCode::NOT_FOUND {
            return Err(StoreError::Unauthorized(format!(
                "no auth method is mounted at auth/{mount}"
            )));
        }
        let answer: AuthAnswer = parse(&bytes, "login")?;
        let auth = answer
            .auth
            .ok_or_else(|| StoreError::InvalidResponse("the login answer has no auth block".into()))?;
        let token = auth
            .client_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| StoreError::InvalidResponse("the login answer has no token".into()))?;
        Ok((SecretValue::from(token), auth.lease_duration, auth.renewable))
    }

    /// Renews the current token; falls back to a login when renewal is not
    /// possible or no longer extends the token enough (its max TTL is near).
    async fn refresh(&self) -> Result<(), StoreError> {
        let _guard = self.login_lock.lock().await;
        let Some(current) = self.state.load_full() else {
            return self.login().await.map(|_| ());
        };
        if current.renewable && !current.expired() {
            let url = self.url(&["auth/token/renew-self"])?;
            let body = serde_json::json!({});
            match self
                .call_retrying(Method::POST, &url, Some(&current.token), Some(&body))
                .await
            {
                Ok((status, bytes)) if status.is_success() => {
                    let answer: AuthAnswer = parse(&bytes, "token renewal")?;
                    if let Some(auth) = answer.auth {
                        let ttl = Duration::from_secs(auth.lease_duration);
                        let enough = current.login_ttl.is_none_or(|login_ttl| ttl >= login_ttl * 2 / 3);
                        if auth.lease_duration > 0 && (enough || matches!(self.login, Login::Token(_))) {
                            self.state.store(Some(Arc::new(TokenState {
                                token: current.token.clone(),
                                generation: current.generation,
                                obtained: Instant::now(),
                                logged_in: current.logged_in,
                                ttl: Some(ttl),
                                renewable: auth.renewable,
                                login_ttl: current.login_ttl,
                            })));
                            self.renewals.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(ttl_secs = ttl.as_secs(), "renewed the Vault token");
                            return Ok(());
                        }
                    }
                }
                Ok(_) => {}
                Err(CallError::Denied(_)) => {}
                Err(CallError::Other(e)) => return Err(e),
            }
        }
        self.login().await.map(|_| ())
    }

    /// The token for a request. Logs in only when there is no usable token
    /// (start-up login failed, or the background task could not keep up).
    async fn token(&self) -> Result<Arc<TokenState>, StoreError> {
        if let Some(state) = self.state.load_full() {
            if !state.expired() {
                return Ok(state);
            }
        }
        let _guard = self.login_lock.lock().await;
        if let Some(state) = self.state.load_full() {
            if !state.expired() {
                return Ok(state);
            }
        }
        self.request_path_logins.fetch_add(1, Ordering::Relaxed);
        self.login().await
    }

    /// After a 403 with token `generation`: logs in again unless another
    /// request already did, or the last login is too recent to be the cause.
    async fn relogin_after_denial(&self, generation: u64) -> Result<Arc<TokenState>, StoreError> {
        let _guard = self.login_lock.lock().await;
        if let Some(state) = self.state.load_full() {
            if state.generation != generation {
                return Ok(state);
            }
        }
        self.request_path_logins.fetch_add(1, Ordering::Relaxed);
        self.login().await
    }

    /// Runs an authenticated exchange; on a 403, logs in once more and retries.
    async fn authed(&self, method: Method, url: &Url) -> Result<(StatusCode, bytes::Bytes), StoreError> {
        let state = self.token().await?;
        match self
            .call_retrying(method.clone(), url, Some(&state.token), None)
            .await
        {
            Ok(v) => Ok(v),
            Err(CallError::Denied(e)) => {
                // A token just obtained that is denied lacks a policy: no second login.
                if state.logged_in.elapsed() < Duration::from_secs(2) {
                    return Err(e);
                }
                let fresh = self.relogin_after_denial(state.generation).await?;
                Ok(self.call_retrying(method, url, Some(&fresh.token), None).await?)
            }
            Err(CallError::Other(e)) => Err(e),
        }
    }
}

/// Background upkeep of the token: renew or log in again before expiry.
async fn maintain(client: Arc<Client>) {
    let mut failures: u32 = 0;
    loop {
        let wait = if failures > 0 {
            // Back off, but try again before the token runs out.
            let backoff = Duration::from_millis(500)
                .saturating_mul(1 << failures.min(6))
                .min(Duration::from_secs(30));
            match client.state.load().as_ref().and_then(|s| {
                s.ttl
                    .map(|ttl| (s.obtained + ttl).saturating_duration_since(Instant::now()))
            }) {
                Some(left) if left > Duration::ZERO => backoff.min(left / 2).max(Duration::from_millis(200)),
                _ => backoff,
            }
        } else {
            match client.state.load().as_ref() {
                None => Duration::ZERO,
                Some(state) => match state.refresh_due() {
                    Some(due) => due
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(200)),
                    // A token that never expires: look again now and then, in
                    // case a file-sourced token was replaced.
                    None => Duration::from_secs(300),
                },
            }
        };
        tokio::time::sleep(wait).await;
        let never_expires = client.state.load().as_ref().is_some_and(|s| s.ttl.is_none());
        if never_expires && !matches!(client.login, Login::Token(_)) {
            continue;
        }
        match client.refresh().await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(method = client.login.method(), error_class = e.class(), error = %e, "could not renew the Vault token; will try again");
            }
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|_| StoreError::InvalidResponse(format!("the {what} answer is not the expected JSON")))
}

fn text(value: &SecretValue) -> Result<&str, StoreError> {
    value
        .expose_str()
        .ok_or_else(|| StoreError::Unauthorized("a credential is not UTF-8 text".into()))
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

/// The KV engine version of the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KvVersion {
    V1,
    V2,
}

/// A Vault or OpenBao KV store.
pub struct VaultStore {
    client: Arc<Client>,
    mount: String,
    kv: KvVersion,
    upkeep: tokio::task::AbortHandle,
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.client.base.as_str())
            .field("namespace", &self.client.namespace)
            .field("mount", &self.mount)
            .field("kv", &self.kv)
            .field("auth", &self.client.login.method())
            .finish_non_exhaustive()
    }
}

impl Drop for VaultStore {
    fn drop(&mut self) {
        self.upkeep.abort();
    }
}

impl VaultStore {
    /// Builds the client and logs in. A failed first login is logged, not
    /// fatal: the background task keeps trying and `check` reports it, so a
    /// Vault outage at start does not crash-loop the webhook.
    pub async fn new(config: &VaultStoreConfig, base_dir: &Path) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{}", e.within("vault")))?;
        let ca = config.ca_file.as_ref().map(|p| base_dir.join(p));
        let http = http_client(ca.as_deref(), Duration::from_secs(5))?;
        let base = Url::parse(&config.address)?;
        let auth = &config.auth;
        let login = if let Some(token) = &auth.token {
            Login::Token(token.clone())
        } else if let Some(app_role) = &auth.app_role {
            Login::AppRole {
                role_id: app_role.role_id.clone(),
                secret_id: app_role.secret_id.clone(),
                mount: app_role.mount.clone(),
            }
        } else if let Some(k8s) = &auth.kubernetes {
            Login::Kubernetes {
                role: k8s.role.clone(),
                token_file: CredentialSource::from_file(&k8s.token_file),
                mount: k8s.mount.clone(),
            }
        } else {
            anyhow::bail!("vault.auth: set exactly one of token, appRole or kubernetes");
        };
        let client = Arc::new(Client::new(
            http,
            base,
            config.namespace.clone(),
            base_dir.to_path_buf(),
            login,
        ));
        if let Err(e) = client.login().await {
            tracing::warn!(address = %client.base, method = client.login.method(), error_class = e.class(), error = %e, "first Vault login failed; retrying in the background");
        }
        let upkeep = tokio::spawn(maintain(client.clone())).abort_handle();
        Ok(Self {
            client,
            mount: config.mount.clone(),
            kv: if config.kv_version == 1 {
                KvVersion::V1
            } else {
                KvVersion::V2
            },
            upkeep,
        })
    }

    /// Login and renewal counts so far.
    pub fn auth_counts(&self) -> AuthCounts {
        AuthCounts {
            logins: self.client.logins.load(Ordering::Relaxed),
            renewals: self.client.renewals.load(Ordering::Relaxed),
            request_path_logins: self.client.request_path_logins.load(Ordering::Relaxed),
        }
    }

    async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        let mut url = match self.kv {
            KvVersion::V1 => {
                if locator.version.is_some() {
                    return Err(StoreError::InvalidRequest(format!(
                        "the KV v1 mount \"{}\" keeps no versions",
                        self.mount
                    )));
                }
                self.client.url(&[&self.mount, &locator.path])?
            }
            KvVersion::V2 => self.client.url(&[&self.mount, "data", &locator.path])?,
        };
        if let Some(version) = &locator.version {
            if version.parse::<u64>().map_or(true, |n| n == 0) {
                return Err(StoreError::InvalidRequest(
                    "KV v2 versions are positive numbers".into(),
                ));
            }
            url.query_pairs_mut().append_pair("version", version);
        }
        let (status, body) = self.client.authed(Method::GET, &url).await?;
        let not_found = if locator.version.is_some() {
            StoreError::VersionNotFound
        } else {
            StoreError::NotFound
        };
        if status == StatusCode::NOT_FOUND {
            return Err(not_found);
        }
        let answer: serde_json::Value = parse(&body, "secret")?;
        let data = match self.kv {
            KvVersion::V1 => answer.get("data"),
            // A deleted or destroyed version answers with `data: null`.
            KvVersion::V2 => answer.get("data").and_then(|d| d.get("data")),
        };
        match data {
            Some(serde_json::Value::Object(map)) => Ok(SecretData::Properties(json_properties(map.clone()))),
            Some(serde_json::Value::Null) | None if self.kv == KvVersion::V2 => Err(not_found),
            _ => Err(StoreError::InvalidResponse(
                "the secret's data is not a JSON object".into(),
            )),
        }
    }
}

#[async_trait]
impl Store for VaultStore {
    fn provider(&self) -> &'static str {
        "vault"
    }

    async fn fetch(&self, locators: &[SecretLocator]) -> Vec<Result<SecretData, StoreError>> {
        fetch_each(locators, super::common::FETCH_CONCURRENCY, |l| self.read(l)).await
    }

    /// Looks the current token up (`lookup-self`): reachability and a valid token.
    async fn check(&self) -> Result<(), StoreError> {
        let url = self.client.url(&["auth/token/lookup-self"])?;
        self.client.authed(Method::GET, &url).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> VaultStoreConfig {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let ok = config("address: https://vault:8200\nauth: {token: {env: VAULT_TOKEN}}\n");
        assert_eq!(ok.mount, "secret");
        assert_eq!(ok.kv_version, 2);
        ok.validate().unwrap();
        let cases = [
            ("address: vault:8200\nauth: {token: {env: T}}\n", "address"),
            (
                "address: http://v\nkvVersion: 3\nauth: {token: {env: T}}\n",
                "kvVersion",
            ),
            (
                "address: http://v\nmount: a//b\nauth: {token: {env: T}}\n",
                "mount",
            ),
            (
                "address: http://v\nnamespace: 'a b'\nauth: {token: {env: T}}\n",
                "namespace",
            ),
            ("address: http://v\nauth: {}\n", "auth"),
            (
                "address: http://v\nauth: {token: {env: T}, kubernetes: {role: r}}\n",
                "auth",
            ),
            ("address: http://v\nauth: {token: {}}\n", "auth.token"),
            (
                "address: http://v\nauth: {appRole: {roleId: '', secretId: {env: S}}}\n",
                "auth.appRole.roleId",
            ),
            (
                "address: http://v\nauth: {kubernetes: {role: ' '}}\n",
                "auth.kubernetes.role",
            ),
        ];
        for (yaml, field) in cases {
            assert_eq!(config(yaml).validate().unwrap_err().field, field, "{yaml}");
        }
    }

    #[test]
    fn role_id_inline_or_from_a_source() {
        let inline = config("address: http://v\nauth: {appRole: {roleId: abc, secretId: {file: s}}}\n");
        let app_role = inline.auth.app_role.unwrap();
        assert_eq!(app_role.role_id, RoleIdSource::Plain("abc".into()));
        assert_eq!(app_role.mount, "approle");
        let sourced = config("address: http://v\nauth: {appRole: {roleId: {env: R}, secretId: {file: s}}}\n");
        assert!(matches!(
            sourced.auth.app_role.unwrap().role_id,
            RoleIdSource::Source(_)
        ));
        let k8s = config("address: http://v\nauth: {kubernetes: {role: sesame}}\n");
        let k8s = k8s.auth.kubernetes.unwrap();
        assert_eq!(
            k8s.token_file,
            Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
        assert_eq!(k8s.mount, "kubernetes");
    }

    #[test]
    fn urls_encode_each_segment() {
        let client = Client::new(
            reqwest::Client::new(),
            Url::parse("https://vault:8200/").unwrap(),
            None,
            PathBuf::new(),
            Login::Token(CredentialSource::from_file("t")),
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
