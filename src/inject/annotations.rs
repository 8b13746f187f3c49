//! The annotation grammar: what an app team writes on a Pod (or Pod
//! template) to ask for secrets. Pure parsing, no I/O. See docs/annotations.md.
//!
//! Compact form, one annotation per injection:
//! `<prefix>/env.<NAME>`, `<prefix>/env-from.<id>`, `<prefix>/file.<id>`,
//! `<prefix>/dir.<id>`, valued `<store>:<path>[#<property>] [option=value ...]`.
//! Structured form: `<prefix>/secrets`, a YAML or JSON list of entries.
//! Pod-wide: `<prefix>/mode: secretRef|inline`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::template::Template;
use crate::policy::validate_secret_path;
use crate::validate::{is_dns_label, Quote, Quoted};

/// Annotation Sesame writes on Pods it mutated; its value names the managed
/// Secret (or `inline`). Admission policies and the garbage collector read it.
pub const INJECTED_SUFFIX: &str = "injected";
/// Pod-wide opt-in: restart the owning workload when a value rotates
/// (env vars cannot change in a running Pod). Recorded on the managed Secret.
pub(crate) const RESTART_ON_ROTATION_SUFFIX: &str = "restart-on-rotation";
/// Pod-wide mode annotation.
pub(crate) const MODE_SUFFIX: &str = "mode";
/// Structured form annotation.
pub const SECRETS_SUFFIX: &str = "secrets";

/// Where a value comes from: a store name, a path, and optionally a
/// property and a version. Connection settings never appear here: a Pod can
/// only name a store that the configuration defines.
///
/// A managed Secret records, per key, the reference it holds in this very
/// type (its `sources` annotation, as JSON): every field a reference has is
/// recorded and read back, so rotation re-resolves exactly what admission
/// resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretRef {
    pub store: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// How often rotation re-resolves it (`refresh=15m`), overriding its
    /// store's `refreshInterval`; recorded only when set.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::refresh::recorded"
    )]
    pub refresh: Option<Duration>,
}

impl std::str::FromStr for SecretRef {
    type Err = GrammarError;

    /// Reads the compact form that `Display` writes:
    /// `<store>:<path>[#<property>][ version=<version>]`, with the checks of
    /// the annotation grammar.
    fn from_str(text: &str) -> Result<Self, GrammarError> {
        let at = At {
            key: "reference",
            quote: Quote::DEFAULT,
        };
        parse_versioned_reference(at, text)
    }
}

/// `<store>:<path>[#<property>][ version=<version>][ refresh=<duration>]`:
/// a recorded reference, and a template's placeholder.
fn parse_versioned_reference(at: At<'_>, text: &str) -> Result<SecretRef, GrammarError> {
    let mut tokens = text.split_whitespace();
    let reference = tokens
        .next()
        .ok_or_else(|| at.err("expected <store>:<path>[#property]"))?;
    let (mut version, mut refresh) = (None, None);
    for t in tokens {
        if let Some(v) = t.strip_prefix("version=").filter(|_| version.is_none()) {
            version = Some(v.to_owned());
        } else if let Some(r) = t.strip_prefix("refresh=").filter(|_| refresh.is_none()) {
            refresh = Some(parse_refresh(at, r)?);
        } else {
            return Err(at.err(format!(
                "\"{}\": only version= and refresh= may follow the reference, once each",
                at.q(t)
            )));
        }
    }
    let mut r = parse_reference(at, reference, version)?;
    r.refresh = refresh;
    Ok(r)
}

fn parse_refresh(at: At<'_>, text: &str) -> Result<Duration, GrammarError> {
    super::refresh::parse(text).map_err(|m| at.err(m))
}

impl fmt::Display for SecretRef {
    /// The compact form, for messages and audit records (never a value).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.store, self.path)?;
        if let Some(p) = &self.property {
            write!(f, "#{p}")?;
        }
        if let Some(v) = &self.version {
            write!(f, " version={v}")?;
        }
        if let Some(d) = self.refresh {
            write!(f, " refresh={}", super::refresh::Spelled(d))?;
        }
        Ok(())
    }
}

/// What the value becomes in the Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One value as one env var.
    Env { name: String },
    /// Every property as env vars named `prefix` + KEY (upper-cased, other
    /// characters than letters, digits and `_` become `_`).
    EnvFrom { prefix: String },
    /// One value as one file; the file's directory becomes a Sesame volume.
    File { path: String, mode: Option<u32> },
    /// Every property as a file in a directory.
    Dir { path: String, mode: Option<u32> },
}

/// Which containers receive an injection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSelector {
    /// Named containers (app or init); empty means every app container.
    pub names: Vec<String>,
    /// Also every init container.
    pub init: bool,
}

/// One requested injection, from one annotation (or one structured entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// The annotation it came from, e.g. `sesame.dev/env.DB_PASSWORD` or
    /// `sesame.dev/secrets[2]`; every message about it names this.
    pub source: String,
    pub target: Target,
    pub reference: SecretRef,
    pub containers: ContainerSelector,
    /// A missing secret or property is skipped with a warning instead of denying.
    pub optional: bool,
}

/// A template whose placeholders are references.
pub type RefTemplate = Template<SecretRef>;

/// One requested template: text with placeholders, rendered into one env
/// var or one file (`target` is `Env` or `File`, nothing else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInjection {
    /// The annotation it came from, e.g. `sesame.dev/template.DATABASE_URL`.
    pub source: String,
    pub target: Target,
    pub template: RefTemplate,
    pub containers: ContainerSelector,
    /// Skipped with a warning when any placeholder's secret or property is missing.
    pub optional: bool,
}

impl TemplateInjection {
    /// Every placeholder's reference, in the order they appear.
    pub fn references(&self) -> impl Iterator<Item = &SecretRef> {
        self.template.placeholders().map(|p| &p.reference)
    }
}

