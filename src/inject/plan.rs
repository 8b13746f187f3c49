//! From parsed injections and resolved secrets to an `InjectionPlan`: which
//! env vars, volumes and mounts each container gets, and the managed Secret
//! that holds the values. Pure; the patch is built from the plan afterwards.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::annotations::{
    is_env_name, ContainerSelector, Injection, Mode, RefTemplate, SecretRef, Target, TemplateInjection,
};
use super::data::{render, secret_data, DataError, Fetched, KeySource};
use super::pod::{OwnerReference, PodView};
use crate::denial::DenialClass;
use crate::stores::{PropertyError, SecretData, SecretValue, StoreError};
use crate::validate::Quote;

pub(crate) use super::pod::MANAGED_PREFIX;

/// A container addressed by list and index, as JSON Patch needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ContainerRef {
    pub init: bool,
    pub index: usize,
    pub name: String,
}

/// Where an env var's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvSource {
    /// `valueFrom.secretKeyRef` to this key of the managed Secret.
    SecretKey(String),
    /// The value itself, in the Pod spec (inline mode only).
    Inline(SecretValue),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedEnv {
    pub container: ContainerRef,
    pub name: String,
    pub source: EnvSource,
}

/// One file of a secret volume.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct VolumeItem {
    pub key: String,
    pub path: String,
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedVolume {
    pub name: String,
    pub mount_path: String,
    pub containers: Vec<ContainerRef>,
    pub items: Vec<VolumeItem>,
}

/// The Secret Sesame manages for a Pod. `data` holds values: it goes only to
/// the Secret writer, never into logs (its `Debug` shows keys only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedSecret {
    pub name: String,
    pub namespace: String,
    /// The Pod's service account: the subject the references were granted
    /// to, which rotation authorises again.
    pub service_account: String,
    pub data: BTreeMap<String, SecretValue>,
    /// The references behind the data (no values), recorded on the Secret.
    pub references: Vec<SecretRef>,
    /// Which reference (with its concrete property) or template each key
    /// holds, so that rotation can re-resolve a Secret from its annotations
    /// alone.
    pub sources: BTreeMap<String, KeySource>,
    /// The Pod asked for a rolling restart of its workload when a value rotates.
    pub restart_on_rotation: bool,
    /// The Pod's controller, so that the garbage collector deletes the Secret with it.
    pub owners: Vec<OwnerReference>,
}

/// An injection that was granted, for audit annotations and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub annotation: String,
    pub reference: SecretRef,
    pub rule: String,
}

/// Everything the Pod will get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InjectionPlan {
    pub env: Vec<PlannedEnv>,
    pub volumes: Vec<PlannedVolume>,
    /// `None` when no value needs a Secret (inline env only, or all skipped).
    pub secret: Option<ManagedSecret>,
    /// Value of the marker annotation: the Secret's name, or `inline`.
    pub marker: String,
    pub warnings: Vec<String>,
}

/// Why a plan cannot be built; each names the annotation at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("annotation \"{annotation}\": store \"{store}\" failed for \"{path}\": {error}")]
    Store {
        annotation: String,
        store: String,
        path: String,
        error: StoreError,
    },
    #[error("annotation \"{annotation}\": secret \"{path}\" in store \"{store}\": {error}")]
    Property {
        annotation: String,
        store: String,
        path: String,
        error: PropertyError,
    },
    #[error("annotation \"{annotation}\": {message}")]
    Invalid { annotation: String, message: String },
    #[error("annotation \"{annotation}\": no container named \"{container}\" in this Pod")]
    UnknownContainer { annotation: String, container: String },
    #[error("inline mode is not allowed in namespace \"{namespace}\"; remove the mode annotation to use a managed Secret")]
    InlineForbidden { namespace: String },
    #[error("{message}")]
    Conflict { message: String },
    /// A template's placeholder has no value, or its value did not suit
    /// its function: names the annotation and the placeholder, no value.
    #[error("annotation \"{annotation}\": placeholder {placeholder}: {message}")]
    Placeholder {
        annotation: String,
        placeholder: String,
        message: String,
        class: DenialClass,
    },
}

