//! What a review asks, checked against the shapes the API server sends
//! before anything in it is used for a decision: the kind, the operation
//! and subresource the webhook is registered for, the namespace and the
//! uid. A review that does not fit is forged or misrouted; it is refused
//! with a 400 and nothing is read or written for it.

use super::review::{GroupVersionKind, RequestIn};
use crate::inject::pod::pod_pointer;
use crate::validate::is_dns_label;

/// What Sesame does for a review that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// A Pod is created: the whole pipeline.
    CreatePod,
    /// Ephemeral containers are added to a running Pod
    /// (`pods/ephemeralcontainers` UPDATE): the guard alone, no patch.
    AddEphemeralContainers,
}

/// Why a review is refused; the message is safe to show (it quotes only
/// what the caller sent, bounded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("Sesame reviews only core/v1 Pods, not {0}")]
    Kind(String),
    #[error("Sesame reviews Pod CREATE and pods/ephemeralcontainers UPDATE, not {0}")]
    Operation(String),
    #[error("the review has no namespace; Pods are namespaced")]
    NoNamespace,
    #[error("the review's namespace {0} is not a DNS-1123 label")]
    Namespace(String),
    #[error("the namespace {0} does not exist")]
    UnknownNamespace(String),
    #[error("Sesame's workload path reviews apps/v1 Deployments, StatefulSets, DaemonSets and ReplicaSets and batch/v1 Jobs and CronJobs, not {0}")]
    WorkloadKind(String),
    #[error("Sesame's workload path reviews CREATE and UPDATE, not {0}")]
    WorkloadOperation(String),
}

/// The longest uid accepted. The API server sends UUIDs (36 characters).
const MAX_UID: usize = 128;

/// Whether the uid looks like one the API server sends: it is echoed back
/// in the answer, so it must be short and plain.
pub(crate) fn uid_is_valid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= MAX_UID
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks kind, operation with subresource, and the namespace's shape;
/// returns what to do and the namespace.
pub(crate) fn check<O>(request: &RequestIn<O>) -> Result<(Operation, &str), RequestError> {
    let kind = &request.kind;
    if !(kind.group.is_empty() && kind.version == "v1" && kind.kind == "Pod") {
        return Err(RequestError::Kind(kind_text(kind)));
    }
    let sub = request.sub_resource.as_deref().unwrap_or("");
    let operation = match (request.operation.as_str(), sub) {
        ("CREATE", "") => Operation::CreatePod,
        ("UPDATE", "ephemeralcontainers") => Operation::AddEphemeralContainers,
        (op, "") => return Err(RequestError::Operation(quoted(op))),
        (op, sub) => return Err(RequestError::Operation(quoted(&format!("{op} of pods/{sub}")))),
    };
    Ok((operation, checked_namespace(request)?))
}

/// The namespace of a namespaced review, checked for its shape.
fn checked_namespace<O>(request: &RequestIn<O>) -> Result<&str, RequestError> {
    let namespace = request.namespace.as_deref().unwrap_or("");
    if namespace.is_empty() {
        return Err(RequestError::NoNamespace);
    }
    if !is_dns_label(namespace) {
        return Err(RequestError::Namespace(quoted(namespace)));
    }
    Ok(namespace)
}

/// A workload review that passed the checks: where its Pod template is,
/// whether it is an UPDATE, and the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkloadRequest<'a> {
    /// JSON Pointer to the Pod template in the object.
    pub(crate) template: &'static str,
    pub(crate) update: bool,
    pub(crate) namespace: &'a str,
}

