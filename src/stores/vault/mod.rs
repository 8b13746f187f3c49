//! HashiCorp Vault and OpenBao: KV v1 and v2 over the HTTP API.
//!
//! `config` is the section's schema, `http` one exchange with Vault, `auth`
//! the logins (token, AppRole, Kubernetes) and renewals that the stores'
//! token manager runs, `kv` the reads. The first login happens when the
//! store is built; the store's upkeep then renews the token
//! (`auth/token/renew-self`) two thirds into its TTL, or logs in again when
//! renewal no longer helps (max TTL reached, token not renewable). Requests
//! only read the current token.

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

pub use config::{AppRoleAuthConfig, KubernetesAuthConfig, RoleIdSource, VaultAuthConfig, VaultStoreConfig};

use super::common::{http_client, Retry};
use super::token::TokenCache;
use super::{canonical_number, SecretData, SecretLocator, Store, StoreError, Upkeep};
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
    tokens: TokenCache,
    method: &'static str,
    mount: String,
    kv: KvVersion,
}

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
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{}", e.within("vault")))?;
        let ca = config.ca_file.as_ref().map(|p| base_dir.join(p));
        let client = http_client(ca.as_deref(), Duration::from_secs(5))?;
        let base = Url::parse(&config.address)?;
        let login = Login::from_config(&config.auth)
            .ok_or_else(|| anyhow::anyhow!("vault.auth: set exactly one of token, appRole or kubernetes"))?;
        let method = login.method();
        let http = Arc::new(Http::new(client, base, config.namespace.clone()));
        let provider = VaultAuth {
            http: http.clone(),
            login,
            base_dir: base_dir.to_path_buf(),
        };
        // Each exchange of a login is retried already.
        let once = Retry {
            attempts: 1,
            ..Retry::default()
        };
        let tokens = TokenCache::new("vault", provider, once);
        if let Err(e) = tokens.prime().await {
            tracing::warn!(address = %http.base, method, error_class = e.class(), error = %e, "first Vault login failed; retrying in the background");
        }
        Ok(Self {
            http,
            tokens,
            method,
            mount: config.mount.clone(),
            kv: if config.kv_version == 1 {
                KvVersion::V1
            } else {
                KvVersion::V2
            },
        })
    }

    /// Login and renewal counts so far.
    pub fn auth_counts(&self) -> AuthCounts {
        let counts = self.tokens.counts();
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
        kv::read(&self.http, &self.tokens, &self.mount, self.kv, locator).await
    }

    /// KV v2 versions are numbers (KV v1 has none, and refuses them).
    fn canonical_version<'a>(&self, version: &'a str) -> Cow<'a, str> {
        match self.kv {
            KvVersion::V2 => canonical_number(version),
            KvVersion::V1 => Cow::Borrowed(version),
        }
    }

    /// Looks the current token up (`lookup-self`): reachability and a valid token.
    async fn check(&self) -> Result<(), StoreError> {
        let url = self.http.url(&["auth/token/lookup-self"])?;
        authed(&self.http, &self.tokens, Method::GET, &url)
            .await
            .map(|_| ())
    }

    /// Renews the token, or logs in again, before it expires.
    fn upkeep(&self) -> Option<Upkeep> {
        Some(Box::pin(self.tokens.upkeep()))
    }
}