/// Where resolved values go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Values in a Sesame-managed Secret; the Pod gets references to it.
    #[default]
    SecretRef,
    /// Env values written into the Pod spec (files still use a Secret).
    Inline,
}

/// Everything a Pod asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequest {
    pub injections: Vec<Injection>,
    /// `template.<NAME>` annotations and structured entries with `template:`.
    pub templates: Vec<TemplateInjection>,
    pub mode: Mode,
    /// `<prefix>/restart-on-rotation: "true"`.
    pub restart_on_rotation: bool,
}

/// A malformed annotation. The message names the annotation and the problem,
/// quoting only the annotation's key or the offending token, never a value
/// fetched from a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation \"{annotation}\": {message}")]
pub struct GrammarError {
    pub annotation: String,
    pub message: String,
}

/// The annotation a message is about, and how much of the input a message
/// may quote ([`Quote`]): keys and values are whatever the Pod's author
/// wrote, of any length and with any characters.
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    key: &'a str,
    quote: Quote,
}

impl<'a> At<'a> {
    fn err(self, message: impl Into<String>) -> GrammarError {
        GrammarError {
            annotation: self.quote.of(self.key).to_string(),
            message: message.into(),
        }
    }

    /// A piece of the input, as a message quotes it.
    fn q(self, text: &str) -> Quoted<'_> {
        self.quote.of(text)
    }

    /// The same limit, about another annotation (a structured entry).
    fn with(self, key: &'a str) -> Self {
        Self { key, ..self }
    }
}

/// The cheap first test: does the Pod carry any annotation under `prefix`
/// other than the marker Sesame itself writes?
pub(crate) fn has_requests<'a>(prefix: &str, mut keys: impl Iterator<Item = &'a String>) -> bool {
    keys.any(|k| {
        k.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|name| name != INJECTED_SUFFIX && name != RESTART_ON_ROTATION_SUFFIX)
    })
}

/// Parses every Sesame annotation of a Pod; messages quote at most
/// [`Quote::DEFAULT`] characters of any piece of the input.
pub fn parse(prefix: &str, annotations: &BTreeMap<String, String>) -> Result<PodRequest, GrammarError> {
    parse_with(prefix, annotations, Quote::DEFAULT)
}

/// [`parse`], with messages that quote at most `quote` characters of any
/// piece of the input (`limits.maxQuotedChars`).
pub fn parse_with(
    prefix: &str,
    annotations: &BTreeMap<String, String>,
    quote: Quote,
) -> Result<PodRequest, GrammarError> {
    let mut request = PodRequest::default();
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let at = At { key, quote };
        if name == INJECTED_SUFFIX {
            continue;
        }
        if name == MODE_SUFFIX {
            request.mode = match value.trim() {
                "secretRef" => Mode::SecretRef,
                "inline" => Mode::Inline,
                other => {
                    return Err(at.err(format!(
                        "mode must be \"secretRef\" or \"inline\", not \"{}\"",
                        at.q(other)
                    )))
                }
            };
        } else if name == RESTART_ON_ROTATION_SUFFIX {
            request.restart_on_rotation = parse_bool(at, "the value", Some(value.trim()))?;
        } else if name == SECRETS_SUFFIX {
            let (injections, templates) = parse_structured(at, value)?;
            request.injections.extend(injections);
            request.templates.extend(templates);
        } else if let Some(id) = name.strip_prefix("template.") {
            validate_env_name(at, id)?;
            request.templates.push(TemplateInjection {
                source: at.q(at.key).to_string(),
                target: Target::Env { name: id.to_owned() },
                template: parse_template(at, value)?,
                containers: ContainerSelector::default(),
                optional: false,
            });
        } else if let Some((kind, id)) = name.split_once('.') {
            request.injections.push(parse_compact(at, kind, id, value)?);
        } else {
            return Err(unknown(at));
        }
    }
    Ok(request)
}

fn unknown(at: At<'_>) -> GrammarError {
    at.err(
        "unknown Sesame annotation; use env.<NAME>, env-from.<id>, file.<id>, dir.<id>, template.<NAME>, secrets, mode or restart-on-rotation",
    )
}

fn parse_compact(at: At<'_>, kind: &str, id: &str, value: &str) -> Result<Injection, GrammarError> {
    let mut tokens = value.split_whitespace();
    let reference_text = tokens
        .next()
        .ok_or_else(|| at.err("the value is empty; expected <store>:<path>[#property]"))?;
    let mut options: BTreeMap<&str, &str> = BTreeMap::new();
    for token in tokens {
        let (k, v) = token
            .split_once('=')
            .ok_or_else(|| at.err(format!("option \"{}\" is not key=value", at.q(token))))?;
        if options.insert(k, v).is_some() {
            return Err(at.err(format!("option \"{}\" is given twice", at.q(k))));
        }
    }
    let mut take = |name: &str| options.remove(name);
    let version = take("version").map(str::to_owned);
    let mut reference = parse_reference(at, reference_text, version)?;
    reference.refresh = take("refresh").map(|r| parse_refresh(at, r)).transpose()?;
    let containers = ContainerSelector {
        names: match take("containers") {
            Some(list) => parse_container_list(at, list.split(','))?,
            None => Vec::new(),
        },
        init: parse_bool(at, "init", take("init"))?,
    };
    let optional = parse_bool(at, "optional", take("optional"))?;
    let target = match kind {
        "env" => {
            validate_env_name(at, id)?;
            Target::Env { name: id.to_owned() }
        }
        "env-from" => {
            let prefix = take("prefix").unwrap_or("").to_owned();
            validate_env_prefix(at, &prefix)?;
            Target::EnvFrom { prefix }
        }
        "file" | "dir" => {
            let path = take("path").ok_or_else(|| at.err(format!("{kind} needs path=/absolute/path")))?;
            validate_mount_path(at, path)?;
            let mode = take("mode").map(|m| parse_mode(at, m)).transpose()?;
            if kind == "file" {
                Target::File {
                    path: path.to_owned(),
                    mode,
                }
            } else {
                Target::Dir {
                    path: path.to_owned(),
                    mode,
                }
            }
        }
        _ => return Err(unknown(at)),
    };
    if kind != "env" && !is_dns_label(id) {
        return Err(at.err(format!(
            "the id \"{}\" must be lower-case letters, digits and '-'",
            at.q(id)
        )));
    }
    if let Some(extra) = options.keys().next() {
        return Err(at.err(format!("option \"{}\" does not apply here", at.q(extra))));
    }
    check_property_use(at, &target, &reference)?;
    Ok(Injection {
        source: at.q(at.key).to_string(),
        target,
        reference,
        containers,
        optional,
    })
}

