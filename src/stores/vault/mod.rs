//! HashiCorp Vault and OpenBao: KV v1 and v2 over the HTTP API.
//!
//! `config` is the section's schema, `http` one exchange with Vault, `auth`
//! the logins (token, AppRole, Kubernetes) and renewals that the stores'
//! token manager runs, `kv` the reads. The first login happens when the
//! store is built; the store's upkeep then renews the token
//! (`auth/token/renew-self`) two thirds into its TTL, or logs in again when
//! renewal no longer helps (max TTL reached, token not renewable). Requests
//! only read the current token.
//!
//! With `identity: pod` the store has no login of its own: each
//! ServiceAccount gets a session (its own token manager) that logs in with
//! a TokenRequest token of that ServiceAccount and the role its template
//! names, kept within the token's lifetime in a bounded cache.

mod auth;
mod config;
mod http;
mod kv;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, Url};

pub use config::{
    AppRoleAuthConfig, JwtAuthConfig, KubernetesAuthConfig, RoleIdSource, VaultAuthConfig, VaultStoreConfig,
};

use super::common::{http_client, Retry};
use super::identity::{fetch_in_session, PodIdentity, Sessions, WorkloadIdentity};
use super::token::TokenCache;
use super::{canonical_number, RequestLimit, SecretData, SecretLocator, Store, StoreError, Upkeep};
use auth::{authed, Login, VaultAuth};
use http::Http;
use kv::KvVersion;

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

/// A Vault or OpenBao KV store.
pub struct VaultStore {
    http: Arc<Http>,
    /// Sesame's own login; `None` with `identity: pod`.
    tokens: Option<TokenCache>,
    /// `identity: pod`: the logins per ServiceAccount.
    workloads: Option<Workloads>,
    method: &'static str,
    mount: String,
    kv: KvVersion,
    base_dir: std::path::PathBuf,
}

/// The per-ServiceAccount side of a store with `identity: pod`.
struct Workloads {
    pod: PodIdentity,
    auth: VaultAuthConfig,
    sessions: Sessions<TokenCache>,
}

/// Each exchange of a login is retried already.
const LOGIN_RETRY: Retry = Retry {
    attempts: 1,
    base: std::time::Duration::from_millis(50),
    max: std::time::Duration::from_millis(800),
};

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.http.base.as_str())
            .field("namespace", &self.http.namespace)
            .field("mount", &self.mount)
            .field("kv", &self.kv)
            .field("auth", &self.method)
            .finish_non_exhaustive()
    }
}

impl VaultStore {
    /// Builds the client and logs in. A failed first login is logged, not
    /// fatal: the upkeep keeps trying and `check` reports it, so a Vault
    /// outage at start does not crash-loop the webhook.
    pub async fn new(config: &VaultStoreConfig, base_dir: &Path) -> anyhow::Result<Self> {
        Self::with_identity(config, base_dir, None).await
    }

    /// `new`, or with `pod` a store that reads as each Pod's ServiceAccount
    /// and has no login of its own.
    pub async fn with_identity(
        config: &VaultStoreConfig,
        base_dir: &Path,
        pod: Option<PodIdentity>,
    ) -> anyhow::Result<Self> {
        config
            .validate()
            .and_then(|()| config.validate_identity(pod.is_some()))
            .map_err(|e| anyhow::anyhow!("{}", e.within("vault")))?;
        let ca = config.ca_file.as_ref().map(|p| base_dir.join(p));
        let client = http_client(ca.as_deref(), Duration::from_secs(5))?;
        let base = Url::parse(&config.address)?;
        let http = Arc::new(Http::new(client, base, config.namespace.clone()));
        let (tokens, workloads, method) = match pod {
            // No login of its own: every read is some ServiceAccount's.
            Some(pod) => (
                None,
                Some(Workloads {
                    sessions: pod.sessions(),
                    pod,
                    auth: config.auth.clone(),
                }),
                if config.auth.jwt.is_some() {
                    "jwt"
                } else {
                    "kubernetes"
                },
            ),
            None => {
                let login = Login::from_config(&config.auth).ok_or_else(|| {
                    anyhow::anyhow!("vault.auth: set exactly one of token, appRole, kubernetes or jwt")
                })?;
                let method = login.method();
                let provider = VaultAuth {
                    http: http.clone(),
                    login,
                    base_dir: base_dir.to_path_buf(),
                };
                let tokens = TokenCache::new("vault", provider, LOGIN_RETRY);
                if let Err(e) = tokens.prime().await {
                    tracing::warn!(address = %http.base, method, error_class = e.class(), error = %e, "first Vault login failed; retrying in the background");
                }
                (Some(tokens), None, method)
            }
        };
        Ok(Self {
            http,
            tokens,
            workloads,
            base_dir: base_dir.to_path_buf(),
            method,
            mount: config.mount.clone(),
            kv: if config.kv_version == 1 {
                KvVersion::V1
            } else {
                KvVersion::V2
            },
        })
    }

