//! From a plan to an RFC 6902 JSON Patch over the Pod (or a workload's Pod
//! template). Pure. Idempotent: what the Pod already has exactly as planned
//! is left alone, so a reinvoked webhook adds nothing twice; anything the
//! Pod defines differently is a conflict that denies the Pod.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde_json::{json, Value};

use std::collections::{BTreeMap, HashMap};

use super::plan::{EnvSource, InjectionPlan, PlannedEnv, PlannedVolume};
use super::pod::{ContainerView, PodView};
use crate::denial::DenialClass;
use crate::validate::Quote;

/// Why no patch can be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatchError {
    /// The Pod already defines something the plan needs to set.
    #[error("{0}")]
    Conflict(String),
    /// The caller's position of the Pod in the document is no JSON Pointer:
    /// a bug, not the Pod's fault, and never the document root instead.
    #[error("the Pod's position in the document (\"{0}\") is not a JSON Pointer")]
    BadBase(String),
}

impl PatchError {
    /// The class of the denial.
    pub fn class(&self) -> DenialClass {
        match self {
            Self::Conflict(_) => DenialClass::Conflict,
            Self::BadBase(_) => DenialClass::Internal,
        }
    }
}

/// Builds the patch. `base` is the JSON Pointer of the Pod within the
/// document: empty for a Pod, `/spec/template` for a Deployment; one that
/// does not parse is an error.
pub(crate) fn build_patch(
    pod: &PodView,
    plan: &InjectionPlan,
    base: &str,
    marker_key: &str,
    secret_name: Option<&str>,
    quote: Quote,
) -> Result<Vec<PatchOperation>, PatchError> {
    let q = quote;
    let base = PointerBuf::parse(base).map_err(|_| PatchError::BadBase(base.to_owned()))?;
    let mut ops = Vec::new();
    // The suffixes below are fixed field names and indexes; tokens from
    // user data (annotation keys) are pushed, and so escaped, separately.
    let pointer = |suffix: &str| -> PointerBuf {
        let mut p = base.clone();
        for token in suffix.split('/').skip(1) {
            p.push_back(token);
        }
        p
    };

    // Volumes at Pod level.
    let existing_volumes = by_key(pod.spec.volumes.iter().flatten(), |v| {
        v.get("name").and_then(Value::as_str)
    });
    let mut new_volumes = Vec::new();
    for v in &plan.volumes {
        let desired = volume_json(v, secret_name);
        match existing_volumes.get(v.name.as_str()) {
            Some(e) if **e == desired => {}
            Some(_) => {
                return Err(PatchError::Conflict(format!(
                    "the Pod already has a volume named \"{}\" that Sesame did not create as planned",
                    v.name
                )))
            }
            None => new_volumes.push(desired),
        }
    }
    append_all(
        &mut ops,
        pod.spec.volumes.is_some(),
        pointer("/spec/volumes"),
        new_volumes,
    );

    // Env vars and mounts, container by container in the Pod's order, for
    // the containers that get any: the Pod may list very many others.
    let mut planned: BTreeMap<(bool, usize), ForContainer<'_>> = BTreeMap::new();
    for e in &plan.env {
        planned
            .entry((e.container.init, e.container.index))
            .or_default()
            .0
            .push(e);
    }
    for v in &plan.volumes {
        for c in &v.containers {
            planned.entry((c.init, c.index)).or_default().1.push(v);
        }
    }
    for ((init, index), (env, volumes)) in planned {
        let (list, containers): (&str, &[ContainerView]) = if init {
            ("initContainers", pod.init_containers())
        } else {
            ("containers", &pod.spec.containers)
        };
        // The plan was made from this Pod: every container it names exists.
        let Some(container) = containers.get(index) else {
            continue;
        };
        let at = |field: &str| pointer(&format!("/spec/{list}/{index}/{field}"));
        let existing_env = by_key(container.env.iter().flatten(), |x| {
            x.get("name").and_then(Value::as_str)
        });
        let mut new_env = Vec::new();
        for e in env {
            let desired = env_json(e, secret_name);
            match existing_env.get(e.name.as_str()) {
                Some(x) if **x == desired => {}
                Some(_) => {
                    return Err(PatchError::Conflict(format!(
                        "container \"{}\" already defines env var {}; remove it or drop the Sesame annotation for it",
                        q.of(&container.name),
                        q.of(&e.name)
                    )))
                }
                None => new_env.push(desired),
            }
        }
        // Before the container's own env: Kubernetes expands `$(VAR)` only
        // from variables defined earlier, so a user's own value can refer
        // to Sesame's. What is already there (a reinvocation) is kept.
        prepend_all(&mut ops, container.env.is_some(), at("env"), new_env);

        let existing_mounts = by_key(container.volume_mounts.iter().flatten(), |m| {
            Some(m.mount_path.as_str())
        });
        let mut new_mounts = Vec::new();
        for v in volumes {
            match existing_mounts.get(v.mount_path.as_str()) {
                Some(m) if m.name == v.name => {}
                Some(m) => {
                    return Err(PatchError::Conflict(format!(
                        "container \"{}\" already mounts volume \"{}\" at {}",
                        q.of(&container.name),
                        q.of(&m.name),
                        q.of(&v.mount_path)
                    )))
                }
                None => new_mounts.push(json!({"name": v.name, "mountPath": v.mount_path, "readOnly": true})),
            }
        }
        append_all(
            &mut ops,
            container.volume_mounts.is_some(),
            at("volumeMounts"),
            new_mounts,
        );
    }

    // The marker, last: only a Pod that got everything carries it.
    let current = pod.metadata.annotations.as_ref().and_then(|a| a.get(marker_key));
    if current != Some(&plan.marker) {
        let mut path = pointer("/metadata/annotations");
        if pod.metadata.annotations.is_none() {
            ops.push(PatchOperation::Add(AddOperation {
                path: path.clone(),
                value: json!({}),
            }));
        }
        path.push_back(marker_key);
        let value = Value::String(plan.marker.clone());
        ops.push(if current.is_some() {
            PatchOperation::Replace(ReplaceOperation { path, value })
        } else {
            PatchOperation::Add(AddOperation { path, value })
        });
    }
    Ok(ops)
}