impl PlanError {
    /// The class of the denial (which knows its code and labels).
    pub fn class(&self) -> DenialClass {
        match self {
            Self::Store { error, .. } => DenialClass::from(error),
            Self::Property { .. } => DenialClass::MissingProperty,
            Self::Invalid { .. } => DenialClass::Invalid,
            Self::UnknownContainer { .. } => DenialClass::UnknownContainer,
            Self::InlineForbidden { .. } => DenialClass::Policy,
            Self::Conflict { .. } => DenialClass::Conflict,
            Self::Placeholder { class, .. } => *class,
        }
    }
}

/// What the plan is built from.
pub(crate) struct PlanInput<'a> {
    pub namespace: &'a str,
    /// The Pod's service account: part of the Secret's name and recorded on it.
    pub service_account: &'a str,
    pub pod: &'a PodView,
    pub mode: Mode,
    pub(crate) inline_allowed: bool,
    pub injections: &'a [Injection],
    /// One answer per injection, in the same order. Injections of the same
    /// secret (store, path, version) have the same answer, as
    /// `Stores::resolve` gives it: the Secret's data is taken per secret.
    pub resolved: &'a [Result<Arc<SecretData>, StoreError>],
    /// The templates, rendered from `template_answers`: the answers to
    /// their placeholders, by what was fetched.
    pub templates: &'a [TemplateInjection],
    pub template_answers: &'a Fetched,
    /// How much of a path, a name or a property key a message quotes.
    pub quote: Quote,
}

/// An injection that passed, with its containers and the values it places.
type Accepted<'i, 'd> = (&'i Injection, Vec<ContainerRef>, Vec<(String, Placed<'d>)>);

/// A value to place: which reference (with its property) and the value.
struct Placed<'a> {
    identity: SecretRef,
    value: &'a SecretValue,
}

