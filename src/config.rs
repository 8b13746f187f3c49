//! The configuration file: stores and the namespace-isolation policy.
//! Parsed once with serde (unknown fields are errors), then validated with
//! messages that name the field; YAML errors carry the line and column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{glob_is_valid, PathPattern};
use crate::stores::aws::AwsStoreConfig;
use crate::stores::vault::VaultStoreConfig;

/// The example configuration shipped in the repository and built into the
/// binary, used when no configuration file is given or found.
pub const EXAMPLE_CONFIG: &str = include_str!("../examples/sesame.yaml");

/// Default annotation prefix.
pub const DEFAULT_PREFIX: &str = "sesame.dev";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Prefix of every Sesame annotation, e.g. `sesame.dev` for `sesame.dev/env.X`.
    #[serde(default = "default_prefix")]
    pub annotation_prefix: String,
    /// Time budget for resolving all references of one Pod. It must stay well
    /// below the API server's webhook timeout (at most 10 s).
    #[serde(default = "default_resolve_timeout", with = "humantime_serde")]
    pub resolve_timeout: Duration,
    /// The stores Pods may name.
    #[serde(default)]
    pub stores: Vec<StoreConfig>,
    /// Which namespaces may read which paths of which store.
    #[serde(default)]
    pub policy: PolicyConfig,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