/// What one container gets: env vars and Sesame volumes to mount.
type ForContainer<'p> = (Vec<&'p PlannedEnv>, Vec<&'p PlannedVolume>);

/// The items of a list by a key, the first of each key winning, as a
/// search from the front would find them.
fn by_key<'a, T: 'a>(
    items: impl Iterator<Item = &'a T>,
    key: impl Fn(&'a T) -> Option<&'a str>,
) -> HashMap<&'a str, &'a T> {
    let mut map = HashMap::new();
    for item in items {
        if let Some(k) = key(item) {
            map.entry(k).or_insert(item);
        }
    }
    map
}

/// The length of the patch as it is sent, in JSON before base64, without
/// keeping the text.
pub(crate) fn encoded_len(patch: &[PatchOperation]) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(bytes.len());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serialising operations built from JSON values cannot fail; if it did,
    // the answer could not be encoded either, and says so.
    let _ = serde_json::to_writer(&mut count, patch);
    count.0
}

/// Appends values to an array, creating it first when the Pod has none.
fn append_all(ops: &mut Vec<PatchOperation>, exists: bool, path: PointerBuf, values: Vec<Value>) {
    if values.is_empty() {
        return;
    }
    if !exists {
        ops.push(PatchOperation::Add(AddOperation {
            path,
            value: Value::Array(values),
        }));
        return;
    }
    for value in values {
        let mut p = path.clone();
        p.push_back("-");
        ops.push(PatchOperation::Add(AddOperation { path: p, value }));
    }
}

/// Inserts values at the front of an array, in order, creating it first
/// when the Pod has none.
fn prepend_all(ops: &mut Vec<PatchOperation>, exists: bool, path: PointerBuf, values: Vec<Value>) {
    if !exists {
        append_all(ops, exists, path, values);
        return;
    }
    for (index, value) in values.into_iter().enumerate() {
        let mut p = path.clone();
        p.push_back(index.to_string());
        ops.push(PatchOperation::Add(AddOperation { path: p, value }));
    }
}

fn env_json(e: &PlannedEnv, secret_name: Option<&str>) -> Value {
    match &e.source {
        EnvSource::SecretKey(key) => json!({
            "name": e.name,
            "valueFrom": {"secretKeyRef": {"name": secret_name.unwrap_or_default(), "key": key}}
        }),
        EnvSource::Inline(v) => json!({"name": e.name, "value": v.expose_str().unwrap_or_default()}),
    }
}

fn volume_json(v: &PlannedVolume, secret_name: Option<&str>) -> Value {
    let items: Vec<Value> = v
        .items
        .iter()
        .map(|i| match i.mode {
            Some(mode) => json!({"key": i.key, "path": i.path, "mode": mode}),
            None => json!({"key": i.key, "path": i.path}),
        })
        .collect();
    json!({
        "name": v.name,
        "secret": {"secretName": secret_name.unwrap_or_default(), "items": items, "defaultMode": 0o644}
    })
}