/// A template's text: its placeholders are references as in
/// [`parse_versioned_reference`], checked like any other.
fn parse_template(at: At<'_>, text: &str) -> Result<RefTemplate, GrammarError> {
    Template::parse(text, |r| parse_versioned_reference(at, r).map_err(|e| e.message))
        .map_err(|e| at.err(format!("template: {e}")))
}

/// `<store>:<path>[#<property>]`. The store is a DNS label, so the first `:`
/// ends it; `#` never occurs in a path any store allows (the policy refuses
/// it), so the last `#` starts the property.
fn parse_reference(at: At<'_>, text: &str, version: Option<String>) -> Result<SecretRef, GrammarError> {
    let (store, rest) = text
        .split_once(':')
        .ok_or_else(|| at.err("expected <store>:<path>[#property]"))?;
    let (path, property) = match rest.split_once('#') {
        Some((p, prop)) => (p, Some(prop.to_owned())),
        None => (rest, None),
    };
    build_reference(at, store, path, property, version)
}

fn build_reference(
    at: At<'_>,
    store: &str,
    path: &str,
    property: Option<String>,
    version: Option<String>,
) -> Result<SecretRef, GrammarError> {
    if !is_dns_label(store) {
        return Err(at.err(format!(
            "\"{}\" is not a store name (lower-case letters, digits, '-')",
            at.q(store)
        )));
    }
    validate_secret_path(path).map_err(|m| at.err(m))?;
    if let Some(p) = &property {
        if p.is_empty() || p.len() > 253 || p.chars().any(|c| c.is_control() || c == '#' || c.is_whitespace())
        {
            return Err(at.err("the property after '#' must be 1-253 characters without spaces or '#'"));
        }
    }
    if let Some(v) = &version {
        if v.is_empty()
            || v.len() > 128
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(at.err("version must be 1-128 letters, digits, '.', '_' or '-'"));
        }
    }
    Ok(SecretRef {
        store: store.to_owned(),
        path: path.to_owned(),
        property,
        version,
        refresh: None,
    })
}

fn check_property_use(at: At<'_>, target: &Target, reference: &SecretRef) -> Result<(), GrammarError> {
    match target {
        Target::EnvFrom { .. } | Target::Dir { .. } if reference.property.is_some() => {
            Err(at.err("env-from and dir take every property of a secret; drop the #property"))
        }
        _ => Ok(()),
    }
}

fn parse_bool(at: At<'_>, name: &str, v: Option<&str>) -> Result<bool, GrammarError> {
    match v {
        None => Ok(false),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(at.err(format!("{name} must be true or false, not \"{}\"", at.q(other)))),
    }
}

fn parse_container_list<'a>(
    at: At<'_>,
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<String>, GrammarError> {
    let mut out = Vec::new();
    for n in names {
        if !is_dns_label(n) {
            return Err(at.err(format!("\"{}\" is not a container name", at.q(n))));
        }
        out.push(n.to_owned());
    }
    if out.is_empty() {
        return Err(at.err("containers must name at least one container"));
    }
    Ok(out)
}

/// File modes are octal, as in `chmod`: `0400`, `440`, `0o440`.
fn parse_mode(at: At<'_>, text: &str) -> Result<u32, GrammarError> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(at.err(format!(
            "mode \"{}\" must be octal between 0000 and 0777, e.g. 0400",
            at.q(text)
        ))),
    }
}

/// Env var names as the API server validates them: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || matches!(b, b'-' | b'.' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn validate_env_name(at: At<'_>, name: &str) -> Result<(), GrammarError> {
    if is_env_name(name) {
        Ok(())
    } else {
        Err(at.err(format!(
            "\"{}\" is not a valid env var name (letters, digits, '_', '-', '.', not starting with a digit)",
            at.q(name)
        )))
    }
}

fn validate_env_prefix(at: At<'_>, prefix: &str) -> Result<(), GrammarError> {
    if prefix.is_empty() || is_env_name(prefix) {
        Ok(())
    } else {
        Err(at.err(format!(
            "prefix \"{}\" cannot start an env var name",
            at.q(prefix)
        )))
    }
}

/// Absolute, normalised container paths; `/` itself is refused.
fn validate_mount_path(at: At<'_>, path: &str) -> Result<(), GrammarError> {
    let ok = path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && path.len() <= 1024
        && !path.chars().any(|c| c.is_control() || c == '\\')
        && path[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if ok {
        Ok(())
    } else {
        Err(at.err(format!(
            "path \"{}\" must be an absolute, normalised path (no '..', '//' or trailing '/')",
            at.q(path)
        )))
    }
}

/// One entry of the structured form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    env: Option<Text>,
    env_from: Option<EnvFromEntry>,
    file: Option<MountEntry>,
    dir: Option<MountEntry>,
    /// Text with placeholders, instead of a reference (with env or file).
    template: Option<Text>,
    /// Compact reference `<store>:<path>[#property]`, instead of the fields below.
    #[serde(rename = "ref")]
    reference: Option<Text>,
    store: Option<Text>,
    path: Option<Text>,
    property: Option<Text>,
    version: Option<VersionText>,
    /// `refresh: 15m`, as `refresh=` of the compact form.
    refresh: Option<Text>,
    #[serde(default)]
    containers: Vec<Text>,
    #[serde(default)]
    init_containers: bool,
    #[serde(default)]
    optional: bool,
}

