//! The `stores` section of the configuration: what every store has (name,
//! cache, concurrency, refresh) and its one provider section. Each
//! provider's own schema and checks live in that provider's file.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::aws::AwsStoreConfig;
use super::file::FileStoreConfig;
use super::identity::{IdentityMode, PodIdentityConfig};
use super::kubernetes::KubernetesStoreConfig;
use super::limit::DEFAULT_MAX_CONCURRENCY;
use super::vault::VaultStoreConfig;
use crate::validate::{exactly_one, is_dns_label, FieldError};

fn default_max_concurrency() -> usize {
    DEFAULT_MAX_CONCURRENCY
}

fn is_sesame(mode: &IdentityMode) -> bool {
    *mode == IdentityMode::Sesame
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreConfig {
    /// The name Pods use in references, e.g. `vault` in `vault:secret/app#key`.
    pub name: String,
    /// How long a fetched secret is served from memory.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub(crate) cache_ttl: Duration,
    /// How long a cached value may still be served while the store fails.
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_stale: Duration,
    /// At most this many requests to the store at once: the one bound on
    /// concurrent calls, honoured by the cache and every provider.
    #[serde(default = "default_max_concurrency")]
    pub(crate) max_concurrency: usize,
    /// How often the leader re-resolves the managed Secrets that use this
    /// store and updates those whose values changed; unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub(crate) refresh_interval: Option<Duration>,
    /// Whose identity the store is read with: `sesame` (the default) or
    /// `pod`, the Pod's own ServiceAccount.
    #[serde(default, skip_serializing_if = "is_sesame")]
    pub identity: IdentityMode,
    /// How the Pod's ServiceAccount token is requested (`identity: pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_identity: Option<PodIdentityConfig>,
    /// A local file or directory of secrets (development).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileStoreConfig>,
    /// HashiCorp Vault or OpenBao (KV v1/v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultStoreConfig>,
    /// AWS Secrets Manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsStoreConfig>,
    /// GCP Secret Manager.
    #[cfg(feature = "gcp")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<super::gcp::GcpStoreConfig>,
    /// Azure Key Vault.
    #[cfg(feature = "azure")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<super::azure::AzureStoreConfig>,
    /// Infisical, cloud or self-hosted.
    #[cfg(feature = "infisical")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infisical: Option<super::infisical::InfisicalStoreConfig>,
    /// Kubernetes Secrets read through the API; paths are `name` (the Pod's
    /// namespace) or `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesStoreConfig>,
}

/// The provider section of a store, exactly one per store.
#[derive(Debug, Clone, Copy)]
pub enum ProviderConfig<'a> {
    File(&'a FileStoreConfig),
    Vault(&'a VaultStoreConfig),
    Aws(&'a AwsStoreConfig),
    #[cfg(feature = "gcp")]
    Gcp(&'a super::gcp::GcpStoreConfig),
    #[cfg(feature = "azure")]
    Azure(&'a super::azure::AzureStoreConfig),
    #[cfg(feature = "infisical")]
    Infisical(&'a super::infisical::InfisicalStoreConfig),
    Kubernetes(&'a KubernetesStoreConfig),
}

impl ProviderConfig<'_> {
    /// The section's key in the configuration file.
    pub fn key(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Vault(_) => "vault",
            Self::Aws(_) => "aws",
            #[cfg(feature = "gcp")]
            Self::Gcp(_) => "gcp",
            #[cfg(feature = "azure")]
            Self::Azure(_) => "azure",
            #[cfg(feature = "infisical")]
            Self::Infisical(_) => "infisical",
            Self::Kubernetes(_) => "kubernetes",
        }
    }

    /// The provider's checks of whose identity it reads with (`identity:
    /// pod`: whether it can read as a workload, and with what); fields are
    /// below its section.
    fn validate_identity(&self, pod: bool) -> Result<(), FieldError> {
        if let Self::Vault(c) = self {
            return c.validate_identity(pod);
        }
        if !pod {
            // A per-ServiceAccount template means nothing to Sesame's own
            // identity: refuse it rather than send its braces to the store.
            let template = match self {
                Self::Aws(c) => c.role_arn.as_deref().map(|t| ("roleArn", t)),
                #[cfg(feature = "gcp")]
                Self::Gcp(c) => c.impersonate.as_deref().map(|t| ("impersonate", t)),
                _ => None,
            };
            #[cfg(feature = "azure")]
            if let Self::Azure(c) = self {
                c.validate_own_identity()?;
            }
            return match template {
                Some((field, t)) if t.contains(['{', '}']) => Err(FieldError::new(
                    field,
                    "has {namespace}/{serviceAccount} placeholders, which only identity: pod fills in",
                )),
                _ => Ok(()),
            };
        }
        let unsupported = |what: &str| {
            Err(FieldError::new(
                "",
                format!("{what} cannot read as the Pod's ServiceAccount (identity: pod)"),
            ))
        };
        match self {
            Self::File(_) => unsupported("a file store"),
            Self::Kubernetes(_) => unsupported("the kubernetes store (it reads with Sesame's RBAC)"),
            Self::Vault(_) => Ok(()),
            Self::Aws(c) => c.validate_pod_identity(),
            #[cfg(feature = "gcp")]
            Self::Gcp(c) => c.validate_pod_identity(),
            #[cfg(feature = "azure")]
            Self::Azure(c) => c.validate_pod_identity(),
            #[cfg(feature = "infisical")]
            Self::Infisical(_) => unsupported("an infisical store"),
        }
    }

    /// The provider's own checks; fields are below its section.
    fn validate(&self) -> Result<(), FieldError> {
        match self {
            Self::File(c) => c.validate(),
            Self::Vault(c) => c.validate(),
            Self::Aws(c) => c.validate(),
            #[cfg(feature = "gcp")]
            Self::Gcp(c) => c.validate(),
            #[cfg(feature = "azure")]
            Self::Azure(c) => c.validate(),
            #[cfg(feature = "infisical")]
            Self::Infisical(c) => c.validate(),
            Self::Kubernetes(_) => Ok(()),
        }
    }
}

impl StoreConfig {
    /// The one provider section that is set.
    pub fn provider(&self) -> Result<ProviderConfig<'_>, FieldError> {
        let sections = [
            self.file.as_ref().map(ProviderConfig::File),
            self.vault.as_ref().map(ProviderConfig::Vault),
            self.aws.as_ref().map(ProviderConfig::Aws),
            #[cfg(feature = "gcp")]
            self.gcp.as_ref().map(ProviderConfig::Gcp),
            #[cfg(feature = "azure")]
            self.azure.as_ref().map(ProviderConfig::Azure),
            #[cfg(feature = "infisical")]
            self.infisical.as_ref().map(ProviderConfig::Infisical),
            self.kubernetes.as_ref().map(ProviderConfig::Kubernetes),
        ];
        exactly_one(sections).map_err(|count| {
            FieldError::new(
                "",
                if count == 0 {
                    "needs one provider section (file, kubernetes, vault, aws, gcp, azure, infisical)"
                } else {
                    "has more than one provider section; use one per store"
                },
            )
        })
    }

    /// Checks what serde cannot; fields are below the store.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !is_dns_label(&self.name) {
            return Err(FieldError::new(
                "name",
                format!(
                    "\"{}\" must be lower-case letters, digits and '-' (a DNS label)",
                    self.name
                ),
            ));
        }
        let provider = self.provider()?;
        if self.refresh_interval.is_some_and(|d| d < Duration::from_secs(10)) {
            return Err(FieldError::new("refreshInterval", "must be at least 10s"));
        }
        if self.max_concurrency == 0 {
            return Err(FieldError::new("maxConcurrency", "must be at least 1"));
        }
        provider.validate().map_err(|e| e.within(provider.key()))?;
        if let Some(pod) = &self.pod_identity {
            if !self.identity.is_pod() {
                return Err(FieldError::new("podIdentity", "is only read with identity: pod"));
            }
            pod.validate().map_err(|e| e.within("podIdentity"))?;
        }
        provider
            .validate_identity(self.identity.is_pod())
            .map_err(|e| e.within(provider.key()))
    }
}

/// Checks every store and that no two share a name; fields start at
/// `stores[i]`.
pub(crate) fn validate_stores(stores: &[StoreConfig]) -> Result<(), FieldError> {
    let mut names = HashSet::new();
    for (i, store) in stores.iter().enumerate() {
        let field = format!("stores[{i}]");
        store.validate().map_err(|e| e.within(&field))?;
        if !names.insert(store.name.as_str()) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("duplicate store \"{}\"", store.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn error_of(yaml: &str) -> String {
        crate::config::Config::from_yaml(yaml, "t.yaml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn identity_pod_is_checked_per_provider() {
        let ok = crate::config::Config::from_yaml(
            "stores:\n  - name: v\n    identity: pod\n    podIdentity: {maxSessions: 10}\n    vault:\n      address: http://v\n      auth: {kubernetes: {role: '{namespace}-{serviceAccount}'}}\n",
            "t.yaml",
        )
        .unwrap();
        assert!(ok.stores[0].identity.is_pod());
        assert_eq!(ok.stores[0].pod_identity.as_ref().unwrap().max_sessions, 10);
        let cases = [
            (
                "stores:\n  - name: f\n    identity: pod\n    file: {path: s.yaml}\n",
                "t.yaml: stores[0].file: a file store cannot read as the Pod's ServiceAccount",
            ),
            (
                "stores:\n  - name: v\n    podIdentity: {}\n    vault: {address: http://v, auth: {kubernetes: {role: r}}}\n",
                "t.yaml: stores[0].podIdentity: is only read with identity: pod",
            ),
            (
                "stores:\n  - name: v\n    identity: pod\n    vault: {address: http://v, auth: {token: {env: T}}}\n",
                "t.yaml: stores[0].vault.auth: identity: pod logs in",
            ),
            (
                "stores:\n  - name: v\n    identity: pod\n    vault: {address: http://v, auth: {jwt: {role: '{pod}'}}}\n",
                "t.yaml: stores[0].vault.auth.jwt.role: knows the placeholders",
            ),
            (
                "stores:\n  - name: v\n    identity: pod\n    podIdentity: {tokenLifetime: 1m}\n    vault: {address: http://v, auth: {jwt: {role: r}}}\n",
                "t.yaml: stores[0].podIdentity.tokenLifetime:",
            ),
            (
                "stores:\n  - name: a\n    aws: {roleArn: 'arn:aws:iam::123456789012:role/{serviceAccount}'}\n",
                "t.yaml: stores[0].aws.roleArn: has {namespace}/{serviceAccount} placeholders, which only identity: pod",
            ),
            (
                "stores:\n  - name: v\n    identity: someone\n    vault: {address: http://v, auth: {jwt: {role: r}}}\n",
                "identity",
            ),
        ];
        for (yaml, expected) in cases {
            let err = error_of(yaml);
            assert!(err.contains(expected), "{yaml}\n{err}");
        }
    }
}
