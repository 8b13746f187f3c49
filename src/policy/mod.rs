//! Namespace isolation: which namespace (by name or labels) and service
//! account may read which paths of which store. Pure functions over the
//! configuration and what the caller knows of the Pod; default deny.

pub mod config;
mod creation;
mod glob;
mod selector;

use std::collections::BTreeMap;

pub(crate) use config::{LabelSelector, PolicyConfig};
pub use creation::{CreationLimiter, CreationRate};
pub use glob::{glob_match, PathPattern};
pub(crate) use selector::selector_matches;

/// Who asks: the Pod's namespace, that namespace's labels when known (from
/// the Namespace cache) and the Pod's service account.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub namespace: &'a str,
    /// `None` when no Namespace cache is available (no cluster) or the
    /// namespace is not in it yet: rules with a `namespaceSelector` then
    /// match nothing.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    pub service_account: Option<&'a str>,
}

/// The compiled policy.
#[derive(Debug, Clone)]
pub(crate) struct NamespacePolicy {
    rules: Vec<Rule>,
    inline_namespaces: Vec<String>,
    inline_without_client_auth: bool,
    new_secrets: CreationRate,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    namespaces: Vec<String>,
    namespace_selector: Option<LabelSelector>,
    service_accounts: Vec<String>,
    stores: Vec<String>,
    paths: Vec<PathPattern>,
}

impl Rule {
    fn covers(&self, subject: &Subject<'_>, store: &str) -> bool {
        let names =
            self.namespaces.is_empty() || self.namespaces.iter().any(|g| glob_match(g, subject.namespace));
        let labels = match (&self.namespace_selector, subject.namespace_labels) {
            (None, _) => true,
            (Some(sel), Some(labels)) => selector_matches(sel, labels),
            (Some(_), None) => false,
        };
        let account = self.service_accounts.is_empty()
            || subject
                .service_account
                .is_some_and(|sa| self.service_accounts.iter().any(|g| glob_match(g, sa)));
        self.stores.iter().any(|s| s == "*" || s == store) && names && labels && account
    }
}

/// Why a reference was refused, worded for the Pod's author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PolicyDenial {
    #[error("the path is not allowed: {0}")]
    BadPath(String),
    #[error("no policy rule lets namespace \"{namespace}\"{who} read store \"{store}\"{note}")]
    NoRuleForStore {
        namespace: String,
        /// ` (service account "x")` or empty.
        who: String,
        store: String,
        /// Why selector rules did not apply, or empty.
        note: String,
    },
    #[error("path \"{path}\" is outside what namespace \"{namespace}\" may read from store \"{store}\" ({allowed})")]
    PathNotAllowed {
        namespace: String,
        store: String,
        path: String,
        allowed: String,
    },
}

impl NamespacePolicy {
    /// Compiles a loaded policy; its patterns were parsed when it was read.
    pub fn new(config: &PolicyConfig) -> Self {
        let rules = config
            .rules
            .iter()
            .map(|r| Rule {
                name: r.name.clone(),
                namespaces: r.namespaces.clone(),
                namespace_selector: r.namespace_selector.clone(),
                service_accounts: r.service_accounts.clone(),
                stores: r.stores.clone(),
                paths: r.paths.clone(),
            })
            .collect();
        Self {
            rules,
            inline_namespaces: config.inline.namespaces.clone(),
            inline_without_client_auth: config.inline.allow_without_client_auth,
            new_secrets: config.new_secrets_per_namespace,
        }
    }

