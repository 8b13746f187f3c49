//! The `limits` section: how much one review may ask of Sesame, and the
//! counts that hold a Pod to it. A Pod is counted from what it asks (its
//! annotations and its number of containers) before anything is fetched,
//! and again from the store's answers before anything is planned, so a
//! review past a limit costs the parsing and a count, not the work it asks
//! for. Past a limit the Pod is denied with 413 and a sentence that names
//! the limit and its value. Pure; the pipeline runs the checks.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::annotations::{ContainerSelector, Injection, Mode, Target, TemplateInjection};
use super::data::Fetched;
use super::pod::PodView;
use crate::stores::{SecretData, StoreError};
use crate::validate::{FieldError, Quote};

/// `limits`: every field has a default that no sane Pod reaches and that
/// keeps the worst review within the defaults far below the memory limit
/// of the shipped Deployment (docs/security.md, docs/performance.md).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    /// References one Pod may make: compact annotations, entries of the
    /// structured form and the placeholders of templates together.
    #[serde(default = "default_max_references")]
    pub max_references: usize,
    /// Distinct secrets (store, path, version) one review may read: so at
    /// most this many store requests, cached or not, optional references
    /// included.
    #[serde(default = "default_max_store_requests")]
    pub max_store_requests: usize,
    /// Entries the injections may add to the Pod: each env var and each
    /// volume mount once per container it goes to, each file of a Sesame
    /// volume once.
    #[serde(default = "default_max_added_entries")]
    pub max_added_entries: usize,
    /// Bytes of the JSON Patch Sesame answers with (before base64).
    #[serde(default = "default_max_patch_bytes")]
    pub max_patch_bytes: usize,
    /// Characters of any one piece of a Pod (an annotation's key, a token
    /// of its value, a path, a container name) that a message quotes;
    /// longer pieces are cut with `…`.
    #[serde(default = "default_max_quoted_chars")]
    pub max_quoted_chars: usize,
}

fn default_max_references() -> usize {
    100
}

fn default_max_store_requests() -> usize {
    50
}

fn default_max_added_entries() -> usize {
    2000
}

fn default_max_patch_bytes() -> usize {
    1024 * 1024
}

fn default_max_quoted_chars() -> usize {
    Quote::DEFAULT.0
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_references: default_max_references(),
            max_store_requests: default_max_store_requests(),
            max_added_entries: default_max_added_entries(),
            max_patch_bytes: default_max_patch_bytes(),
            max_quoted_chars: default_max_quoted_chars(),
        }
    }
}

impl LimitsConfig {
    /// Checks the ranges; fields are below `limits`. The upper ends keep a
    /// typo from switching a limit off.
    pub fn validate(&self) -> Result<(), FieldError> {
        let ranges = [
            ("maxReferences", self.max_references, 1, 10_000),
            ("maxStoreRequests", self.max_store_requests, 1, 10_000),
            ("maxAddedEntries", self.max_added_entries, 1, 1_000_000),
            ("maxPatchBytes", self.max_patch_bytes, 4096, 64 * 1024 * 1024),
            ("maxQuotedChars", self.max_quoted_chars, 16, 4096),
        ];
        for (field, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(FieldError::new(
                    field,
                    format!("must be between {low} and {high}"),
                ));
            }
        }
        Ok(())
    }

    /// How much of one piece of input a message quotes.
    pub fn quote(&self) -> Quote {
        Quote(self.max_quoted_chars)
    }
}

/// A limit a Pod went past: the sentence of its denial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} is {count}, more than the {limit} allowed (limits.{field} in Sesame's configuration); {advice}"
)]
pub(crate) struct LimitExceeded {
    what: &'static str,
    count: usize,
    limit: usize,
    field: &'static str,
    advice: &'static str,
}

impl LimitExceeded {
    fn check(
        what: &'static str,
        count: usize,
        limit: usize,
        field: &'static str,
        advice: &'static str,
    ) -> Result<(), Self> {
        if count > limit {
            Err(Self {
                what,
                count,
                limit,
                field,
                advice,
            })
        } else {
            Ok(())
        }
    }
}