/// Builds the plan. Values are placed by reference identity, so two
/// injections of the same value share one key of the Secret.
pub(crate) fn build_plan(input: &PlanInput<'_>) -> Result<InjectionPlan, PlanError> {
    if input.mode == Mode::Inline && !input.inline_allowed {
        return Err(PlanError::InlineForbidden {
            namespace: input.namespace.to_owned(),
        });
    }
    let q = input.quote;
    let mut warnings = Vec::new();
    // Per injection: the containers and the values it places.
    let mut accepted: Vec<Accepted<'_, '_>> = Vec::new();
    // The answers of accepted injections, for the Secret's data.
    let mut fetched = Fetched::new();
    let index = ContainerIndex::new(input.pod);
    for (injection, answer) in input.injections.iter().zip(input.resolved) {
        let containers = index.select(&injection.containers, &injection.source)?;
        let data = match answer {
            Ok(d) => d,
            Err(e) if e.is_not_found() && injection.optional => {
                warnings.push(skipped(injection, q));
                continue;
            }
            Err(e) => {
                return Err(PlanError::Store {
                    annotation: injection.source.clone(),
                    store: injection.reference.store.clone(),
                    path: q.of(&injection.reference.path).to_string(),
                    error: e.clone(),
                })
            }
        };
        match place(injection, data, q) {
            Ok(values) => {
                fetched.insert(injection.reference.request(), Ok(data.clone()));
                accepted.push((injection, containers, values));
            }
            Err(PlanError::Property { .. }) if injection.optional => {
                warnings.push(skipped(injection, q));
            }
            Err(e) => return Err(e),
        }
    }

    // Templates: each rendered once here, through the function that makes
    // the Secret's data, to skip an optional one or deny with its placeholder.
    let mut templates: Vec<(&TemplateInjection, Vec<ContainerRef>, SecretValue)> = Vec::new();
    for t in input.templates {
        let containers = index.select(&t.containers, &t.source)?;
        match render(&t.source, &t.template, input.template_answers) {
            Ok(value) => {
                for r in t.references() {
                    if let Some(answer) = input.template_answers.get(&r.request()) {
                        fetched.insert(r.request(), answer.clone());
                    }
                }
                templates.push((t, containers, value));
            }
            Err(e) if t.optional && missing(&e) => warnings.push(format!(
                "optional template {} not rendered: {} is missing; skipped",
                t.source,
                e.reference()
                    .map(|r| q.of(&r.to_string()).to_string())
                    .unwrap_or_default()
            )),
            Err(e) => return Err(placeholder_error(t, e, q)),
        }
    }

    // Secret keys, assigned over the sorted set of identities so that the
    // same references always give the same keys, whatever their order.
    let identities: BTreeSet<&SecretRef> = accepted
        .iter()
        .flat_map(|(_, _, values)| values.iter().map(|(_, p)| &p.identity))
        .collect();
    let keys = assign_keys(&identities);
    let key_of = |r: &SecretRef| keys.get(r).cloned().unwrap_or_default();

    // Which reference each key of the Secret holds; the values follow from
    // them through `secret_data`, as they do at rotation.
    let mut sources: BTreeMap<String, KeySource> = BTreeMap::new();
    let mut env: Vec<PlannedEnv> = Vec::new();
    let mut seen_env: BTreeMap<(ContainerRef, String), String> = BTreeMap::new();
    // (mount dir, containers) -> items
    let mut volumes: BTreeMap<(String, Vec<ContainerRef>), Vec<VolumeItem>> = BTreeMap::new();

    for (injection, containers, values) in &accepted {
        match &injection.target {
            Target::Env { .. } | Target::EnvFrom { .. } => {
                for (name, placed) in values {
                    let source = if input.mode == Mode::Inline {
                        if placed.value.expose_str().is_none() {
                            return Err(invalid(
                                injection,
                                format!("the value for {name} is not UTF-8 text; inject it as a file"),
                            ));
                        }
                        EnvSource::Inline(placed.value.clone())
                    } else {
                        let key = key_of(&placed.identity);
                        sources.insert(key.clone(), placed.identity.clone().into());
                        EnvSource::SecretKey(key)
                    };
                    for c in containers {
                        if let Some(other) =
                            seen_env.insert((c.clone(), name.clone()), injection.source.clone())
                        {
                            return Err(PlanError::Conflict {
                                message: format!(
                                    "annotations \"{other}\" and \"{}\" both set env var {} in container \"{}\"",
                                    injection.source,
                                    q.of(name),
                                    q.of(&c.name)
                                ),
                            });
                        }
                        env.push(PlannedEnv {
                            container: c.clone(),
                            name: name.clone(),
                            source: source.clone(),
                        });
                    }
                }
            }
            Target::File { path, mode } | Target::Dir { path, mode } => {
                let dir = match &injection.target {
                    Target::File { .. } => parent_dir(path),
                    _ => path.clone(),
                };
                if dir == "/" {
                    return Err(invalid(
                        injection,
                        "a file needs its own directory; /<file> would mount over the root",
                    ));
                }
                let items = volumes.entry((dir, containers.clone())).or_default();
                for (file_name, placed) in values {
                    let key = key_of(&placed.identity);
                    sources.insert(key.clone(), placed.identity.clone().into());
                    if items.iter().any(|i| &i.path == file_name) {
                        return Err(PlanError::Conflict {
                            message: format!(
                                "annotation \"{}\": file {} is already injected by another annotation",
                                injection.source,
                                q.of(path)
                            ),
                        });
                    }
                    items.push(VolumeItem {
                        key,
                        path: file_name.clone(),
                        mode: *mode,
                    });
                }
            }
        }
    }

    // Template keys: `template.<name>`, with a hash suffix where another
    // template or a reference would otherwise share it.
    let template_keys = assign_template_keys(&templates, &keys);
    let mut key_annotations: BTreeMap<String, String> = BTreeMap::new();
    for (t, containers, value) in &templates {
        let key = template_keys.get(&t.template).cloned().unwrap_or_default();
        let mut in_secret = || {
            key_annotations.insert(key.clone(), t.source.clone());
            sources.insert(
                key.clone(),
                KeySource::Template {
                    template: t.template.clone(),
                },
            );
            key.clone()
        };
        match &t.target {
            Target::Env { name } => {
                let source = if input.mode == Mode::Inline {
                    if value.expose_str().is_none() {
                        return Err(PlanError::Invalid {
                            annotation: t.source.clone(),
                            message: format!(
                                "the rendered value for {name} is not UTF-8 text; render it into a file"
                            ),
                        });
                    }
                    EnvSource::Inline(value.clone())
                } else {
                    EnvSource::SecretKey(in_secret())
                };
                for c in containers {
                    if let Some(other) = seen_env.insert((c.clone(), name.clone()), t.source.clone()) {
                        return Err(PlanError::Conflict {
                            message: format!(
                                "annotations \"{other}\" and \"{}\" both set env var {} in container \"{}\"",
                                t.source,
                                q.of(name),
                                q.of(&c.name)
                            ),
                        });
                    }
                    env.push(PlannedEnv {
                        container: c.clone(),
                        name: name.clone(),
                        source: source.clone(),
                    });
                }
            }
            Target::File { path, mode } => {
                let dir = parent_dir(path);
                if dir == "/" {
                    return Err(PlanError::Invalid {
                        annotation: t.source.clone(),
                        message: "a file needs its own directory; /<file> would mount over the root"
                            .to_owned(),
                    });
                }
                let key = in_secret();
                let items = volumes.entry((dir, containers.clone())).or_default();
                let name = file_name(path);
                if items.iter().any(|i| i.path == name) {
                    return Err(PlanError::Conflict {
                        message: format!(
                            "annotation \"{}\": file {} is already injected by another annotation",
                            t.source,
                            q.of(path)
                        ),
                    });
                }
                items.push(VolumeItem {
                    key,
                    path: name,
                    mode: *mode,
                });
            }
            // The grammar gives templates no other target.
            Target::EnvFrom { .. } | Target::Dir { .. } => {
                return Err(PlanError::Invalid {
                    annotation: t.source.clone(),
                    message: "a template needs exactly one of env or file".to_owned(),
                })
            }
        }
    }

    let mut planned_volumes = Vec::with_capacity(volumes.len());
    let mut mounts_seen: BTreeMap<(ContainerRef, String), ()> = BTreeMap::new();
    for ((dir, containers), mut items) in volumes {
        for c in &containers {
            if mounts_seen.insert((c.clone(), dir.clone()), ()).is_some() {
                return Err(PlanError::Conflict {
                    message: format!(
                        "container \"{}\" would get two Sesame volumes at {}; give the injections for that directory the same containers",
                        q.of(&c.name),
                        q.of(&dir)
                    ),
                });
            }
        }
        items.sort();
        let mut h = Sha256::new();
        h.update(dir.as_bytes());
        for c in &containers {
            h.update([0, u8::from(c.init)]);
            h.update(c.name.as_bytes());
        }
        let name = format!("{MANAGED_PREFIX}{}", &hex::encode(h.finalize())[..10]);
        planned_volumes.push(PlannedVolume {
            name,
            mount_path: dir,
            containers,
            items,
        });
    }

    let references: Vec<SecretRef> = {
        let mut set: BTreeSet<SecretRef> = accepted.iter().map(|(i, _, _)| i.reference.clone()).collect();
        set.extend(templates.iter().flat_map(|(t, _, _)| t.references().cloned()));
        set.into_iter().collect()
    };
    let named_templates: Vec<&RefTemplate> = templates.iter().map(|(t, _, _)| &t.template).collect();
    let secret = if sources.is_empty() {
        None
    } else {
        Some(ManagedSecret {
            name: secret_name_with_templates(
                input.namespace,
                input.service_account,
                &references,
                &named_templates,
            ),
            namespace: input.namespace.to_owned(),
            service_account: input.service_account.to_owned(),
            data: secret_data(&sources, &fetched)
                .map_err(|e| data_error(&accepted, &key_annotations, e, q))?,
            references,
            sources,
            restart_on_rotation: false,
            owners: input.pod.controller().cloned().into_iter().collect(),
        })
    };
    let marker = secret
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_else(|| "inline".to_owned());
    Ok(InjectionPlan {
        env,
        volumes: planned_volumes,
        secret,
        marker,
        warnings,
    })
}