    /// Returns the name of the rule that grants `subject` read access to
    /// `path` in `store`, or why none does. The path is validated again here
    /// so that no caller can skip it. `namespaced_store`: the store's paths
    /// start with a namespace (`namespace/name`, the `kubernetes` store); a
    /// path in another namespace than the subject's is then granted only by
    /// a rule whose pattern names that namespace literally: a glob such as
    /// `*/db` never opens other namespaces.
    pub(crate) fn authorize_in(
        &self,
        subject: &Subject<'_>,
        store: &str,
        path: &str,
        namespaced_store: bool,
    ) -> Result<&str, PolicyDenial> {
        validate_secret_path(path).map_err(PolicyDenial::BadPath)?;
        let namespace = subject.namespace;
        let target = path.split('/').next().unwrap_or("");
        let cross_namespace = namespaced_store && target != namespace;
        let mut applicable = Vec::new();
        for rule in self.rules.iter().filter(|r| r.covers(subject, store)) {
            if rule.paths.iter().any(|p| {
                p.matches(path, namespace) && (!cross_namespace || p.first_literal() == Some(target))
            }) {
                return Ok(&rule.name);
            }
            applicable.push(rule);
        }
        if applicable.is_empty() {
            let unknown_labels = subject.namespace_labels.is_none()
                && self.rules.iter().any(|r| {
                    r.namespace_selector.is_some() && r.stores.iter().any(|s| s == "*" || s == store)
                });
            return Err(PolicyDenial::NoRuleForStore {
                namespace: namespace.into(),
                who: subject
                    .service_account
                    .map(|sa| format!(" (service account \"{sa}\")"))
                    .unwrap_or_default(),
                store: store.into(),
                note: if unknown_labels {
                    "; the namespace's labels are not known, so rules with a namespaceSelector do not apply"
                        .into()
                } else {
                    String::new()
                },
            });
        }
        let allowed = applicable
            .iter()
            .map(|r| {
                let paths: Vec<String> = r
                    .paths
                    .iter()
                    .map(|p| format!("\"{}\"", p.render(namespace)))
                    .collect();
                format!("rule \"{}\" allows {}", r.name, paths.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(PolicyDenial::PathNotAllowed {
            namespace: namespace.into(),
            store: store.into(),
            path: path.into(),
            allowed,
        })
    }

    /// Whether Pods in `namespace` may have values written into their spec.
    pub(crate) fn inline_allowed(&self, namespace: &str) -> bool {
        self.inline_namespaces.iter().any(|g| glob_match(g, namespace))
    }

    /// Whether inline values may go to a caller that presented no client
    /// certificate (`policy.inline.allowWithoutClientAuth`).
    pub(crate) fn inline_without_client_auth(&self) -> bool {
        self.inline_without_client_auth
    }

    /// How fast one namespace may get new managed Secrets.
    pub(crate) fn new_secrets(&self) -> CreationRate {
        self.new_secrets
    }
}

/// Refuses paths that could mean something else to a store than to the
/// policy: empty or `.`/`..` segments, leading or trailing `/`, `//`,
/// percent-encoding, backslashes, glob characters, whitespace and control
/// characters. What passes is compared literally, segment by segment.
pub fn validate_secret_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.len() > 1024 {
        return Err("the path is longer than 1024 characters".into());
    }
    if path.starts_with('/') || path.ends_with('/') {
        return Err("the path must not start or end with '/'".into());
    }
    if let Some(c) = path.chars().find(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '%' | '\\' | '*' | '?' | '[' | ']' | '{' | '}' | '#')
    }) {
        return Err(format!("the path must not contain {c:?}"));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err("the path must not contain an empty segment ('//')".into()),
            "." | ".." => return Err(format!("the path must not contain a '{segment}' segment")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::config::{InlinePolicy, PolicyRule};
    use super::*;

    impl<'a> Subject<'a> {
        /// A subject known by namespace name only.
        fn namespace(namespace: &'a str) -> Self {
            Self {
                namespace,
                namespace_labels: None,
                service_account: None,
            }
        }
    }

    impl NamespacePolicy {
        /// For a store whose paths do not start with a namespace.
        fn authorize(&self, subject: &Subject<'_>, store: &str, path: &str) -> Result<&str, PolicyDenial> {
            self.authorize_in(subject, store, path, false)
        }
    }

    fn policy() -> NamespacePolicy {
        NamespacePolicy::new(&PolicyConfig {
            rules: vec![
                PolicyRule {
                    name: "own-subtree".into(),
                    namespace_selector: None,
                    service_accounts: vec![],
                    namespaces: vec!["team-*".into()],
                    stores: vec!["vault".into()],
                    paths: patterns(&["secret/{namespace}/**"]),
                },
                PolicyRule {
                    name: "shared-ro".into(),
                    namespace_selector: None,
                    service_accounts: vec![],
                    namespaces: vec!["*".into()],
                    stores: vec!["*".into()],
                    paths: patterns(&["shared/*/public"]),
                },
            ],
            inline: InlinePolicy {
                namespaces: vec!["dev".into(), "sandbox-*".into()],
                allow_without_client_auth: false,
            },
            new_secrets_per_namespace: CreationRate::default(),
        })
    }

    fn patterns(paths: &[&str]) -> Vec<PathPattern> {
        paths.iter().map(|p| PathPattern::parse(p).unwrap()).collect()
    }

    #[test]
    fn grants_own_subtree_by_rule_name() {
        let p = policy();
        assert_eq!(
            p.authorize(&Subject::namespace("team-a"), "vault", "secret/team-a/db")
                .unwrap(),
            "own-subtree"
        );
        assert_eq!(
            p.authorize(&Subject::namespace("team-a"), "vault", "secret/team-a/x/y/z")
                .unwrap(),
            "own-subtree"
        );
        assert_eq!(
            p.authorize(&Subject::namespace("team-a"), "aws", "shared/x/public")
                .unwrap(),
            "shared-ro"
        );
    }

    #[test]
    fn denies_other_namespace_subtree_and_names_the_rule() {
        let p = policy();
        let err = p
            .authorize(&Subject::namespace("team-a"), "vault", "secret/team-b/db")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("own-subtree") && msg.contains("secret/team-a/**"),
            "{msg}"
        );
        assert!(matches!(
            p.authorize(&Subject::namespace("other"), "vault", "secret/other/db"),
            Err(PolicyDenial::PathNotAllowed { .. })
        ));
        assert!(matches!(
            p.authorize(&Subject::namespace("other"), "nostore", "x"),
            Err(PolicyDenial::PathNotAllowed { .. })
        ));
    }

    #[test]
    fn default_deny() {
        let p = NamespacePolicy::new(&PolicyConfig::default());
        assert!(matches!(
            p.authorize(&Subject::namespace("a"), "b", "c"),
            Err(PolicyDenial::NoRuleForStore { .. })
        ));
        assert!(!p.inline_allowed("a"));
    }

    #[test]
    fn path_tricks_do_not_escape() {
        let p = policy();
        for path in [
            "secret/team-a/../team-b/db",
            "secret/team-a/./db",
            "secret//team-a/db",
            "secret/team-a/db/",
            "/secret/team-a/db",
            "secret/team-a/%2e%2e/team-b/db",
            "secret/team-a%2Fdb",
            "secret\\team-a\\db",
            "secret/team-a/*",
            "secret/team-a/db\n",
            "secret/team-a/ db",
        ] {
            assert!(
                matches!(
                    p.authorize(&Subject::namespace("team-a"), "vault", path),
                    Err(PolicyDenial::BadPath(_))
                ),
                "{path:?} must be refused"
            );
        }
        // A single segment wildcard never spans segments.
        assert!(p
            .authorize(&Subject::namespace("team-a"), "x", "shared/a/b/public")
            .is_err());
    }

    /// `request.namespace` is the API server's, but the policy does not rely
    /// on its format: a namespace spelled like a glob reads only the
    /// subtree spelled the same way (which no valid path can name).
    #[test]
    fn glob_named_namespace_reads_no_other_subtree() {
        let p = with_rules(vec![rule("own", &["*"], &["vault"], &["secret/{namespace}/**"])]);
        for namespace in ["*", "team-?", "team-*", "**"] {
            let err = p
                .authorize(&Subject::namespace(namespace), "vault", "secret/team-b/db")
                .unwrap_err();
            assert!(
                matches!(err, PolicyDenial::PathNotAllowed { .. }),
                "{namespace}: {err}"
            );
        }
        assert_eq!(
            p.authorize(&Subject::namespace("team-b"), "vault", "secret/team-b/db")
                .unwrap(),
            "own"
        );
    }

    #[test]
    fn inline_per_namespace() {
        let p = policy();
        assert!(p.inline_allowed("dev"));
        assert!(p.inline_allowed("sandbox-1"));
        assert!(!p.inline_allowed("prod"));
    }

    fn rule(name: &str, namespaces: &[&str], stores: &[&str], paths: &[&str]) -> PolicyRule {
        PolicyRule {
            name: name.into(),
            namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            namespace_selector: None,
            service_accounts: vec![],
            stores: stores.iter().map(|s| (*s).to_owned()).collect(),
            paths: patterns(paths),
        }
    }

    fn with_rules(rules: Vec<PolicyRule>) -> NamespacePolicy {
        NamespacePolicy::new(&PolicyConfig {
            rules,
            ..PolicyConfig::default()
        })
    }

    #[test]
    fn namespace_selector_needs_known_labels() {
        let mut r = rule("payments", &[], &["vault"], &["payments/**"]);
        r.namespace_selector = Some(LabelSelector {
            match_labels: [("team".to_owned(), "payments".to_owned())].into(),
            ..Default::default()
        });
        let p = with_rules(vec![r]);
        let labels: BTreeMap<String, String> = [("team".to_owned(), "payments".to_owned())].into();
        let other: BTreeMap<String, String> = [("team".to_owned(), "web".to_owned())].into();
        let subject = |l| Subject {
            namespace: "pay-1",
            namespace_labels: l,
            service_account: Some("default"),
        };
        assert_eq!(
            p.authorize(&subject(Some(&labels)), "vault", "payments/db")
                .unwrap(),
            "payments"
        );
        assert!(p
            .authorize(&subject(Some(&other)), "vault", "payments/db")
            .is_err());
        let unknown = p
            .authorize(&subject(None), "vault", "payments/db")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("labels are not known"), "{unknown}");
    }