fn default_resolve_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_max_concurrency() -> usize {
    16
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
    pub cache_ttl: Duration,
    /// How long a cached value may still be served while the store fails.
    #[serde(default, with = "humantime_serde")]
    pub max_stale: Duration,
    /// At most this many fetches to the store at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// How often the leader re-resolves the managed Secrets that use this
    /// store and updates those whose values changed; unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub refresh_interval: Option<Duration>,
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
    pub gcp: Option<crate::stores::gcp::GcpStoreConfig>,
    /// Azure Key Vault.
    #[cfg(feature = "azure")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<crate::stores::azure::AzureStoreConfig>,
    /// Infisical, cloud or self-hosted.
    #[cfg(feature = "infisical")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infisical: Option<crate::stores::infisical::InfisicalStoreConfig>,
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
    Gcp(&'a crate::stores::gcp::GcpStoreConfig),
    #[cfg(feature = "azure")]
    Azure(&'a crate::stores::azure::AzureStoreConfig),
    #[cfg(feature = "infisical")]
    Infisical(&'a crate::stores::infisical::InfisicalStoreConfig),
    Kubernetes(&'a KubernetesStoreConfig),
}

impl StoreConfig {
    /// The one provider section that is set.
    pub fn provider(&self) -> Result<ProviderConfig<'_>, ConfigError> {
        let mut found = Vec::new();
        if let Some(f) = &self.file {
            found.push(ProviderConfig::File(f));
        }
        if let Some(v) = &self.vault {
            found.push(ProviderConfig::Vault(v));
        }
        if let Some(a) = &self.aws {
            found.push(ProviderConfig::Aws(a));
        }
        #[cfg(feature = "gcp")]
        if let Some(c) = &self.gcp {
            found.push(ProviderConfig::Gcp(c));
        }
        #[cfg(feature = "azure")]
        if let Some(c) = &self.azure {
            found.push(ProviderConfig::Azure(c));
        }
        #[cfg(feature = "infisical")]
        if let Some(c) = &self.infisical {
            found.push(ProviderConfig::Infisical(c));
        }
        if let Some(k) = &self.kubernetes {
            found.push(ProviderConfig::Kubernetes(k));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(ConfigError::invalid(
                format!("stores[{}]", self.name),
                "needs one provider section (file, kubernetes, vault, aws, gcp, azure, infisical)",
            )),
            _ => Err(ConfigError::invalid(
                format!("stores[{}]", self.name),
                "has more than one provider section; use one per store",
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileStoreConfig {
    /// A YAML/JSON file or a directory of `.env` files, relative to the config file.
    pub path: PathBuf,
}

/// The `kubernetes` store: Secrets read with Sesame's own service account.
/// A reference path is `name` (a Secret in the Pod's namespace) or
/// `namespace/name`; the pipeline turns `name` into `<Pod namespace>/name`
/// before the policy sees it, and a rule only grants another namespace when
/// its path names that namespace literally.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesStoreConfig {}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyConfig {
    /// Grants; anything no rule grants is denied.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    /// Where inline mode (values in the Pod spec) is allowed. Off everywhere by default.
    #[serde(default)]
    pub inline: InlinePolicy,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyRule {
    /// Shown in deny messages and audit annotations.
    pub name: String,
    /// Namespace names or globs (`team-*`, `*`). May be left out when a
    /// `namespaceSelector` is given.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Labels the Namespace must carry (read from a watch of Namespaces).
    /// Without a Kubernetes API the labels are unknown and such a rule
    /// matches nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Service account names or globs (the Pod's `spec.serviceAccountName`);
    /// empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Store names, or `*` for every store.
    pub stores: Vec<String>,
    /// Path globs: `*` within one segment, `**` across segments,
    /// `{namespace}` for the Pod's namespace.
    pub paths: Vec<String>,
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, ANDed).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InlinePolicy {
    /// Namespace names or globs where Pods may ask for `mode: inline`.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// A configuration problem, naming the file position or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {field}: {message}")]
    Parse {
        origin: String,
        field: String,
        message: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A loaded configuration and where relative paths in it start.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub base_dir: PathBuf,
    /// `builtin` or the file path, for logs.
    pub origin: String,
}

impl Config {
    /// Parses and validates YAML text. `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::Parse {
                origin: origin.to_owned(),
                field: if field == "." { "(top level)".into() } else { field },
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { field, message } => ConfigError::Parse {
                origin: origin.to_owned(),
                field,
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Reads `path`, or the built-in example when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
        match path {
            None => Ok(LoadedConfig {
                config: Self::from_yaml(EXAMPLE_CONFIG, "builtin example")?,
                base_dir: PathBuf::from("."),
                origin: "builtin example".into(),
            }),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let origin = path.display().to_string();
                Ok(LoadedConfig {
                    config: Self::from_yaml(&text, &origin)?,
                    base_dir: path
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| PathBuf::from(".")),
                    origin,
                })
            }
        }
    }

    /// Checks what serde cannot: names, references between sections, globs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_dns_subdomain(&self.annotation_prefix) {
            return Err(ConfigError::invalid(
                "annotationPrefix",
                format!(
                    "\"{}\" is not a DNS subdomain (like sesame.dev)",
                    self.annotation_prefix
                ),
            ));
        }
        if self.resolve_timeout < Duration::from_millis(50) || self.resolve_timeout > Duration::from_secs(9) {
            return Err(ConfigError::invalid(
                "resolveTimeout",
                "must be between 50ms and 9s, below the API server's 10 s webhook limit",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, store) in self.stores.iter().enumerate() {
            let field = format!("stores[{i}]");
            if !is_dns_label(&store.name) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!(
                        "\"{}\" must be lower-case letters, digits and '-' (a DNS label)",
                        store.name
                    ),
                ));
            }
            if !names.insert(store.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!("duplicate store \"{}\"", store.name),
                ));
            }
            store.provider().map_err(|e| match e {
                ConfigError::Invalid { message, .. } => ConfigError::invalid(field.clone(), message),
                other => other,
            })?;
            if store
                .refresh_interval
                .is_some_and(|d| d < Duration::from_secs(10))
            {
                return Err(ConfigError::invalid(
                    format!("{field}.refreshInterval"),
                    "must be at least 10s",
                ));
            }
            if store.max_concurrency == 0 {
                return Err(ConfigError::invalid(
                    format!("{field}.maxConcurrency"),
                    "must be at least 1",
                ));
            }
            if let Some(vault) = &store.vault {
                vault
                    .validate()
                    .map_err(|(sub, m)| ConfigError::invalid(format!("{field}.vault.{sub}"), m))?;
            }
            if let Some(aws) = &store.aws {
                aws.validate()
                    .map_err(|(sub, m)| ConfigError::invalid(format!("{field}.aws.{sub}"), m))?;
            }
            let provider_check = match store.provider()? {
                #[cfg(feature = "gcp")]
                ProviderConfig::Gcp(c) => c.validate(&format!("{field}.gcp")),
                #[cfg(feature = "azure")]
                ProviderConfig::Azure(c) => c.validate(&format!("{field}.azure")),
                #[cfg(feature = "infisical")]
                ProviderConfig::Infisical(c) => c.validate(&format!("{field}.infisical")),
                _ => Ok(()),
            };
            provider_check?;
            if let Some(file) = &store.file {
                if file.path.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{field}.file.path"),
                        "must not be empty",
                    ));
                }
            }
        }
        let mut rule_names = std::collections::HashSet::new();
        for (i, rule) in self.policy.rules.iter().enumerate() {
            let field = format!("policy.rules[{i}]");
            if rule.name.trim().is_empty() {
                return Err(ConfigError::invalid(format!("{field}.name"), "must not be empty"));
            }
            if !rule_names.insert(rule.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!("duplicate rule \"{}\"", rule.name),
                ));
            }
            if (rule.namespaces.is_empty() && rule.namespace_selector.is_none())
                || rule.stores.is_empty()
                || rule.paths.is_empty()
            {
                return Err(ConfigError::invalid(
                    field,
                    "needs namespaces (or a namespaceSelector), stores and paths (each non-empty)",
                ));
            }
            if let Some(sel) = &rule.namespace_selector {
                for (j, req) in sel.match_expressions.iter().enumerate() {
                    let needs_values = matches!(req.operator, SelectorOperator::In | SelectorOperator::NotIn);
                    if needs_values == req.values.is_empty() {
                        return Err(ConfigError::invalid(
                            format!("{field}.namespaceSelector.matchExpressions[{j}]"),
                            "In and NotIn need values; Exists and DoesNotExist take none",
                        ));
                    }
                }
            }
            for (j, sa) in rule.service_accounts.iter().enumerate() {
                let valid = !sa.is_empty()
                    && sa.len() <= 253
                    && sa.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'*' | b'?')
                    });
                if !valid {
                    return Err(ConfigError::invalid(
                        format!("{field}.serviceAccounts[{j}]"),
                        format!("\"{sa}\" is not a service account name or glob"),
                    ));
                }
            }
            for (j, ns) in rule.namespaces.iter().enumerate() {
                if !glob_is_valid(ns) {
                    return Err(ConfigError::invalid(
                        format!("{field}.namespaces[{j}]"),
                        format!("\"{ns}\" is not a namespace name or glob"),
                    ));
                }
            }
            for (j, s) in rule.stores.iter().enumerate() {
                if s != "*" && !names.contains(s.as_str()) {
                    return Err(ConfigError::invalid(
                        format!("{field}.stores[{j}]"),
                        format!("no store is named \"{s}\""),
                    ));
                }
            }
            for (j, p) in rule.paths.iter().enumerate() {
                PathPattern::parse(p).map_err(|m| ConfigError::invalid(format!("{field}.paths[{j}]"), m))?;
            }
        }
        for (j, ns) in self.policy.inline.namespaces.iter().enumerate() {
            if !glob_is_valid(ns) {
                return Err(ConfigError::invalid(
                    format!("policy.inline.namespaces[{j}]"),
                    format!("\"{ns}\" is not a namespace name or glob"),
                ));
            }
        }
        Ok(())
    }
}

