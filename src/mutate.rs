//! `sesame mutate`: the admission pipeline offline, on Pods and workloads
//! from a manifest. Prints the mutated objects and the Secret that would be
//! written (keys only unless `--show-values`).

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

use crate::cli::MutateArgs;
use crate::config::Config;
use crate::inject::pod::pod_pointer;
use crate::inject::{ManagedSecret, PodView};
use crate::pipeline::{Caller, Engine, PodInput, Verdict};
use crate::telemetry::Metrics;

/// The result of running the pipeline on one object.
pub struct Mutated {
    pub object: Value,
    pub secret: Option<ManagedSecret>,
    pub warnings: Vec<String>,
}

/// Runs the pipeline on one object; `Err` carries the denial message.
/// Unless `show_values`, values that inline mode writes into the Pod are
/// replaced by their size.
pub(crate) async fn mutate_object(
    engine: &Engine,
    mut object: Value,
    namespace: Option<&str>,
    show_values: bool,
) -> anyhow::Result<Result<Mutated, String>> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(base) = pod_pointer(&kind) else {
        return Ok(Ok(Mutated {
            object,
            secret: None,
            warnings: Vec::new(),
        }));
    };
    let namespace = namespace
        .map(str::to_owned)
        .or_else(|| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "default".to_owned());
    let pod_value = object.pointer(base).cloned().unwrap_or(Value::Null);
    let pod = PodView::deserialize(&pod_value).with_context(|| format!("reading the Pod of this {kind}"))?;
    let verdict = engine
        .evaluate(&PodInput {
            namespace: &namespace,
            pod: &pod,
            base,
            budget: None,
            namespace_labels: None,
            caller: Caller::Trusted,
            last_known_good: None,
        })
        .await;
    match verdict {
        Verdict::Untouched => Ok(Ok(Mutated {
            object,
            secret: None,
            warnings: Vec::new(),
        })),
        Verdict::Denied(d) => Ok(Err(d.message)),
        Verdict::Mutated(m) => {
            let mut m = std::sync::Arc::unwrap_or_clone(m);
            if !show_values {
                hide_inline_values(&mut m.patch);
            }
            let patch = json_patch::Patch(m.patch);
            json_patch::patch(&mut object, &patch).context("applying the patch")?;
            Ok(Ok(Mutated {
                object,
                secret: m.secret,
                warnings: m.warnings,
            }))
        }
    }
}

/// Replaces the values inline mode writes into the Pod by their size. Every
/// env entry of the patch that has a `value` is one of them: Sesame adds
/// env vars either with `value` (inline) or with `valueFrom` (secretRef).
fn hide_inline_values(patch: &mut [json_patch::PatchOperation]) {
    let hide = |entry: &mut Value| {
        if let Some(value) = entry.get_mut("value") {
            let len = value.as_str().map_or(0, str::len);
            *value = Value::String(format!("<{len} bytes, hidden; --show-values to print>"));
        }
    };
    for op in patch {
        let json_patch::PatchOperation::Add(add) = op else {
            continue;
        };
        let path = add.path.as_str();
        // One entry, appended (`/env/-`) or inserted at the front (`/env/0`).
        let entry = path.rsplit_once('/').is_some_and(|(list, at)| {
            list.ends_with("/env") && (at == "-" || at.bytes().all(|b| b.is_ascii_digit()))
        });
        if entry {
            hide(&mut add.value);
        } else if path.ends_with("/env") {
            add.value.as_array_mut().into_iter().flatten().for_each(hide);
        }
    }
}

/// The managed Secret exactly as the Kubernetes writer would apply it, with
/// each value replaced by its size unless `show_values` is set.
pub(crate) fn secret_manifest(secret: &ManagedSecret, prefix: &str, show_values: bool) -> Value {
    // No API, no provenance key: the Secret as the dry-run writer would
    // leave it, unsigned.
    let mut body = crate::kube::secret::manifest(
        secret,
        prefix,
        &crate::kube::provenance::Provenance::empty(),
        &crate::kube::secret::now_rfc3339(),
    );
    if !show_values {
        if let Some(Value::Object(data)) = body.get_mut("data") {
            for (key, shown) in data.iter_mut() {
                let len = secret.data.get(key).map_or(0, |v| v.len());
                *shown = Value::String(format!("<{len} bytes, hidden; --show-values to print>"));
            }
        }
    }
    body
}

pub async fn run(args: &MutateArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?
    };
    let loaded = Config::load(args.config.resolve().as_deref())?;
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::from_config(&loaded, &metrics, None).await?;

    let mut out = Vec::new();
    let mut denied = false;
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value =
            Value::deserialize(doc).with_context(|| format!("document {} is not YAML/JSON", i + 1))?;
        if value.is_null() {
            continue;
        }
        match mutate_object(&engine, value, args.namespace.as_deref(), args.show_values).await? {
            Ok(m) => {
                for w in &m.warnings {
                    eprintln!("warning: {w}");
                }
                out.push(m.object);
                if let Some(s) = &m.secret {
                    out.push(secret_manifest(s, engine.prefix(), args.show_values));
                }
            }
            Err(message) => {
                denied = true;
                eprintln!("denied (document {}): {message}", i + 1);
            }
        }
    }
    for doc in &out {
        println!(
            "---\n{}",
            serde_norway::to_string(doc).context("printing YAML")?.trim_end()
        );
    }
    Ok(if denied {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
