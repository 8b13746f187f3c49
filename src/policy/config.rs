//! The `policy` section of the configuration and its checks. Path patterns
//! are parsed while the file is read, so a loaded configuration holds only
//! patterns that compile and [`super::NamespacePolicy::new`] cannot fail.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Deserializer, Serialize};

use super::glob::{glob_is_valid, PathPattern};
use crate::validate::FieldError;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyConfig {
    /// Grants; anything no rule grants is denied.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    /// Where inline mode (values in the Pod spec) is allowed. Off everywhere by default.
    #[serde(default)]
    pub inline: InlinePolicy,
    /// How many new managed Secrets one namespace may get.
    #[serde(default)]
    pub new_secrets_per_namespace: super::CreationRate,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// Service account names or globs (the Pod's `spec.serviceAccountName`);
    /// empty: any.
    #[serde(default)]
    pub(crate) service_accounts: Vec<String>,
    /// Store names, or `*` for every store.
    pub stores: Vec<String>,
    /// Path globs: `*` within one segment, `**` across segments,
    /// `{namespace}` for the Pod's namespace.
    pub paths: Vec<PathPattern>,
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, ANDed).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
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
    /// Inline mode returns secret values in the AdmissionResponse. Without
    /// client authentication (`serve --client-ca-file`) any Pod that can
    /// reach the webhook port could forge a review and read them, so the
    /// server returns inline values only to a caller that presented a
    /// client certificate, unless this accepts that risk. Off by default.
    #[serde(default)]
    pub allow_without_client_auth: bool,
}

/// A pattern is read as text and parsed at once: a bad one is an error that
/// names its field and line, like any other parse error.
impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PathPattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Compares with the pattern as written, e.g. `apps/{namespace}/**`.
impl PartialEq<&str> for PathPattern {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PolicyConfig {
    /// Checks what serde cannot: names, references to `stores`, globs.
    /// Fields are below `policy`.
    pub fn validate(&self, stores: &HashSet<&str>) -> Result<(), FieldError> {
        let mut rule_names = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let field = format!("rules[{i}]");
            if !rule_names.insert(rule.name.as_str()) && !rule.name.trim().is_empty() {
                return Err(FieldError::new(
                    format!("{field}.name"),
                    format!("duplicate rule \"{}\"", rule.name),
                ));
            }
            rule.validate(stores).map_err(|e| e.within(&field))?;
        }
        for (j, ns) in self.inline.namespaces.iter().enumerate() {
            if !glob_is_valid(ns) {
                return Err(FieldError::new(
                    format!("inline.namespaces[{j}]"),
                    format!("\"{ns}\" is not a namespace name or glob"),
                ));
            }
        }
        Ok(())
    }
}

impl PolicyRule {
    fn validate(&self, stores: &HashSet<&str>) -> Result<(), FieldError> {
        if self.name.trim().is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        if (self.namespaces.is_empty() && self.namespace_selector.is_none())
            || self.stores.is_empty()
            || self.paths.is_empty()
        {
            return Err(FieldError::new(
                "",
                "needs namespaces (or a namespaceSelector), stores and paths (each non-empty)",
            ));
        }
        if let Some(sel) = &self.namespace_selector {
            for (j, req) in sel.match_expressions.iter().enumerate() {
                let needs_values = matches!(req.operator, SelectorOperator::In | SelectorOperator::NotIn);
                if needs_values == req.values.is_empty() {
                    return Err(FieldError::new(
                        format!("namespaceSelector.matchExpressions[{j}]"),
                        "In and NotIn need values; Exists and DoesNotExist take none",
                    ));
                }
            }
        }
        for (j, sa) in self.service_accounts.iter().enumerate() {
            let valid = !sa.is_empty()
                && sa.len() <= 253
                && sa.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'*' | b'?')
                });
            if !valid {
                return Err(FieldError::new(
                    format!("serviceAccounts[{j}]"),
                    format!("\"{sa}\" is not a service account name or glob"),
                ));
            }
        }
        for (j, ns) in self.namespaces.iter().enumerate() {
            if !glob_is_valid(ns) {
                return Err(FieldError::new(
                    format!("namespaces[{j}]"),
                    format!("\"{ns}\" is not a namespace name or glob"),
                ));
            }
        }
        for (j, s) in self.stores.iter().enumerate() {
            if s != "*" && !stores.contains(s.as_str()) {
                return Err(FieldError::new(
                    format!("stores[{j}]"),
                    format!("no store is named \"{s}\""),
                ));
            }
        }
        Ok(())
    }
}
