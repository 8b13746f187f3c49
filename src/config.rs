//! The configuration file: `annotationPrefix`, `resolveTimeout`, the
//! stores, the namespace-isolation policy and the limits per review. This
//! module only composes the sections (each schema lives beside the code
//! that interprets it: `stores::StoreConfig`, `policy::PolicyConfig`,
//! `inject::LimitsConfig`) and loads the file: parsed
//! once with serde (unknown fields are errors), then validated with messages
//! that name the field; YAML errors carry the line and column.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::inject::LimitsConfig;
use crate::policy::PolicyConfig;
use crate::stores::{validate_stores, StoreConfig};
use crate::validate::{is_dns_subdomain, FieldError};

/// The example configuration shipped in the repository and built into the
/// binary, used when no configuration file is given or found.
pub(crate) const EXAMPLE_CONFIG: &str = include_str!("../examples/sesame.yaml");

/// Default annotation prefix.
pub const DEFAULT_PREFIX: &str = "sesame.dev";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Prefix of every Sesame annotation, e.g. `sesame.dev` for `sesame.dev/env.X`.
    #[serde(default = "default_prefix")]
    pub(crate) annotation_prefix: String,
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
    /// How much one review may ask for.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// What the workload webhook does with a template Sesame would deny.
    #[serde(default)]
    pub(crate) workloads: WorkloadsConfig,
    /// Bounds on how often references ask to be refreshed (`refresh=`).
    #[serde(default)]
    pub rotation: crate::inject::refresh::RotationConfig,
}

/// `workloads` in the configuration: what the workload webhook does with a
/// Pod template whose Pods Sesame would deny.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadsConfig {
    /// Deny the workload (at CREATE, or at an UPDATE that changes its Pod
    /// template) instead of only warning. Off by default: the Pods are
    /// denied anyway, and a warning cannot block an unrelated change.
    #[serde(default)]
    pub deny: bool,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

fn default_resolve_timeout() -> Duration {
    Duration::from_secs(3)
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

impl From<FieldError> for ConfigError {
    fn from(e: FieldError) -> Self {
        Self::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

/// A loaded configuration and where relative paths in it start.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub(crate) base_dir: PathBuf,
    /// `builtin` or the file path, for logs.
    pub(crate) origin: String,
}

impl Config {
    /// Parses and validates YAML text. `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            // serde_norway names the field itself; it is said once, in front.
            let message = message.strip_prefix(&format!("{field}: ")).unwrap_or(&message);
            ConfigError::Parse {
                origin: origin.to_owned(),
                field: if field == "." { "(top level)".into() } else { field },
                message: without_values(message),
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
                Self::load_text(&text, &path.display().to_string(), path)
            }
        }
    }

    /// Parses the text of the file at `path` as read elsewhere (the
    /// ConfigMap it is mounted from, named by `origin`): relative paths in
    /// it start where the file's do.
    pub(crate) fn load_text(text: &str, origin: &str, path: &Path) -> Result<LoadedConfig, ConfigError> {
        Ok(LoadedConfig {
            config: Self::from_yaml(text, origin)?,
            base_dir: path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            origin: origin.to_owned(),
        })
    }

    /// Checks what serde cannot, section by section: names, references
    /// between sections, globs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_dns_subdomain(&self.annotation_prefix) {
            return Err(FieldError::new(
                "annotationPrefix",
                format!(
                    "\"{}\" is not a DNS subdomain (like sesame.dev)",
                    self.annotation_prefix
                ),
            )
            .into());
        }
        if self.resolve_timeout < Duration::from_millis(50) || self.resolve_timeout > Duration::from_secs(9) {
            return Err(FieldError::new(
                "resolveTimeout",
                "must be between 50ms and 9s, below the API server's 10 s webhook limit",
            )
            .into());
        }
        self.limits.validate().map_err(|e| e.within("limits"))?;
        self.rotation.validate().map_err(|e| e.within("rotation"))?;
        validate_stores(&self.stores)?;
        let names: HashSet<&str> = self.stores.iter().map(|s| s.name.as_str()).collect();
        self.policy.validate(&names).map_err(|e| e.within("policy"))?;
        Ok(())
    }
}

