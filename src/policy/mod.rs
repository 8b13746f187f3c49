//! Namespace isolation: which namespace may read which paths of which store.
//! Pure functions over the configuration; default deny.

mod glob;

pub use glob::{glob_is_valid, glob_match, PathPattern};

use crate::config::PolicyConfig;

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct NamespacePolicy {
    rules: Vec<Rule>,
    inline_namespaces: Vec<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    namespaces: Vec<String>,
    stores: Vec<String>,
    paths: Vec<PathPattern>,
}

impl Rule {
    fn covers(&self, namespace: &str, store: &str) -> bool {
        self.stores.iter().any(|s| s == "*" || s == store)
            && self.namespaces.iter().any(|g| glob_match(g, namespace))
    }
}

/// Why a reference was refused, worded for the Pod's author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyDenial {
    #[error("the path is not allowed: {0}")]
    BadPath(String),
    #[error("no policy rule lets namespace \"{namespace}\" read store \"{store}\"")]
    NoRuleForStore { namespace: String, store: String },
    #[error("path \"{path}\" is outside what namespace \"{namespace}\" may read from store \"{store}\" ({allowed})")]
    PathNotAllowed {
        namespace: String,
        store: String,
        path: String,
        allowed: String,
    },
}

impl NamespacePolicy {
    pub fn new(config: &PolicyConfig) -> Result<Self, String> {
        let rules = config
            .rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    name: r.name.clone(),
                    namespaces: r.namespaces.clone(),
                    stores: r.stores.clone(),
                    paths: r
                        .paths
                        .iter()
                        .map(|p| PathPattern::parse(p))
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            rules,
            inline_namespaces: config.inline.namespaces.clone(),
        })
    }

    /// Returns the name of the rule that grants `namespace` read access to
    /// `path` in `store`, or why none does. The path is validated again here
    /// so that no caller can skip it.
    pub fn authorize(&self, namespace: &str, store: &str, path: &str) -> Result<&str, PolicyDenial> {
        validate_secret_path(path).map_err(PolicyDenial::BadPath)?;
        let mut applicable = Vec::new();
        for rule in self.rules.iter().filter(|r| r.covers(namespace, store)) {
            if rule.paths.iter().any(|p| p.matches(path, namespace)) {
                return Ok(&rule.name);
            }
            applicable.push(rule);
        }
        if applicable.is_empty() {
            return Err(PolicyDenial::NoRuleForStore {
                namespace: namespace.into(),
                store: store.into(),
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
    pub fn inline_allowed(&self, namespace: &str) -> bool {
        self.inline_namespaces.iter().any(|g| glob_match(g, namespace))
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
    use super::*;
    use crate::config::{InlinePolicy, PolicyRule};

    fn policy() -> NamespacePolicy {
        NamespacePolicy::new(&PolicyConfig {
            rules: vec![
                PolicyRule {
                    name: "own-subtree".into(),
                    namespaces: vec!["team-*".into()],
                    stores: vec!["vault".into()],
                    paths: vec!["secret/{namespace}/**".into()],
                },
                PolicyRule {
                    name: "shared-ro".into(),
                    namespaces: vec!["*".into()],
                    stores: vec!["*".into()],
                    paths: vec!["shared/*/public".into()],
                },
            ],
            inline: InlinePolicy {
                namespaces: vec!["dev".into(), "sandbox-*".into()],
            },
        })
        .unwrap()
    }

    #[test]
    fn grants_own_subtree_by_rule_name() {
        let p = policy();
        assert_eq!(
            p.authorize("team-a", "vault", "secret/team-a/db").unwrap(),
            "own-subtree"
        );
        assert_eq!(
            p.authorize("team-a", "vault", "secret/team-a/x/y/z").unwrap(),
            "own-subtree"
        );
        assert_eq!(
            p.authorize("team-a", "aws", "shared/x/public").unwrap(),
            "shared-ro"
        );
    }

    #[test]
    fn denies_other_namespace_subtree_and_names_the_rule() {
        let p = policy();
        let err = p.authorize("team-a", "vault", "secret/team-b/db").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("own-subtree") && msg.contains("secret/team-a/**"),
            "{msg}"
        );
        assert!(matches!(
            p.authorize("other", "vault", "secret/other/db"),
            Err(PolicyDenial::PathNotAllowed { .. })
        ));
        assert!(matches!(
            p.authorize("other", "nostore", "x"),
            Err(PolicyDenial::PathNotAllowed { .. })
        ));
    }

    #[test]
    fn default_deny() {
        let p = NamespacePolicy::new(&PolicyConfig::default()).unwrap();
        assert!(matches!(
            p.authorize("a", "b", "c"),
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
                    p.authorize("team-a", "vault", path),
                    Err(PolicyDenial::BadPath(_))
                ),
                "{path:?} must be refused"
            );
        }
        // A single segment wildcard never spans segments.
        assert!(p.authorize("team-a", "x", "shared/a/b/public").is_err());
    }

    #[test]
    fn inline_per_namespace() {
        let p = policy();
        assert!(p.inline_allowed("dev"));
        assert!(p.inline_allowed("sandbox-1"));
        assert!(!p.inline_allowed("prod"));
    }
}
