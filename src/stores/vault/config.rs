//! `stores[].vault`: where Vault is, which KV mount to read, how to log in;
//! and the checks serde cannot make.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::stores::common::CredentialSource;
use crate::stores::identity::check_template;
use crate::validate::{check_url, exactly_one, FieldError};

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
    /// The JWT auth method with a projected service-account token whose
    /// audience is Vault's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuthConfig>,
}

/// `auth.jwt`: Vault's JWT auth method (`auth/<mount>/login` with a role
/// and a JWT), given a service-account token projected with Vault's
/// audience. With `identity: pod` the token is the Pod's, requested for
/// each ServiceAccount, and `tokenFile` is not used.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtAuthConfig {
    /// The Vault role; with `identity: pod` a template such as
    /// `{namespace}-{serviceAccount}`.
    pub role: String,
    /// The projected token, re-read on every login (the kubelet rotates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_jwt_mount")]
    pub mount: String,
}

fn default_jwt_mount() -> String {
    "jwt".into()
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
    /// The Vault role bound to Sesame's service account; with `identity:
    /// pod` a template such as `{namespace}-{serviceAccount}`.
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
        check_url(&self.address, "address")?;
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
            auth.jwt.as_ref().map(drop),
        ];
        if exactly_one(methods).is_err() {
            return invalid("auth", "set exactly one of token, appRole, kubernetes or jwt");
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
        if let Some(jwt) = &auth.jwt {
            if jwt.role.trim().is_empty() {
                return invalid("auth.jwt.role", "must not be empty");
            }
            if !mount_is_valid(&jwt.mount) {
                return invalid("auth.jwt.mount", "must be a path such as jwt");
            }
        }
        Ok(())
    }

    /// The checks that depend on whose identity the store reads with:
    /// Sesame's own needs the JWT auth's token file; the Pod's needs a
    /// method that logs in with a ServiceAccount token (kubernetes or jwt),
    /// whose role may be a template.
    pub fn validate_identity(&self, pod: bool) -> Result<(), FieldError> {
        let auth = &self.auth;
        if !pod {
            if auth.jwt.as_ref().is_some_and(|j| j.token_file.is_none()) {
                return Err(FieldError::new(
                    "auth.jwt.tokenFile",
                    "is needed: the path of a service-account token projected with Vault's audience",
                ));
            }
            return Ok(());
        }
        match (&auth.kubernetes, &auth.jwt) {
            (Some(k8s), None) => check_template(&k8s.role, "auth.kubernetes.role"),
            (None, Some(jwt)) => check_template(&jwt.role, "auth.jwt.role"),
            _ => Err(FieldError::new(
                "auth",
                "identity: pod logs in with the Pod's ServiceAccount token: use kubernetes or jwt",
            )),
        }
    }
}

pub(super) fn mount_is_valid(mount: &str) -> bool {
    !mount.is_empty()
        && mount
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['%', '?', '#', ' ']))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
                "address: https://sesame:hunter2@vault:8200\nauth: {token: {env: T}}\n",
                "address",
            ),
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
}