/// Versions may be written as numbers in YAML.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum VersionText {
    Text(Text),
    Number(u64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvFromEntry {
    #[serde(default)]
    prefix: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MountEntry {
    path: Text,
    mode: Option<ModeText>,
}

/// `"0400"` (octal text, like chmod) or a number (decimal, like Kubernetes' `defaultMode`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ModeText {
    Octal(Text),
    Decimal(u32),
}

/// A string of the structured form, charged to the reading budget.
#[derive(Debug, Default)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        reading::charge(s.len() + 1)?;
        Ok(Text(s))
    }
}

/// An entry, charged to the reading budget even when it is empty.
struct Charged(Entry);

impl<'de> Deserialize<'de> for Charged {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        reading::charge(2)?;
        Entry::deserialize(d).map(Charged)
    }
}

/// YAML anchors and aliases repeat a node without repeating its text: a
/// few KiB can name a thousand containers a thousand times, and the
/// deserialiser would build every copy. So everything read from one
/// structured value is charged against a budget of twice its text (more
/// than any alias-free value needs: escapes expand at most 1.5×), and
/// reading stops as soon as it runs out. The budget lives in a thread-local
/// because serde's derived code cannot carry it; it is set and cleared
/// around one synchronous `from_str`.
mod reading {
    use std::cell::Cell;

    thread_local!(static LEFT: Cell<usize> = const { Cell::new(usize::MAX) });

    /// Runs `f` with `budget` units to spend.
    pub(super) fn within<T>(budget: usize, f: impl FnOnce() -> T) -> T {
        let before = LEFT.with(|l| l.replace(budget));
        let out = f();
        LEFT.with(|l| l.set(before));
        out
    }

    pub(super) fn charge<E: serde::de::Error>(units: usize) -> Result<(), E> {
        LEFT.with(|l| match l.get().checked_sub(units) {
            Some(rest) => {
                l.set(rest);
                Ok(())
            }
            None => Err(E::custom(
                "the entries are larger than their text: YAML anchors and aliases cannot repeat them",
            )),
        })
    }
}

/// The entries of the structured form: references, and templates.
type Structured = (Vec<Injection>, Vec<TemplateInjection>);

fn parse_structured(at: At<'_>, value: &str) -> Result<Structured, GrammarError> {
    // serde_norway reads JSON too; its messages give positions, not the value.
    let budget = 2 * value.len() + 16;
    let entries: Vec<Charged> = reading::within(budget, || serde_norway::from_str(value)).map_err(|e| {
        let msg = e.to_string();
        at.err(format!("not a YAML/JSON list of entries: {}", at.q(&msg)))
    })?;
    let entries: Vec<Entry> = entries.into_iter().map(|c| c.0).collect();
    let mut out = Vec::with_capacity(entries.len());
    let mut templates = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let key = format!("{}[{i}]", at.key);
        let at = at.with(&key);
        if e.template.is_some() {
            templates.push(structured_template(at, e)?);
            continue;
        }
        let version = e.version.map(|v| match v {
            VersionText::Text(t) => t.0,
            VersionText::Number(n) => n.to_string(),
        });
        let property = e.property.map(|p| p.0);
        let mut reference = match (e.reference, e.store, e.path) {
            (Some(r), None, None) if property.is_none() => parse_reference(at, &r.0, version)?,
            (None, Some(store), Some(path)) => build_reference(at, &store.0, &path.0, property, version)?,
            _ => {
                return Err(
                    at.err("give either ref: <store>:<path>[#property] or store and path (and property)")
                )
            }
        };
        reference.refresh = e.refresh.map(|r| parse_refresh(at, &r.0)).transpose()?;
        let mode = |m: Option<ModeText>| -> Result<Option<u32>, GrammarError> {
            match m {
                None => Ok(None),
                Some(ModeText::Octal(t)) => parse_mode(at, &t.0).map(Some),
                Some(ModeText::Decimal(d)) if d <= 0o777 => Ok(Some(d)),
                Some(ModeText::Decimal(_)) => Err(at.err("mode must be at most 0777 (511)")),
            }
        };
        let mut targets = Vec::new();
        if let Some(Text(name)) = e.env {
            validate_env_name(at, &name)?;
            targets.push(Target::Env { name });
        }
        if let Some(ef) = e.env_from {
            validate_env_prefix(at, &ef.prefix.0)?;
            targets.push(Target::EnvFrom { prefix: ef.prefix.0 });
        }
        if let Some(f) = e.file {
            validate_mount_path(at, &f.path.0)?;
            targets.push(Target::File {
                path: f.path.0,
                mode: mode(f.mode)?,
            });
        }
        if let Some(d) = e.dir {
            validate_mount_path(at, &d.path.0)?;
            targets.push(Target::Dir {
                path: d.path.0,
                mode: mode(d.mode)?,
            });
        }
        if targets.len() != 1 {
            return Err(at.err("needs exactly one of env, envFrom, file or dir"));
        }
        let target = targets.remove(0);
        check_property_use(at, &target, &reference)?;
        let names = if e.containers.is_empty() {
            Vec::new()
        } else {
            parse_container_list(at, e.containers.iter().map(|c| c.0.as_str()))?
        };
        out.push(Injection {
            source: at.q(at.key).to_string(),
            target,
            reference,
            containers: ContainerSelector {
                names,
                init: e.init_containers,
            },
            optional: e.optional,
        });
    }
    Ok((out, templates))
}

