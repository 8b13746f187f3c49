//! Logging in to Vault (token, AppRole, Kubernetes, JWT; with Sesame's
//! own identity or, for `identity: pod`, the Pod's) and renewing the token
//! (`auth/token/renew-self`), as the provider of the stores' one token
//! manager; and the request path's use of the token: a request that meets a
//! 403 logs in once more and retries, in case the token was revoked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::config::{RoleIdSource, VaultAuthConfig};
use super::http::{parse, CallError, Http};
use crate::stores::common::CredentialSource;
use crate::stores::identity::{PodIdentity, WorkloadIdentity};
use crate::stores::token::{AccessToken, Issued, TokenCache, TokenProvider};
use crate::stores::{SecretValue, StoreError};

/// How a token is obtained, with its credentials' sources (never the credentials).
#[derive(Clone)]
pub(super) enum Login {
    Token(CredentialSource),
    AppRole {
        role_id: RoleIdSource,
        secret_id: CredentialSource,
        mount: String,
    },
    /// The Kubernetes and the JWT auth methods: both send a role and a
    /// service-account token to `auth/<mount>/login`.
    Jwt {
        method: &'static str,
        role: String,
        jwt: JwtSource,
        mount: String,
    },
}

/// Where the service-account token of a login comes from.
#[derive(Clone)]
pub(super) enum JwtSource {
    /// A projected token file (Sesame's own identity).
    File(CredentialSource),
    /// A TokenRequest token of the Pod's ServiceAccount, requested for
    /// every login.
    Pod {
        pod: PodIdentity,
        identity: WorkloadIdentity,
    },
}

/// The audience of the ServiceAccount tokens requested for Vault, unless
/// `podIdentity.audience` says otherwise (the Vault role's `audience` or
/// `bound_audiences`).
pub(super) const VAULT_AUDIENCE: &str = "vault";

impl Login {
    /// The configured method with Sesame's identity; `None` unless exactly
    /// one is set.
    pub(super) fn from_config(auth: &VaultAuthConfig) -> Option<Self> {
        match (&auth.token, &auth.app_role, &auth.kubernetes, &auth.jwt) {
            (Some(token), None, None, None) => Some(Self::Token(token.clone())),
            (None, Some(app_role), None, None) => Some(Self::AppRole {
                role_id: app_role.role_id.clone(),
                secret_id: app_role.secret_id.clone(),
                mount: app_role.mount.clone(),
            }),
            (None, None, Some(k8s), None) => Some(Self::Jwt {
                method: "kubernetes",
                role: k8s.role.clone(),
                jwt: JwtSource::File(CredentialSource::from_file(&k8s.token_file)),
                mount: k8s.mount.clone(),
            }),
            (None, None, None, Some(jwt)) => Some(Self::Jwt {
                method: "jwt",
                role: jwt.role.clone(),
                jwt: JwtSource::File(CredentialSource::from_file(jwt.token_file.clone()?)),
                mount: jwt.mount.clone(),
            }),
            _ => None,
        }
    }

    /// The login of one workload (`identity: pod`): the Kubernetes or JWT
    /// method with the role template filled in and the Pod's token.
    pub(super) fn for_workload(
        auth: &VaultAuthConfig,
        pod: &PodIdentity,
        identity: &WorkloadIdentity,
    ) -> Option<Self> {
        let (method, role, mount) = match (&auth.kubernetes, &auth.jwt) {
            (Some(k8s), None) => ("kubernetes", &k8s.role, &k8s.mount),
            (None, Some(jwt)) => ("jwt", &jwt.role, &jwt.mount),
            _ => return None,
        };
        Some(Self::Jwt {
            method,
            role: identity.render(role),
            jwt: JwtSource::Pod {
                pod: pod.clone(),
                identity: identity.clone(),
            },
            mount: mount.clone(),
        })
    }

    pub(super) fn method(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::AppRole { .. } => "approle",
            Self::Jwt { method, .. } => method,
        }
    }
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

/// Logs in and renews for one store.
pub(super) struct VaultAuth {
    pub(super) http: Arc<Http>,
    pub(super) login: Login,
    pub(super) base_dir: PathBuf,
}

/// A TTL of 0 means a token that never expires (a root token).
fn lifetime(ttl: u64) -> Option<Duration> {
    (ttl > 0).then(|| Duration::from_secs(ttl))
}

fn text(value: &SecretValue) -> Result<&str, StoreError> {
    value
        .expose_str()
        .ok_or_else(|| StoreError::Unauthorized("a credential is not UTF-8 text".into()))
}