/// Checks a review sent to the workload path: one of the kinds whose Pod
/// template it reads, CREATE or UPDATE of the object itself.
pub(crate) fn check_workload<O>(request: &RequestIn<O>) -> Result<WorkloadRequest<'_>, RequestError> {
    let kind = &request.kind;
    let known = match (kind.group.as_str(), kind.version.as_str(), kind.kind.as_str()) {
        ("apps", "v1", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "v1", "Job" | "CronJob") => pod_pointer(&kind.kind),
        _ => None,
    };
    let Some(template) = known else {
        return Err(RequestError::WorkloadKind(kind_text(kind)));
    };
    let update = match (
        request.operation.as_str(),
        request.sub_resource.as_deref().unwrap_or(""),
    ) {
        ("CREATE", "") => false,
        ("UPDATE", "") => true,
        (op, "") => return Err(RequestError::WorkloadOperation(quoted(op))),
        (op, sub) => return Err(RequestError::WorkloadOperation(quoted(&format!("{op} of {sub}")))),
    };
    Ok(WorkloadRequest {
        template,
        update,
        namespace: checked_namespace(request)?,
    })
}

/// `group/version Kind`, quoted, `core` for the core group.
fn kind_text(kind: &GroupVersionKind) -> String {
    let group = if kind.group.is_empty() {
        "core"
    } else {
        &kind.group
    };
    quoted(&format!("{group}/{} {}", kind.version, kind.kind))
}

/// `text` quoted for a message, escaped and cut to a bounded length.
fn quoted(text: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = text
        .chars()
        .take(MAX)
        .collect::<String>()
        .escape_debug()
        .collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> RequestIn<&'static serde_json::value::RawValue> {
        let text: &'static str = Box::leak(json.to_string().into_boxed_str());
        serde_json::from_str(text).unwrap()
    }

    fn pod(
        operation: &str,
        sub: Option<&str>,
        namespace: Option<&str>,
    ) -> RequestIn<&'static serde_json::value::RawValue> {
        request(serde_json::json!({
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": operation, "subResource": sub, "namespace": namespace,
        }))
    }

    #[test]
    fn only_pod_create_and_ephemeral_container_updates_pass() {
        assert_eq!(
            check(&pod("CREATE", None, Some("team-a"))),
            Ok((Operation::CreatePod, "team-a"))
        );
        assert_eq!(
            check(&pod("UPDATE", Some("ephemeralcontainers"), Some("team-a"))),
            Ok((Operation::AddEphemeralContainers, "team-a"))
        );
        for (op, sub) in [
            ("UPDATE", None),
            ("DELETE", None),
            ("CONNECT", Some("exec")),
            ("CREATE", Some("binding")),
            ("CREATE", Some("ephemeralcontainers")),
            ("UPDATE", Some("status")),
        ] {
            assert!(
                matches!(check(&pod(op, sub, Some("a"))), Err(RequestError::Operation(_))),
                "{op} {sub:?}"
            );
        }
        for kind in [
            serde_json::json!({"group": "", "version": "v1", "kind": "ConfigMap"}),
            serde_json::json!({"group": "apps", "version": "v1", "kind": "Pod"}),
            serde_json::json!({"group": "", "version": "v2", "kind": "Pod"}),
        ] {
            let r = request(
                serde_json::json!({"uid": "u", "kind": kind, "operation": "CREATE", "namespace": "a"}),
            );
            assert!(matches!(check(&r), Err(RequestError::Kind(_))), "{kind}");
        }
    }

    #[test]
    fn a_namespace_must_be_a_dns_label() {
        for bad in [
            "*",
            "team-?",
            "dev-*",
            "Team-A",
            "a/b",
            "-a",
            "a..b",
            &"a".repeat(64),
            "a\nb",
        ] {
            let e = check(&pod("CREATE", None, Some(bad))).expect_err(bad);
            assert!(matches!(e, RequestError::Namespace(_)), "{bad}: {e}");
            assert!(e.to_string().len() < 200, "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert_eq!(check(&pod("CREATE", None, None)), Err(RequestError::NoNamespace));
        assert_eq!(
            check(&pod("CREATE", None, Some(""))),
            Err(RequestError::NoNamespace)
        );
    }

    #[test]
    fn uids_are_short_and_plain() {
        assert!(uid_is_valid("705ab4f5-6393-11e8-b7cc-42010a800002"));
        assert!(uid_is_valid("u-1"));
        for bad in ["", "a b", "a\"b", "a\nb", "ü", &"a".repeat(129)] {
            assert!(!uid_is_valid(bad), "{bad:?}");
        }
    }
}
