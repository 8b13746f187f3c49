//! Kubernetes label selector semantics over a namespace's labels.

use std::collections::BTreeMap;

use super::config::{LabelSelector, SelectorOperator};

/// `matchLabels` and every `matchExpressions` entry must hold, as in
/// Kubernetes: `NotIn` and `DoesNotExist` hold for a missing key; an empty
/// selector matches every namespace.
pub(crate) fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|req| {
            let value = labels.get(&req.key);
            match req.operator {
                SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
                SelectorOperator::Exists => value.is_some(),
                SelectorOperator::DoesNotExist => value.is_none(),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn kubernetes_semantics() {
        let ns = labels(&[("team", "payments"), ("env", "prod")]);
        let empty = LabelSelector::default();
        assert!(selector_matches(&empty, &ns));

        let by_label = LabelSelector {
            match_labels: labels(&[("team", "payments")]),
            ..Default::default()
        };
        assert!(selector_matches(&by_label, &ns));
        assert!(!selector_matches(&by_label, &labels(&[("team", "web")])));
        assert!(!selector_matches(&by_label, &labels(&[])));

        let cases = [
            (req("env", SelectorOperator::In, &["prod", "staging"]), true),
            (req("env", SelectorOperator::In, &["dev"]), false),
            (req("env", SelectorOperator::NotIn, &["dev"]), true),
            (req("env", SelectorOperator::NotIn, &["prod"]), false),
            (req("missing", SelectorOperator::NotIn, &["x"]), true),
            (req("missing", SelectorOperator::In, &["x"]), false),
            (req("team", SelectorOperator::Exists, &[]), true),
            (req("missing", SelectorOperator::Exists, &[]), false),
            (req("missing", SelectorOperator::DoesNotExist, &[]), true),
            (req("team", SelectorOperator::DoesNotExist, &[]), false),
        ];
        for (r, want) in cases {
            let sel = LabelSelector {
                match_expressions: vec![r.clone()],
                ..Default::default()
            };
            assert_eq!(selector_matches(&sel, &ns), want, "{r:?}");
        }
        // Labels and expressions are ANDed.
        let both = LabelSelector {
            match_labels: labels(&[("team", "payments")]),
            match_expressions: vec![req("env", SelectorOperator::In, &["dev"])],
        };
        assert!(!selector_matches(&both, &ns));
    }
}