/// A value placed above that the Secret's data then lacks: cannot happen,
/// since both read the same answers; named after the injection anyway.
fn data_error(
    accepted: &[Accepted<'_, '_>],
    key_annotations: &BTreeMap<String, String>,
    e: DataError,
    q: Quote,
) -> PlanError {
    let annotation = |r: &SecretRef| {
        accepted
            .iter()
            .find(|(i, _, _)| i.reference.request() == r.request())
            .map(|(i, _, _)| i.source.clone())
            .unwrap_or_default()
    };
    if let Some(annotation) = key_annotations.get(e.key()) {
        return PlanError::Invalid {
            annotation: annotation.clone(),
            message: e.to_string(),
        };
    }
    match e {
        DataError::Store { reference, error, .. } => PlanError::Store {
            annotation: annotation(&reference),
            store: reference.store.clone(),
            path: q.of(&reference.path).to_string(),
            error,
        },
        DataError::Property { reference, error, .. } => PlanError::Property {
            annotation: annotation(&reference),
            store: reference.store.clone(),
            path: q.of(&reference.path).to_string(),
            error,
        },
        DataError::NotFetched { reference, .. } => PlanError::Invalid {
            annotation: annotation(&reference),
            message: format!("nothing was fetched from store \"{}\"", reference.store),
        },
        DataError::Render { .. } => PlanError::Invalid {
            annotation: String::new(),
            message: e.to_string(),
        },
    }
}