const FEWER_REFERENCES: &str =
    "split the Pod's secrets over fewer references (env-from and dir take a whole secret)";
const FEWER_ENTRIES: &str = "target fewer containers (containers=) or fewer values";

/// How many containers an injection can reach, from the counts alone:
/// every app container by default, the named ones (app or init) otherwise,
/// and every init container with `init=true`. Names are checked against
/// the Pod later, when the plan is built; here no list is built.
fn receivers(selector: &ContainerSelector, app: usize, init: usize) -> usize {
    let chosen = if selector.names.is_empty() {
        app
    } else {
        selector.names.len()
    };
    let chosen = chosen.saturating_add(if selector.init { init } else { 0 });
    chosen.min(app.saturating_add(init))
}

/// What one injection adds to the Pod for `values` values: entries (env
/// vars or mounts per container, files once) and value bytes written into
/// the Pod (inline env values, once per container).
fn added(target: &Target, receivers: usize, values: usize) -> usize {
    match target {
        Target::Env { .. } | Target::EnvFrom { .. } => receivers.saturating_mul(values),
        Target::File { .. } | Target::Dir { .. } => receivers.saturating_add(values),
    }
}

/// Checks what a Pod asks for before anything is fetched: the number of
/// references, of distinct secrets (store requests), and of entries the
/// injections add, counting one value for each (an env-from or dir counts
/// its properties once its secret is read, in [`check_answers`]).
/// References must already carry their store's canonical version, so that
/// `version=01` and `version=1` count once.
pub(crate) fn check_request(
    limits: &LimitsConfig,
    injections: &[Injection],
    templates: &[TemplateInjection],
    pod: &PodView,
) -> Result<(), LimitExceeded> {
    let placeholders = templates
        .iter()
        .fold(0usize, |sum, t| sum.saturating_add(t.references().count()));
    LimitExceeded::check(
        "the number of references (annotations, structured entries and template placeholders)",
        injections.len().saturating_add(placeholders),
        limits.max_references,
        "maxReferences",
        FEWER_REFERENCES,
    )?;
    let secrets: BTreeSet<(&str, &str, Option<&str>)> = injections
        .iter()
        .map(|i| &i.reference)
        .chain(templates.iter().flat_map(TemplateInjection::references))
        .map(|r| (r.store.as_str(), r.path.as_str(), r.version.as_deref()))
        .collect();
    LimitExceeded::check(
        "the number of distinct secrets to read",
        secrets.len(),
        limits.max_store_requests,
        "maxStoreRequests",
        FEWER_REFERENCES,
    )?;
    let (app, init) = (pod.spec.containers.len(), pod.init_containers().len());
    let entries = injections
        .iter()
        .map(|i| (&i.target, &i.containers))
        .chain(templates.iter().map(|t| (&t.target, &t.containers)))
        .fold(0usize, |sum, (target, containers)| {
            sum.saturating_add(added(target, receivers(containers, app, init), 1))
        });
    LimitExceeded::check(
        "the number of env vars, mounts and files to add",
        entries,
        limits.max_added_entries,
        "maxAddedEntries",
        FEWER_ENTRIES,
    )
}