    /// The session of one ServiceAccount (`identity: pod`): its own token
    /// manager, logging in with that ServiceAccount's token.
    fn session(
        &self,
        workloads: &Workloads,
        identity: &WorkloadIdentity,
    ) -> Result<Arc<TokenCache>, StoreError> {
        let login = Login::for_workload(&workloads.auth, &workloads.pod, identity).ok_or_else(|| {
            StoreError::InvalidRequest("identity: pod needs the kubernetes or jwt auth method".into())
        })?;
        Ok(workloads.sessions.get(identity, || {
            let provider = VaultAuth {
                http: self.http.clone(),
                login,
                base_dir: self.base_dir.clone(),
            };
            TokenCache::new("vault", provider, LOGIN_RETRY)
        }))
    }

    /// How many ServiceAccounts have a session (`identity: pod`).
    pub fn sessions(&self) -> usize {
        self.workloads.as_ref().map_or(0, |w| w.sessions.len())
    }

    /// Login and renewal counts so far.
    pub fn auth_counts(&self) -> AuthCounts {
        let counts = self.tokens.as_ref().map(TokenCache::counts).unwrap_or_default();
        AuthCounts {
            logins: counts.obtained,
            renewals: counts.renewed,
            request_path_logins: counts.request_path,
        }
    }
}

#[async_trait]
impl Store for VaultStore {
    fn provider(&self) -> &'static str {
        "vault"
    }

    async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        let Some(tokens) = &self.tokens else {
            return Err(StoreError::Unauthorized(
                "the store reads as the Pod's ServiceAccount (identity: pod) only".into(),
            ));
        };
        kv::read(&self.http, tokens, &self.mount, self.kv, locator).await
    }

    /// KV v2 versions are numbers (KV v1 has none, and refuses them).
    fn canonical_version<'a>(&self, version: &'a str) -> Cow<'a, str> {
        match self.kv {
            KvVersion::V2 => canonical_number(version),
            KvVersion::V1 => Cow::Borrowed(version),
        }
    }

    /// Reads as the ServiceAccount: its session's token, a login of its own
    /// when it has none (shared by its concurrent requests).
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
            |session, l| async move { kv::read(&self.http, &session, &self.mount, self.kv, l).await },
        )
        .await
    }

    /// Looks the current token up (`lookup-self`): reachability and a valid
    /// token. With `identity: pod`, there is no token of Sesame's: Vault's
    /// health endpoint shows that it is reachable and unsealed.
    async fn check(&self) -> Result<(), StoreError> {
        let Some(tokens) = &self.tokens else {
            let mut url = self.http.url(&["sys/health"])?;
            url.query_pairs_mut().append_pair("standbyok", "true");
            return self
                .http
                .call_retrying(Method::GET, &url, None, None)
                .await
                .map(|_| ())
                .map_err(StoreError::from);
        };
        let url = self.http.url(&["auth/token/lookup-self"])?;
        authed(&self.http, tokens, Method::GET, &url).await.map(|_| ())
    }

    /// Renews the token, or logs in again, before it expires. The sessions
    /// of `identity: pod` log in again on the request path once their token
    /// nears its end (a login per ServiceAccount and token lifetime).
    fn upkeep(&self) -> Option<Upkeep> {
        let tokens = self.tokens.as_ref()?;
        Some(Box::pin(tokens.upkeep()))
    }
}