/// Whether a template failed only because a placeholder's secret or
/// property is missing (what `optional` forgives).
fn missing(e: &DataError) -> bool {
    match e {
        DataError::Store { error, .. } => error.is_not_found(),
        DataError::Property { .. } => true,
        DataError::NotFetched { .. } | DataError::Render { .. } => false,
    }
}

/// A template that cannot be rendered, named by its annotation and the
/// placeholder at fault.
fn placeholder_error(t: &TemplateInjection, e: DataError, q: Quote) -> PlanError {
    let placeholder_of = |r: &SecretRef| {
        t.template
            .placeholders()
            .find(|p| &p.reference == r)
            .map(|p| q.of(&p.to_string()).to_string())
            .unwrap_or_default()
    };
    let (placeholder, message, class) = match &e {
        DataError::Store { reference, error, .. } => (
            placeholder_of(reference),
            format!("store \"{}\" failed: {error}", reference.store),
            DenialClass::from(error),
        ),
        DataError::Property { reference, error, .. } => (
            placeholder_of(reference),
            error.to_string(),
            DenialClass::MissingProperty,
        ),
        DataError::NotFetched { reference, .. } => (
            placeholder_of(reference),
            format!("nothing was fetched from store \"{}\"", reference.store),
            DenialClass::Invalid,
        ),
        DataError::Render {
            placeholder, problem, ..
        } => (
            q.of(placeholder).to_string(),
            (*problem).to_owned(),
            DenialClass::Invalid,
        ),
    };
    PlanError::Placeholder {
        annotation: t.source.clone(),
        placeholder,
        message,
        class,
    }
}

/// The warning for an optional reference that was not found.
fn skipped(injection: &Injection, q: Quote) -> String {
    format!(
        "optional {} ({}) not found; skipped",
        q.of(&injection.reference.to_string()),
        injection.source
    )
}

fn invalid(injection: &Injection, message: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        annotation: injection.source.clone(),
        message: message.into(),
    }
}

/// Picks the values an injection places, with the env var or file name for each.
fn place<'a>(
    injection: &Injection,
    data: &'a SecretData,
    q: Quote,
) -> Result<Vec<(String, Placed<'a>)>, PlanError> {
    let r = &injection.reference;
    let prop_err = |error| PlanError::Property {
        annotation: injection.source.clone(),
        store: r.store.clone(),
        path: q.of(&r.path).to_string(),
        error,
    };
    let single = |name: String| -> Result<Vec<(String, Placed<'a>)>, PlanError> {
        let value = data.get(r.property.as_deref()).map_err(prop_err)?;
        Ok(vec![(
            name,
            Placed {
                identity: r.clone(),
                value,
            },
        )])
    };
    match &injection.target {
        Target::Env { name } => single(name.clone()),
        Target::File { path, .. } => single(file_name(path)),
        Target::EnvFrom { prefix } => each_property(data, r, prop_err, |k| {
            let name = format!("{prefix}{}", env_key(k));
            if is_env_name(&name) {
                Ok(name)
            } else {
                Err(invalid(
                    injection,
                    format!(
                        "property \"{}\" does not make a valid env var name ({})",
                        q.of(k),
                        q.of(&name)
                    ),
                ))
            }
        }),
        Target::Dir { .. } => each_property(data, r, prop_err, |k| {
            if k.is_empty() || k == "." || k == ".." || k.contains('/') || k.len() > 253 {
                Err(invalid(
                    injection,
                    format!("property \"{}\" is not a usable file name", q.of(k)),
                ))
            } else {
                Ok(k.to_owned())
            }
        }),
    }
}

