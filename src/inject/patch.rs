//! From a plan to an RFC 6902 JSON Patch over the Pod (or a workload's Pod
//! template). Pure. Idempotent: what the Pod already has exactly as planned
//! is left alone, so a reinvoked webhook adds nothing twice; anything the
//! Pod defines differently is a conflict that denies the Pod.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde_json::{json, Value};

use super::plan::{EnvSource, InjectionPlan, PlannedEnv, PlannedVolume};
use super::pod::{ContainerView, PodView};
use crate::denial::DenialClass;

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
) -> Result<Vec<PatchOperation>, PatchError> {
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
    let existing_volumes = pod.spec.volumes.as_deref().unwrap_or(&[]);
    let mut new_volumes = Vec::new();
    for v in &plan.volumes {
        let desired = volume_json(v, secret_name);
        match existing_volumes
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(&v.name))
        {
            Some(e) if *e == desired => {}
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

    // Env vars and mounts per container.
    let lists: [(&str, &[ContainerView], bool); 2] = [
        ("containers", &pod.spec.containers, false),
        ("initContainers", pod.init_containers(), true),
    ];
    for (list, containers, init) in lists {
        for (index, container) in containers.iter().enumerate() {
            let at = |field: &str| pointer(&format!("/spec/{list}/{index}/{field}"));
            let env: Vec<&PlannedEnv> = plan
                .env
                .iter()
                .filter(|e| e.container.init == init && e.container.index == index)
                .collect();
            let mut new_env = Vec::new();
            for e in env {
                let desired = env_json(e, secret_name);
                let existing = container.env.as_deref().unwrap_or(&[]);
                match existing.iter().find(|x| x.get("name").and_then(Value::as_str) == Some(&e.name)) {
                    Some(x) if *x == desired => {}
                    Some(_) => {
                        return Err(PatchError::Conflict(format!(
                            "container \"{}\" already defines env var {}; remove it or drop the Sesame annotation for it",
                            container.name, e.name
                        )))
                    }
                    None => new_env.push(desired),
                }
            }
            append_all(&mut ops, container.env.is_some(), at("env"), new_env);

            let mut new_mounts = Vec::new();
            for v in plan
                .volumes
                .iter()
                .filter(|v| v.containers.iter().any(|c| c.init == init && c.index == index))
            {
                let existing = container.volume_mounts.as_deref().unwrap_or(&[]);
                match existing.iter().find(|m| m.mount_path == v.mount_path) {
                    Some(m) if m.name == v.name => {}
                    Some(m) => {
                        return Err(PatchError::Conflict(format!(
                            "container \"{}\" already mounts volume \"{}\" at {}",
                            container.name, m.name, v.mount_path
                        )))
                    }
                    None => {
                        new_mounts.push(json!({"name": v.name, "mountPath": v.mount_path, "readOnly": true}))
                    }
                }
            }
            append_all(
                &mut ops,
                container.volume_mounts.is_some(),
                at("volumeMounts"),
                new_mounts,
            );
        }
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