/// Checks what the answers would add before the plan is built: entries
/// with every property of an env-from or dir counted, and the bytes of the
/// values that inline mode writes into the Pod (each once per container),
/// which alone would make the patch larger than its limit. `resolved` is
/// parallel to `injections`.
pub(crate) fn check_answers(
    limits: &LimitsConfig,
    injections: &[Injection],
    resolved: &[Result<Arc<SecretData>, StoreError>],
    templates: Templates<'_>,
    pod: &PodView,
    mode: Mode,
) -> Result<(), LimitExceeded> {
    let (app, init) = (pod.spec.containers.len(), pod.init_containers().len());
    let mut entries = 0usize;
    let mut inline_bytes = 0usize;
    for (injection, answer) in injections.iter().zip(resolved) {
        // A failed read places nothing; the plan says why.
        let Ok(data) = answer else { continue };
        let to = receivers(&injection.containers, app, init);
        let (values, bytes) = match &injection.target {
            Target::Env { .. } | Target::File { .. } => {
                let bytes = data
                    .get(injection.reference.property.as_deref())
                    .map_or(0, |v| v.len());
                (1, bytes)
            }
            Target::EnvFrom { .. } | Target::Dir { .. } => data.properties().map_or((0, 0), |props| {
                let bytes = props.values().fold(0usize, |sum, v| sum.saturating_add(v.len()));
                (props.len(), bytes)
            }),
        };
        entries = entries.saturating_add(added(&injection.target, to, values));
        let inline =
            mode == Mode::Inline && matches!(injection.target, Target::Env { .. } | Target::EnvFrom { .. });
        if inline {
            inline_bytes = inline_bytes.saturating_add(bytes.saturating_mul(to));
        }
    }
    for t in templates.templates {
        let to = receivers(&t.containers, app, init);
        entries = entries.saturating_add(added(&t.target, to, 1));
        if mode == Mode::Inline && matches!(t.target, Target::Env { .. }) {
            // The text and the values before their functions: the patch's
            // own limit then holds the rendered size.
            let values = t.references().fold(0usize, |sum, r| {
                let len = match templates.answers.get(&r.request()) {
                    Some(Ok(d)) => d.get(r.property.as_deref()).map_or(0, |v| v.len()),
                    _ => 0,
                };
                sum.saturating_add(len)
            });
            let bytes = values.saturating_add(t.template.literal_len());
            inline_bytes = inline_bytes.saturating_add(bytes.saturating_mul(to));
        }
    }
    LimitExceeded::check(
        "the number of env vars, mounts and files to add",
        entries,
        limits.max_added_entries,
        "maxAddedEntries",
        FEWER_ENTRIES,
    )?;
    LimitExceeded::check(
        "the size of the values inline mode would write into the Pod, in bytes",
        inline_bytes,
        limits.max_patch_bytes,
        "maxPatchBytes",
        "inject large values as files, or target fewer containers",
    )
}

/// A Pod's templates with the answers to their placeholders, for
/// [`check_answers`].
#[derive(Clone, Copy)]
pub(crate) struct Templates<'a> {
    pub templates: &'a [TemplateInjection],
    pub answers: &'a Fetched,
}

impl Templates<'_> {
    #[cfg(test)]
    fn none() -> Templates<'static> {
        static EMPTY: std::sync::LazyLock<Fetched> = std::sync::LazyLock::new(Fetched::new);
        Templates {
            templates: &[],
            answers: &EMPTY,
        }
    }
}