/// Places every property of a secret under the name `name_of` gives it.
fn each_property<'a>(
    data: &'a SecretData,
    reference: &SecretRef,
    prop_err: impl FnOnce(PropertyError) -> PlanError,
    name_of: impl Fn(&str) -> Result<String, PlanError>,
) -> Result<Vec<(String, Placed<'a>)>, PlanError> {
    let props = data.properties().map_err(prop_err)?;
    let mut out = Vec::with_capacity(props.len());
    for (k, value) in props {
        let identity = SecretRef {
            property: Some(k.clone()),
            ..reference.clone()
        };
        out.push((name_of(k)?, Placed { identity, value }));
    }
    Ok(out)
}

/// Property key to env var suffix: upper case; anything but letters, digits
/// and `_` becomes `_` (`tls.crt` → `TLS_CRT`).
pub(crate) fn env_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Where each container name first occurs (app containers first), built
/// once per plan: a Pod may list very many containers, and looking each
/// selected name up in the whole list would multiply the two.
struct ContainerIndex<'p> {
    pod: &'p PodView,
    first: HashMap<&'p str, ContainerRef>,
}

impl<'p> ContainerIndex<'p> {
    fn new(pod: &'p PodView) -> Self {
        let mut first = HashMap::new();
        for (init, list) in [(false, &pod.spec.containers[..]), (true, pod.init_containers())] {
            for (index, c) in list.iter().enumerate() {
                first.entry(c.name.as_str()).or_insert_with(|| ContainerRef {
                    init,
                    index,
                    name: c.name.clone(),
                });
            }
        }
        Self { pod, first }
    }

    /// The containers an injection (named `source`) goes to.
    fn select(&self, sel: &ContainerSelector, source: &str) -> Result<Vec<ContainerRef>, PlanError> {
        let list = |init: bool, list: &[super::pod::ContainerView]| {
            list.iter()
                .enumerate()
                .map(|(index, c)| ContainerRef {
                    init,
                    index,
                    name: c.name.clone(),
                })
                .collect::<Vec<_>>()
        };
        let mut chosen: BTreeSet<ContainerRef> = BTreeSet::new();
        if sel.names.is_empty() {
            chosen.extend(list(false, &self.pod.spec.containers));
        }
        for name in &sel.names {
            let found = self
                .first
                .get(name.as_str())
                .ok_or_else(|| PlanError::UnknownContainer {
                    annotation: source.to_owned(),
                    container: name.clone(),
                })?;
            chosen.insert(found.clone());
        }
        if sel.init {
            chosen.extend(list(true, self.pod.init_containers()));
        }
        Ok(chosen.into_iter().collect())
    }
}

fn parent_dir(path: &str) -> String {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/".to_owned(),
        Some((dir, _)) => dir.to_owned(),
    }
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

fn short_hash<S: AsRef<str>>(parts: &[S]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_ref().as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

fn identity_parts(r: &SecretRef) -> [&str; 4] {
    [
        &r.store,
        &r.path,
        r.property.as_deref().unwrap_or(""),
        r.version.as_deref().unwrap_or(""),
    ]
}

/// What tells two references' keys apart: `refresh` too, when set (two
/// references that differ only in it still get two keys).
fn key_identity(r: &SecretRef) -> Vec<String> {
    let mut parts: Vec<String> = identity_parts(r).iter().map(|p| (*p).to_owned()).collect();
    if let Some(d) = r.refresh {
        parts.push(d.as_secs().to_string());
    }
    parts
}

/// Secret keys that a person can read (`db.password`), with a hash suffix
/// only where two references would otherwise share one.
fn assign_keys<'a>(identities: &BTreeSet<&'a SecretRef>) -> BTreeMap<&'a SecretRef, String> {
    let bases: Vec<(&'a SecretRef, String)> = identities.iter().map(|r| (*r, key_base(r))).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, b) in &bases {
        *counts.entry(b.as_str()).or_default() += 1;
    }
    let shared: Vec<bool> = bases
        .iter()
        .map(|(_, b)| counts.get(b.as_str()).copied().unwrap_or(0) > 1)
        .collect();
    bases
        .into_iter()
        .zip(shared)
        .map(|((r, b), shared)| {
            let key = if shared {
                format!("{b}-{}", &short_hash(&key_identity(r))[..6])
            } else {
                b
            };
            (r, key)
        })
        .collect()
}