/// An entry with `template:`: exactly one of env or file, no reference.
fn structured_template(at: At<'_>, mut e: Entry) -> Result<TemplateInjection, GrammarError> {
    let text = e.template.take().unwrap_or_default();
    if e.reference.is_some()
        || e.store.is_some()
        || e.path.is_some()
        || e.property.is_some()
        || e.version.is_some()
        || e.refresh.is_some()
    {
        return Err(at.err(
            "a template takes its references from its placeholders; drop ref, store, path, property, version and refresh",
        ));
    }
    let target = match (e.env, e.file, e.env_from.is_some() || e.dir.is_some()) {
        (Some(Text(name)), None, false) => {
            validate_env_name(at, &name)?;
            Target::Env { name }
        }
        (None, Some(f), false) => {
            validate_mount_path(at, &f.path.0)?;
            let mode = match f.mode {
                None => None,
                Some(ModeText::Octal(t)) => Some(parse_mode(at, &t.0)?),
                Some(ModeText::Decimal(d)) if d <= 0o777 => Some(d),
                Some(ModeText::Decimal(_)) => return Err(at.err("mode must be at most 0777 (511)")),
            };
            Target::File { path: f.path.0, mode }
        }
        _ => return Err(at.err("a template needs exactly one of env or file")),
    };
    let names = if e.containers.is_empty() {
        Vec::new()
    } else {
        parse_container_list(at, e.containers.iter().map(|c| c.0.as_str()))?
    };
    Ok(TemplateInjection {
        source: at.q(at.key).to_string(),
        target,
        template: parse_template(at, &text.0)?,
        containers: ContainerSelector {
            names,
            init: e.init_containers,
        },
        optional: e.optional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn one(key: &str, value: &str) -> Result<Injection, GrammarError> {
        parse("sesame.dev", &annotations(&[(key, value)])).map(|mut r| r.injections.remove(0))
    }

    #[test]
    fn env_single_value() {
        let i = one("sesame.dev/env.DB_PASSWORD", "vault:secret/team-a/db#password").unwrap();
        assert_eq!(
            i.target,
            Target::Env {
                name: "DB_PASSWORD".into()
            }
        );
        assert_eq!(i.reference.store, "vault");
        assert_eq!(i.reference.path, "secret/team-a/db");
        assert_eq!(i.reference.property.as_deref(), Some("password"));
        assert_eq!(i.containers, ContainerSelector::default());
        assert!(!i.optional);
    }

    #[test]
    fn env_from_with_prefix() {
        let i = one("sesame.dev/env-from.db", "aws:prod/team-a/db prefix=DB_").unwrap();
        assert_eq!(i.target, Target::EnvFrom { prefix: "DB_".into() });
        assert!(one("sesame.dev/env-from.db", "aws:prod/db#password").is_err());
    }

    #[test]
    fn file_and_dir_with_modes() {
        let f = one(
            "sesame.dev/file.db-password",
            "vault:secret/a/db#password path=/var/run/secrets/db/password mode=0400",
        )
        .unwrap();
        assert_eq!(
            f.target,
            Target::File {
                path: "/var/run/secrets/db/password".into(),
                mode: Some(0o400)
            }
        );
        let d = one("sesame.dev/dir.tls", "vault:pki/a/tls path=/etc/tls mode=0440").unwrap();
        assert_eq!(
            d.target,
            Target::Dir {
                path: "/etc/tls".into(),
                mode: Some(0o440)
            }
        );
        assert!(
            one("sesame.dev/file.x", "vault:a/b").is_err(),
            "file needs a path"
        );
        assert!(one("sesame.dev/dir.x", "vault:a/b path=/etc/../x").is_err());
        assert!(one("sesame.dev/dir.x", "vault:a/b path=/ ").is_err());
        assert!(one("sesame.dev/dir.x", "vault:a/b path=/x mode=0999").is_err());
    }

    #[test]
    fn containers_init_optional_version() {
        let i = one(
            "sesame.dev/env.TOKEN",
            "vault:a/token containers=app,migrate init=true optional=true version=3",
        )
        .unwrap();
        assert_eq!(i.containers.names, vec!["app", "migrate"]);
        assert!(i.containers.init);
        assert!(i.optional);
        assert_eq!(i.reference.version.as_deref(), Some("3"));
    }

    #[test]
    fn aws_names_with_all_their_characters() {
        let i = one("sesame.dev/env.K", "aws:prod/app_1+x=y.z@corp-db#pass.word").unwrap();
        assert_eq!(i.reference.path, "prod/app_1+x=y.z@corp-db");
        assert_eq!(i.reference.property.as_deref(), Some("pass.word"));
        let v = one("sesame.dev/env.K", "aws:a@b version=AWSPREVIOUS").unwrap();
        assert_eq!(v.reference.path, "a@b");
        assert_eq!(v.reference.version.as_deref(), Some("AWSPREVIOUS"));
    }

    #[test]
    fn malformed_annotations_name_themselves() {
        for (k, v) in [
            ("sesame.dev/env.1BAD", "vault:a/b"),
            ("sesame.dev/env.X", "no-colon"),
            ("sesame.dev/env.X", "Vault:a/b"),
            ("sesame.dev/env.X", "vault:a/../b"),
            ("sesame.dev/env.X", "vault:a/b bogus"),
            ("sesame.dev/env.X", "vault:a/b colour=red"),
            ("sesame.dev/env.X", "vault:a/b optional=yes"),
            ("sesame.dev/env.X", ""),
            ("sesame.dev/inject", "vault:a/b"),
            ("sesame.dev/mode", "sideways"),
            ("sesame.dev/secrets", "[{env: X}]"),
            ("sesame.dev/secrets", "not: [a list"),
        ] {
            let e = parse("sesame.dev", &annotations(&[(k, v)])).unwrap_err();
            assert!(e.annotation.starts_with(k), "{k}: {e}");
        }
    }

    /// Messages quote what the Pod's author wrote, cut to the limit and
    /// with control and bidirectional characters escaped: a megabyte
    /// option or key is not repeated, U+202E does not reorder the message.
    #[test]
    fn messages_quote_the_input_cut_and_escaped() {
        let long = "x".repeat(100_000);
        let quoted =
            |key: &str, value: &str| match parse_with("sesame.dev", &annotations(&[(key, value)]), Quote(32))
            {
                Err(e) => e,
                Ok(_) => panic!("parsed: {}", Quote(64).of(key)),
            };
        for e in [
            quoted("sesame.dev/env.A", &format!("dev:a {long}")),
            quoted("sesame.dev/file.a", &format!("dev:a path=/{long}")),
            quoted("sesame.dev/env.A", &format!("{long}:a")),
            quoted("sesame.dev/env.A", &format!("dev:a optional={long}")),
            quoted(&format!("sesame.dev/env.{long}!"), "dev:a"),
            quoted(&format!("sesame.dev/{long}"), "dev:a"),
            quoted(
                "sesame.dev/secrets",
                &format!("[{{env: A, ref: 'dev:a', {long}: 1}}]"),
            ),
        ] {
            let text = e.to_string();
            assert!(text.len() < 400, "{} bytes: {}", text.len(), &text[..400]);
            assert!(text.contains('…'), "{text}");
        }
        let e = quoted("sesame.dev/env.A", "dev:a mode\u{202e}=x");
        assert!(!e.to_string().contains('\u{202e}'), "{e}");
        assert!(e.to_string().contains("mode\\u{202e}"), "{e}");
        let e = quoted("sesame.dev/env.A\n", "dev:a");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn structured_form_covers_everything() {
        let yaml = r#"
- env: DB_PASSWORD
  store: vault
  path: secret/team-a/db
  property: password
  version: 3
  containers: [app]
- envFrom: {prefix: DB_}
  ref: aws:prod/team-a/db
  optional: true
- file: {path: /etc/app/key, mode: "0400"}
  ref: vault:secret/team-a/key#pem
  initContainers: true
- dir: {path: /etc/tls, mode: 288}
  store: vault
  path: "odd#path/ok"
"#;
        let err = parse("sesame.dev", &annotations(&[("sesame.dev/secrets", yaml)])).unwrap_err();
        assert_eq!(
            err.annotation, "sesame.dev/secrets[3]",
            "a '#' in a path is refused everywhere"
        );
        let yaml = yaml.replace("odd#path/ok", "team-a/tls");
        let r = parse("sesame.dev", &annotations(&[("sesame.dev/secrets", &yaml)])).unwrap();
        assert_eq!(r.injections.len(), 4);
        assert_eq!(r.injections[0].reference.version.as_deref(), Some("3"));
        assert_eq!(r.injections[1].target, Target::EnvFrom { prefix: "DB_".into() });
        assert!(r.injections[1].optional);
        assert_eq!(
            r.injections[2].target,
            Target::File {
                path: "/etc/app/key".into(),
                mode: Some(0o400)
            }
        );
        assert!(r.injections[2].containers.init);
        assert_eq!(
            r.injections[3].target,
            Target::Dir {
                path: "/etc/tls".into(),
                mode: Some(0o440)
            }
        );
        // JSON works as well.
        let json = r#"[{"env":"A","ref":"dev:x/y#z"}]"#;
        assert_eq!(
            parse("sesame.dev", &annotations(&[("sesame.dev/secrets", json)]))
                .unwrap()
                .injections
                .len(),
            1
        );
    }

    /// The attack: anchors and aliases that would make a 50 KB annotation
    /// a million container names, built before any check looked at them.
    #[test]
    fn yaml_aliases_cannot_multiply_the_entries() {
        let names: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        let mut yaml = format!(
            "- {{env: A, ref: \"dev:a\", containers: &c [{}]}}\n",
            names.join(", ")
        );
        for i in 0..1000 {
            yaml += &format!("- {{env: B{i}, ref: \"dev:a\", containers: *c}}\n");
        }
        let e = parse("sesame.dev", &annotations(&[("sesame.dev/secrets", &yaml)])).unwrap_err();
        assert_eq!(e.annotation, "sesame.dev/secrets");
        assert!(e.message.contains("anchors and aliases"), "{e}");
        // Whole entries repeated by alias are refused the same way.
        let mut yaml =
            String::from("- &e {env: A, ref: \"dev:apps/team-a/db#password\", containers: [app]}\n");
        yaml += &"- *e\n".repeat(1000);
        let e = parse("sesame.dev", &annotations(&[("sesame.dev/secrets", &yaml)])).unwrap_err();
        assert!(e.message.contains("anchors and aliases"), "{e}");
        // An alias that repeats little stays within the budget.
        let yaml =
            "- {env: A, ref: \"dev:a\", containers: &c [app]}\n- {env: B, ref: \"dev:b\", containers: *c}";
        let r = parse("sesame.dev", &annotations(&[("sesame.dev/secrets", yaml)])).unwrap();
        assert_eq!(r.injections[1].containers.names, vec!["app"]);
    }

    /// Escapes are the one way plain YAML reads longer than it is written.
    #[test]
    fn escaped_strings_fit_the_budget() {
        let yaml = format!("[{{env: A, ref: \"dev:a#{}\"}}]", "\\L".repeat(80));
        let e = parse("sesame.dev", &annotations(&[("sesame.dev/secrets", &yaml)])).unwrap_err();
        assert!(
            e.message.contains("property"),
            "read to the end, refused by the grammar: {e}"
        );
    }

    #[test]
    fn no_connection_settings_in_annotations() {
        for bad in [
            r#"[{env: A, ref: "dev:x", address: "http://evil"}]"#,
            r#"[{env: A, ref: "dev:x", token: "t"}]"#,
            r#"[{env: A, ref: "dev:x", role: "admin"}]"#,
        ] {
            assert!(
                parse("sesame.dev", &annotations(&[("sesame.dev/secrets", bad)])).is_err(),
                "{bad}"
            );
        }
        assert!(one("sesame.dev/env.A", "dev:x address=http://evil").is_err());
        assert!(one("sesame.dev/env.A", "https://evil/x").is_err());
    }

    #[test]
    fn detection_ignores_marker_and_other_prefixes() {
        let a = annotations(&[("sesame.dev/injected", "sesame-x"), ("other.io/env.X", "y")]);
        assert!(!has_requests("sesame.dev", a.keys()));
        let b = annotations(&[("sesame.dev/env.X", "dev:a")]);
        assert!(has_requests("sesame.dev", b.keys()));
        assert!(!has_requests(
            "sesame.dev",
            annotations(&[("sesame.devx/env.X", "a")]).keys()
        ));
    }

    #[test]
    fn custom_prefix() {
        let a = annotations(&[
            ("secrets.example.com/env.X", "dev:a/b"),
            ("sesame.dev/env.Y", "dev:c"),
        ]);
        let r = parse("secrets.example.com", &a).unwrap();
        assert_eq!(r.injections.len(), 1);
        assert_eq!(r.injections[0].target, Target::Env { name: "X".into() });
    }

    #[test]
    fn restart_on_rotation_is_a_pod_wide_flag_not_a_request() {
        let only = annotations(&[("sesame.dev/restart-on-rotation", "true")]);
        assert!(!has_requests("sesame.dev", only.keys()));
        let a = annotations(&[
            ("sesame.dev/env.X", "dev:a"),
            ("sesame.dev/restart-on-rotation", "true"),
        ]);
        let r = parse("sesame.dev", &a).unwrap();
        assert!(r.restart_on_rotation);
        assert_eq!(r.injections.len(), 1);
        let bad = annotations(&[("sesame.dev/restart-on-rotation", "yes")]);
        let e = parse("sesame.dev", &bad).unwrap_err();
        assert_eq!(e.annotation, "sesame.dev/restart-on-rotation");
    }

    #[test]
    fn compact_template_for_an_env_var() {
        let a = annotations(&[(
            "sesame.dev/template.DATABASE_URL",
            "postgres://{{ vault:apps/team-a/db#username }}:{{ vault:apps/team-a/db#password | urlquery }}@{{ vault:apps/team-a/db#host version=3 }}:5432/orders",
        )]);
        let r = parse("sesame.dev", &a).unwrap();
        assert!(r.injections.is_empty());
        let t = &r.templates[0];
        assert_eq!(t.source, "sesame.dev/template.DATABASE_URL");
        assert_eq!(
            t.target,
            Target::Env {
                name: "DATABASE_URL".into()
            }
        );
        assert_eq!(t.containers, ContainerSelector::default());
        assert!(!t.optional);
        let refs: Vec<String> = t.references().map(ToString::to_string).collect();
        assert_eq!(
            refs,
            [
                "vault:apps/team-a/db#username",
                "vault:apps/team-a/db#password",
                "vault:apps/team-a/db#host version=3"
            ]
        );
        let p: Vec<_> = t.template.placeholders().collect();
        assert_eq!(p[1].functions, vec![super::super::template::Function::Urlquery]);
    }

    #[test]
    fn structured_templates_for_env_and_file() {
        let yaml = r#"
- template: "{{ vault:a/db#user }}:{{ vault:a/db#password }}"
  env: CREDS
  containers: [app]
  optional: true
- template: |
    api_key: {{ vault:a/keys#one | yaml }}
    other: {{ vault:a/keys#two | yaml }}
  file: {path: /etc/app/config.yaml, mode: "0440"}
  initContainers: true
- env: PLAIN
  ref: vault:a/db#user
"#;
        let r = parse("sesame.dev", &annotations(&[("sesame.dev/secrets", yaml)])).unwrap();
        assert_eq!(r.injections.len(), 1);
        assert_eq!(r.templates.len(), 2);
        assert_eq!(r.templates[0].source, "sesame.dev/secrets[0]");
        assert!(r.templates[0].optional);
        assert_eq!(r.templates[0].containers.names, ["app"]);
        assert_eq!(r.templates[1].source, "sesame.dev/secrets[1]");
        assert_eq!(
            r.templates[1].target,
            Target::File {
                path: "/etc/app/config.yaml".into(),
                mode: Some(0o440)
            }
        );
        assert!(r.templates[1].containers.init);
        assert_eq!(r.templates[1].references().count(), 2);
    }

    #[test]
    fn malformed_templates_name_the_annotation_and_the_placeholder() {
        for (k, v, says) in [
            (
                "sesame.dev/template.1BAD",
                "{{ dev:a }}",
                "not a valid env var name",
            ),
            (
                "sesame.dev/template.X",
                "no placeholder",
                "at least one placeholder",
            ),
            (
                "sesame.dev/template.X",
                "{{ dev:a }}{{ dev:../b }}",
                "placeholder 2",
            ),
            ("sesame.dev/template.X", "{{ Dev:a }}", "placeholder 1"),
            ("sesame.dev/template.X", "{{ dev:a | exec }}", "unknown function"),
            ("sesame.dev/template.X", "{{ dev:a", "no closing"),
            ("sesame.dev/template.X", "{{ dev:a bogus=1 }}", "placeholder 1"),
        ] {
            let e = parse("sesame.dev", &annotations(&[(k, v)])).unwrap_err();
            assert!(e.annotation.starts_with(k), "{k}: {e}");
            assert!(e.to_string().contains(says), "{v}: {e}");
        }
        for (yaml, says) in [
            ("[{template: '{{ dev:a }}'}]", "exactly one of env or file"),
            (
                "[{template: '{{ dev:a }}', env: A, file: {path: /a/b}}]",
                "exactly one of env or file",
            ),
            (
                "[{template: '{{ dev:a }}', envFrom: {}}]",
                "exactly one of env or file",
            ),
            (
                "[{template: '{{ dev:a }}', dir: {path: /a}}]",
                "exactly one of env or file",
            ),
            ("[{template: '{{ dev:a }}', env: A, ref: 'dev:a'}]", "drop ref"),
            (
                "[{template: '{{ dev:a }}', env: A, store: dev, path: a}]",
                "drop ref",
            ),
            ("[{template: 'x', env: A}]", "at least one placeholder"),
            (
                "[{template: '{{ dev:a }}', file: {path: /a/../b}}]",
                "absolute, normalised",
            ),
        ] {
            let e = parse("sesame.dev", &annotations(&[("sesame.dev/secrets", yaml)])).unwrap_err();
            assert_eq!(e.annotation, "sesame.dev/secrets[0]", "{yaml}");
            assert!(e.to_string().contains(says), "{yaml}: {e}");
        }
    }

    /// Every field of a reference set: it survives the compact text form
    /// (the `references` annotation) and the JSON record (the `sources`
    /// annotation). A new field breaks this test until both carry it.
    #[test]
    fn a_reference_with_every_field_round_trips() {
        let full = SecretRef {
            store: "vault".into(),
            path: "secret/team-a/db".into(),
            property: Some("password".into()),
            version: Some("7".into()),
            refresh: None,
        };
        let text = full.to_string();
        assert_eq!(text, "vault:secret/team-a/db#password version=7");
        assert_eq!(text.parse::<SecretRef>().unwrap(), full);
        let json = serde_json::to_string(&full).unwrap();
        assert_eq!(serde_json::from_str::<SecretRef>(&json).unwrap(), full);

        let bare = SecretRef {
            property: None,
            version: None,
            ..full
        };
        assert_eq!(bare.to_string().parse::<SecretRef>().unwrap(), bare);
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"store":"vault","path":"secret/team-a/db"}"#,
            "unset fields are left out, as Secrets written before recorded them"
        );
        for bad in ["", "no-colon", "a:b extra", "a:b version=", "a:../b"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad}");
        }
    }

    /// `refresh=` on a compact reference, `refresh:` in the structured form
    /// and on a template's placeholder; recorded in one spelling that reads
    /// back; never more than once, never fractional, zero or above a year.
    #[test]
    fn refresh_in_every_form_and_its_bounds() {
        let secs = |n| Some(Duration::from_secs(n));
        let i = one("sesame.dev/env.DB", "vault:apps/a/db#password refresh=15m").unwrap();
        assert_eq!(i.reference.refresh, secs(900));
        let i = one(
            "sesame.dev/file.key",
            "vault:apps/a/key refresh=1d path=/etc/k/key",
        )
        .unwrap();
        assert_eq!(i.reference.refresh, secs(86_400));
        assert_eq!(
            one("sesame.dev/env.DB", "vault:apps/a/db#password")
                .unwrap()
                .reference
                .refresh,
            None
        );
        for bad in [
            "refresh=0s",
            "refresh=1.5s",
            "refresh=500ms",
            "refresh=366d",
            "refresh=soon",
            "refresh=",
        ] {
            let e = one("sesame.dev/env.DB", &format!("vault:apps/a/db#password {bad}")).unwrap_err();
            assert_eq!(e.annotation, "sesame.dev/env.DB", "{bad}");
            assert!(
                e.message.contains("whole seconds from 1s to 365d"),
                "{bad}: {}",
                e.message
            );
        }
        let e = one(
            "sesame.dev/env.DB",
            "vault:apps/a/db#password refresh=1m refresh=2m",
        )
        .unwrap_err();
        assert!(e.message.contains("given twice"), "{}", e.message);

        let yaml = "- env: DB\n  ref: vault:apps/a/db#password\n  refresh: 6h\n";
        let r = parse("sesame.dev", &annotations(&[("sesame.dev/secrets", yaml)])).unwrap();
        assert_eq!(r.injections[0].reference.refresh, secs(21_600));
        let yaml = "- env: DB\n  ref: vault:apps/a/db#password\n  refresh: 1.5s\n";
        assert!(parse("sesame.dev", &annotations(&[("sesame.dev/secrets", yaml)])).is_err());

        let r = parse(
            "sesame.dev",
            &annotations(&[(
                "sesame.dev/template.URL",
                "db://{{ vault:apps/a/db#host refresh=5m }}",
            )]),
        )
        .unwrap();
        let placeholder = r.templates[0].references().next().unwrap().clone();
        assert_eq!(placeholder.refresh, secs(300));

        // Recorded: the compact text and the JSON read back as they were.
        let full = SecretRef {
            refresh: secs(5400),
            ..placeholder
        };
        assert_eq!(full.to_string(), "vault:apps/a/db#host refresh=90m");
        assert_eq!(full.to_string().parse::<SecretRef>().unwrap(), full);
        let json = serde_json::to_string(&full).unwrap();
        assert!(json.ends_with(r#","refresh":"90m"}"#), "{json}");
        assert_eq!(serde_json::from_str::<SecretRef>(&json).unwrap(), full);
        let versioned = "vault:apps/a/db#host refresh=90m version=2"
            .parse::<SecretRef>()
            .unwrap();
        assert_eq!(
            (versioned.version.as_deref(), versioned.refresh),
            (Some("2"), secs(5400))
        );
        for bad in ["a:b refresh=1m refresh=1m", "a:b refresh=0s", "a:b other=1"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad}");
        }
    }
}