/// RFC 1123 label: what store names and namespaces look like.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_valid() {
        let c = Config::from_yaml(EXAMPLE_CONFIG, "example").unwrap();
        assert_eq!(c.annotation_prefix, "sesame.dev");
        assert!(!c.stores.is_empty());
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let err = Config::from_yaml(
            "stores:\n  - name: dev\n    file: {path: x.yaml}\n    ttl: 5s\n",
            "t.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("stores[0]"), "{err}");
        assert!(err.contains("unknown field `ttl`"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_duration_names_field() {
        let err = Config::from_yaml("resolveTimeout: soon\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("resolveTimeout"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            ("stores:\n  - name: Dev\n    file: {path: x}\n", "stores[0].name"),
            ("stores:\n  - name: dev\n", "stores[0]"),
            ("stores:\n  - {name: a, file: {path: x}}\n  - {name: a, file: {path: y}}\n", "stores[1].name"),
            (
                "stores:\n  - {name: a, file: {path: x}}\npolicy:\n  rules:\n    - {name: r, namespaces: ['*'], stores: [b], paths: ['**']}\n",
                "policy.rules[0].stores[0]",
            ),
            (
                "stores:\n  - {name: a, file: {path: x}}\npolicy:\n  rules:\n    - {name: r, namespaces: ['*'], stores: [a], paths: ['a/../b']}\n",
                "policy.rules[0].paths[0]",
            ),
            ("resolveTimeout: 30s\n", "resolveTimeout"),
            (
                "stores:\n  - {name: a, file: {path: x}, refreshInterval: 1s}\n",
                "stores[0].refreshInterval",
            ),
            (
                "stores:\n  - {name: a, kubernetes: {}}\npolicy:\n  rules:\n    - {name: r, stores: [a], paths: ['{namespace}/*']}\n",
                "policy.rules[0]",
            ),
            (
                "stores:\n  - {name: a, kubernetes: {}}\npolicy:\n  rules:\n    - {name: r, namespaceSelector: {matchExpressions: [{key: k, operator: In}]}, stores: [a], paths: ['x']}\n",
                "policy.rules[0].namespaceSelector.matchExpressions[0]",
            ),
            (
                "stores:\n  - {name: a, kubernetes: {}}\npolicy:\n  rules:\n    - {name: r, namespaces: ['*'], serviceAccounts: ['Bad Name'], stores: [a], paths: ['x']}\n",
                "policy.rules[0].serviceAccounts[0]",
            ),
            ("annotationPrefix: 'Not Valid'\n", "annotationPrefix"),
        ];
        for (yaml, field) in cases {
            let err = Config::from_yaml(yaml, "t").unwrap_err().to_string();
            assert!(err.starts_with(&format!("t: {field}")), "{yaml} -> {err}");
        }
    }

    #[test]
    fn kubernetes_fields_parse() {
        let c = Config::from_yaml(
            "stores:\n  - {name: k8s, kubernetes: {}, refreshInterval: 5m}\npolicy:\n  rules:\n    - name: payments\n      namespaceSelector:\n        matchLabels: {team: payments}\n        matchExpressions: [{key: env, operator: NotIn, values: [dev]}]\n      serviceAccounts: [api, 'db-*']\n      stores: [k8s]\n      paths: ['{namespace}/*']\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.stores[0].refresh_interval, Some(Duration::from_secs(300)));
        assert!(matches!(
            c.stores[0].provider(),
            Ok(ProviderConfig::Kubernetes(_))
        ));
        let rule = &c.policy.rules[0];
        assert!(rule.namespaces.is_empty());
        let sel = rule.namespace_selector.as_ref().unwrap();
        assert_eq!(sel.match_labels["team"], "payments");
        assert_eq!(sel.match_expressions[0].operator, SelectorOperator::NotIn);
        assert_eq!(rule.service_accounts, ["api", "db-*"]);
        let typo = Config::from_yaml(
            "policy:\n  rules:\n    - {name: r, namespaceSelector: {matchLabel: {a: b}}, stores: ['*'], paths: [x]}\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("matchLabel"), "{typo}");
    }
}