/// A serde message without the value it quotes. serde words a wrong value
/// as `invalid type: string "…", expected …` (or `integer `…``, `unknown
/// variant `…``), and the value may be a credential written where only a
/// pointer to one belongs (`token: hvs.…` instead of `token: {file: …}`);
/// this message is printed by `check-config` and logged at every reload.
/// The kind of value, the field, what was expected and the line stay.
fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(start) = message.find(prefix).map(|i| i + prefix.len()) else {
            continue;
        };
        // The value comes first, so the last ", expected " is serde's own.
        if let Some(end) = message[start..].rfind(", expected ").map(|i| start + i) {
            let unexpected = &message[start..end];
            let kind = ["string", "integer", "floating point", "boolean", "character"]
                .into_iter()
                .find(|kind| unexpected.starts_with(&format!("{kind} ")));
            if let Some(kind) = kind {
                return format!("{}{kind} (not shown){}", &message[..start], &message[end..]);
            }
        }
    }
    let variant = "unknown variant `";
    if let Some(start) = message.find(variant).map(|i| i + variant.len()) {
        if let Some(end) = message[start..].rfind("`, expected ").map(|i| start + i) {
            return format!("{}(not shown){}", &message[..start - 1], &message[end + 1..]);
        }
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_valid() {
        let c = Config::from_yaml(EXAMPLE_CONFIG, "example").unwrap();
        assert_eq!(c.annotation_prefix, "sesame.dev");
        assert!(!c.stores.is_empty());
        assert_eq!(
            c.limits,
            LimitsConfig::default(),
            "the example shows the defaults"
        );
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
            ("limits: {maxReferences: 0}\n", "limits.maxReferences"),
        ];
        for (yaml, field) in cases {
            let err = Config::from_yaml(yaml, "t").unwrap_err().to_string();
            assert!(err.starts_with(&format!("t: {field}")), "{yaml} -> {err}");
        }
    }

    /// A credential written inline where a file or env var belongs is not
    /// quoted back, nor is any other value serde refuses; the error still
    /// names the field, the kind of value and the line.
    #[test]
    fn configuration_errors_quote_no_values() {
        let cases = [
            (
                "stores:\n  - name: v\n    vault: {address: 'http://v', auth: {token: hvs.s3cr3t-inline}}\n",
                "stores[0].vault.auth.token: invalid type: string (not shown), expected struct CredentialSource at line 3",
            ),
            (
                "stores:\n  - name: v\n    vault: {address: 'http://v', auth: {appRole: {roleId: r, secretId: 's3cr3t-id, expected x'}}}\n",
                "stores[0].vault.auth.appRole.secretId: invalid type: string (not shown), expected struct CredentialSource",
            ),
            (
                "stores:\n  - name: v\n    vault: {address: 'http://v', kvVersion: 7123456, auth: {token: {env: T}}}\n",
                "stores[0].vault.kvVersion: invalid value: integer (not shown), expected u8",
            ),
            (
                "stores:\n  - name: v\n    file: {path: x}\n    cacheTtl: s3cr3t-ttl\n",
                "stores[0].cacheTtl: invalid value: string (not shown), expected a duration",
            ),
            (
                "policy:\n  rules:\n    - {name: r, namespaceSelector: {matchExpressions: [{key: k, operator: s3cr3t}]}, stores: [a], paths: ['x']}\n",
                "operator: unknown variant (not shown), expected one of `In`, `NotIn`",
            ),
        ];
        for (yaml, says) in cases {
            let err = Config::from_yaml(yaml, "t").unwrap_err().to_string();
            assert!(!err.contains("s3cr3t") && !err.contains("7123456"), "{err}");
            assert!(err.contains(says), "{err}");
        }
        // What carries no value is left as it was.
        assert_eq!(
            without_values("invalid type: sequence, expected a string at line 3 column 19"),
            "invalid type: sequence, expected a string at line 3 column 19"
        );
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
            Ok(crate::stores::ProviderConfig::Kubernetes(_))
        ));
        let rule = &c.policy.rules[0];
        assert!(rule.namespaces.is_empty());
        let sel = rule.namespace_selector.as_ref().unwrap();
        assert_eq!(sel.match_labels["team"], "payments");
        assert_eq!(
            sel.match_expressions[0].operator,
            crate::policy::config::SelectorOperator::NotIn
        );
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