    #[test]
    fn service_accounts_narrow_a_rule() {
        let mut r = rule("db-only", &["team-a"], &["vault"], &["secret/team-a/db"]);
        r.service_accounts = vec!["db-*".into()];
        let p = with_rules(vec![r]);
        let as_sa = |sa| Subject {
            namespace: "team-a",
            namespace_labels: None,
            service_account: sa,
        };
        assert!(p
            .authorize(&as_sa(Some("db-migrator")), "vault", "secret/team-a/db")
            .is_ok());
        let err = p
            .authorize(&as_sa(Some("web")), "vault", "secret/team-a/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("service account \"web\""), "{err}");
        assert!(p.authorize(&as_sa(None), "vault", "secret/team-a/db").is_err());
    }

    #[test]
    fn namespaced_store_crosses_namespaces_only_by_literal_name() {
        let p = with_rules(vec![
            rule("own", &["*"], &["k8s"], &["{namespace}/*"]),
            rule("any-db", &["*"], &["k8s"], &["*/db"]),
            rule("shared-ca", &["team-*"], &["k8s"], &["shared/ca"]),
        ]);
        let a = Subject::namespace("team-a");
        assert_eq!(p.authorize_in(&a, "k8s", "team-a/db", true).unwrap(), "own");
        // `*/db` would match, but a glob never grants another namespace.
        assert!(p.authorize_in(&a, "k8s", "team-b/db", true).is_err());
        assert_eq!(p.authorize_in(&a, "k8s", "shared/ca", true).unwrap(), "shared-ca");
        assert!(p.authorize_in(&a, "k8s", "shared/other", true).is_err());
        // The same rules for a store that is not namespaced are plain globs.
        assert_eq!(p.authorize_in(&a, "k8s", "team-b/db", false).unwrap(), "any-db");
    }
}