impl VaultAuth {
    async fn login_call(&self, mount: &str, body: &serde_json::Value) -> Result<AccessToken, StoreError> {
        let url = self.http.url(&["auth", mount, "login"])?;
        // Vault refuses bad credentials with 400 or 403: either way, a failed login.
        let (status, bytes) = self
            .http
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
        Ok(AccessToken {
            value: SecretValue::from(token),
            lifetime: lifetime(auth.lease_duration),
            renewable: auth.renewable,
        })
    }
}

#[async_trait]
impl TokenProvider for VaultAuth {
    /// Logs in with the configured method. A static token is read again
    /// (it may have been replaced) and looked up for its TTL.
    async fn obtain(&self) -> Result<AccessToken, StoreError> {
        let token = match &self.login {
            Login::Token(source) => {
                let token = source.read(&self.base_dir).await?;
                let url = self.http.url(&["auth/token/lookup-self"])?;
                let (_, body) = self
                    .http
                    .call_retrying(Method::GET, &url, Some(&token), None)
                    .await?;
                let lookup: LookupAnswer = parse(&body, "token lookup")?;
                AccessToken {
                    value: token,
                    lifetime: lifetime(lookup.data.ttl),
                    renewable: lookup.data.renewable,
                }
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
            Login::Jwt { role, jwt, mount, .. } => {
                let jwt = match jwt {
                    JwtSource::File(source) => source.read(&self.base_dir).await?,
                    JwtSource::Pod { pod, identity } => pod.token(identity, VAULT_AUDIENCE).await?,
                };
                let body = serde_json::json!({ "role": role, "jwt": text(&jwt)? });
                self.login_call(mount, &body).await?
            }
        };
        tracing::debug!(method = self.login.method(), ttl_secs = ?token.lifetime.map(|t| t.as_secs()), "logged in to Vault");
        Ok(token)
    }

    /// `renew-self`; `None` (log in instead) when Vault will not renew it or
    /// the renewal no longer gives two thirds of the login's TTL: the max
    /// TTL is near, so a new login while the token still works.
    async fn renew(&self, current: &Issued<'_>) -> Result<Option<AccessToken>, StoreError> {
        let url = self.http.url(&["auth/token/renew-self"])?;
        let body = serde_json::json!({});
        match self
            .http
            .call_retrying(Method::POST, &url, Some(current.value), Some(&body))
            .await
        {
            Ok((status, bytes)) if status.is_success() => {
                let answer: AuthAnswer = parse(&bytes, "token renewal")?;
                let Some(auth) = answer.auth else {
                    return Ok(None);
                };
                let ttl = Duration::from_secs(auth.lease_duration);
                // Divided first: lifetimes are what Vault says, and may be huge.
                let enough = current
                    .login_lifetime
                    .is_none_or(|login_ttl| ttl >= login_ttl / 3 * 2);
                // A static token cannot log in anew: any renewal is worth having.
                let static_token = matches!(self.login, Login::Token(_));
                if auth.lease_duration > 0 && (enough || static_token) {
                    return Ok(Some(AccessToken {
                        value: current.value.clone(),
                        lifetime: Some(ttl),
                        renewable: auth.renewable,
                    }));
                }
                Ok(None)
            }
            Ok(_) | Err(CallError::Denied(_)) => Ok(None),
            Err(CallError::Other(e)) => Err(e),
        }
    }

    /// A static token that never expires is read again now and then, in
    /// case its file was replaced.
    fn recheck(&self) -> Option<Duration> {
        matches!(self.login, Login::Token(_)).then_some(Duration::from_secs(300))
    }
}

/// Runs an exchange with the current token; on a 403, logs in once more
/// and retries.
pub(super) async fn authed(
    http: &Http,
    tokens: &TokenCache,
    method: Method,
    url: &Url,
) -> Result<(StatusCode, bytes::Bytes), StoreError> {
    let token = tokens.token().await?;
    match http
        .call_retrying(method.clone(), url, Some(&token.value), None)
        .await
    {
        Ok(v) => Ok(v),
        Err(CallError::Denied(e)) => {
            // A token just obtained that is denied lacks a policy: no second login.
            if token.age() < Duration::from_secs(2) {
                return Err(e);
            }
            tokens.invalidate(&token);
            let fresh = tokens.token().await?;
            Ok(http.call_retrying(method, url, Some(&fresh.value), None).await?)
        }
        Err(CallError::Other(e)) => Err(e),
    }
}