/// `<last path segment>[.<property>]`, reduced to the characters a Secret
/// key allows, at most 200 of them.
fn key_base(r: &SecretRef) -> String {
    let last = r.path.rsplit('/').next().unwrap_or(&r.path);
    let property = r.property.as_deref();
    let raw = last.chars().chain(
        property
            .into_iter()
            .flat_map(|p| std::iter::once('.').chain(p.chars())),
    );
    let mut clean = String::with_capacity(last.len() + property.map_or(0, |p| p.len() + 1));
    for c in raw.take(200) {
        clean.push(if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
            c
        } else {
            '_'
        });
    }
    if clean.is_empty() || clean == "." || clean == ".." {
        "value".to_owned()
    } else {
        clean
    }
}

/// The keys of the templates: `template.<env name or file name>`, reduced
/// to the characters a Secret key allows, with a hash of the template where
/// two templates or a reference's key would share one.
fn assign_template_keys<'a>(
    templates: &[(&'a TemplateInjection, Vec<ContainerRef>, SecretValue)],
    reference_keys: &BTreeMap<&SecretRef, String>,
) -> BTreeMap<&'a RefTemplate, String> {
    let taken: BTreeSet<&str> = reference_keys.values().map(String::as_str).collect();
    let mut by_base: BTreeMap<String, BTreeSet<&'a RefTemplate>> = BTreeMap::new();
    for (t, _, _) in templates {
        let name = match &t.target {
            Target::File { path, .. } => file_name(path),
            Target::Env { name } => name.clone(),
            Target::EnvFrom { .. } | Target::Dir { .. } => String::new(),
        };
        let clean: String = name
            .chars()
            .take(200)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        by_base
            .entry(format!("template.{clean}"))
            .or_default()
            .insert(&t.template);
    }
    let mut out = BTreeMap::new();
    for (base, set) in by_base {
        let shared = set.len() > 1 || taken.contains(base.as_str());
        for t in set {
            let key = if shared {
                let json = serde_json::to_string(t).unwrap_or_default();
                format!("{base}-{}", &short_hash(&[&json])[..6])
            } else {
                base.clone()
            };
            out.insert(t, key);
        }
    }
    out
}

/// `sesame-<hash>` of the namespace, the service account and the set of
/// references: Pods with the same references under the same service account
/// in one namespace share one Secret; two service accounts never do, so the
/// rule that a Pod may only use the Secret its own annotations produce also
/// keeps service accounts apart.
pub fn secret_name(namespace: &str, service_account: &str, references: &[SecretRef]) -> String {
    secret_name_with_templates(namespace, service_account, references, &[])
}

/// [`secret_name`] of a Pod that also has templates: two Pods whose
/// templates differ write different keys, so they never share a Secret.
/// Without templates, the name is what it always was.
pub fn secret_name_with_templates(
    namespace: &str,
    service_account: &str,
    references: &[SecretRef],
    templates: &[&RefTemplate],
) -> String {
    let mut h = Sha256::new();
    // Length-prefixed, so that no namespace/account split collides with another.
    for part in [namespace, service_account] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    for r in references {
        for p in identity_parts(r) {
            h.update([0]);
            h.update(p.as_bytes());
        }
        // Only when set, so that the names of Secrets without it stay as
        // they were: one Secret has one cadence per reference.
        if let Some(d) = r.refresh {
            h.update([3]);
            h.update(d.as_secs().to_be_bytes());
        }
        h.update([1]);
    }
    let set: BTreeSet<String> = templates
        .iter()
        .map(|t| serde_json::to_string(t).unwrap_or_default())
        .collect();
    for t in set {
        h.update([2]);
        h.update((t.len() as u64).to_be_bytes());
        h.update(t.as_bytes());
    }
    format!("{MANAGED_PREFIX}{}", &hex::encode(h.finalize())[..16])
}

#[cfg(test)]
mod tests;