/// Checks the size of the patch as it will be sent (its JSON, before
/// base64).
pub(crate) fn check_patch(limits: &LimitsConfig, patch_bytes: usize) -> Result<(), LimitExceeded> {
    LimitExceeded::check(
        "the size of the patch, in bytes",
        patch_bytes,
        limits.max_patch_bytes,
        "maxPatchBytes",
        FEWER_ENTRIES,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::inject::annotations::parse;
    use crate::stores::SecretValue;

    fn pod(app: usize, init: usize) -> PodView {
        let containers: Vec<_> = (0..app)
            .map(|i| serde_json::json!({"name": format!("c{i}")}))
            .collect();
        let init: Vec<_> = (0..init)
            .map(|i| serde_json::json!({"name": format!("i{i}")}))
            .collect();
        serde_json::from_value(
            serde_json::json!({"spec": {"containers": containers, "initContainers": init}}),
        )
        .unwrap()
    }

    fn injections(pairs: &[(String, String)]) -> Vec<Injection> {
        let map: BTreeMap<String, String> = pairs.iter().cloned().collect();
        parse("sesame.dev", &map).unwrap().injections
    }

    fn env(n: usize, value: impl Fn(usize) -> String) -> Vec<Injection> {
        let pairs: Vec<(String, String)> = (0..n)
            .map(|i| (format!("sesame.dev/env.V{i}"), value(i)))
            .collect();
        injections(&pairs)
    }

    #[test]
    fn references_secrets_and_entries_are_counted_before_any_fetch() {
        let limits = LimitsConfig::default();
        let ok = env(100, |i| format!("dev:apps/a/s{}#p{i}", i % 50));
        check_request(&limits, &ok, &[], &pod(10, 0)).unwrap();

        let e = check_request(
            &limits,
            &env(101, |i| format!("dev:apps/a/s{i}")),
            &[],
            &pod(1, 0),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the number of references (annotations, structured entries and template placeholders) is 101, more than the 100 allowed (limits.maxReferences in Sesame's configuration); split the Pod's secrets over fewer references (env-from and dir take a whole secret)"
        );
        let e =
            check_request(&limits, &env(51, |i| format!("dev:apps/a/s{i}")), &[], &pod(1, 0)).unwrap_err();
        assert!(
            e.to_string()
                .contains("is 51, more than the 50 allowed (limits.maxStoreRequests"),
            "{e}"
        );
        // 21 references into 100 containers: 2100 env vars.
        let e = check_request(&limits, &env(21, |_| "dev:apps/a/s#p".into()), &[], &pod(100, 0)).unwrap_err();
        assert!(
            e.to_string()
                .contains("is 2100, more than the 2000 allowed (limits.maxAddedEntries"),
            "{e}"
        );
    }

    #[test]
    fn receivers_follow_the_selector_without_building_lists() {
        let one = |value: &str| injections(&[("sesame.dev/env.A".into(), value.into())]).remove(0);
        let count = |value: &str| receivers(&one(value).containers, 300_000, 5);
        assert_eq!(count("dev:a"), 300_000);
        assert_eq!(count("dev:a containers=c1"), 1);
        assert_eq!(count("dev:a containers=c1,i1 init=true"), 7);
        assert_eq!(count("dev:a init=true"), 300_005);
        // Repeated names reach one container; an upper bound is enough.
        assert_eq!(receivers(&one("dev:a containers=x,x,x").containers, 1, 0), 1);
    }

    #[test]
    fn answers_count_every_property_and_inline_bytes() {
        let limits = LimitsConfig {
            max_added_entries: 100,
            max_patch_bytes: 4096,
            ..LimitsConfig::default()
        };
        let pairs = [("sesame.dev/env-from.all".to_owned(), "dev:apps/a/big".to_owned())];
        let from = injections(&pairs);
        let props = |n: usize, len: usize| {
            let map = (0..n)
                .map(|i| (format!("k{i}"), SecretValue::from("x".repeat(len))))
                .collect();
            Ok(Arc::new(SecretData::Properties(map)))
        };
        check_answers(
            &limits,
            &from,
            &[props(50, 1)],
            Templates::none(),
            &pod(2, 0),
            Mode::SecretRef,
        )
        .unwrap();
        let e = check_answers(
            &limits,
            &from,
            &[props(51, 1)],
            Templates::none(),
            &pod(2, 0),
            Mode::SecretRef,
        )
        .unwrap_err();
        assert!(e.to_string().contains("is 102, more than the 100 allowed"), "{e}");
        // Inline: 10 properties of 300 bytes into 2 containers is 6000 bytes in the Pod.
        let e = check_answers(
            &limits,
            &from,
            &[props(10, 300)],
            Templates::none(),
            &pod(2, 0),
            Mode::Inline,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("is 6000, more than the 4096 allowed (limits.maxPatchBytes"),
            "{e}"
        );
        check_answers(
            &limits,
            &from,
            &[props(10, 300)],
            Templates::none(),
            &pod(2, 0),
            Mode::SecretRef,
        )
        .unwrap();
        // A failed read adds nothing.
        check_answers(
            &limits,
            &from,
            &[Err(StoreError::NotFound)],
            Templates::none(),
            &pod(2, 0),
            Mode::SecretRef,
        )
        .unwrap();
    }

    /// Each placeholder is a reference; a template is one entry per
    /// container; in inline mode its text and values count as bytes.
    #[test]
    fn templates_count_their_placeholders_entries_and_inline_bytes() {
        let limits = LimitsConfig {
            max_references: 4,
            max_store_requests: 2,
            max_patch_bytes: 4096,
            ..LimitsConfig::default()
        };
        let parsed = |pairs: &[(&str, &str)]| {
            let map: BTreeMap<String, String> =
                pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
            parse("sesame.dev", &map).unwrap()
        };
        let r = parsed(&[
            ("sesame.dev/env.A", "dev:apps/a/x#p"),
            (
                "sesame.dev/template.B",
                "{{ dev:apps/a/x#p }}{{ dev:apps/a/y#q }}{{ dev:apps/a/y#r }}",
            ),
        ]);
        check_request(&limits, &r.injections, &r.templates, &pod(1, 0)).unwrap();
        let r = parsed(&[
            ("sesame.dev/env.A", "dev:apps/a/x#p"),
            (
                "sesame.dev/template.B",
                "{{ dev:apps/a/x#p }}{{ dev:apps/a/y#q }}{{ dev:apps/a/y#r }}{{ dev:apps/a/y#s }}",
            ),
        ]);
        let e = check_request(&limits, &r.injections, &r.templates, &pod(1, 0)).unwrap_err();
        assert!(
            e.to_string()
                .contains("is 5, more than the 4 allowed (limits.maxReferences"),
            "{e}"
        );
        let r = parsed(&[(
            "sesame.dev/template.B",
            "{{ dev:apps/a/x }}{{ dev:apps/a/y }}{{ dev:apps/a/z }}",
        )]);
        let e = check_request(&limits, &r.injections, &r.templates, &pod(1, 0)).unwrap_err();
        assert!(
            e.to_string()
                .contains("is 3, more than the 2 allowed (limits.maxStoreRequests"),
            "{e}"
        );

        // Inline: 2 placeholders of 1000 bytes and 100 bytes of text, into 2 containers.
        let text = format!(
            "{}{{{{ dev:apps/a/x#p }}}}{{{{ dev:apps/a/x#p | base64 }}}}",
            "t".repeat(100)
        );
        let r = parsed(&[("sesame.dev/template.B", &text)]);
        let big: Result<Arc<SecretData>, StoreError> = Ok(Arc::new(SecretData::Properties(
            [("p".to_owned(), SecretValue::from("v".repeat(1000)))].into(),
        )));
        let answers: Fetched = [(
            r.templates[0]
                .template
                .placeholders()
                .next()
                .unwrap()
                .reference
                .request(),
            big,
        )]
        .into_iter()
        .collect();
        let templates = Templates {
            templates: &r.templates,
            answers: &answers,
        };
        let e = check_answers(&limits, &[], &[], templates, &pod(2, 0), Mode::Inline).unwrap_err();
        assert!(
            e.to_string()
                .contains("is 4200, more than the 4096 allowed (limits.maxPatchBytes"),
            "{e}"
        );
        check_answers(&limits, &[], &[], templates, &pod(2, 0), Mode::SecretRef).unwrap();
    }

    #[test]
    fn the_section_is_optional_and_checked() {
        let parsed: LimitsConfig = serde_norway::from_str("maxReferences: 10\n").unwrap();
        assert_eq!(parsed.max_references, 10);
        assert_eq!(parsed.max_store_requests, 50);
        parsed.validate().unwrap();
        let zero: LimitsConfig = serde_norway::from_str("maxPatchBytes: 0\n").unwrap();
        assert_eq!(zero.validate().unwrap_err().field, "maxPatchBytes");
        assert!(serde_norway::from_str::<LimitsConfig>("maxRefs: 1\n").is_err());
    }
}
