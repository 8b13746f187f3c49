//! `sesame policy explain`: for each reference given on the command line,
//! the rule of the configuration's policy that grants it to a namespace and
//! service account, or why none does; offline. The references are read by
//! the pipeline's one reading of annotations (`Engine::request`, which also
//! qualifies the paths of namespaced stores) and checked by its one check
//! (`Engine::authorize`): what this prints is what admission and rotation
//! decide.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use crate::cli::ExplainArgs;
use crate::config::Config;
use crate::inject::{PodView, SecretRef};
use crate::pipeline::{Engine, Refusal};
use crate::telemetry::Metrics;

/// The label the API server sets on every Namespace.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What the policy says of one reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Explanation {
    /// Granted by the rule named.
    Granted { reference: SecretRef, rule: String },
    /// Not granted, with the policy's sentence.
    Denied { reference: SecretRef, reason: String },
    /// The text is not a reference (the grammar's message).
    Malformed { reason: String },
}

/// The namespace's labels as given (`key=value`), with the one the API
/// server always sets.
pub(crate) fn namespace_labels(
    namespace: &str,
    given: &[String],
) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::from([(NAME_LABEL.to_owned(), namespace.to_owned())]);
    for label in given {
        let Some((key, value)) = label.split_once('=') else {
            return Err(format!("--namespace-label {label:?} is not key=value"));
        };
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

/// Explains one reference, written as in an annotation's value (pure).
pub(crate) fn explain(
    engine: &Engine,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    service_account: &str,
    text: &str,
) -> Explanation {
    // The reference as a Pod would carry it: one env var asking for it.
    let key = format!("{}/env.REFERENCE", engine.prefix());
    let pod = serde_json::from_value::<PodView>(json!({
        "metadata": {"annotations": {key.clone(): text}},
        "spec": {"serviceAccountName": service_account, "containers": [{"name": "app"}]},
    }));
    let request = match pod.map(|pod| engine.request(namespace, &pod)) {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            // The annotation is ours, not the user's: leave its name out.
            let reason = e.to_string();
            let ours = format!("annotation \"{key}\": ");
            return Explanation::Malformed {
                reason: reason.strip_prefix(&ours).unwrap_or(&reason).to_owned(),
            };
        }
        Err(e) => {
            return Explanation::Malformed {
                reason: e.to_string(),
            }
        }
    };
    let Some(reference) = request.injections.into_iter().next().map(|i| i.reference) else {
        return Explanation::Malformed {
            reason: "not a reference".into(),
        };
    };
    match engine.authorize(namespace, Some(labels), service_account, &reference) {
        Ok(rule) => Explanation::Granted {
            rule: rule.to_owned(),
            reference,
        },
        Err(refusal @ Refusal::UnknownStore { .. }) => Explanation::Denied {
            reference,
            reason: refusal.to_string(),
        },
        Err(Refusal::Policy(denial)) => Explanation::Denied {
            reference,
            reason: denial.to_string(),
        },
    }
}

/// One line per reference (pure).
pub(crate) fn render(text: &str, explanation: &Explanation) -> String {
    match explanation {
        Explanation::Granted { reference, rule } => {
            format!("{text}: granted by rule \"{rule}\"{}", as_read(text, reference))
        }
        Explanation::Denied { reference, reason } => {
            format!("{text}: denied{}: {reason}", as_read(text, reference))
        }
        Explanation::Malformed { reason } => format!("{text}: not a reference: {reason}"),
    }
}

/// ` (read as ...)` when the pipeline's reading differs from the text
/// (a namespaced store's bare name qualified, a version canonicalised).
fn as_read(text: &str, reference: &SecretRef) -> String {
    let read = reference.to_string();
    if read == text.trim() {
        String::new()
    } else {
        format!(" (read as {read})")
    }
}

/// Runs the command: exit 0 when every reference is granted, 1 when one is
/// denied, 2 when one is not a reference.
pub async fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let loaded = Config::load(args.config.resolve().as_deref())?;
    let labels = namespace_labels(&args.namespace, &args.namespace_labels).map_err(anyhow::Error::msg)?;
    let engine = Engine::from_config(&loaded, &Arc::new(Metrics::new()), None).await?;
    let mut code = 0u8;
    for text in &args.references {
        let explanation = explain(&engine, &args.namespace, &labels, &args.service_account, text);
        code = code.max(match explanation {
            Explanation::Granted { .. } => 0,
            Explanation::Denied { .. } => 1,
            Explanation::Malformed { .. } => 2,
        });
        println!("{}", render(text, &explanation));
    }
    Ok(ExitCode::from(code))
}
