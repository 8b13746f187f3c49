//! The seams the admission path needs from the outside world, owned here
//! and implemented by the Kubernetes adapter (`kube`), which never imports
//! the admission module back: writing the managed Secret before a Pod is
//! admitted, the labels of the Pod's namespace, and the managed Secret a
//! Pod already has (its last known good copy, for a store outage).

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::inject::ManagedSecret;
pub use crate::pipeline::KnownSecret;

/// What became of a managed Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Created or updated.
    Applied,
    /// Already up to date; nothing was sent.
    Unchanged,
    /// Deliberately not written; the text becomes an AdmissionResponse warning.
    NotWritten(String),
}

impl WriteOutcome {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::NotWritten(_) => "not_written",
        }
    }
}

/// Why a Secret could not be written. Messages carry API status codes and
/// reasons, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the API server refused the managed Secret {name}: {reason}")]
    Refused { name: String, reason: String },
    #[error("the API server could not be reached to write the managed Secret {name}: {reason}")]
    Unreachable { name: String, reason: String },
    /// The namespace has had its share of new managed Secrets for now.
    #[error("namespace {namespace} has had as many new managed Secrets as it may have for now (policy.newSecretsPerNamespace); {name} was not created, retry in a minute")]
    TooManyNew { namespace: String, name: String },
}

/// Whether a managed Secret that does not exist yet may be created: the
/// writer asks only before a creation, never for a Secret it rewrites.
pub trait CreationBudget: Send + Sync {
    fn may_create(&self, namespace: &str) -> bool;
}

/// Lets every creation through (`sesame mutate`, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl CreationBudget for Unlimited {
    fn may_create(&self, _namespace: &str) -> bool {
        true
    }
}

/// Writes the plan's Secret before the Pod is admitted.
#[async_trait]
pub trait SecretWriter: Send + Sync + 'static {
    /// Writes `secret`; a creation needs `budget`'s consent.
    async fn apply(
        &self,
        secret: &ManagedSecret,
        budget: &dyn CreationBudget,
    ) -> Result<WriteOutcome, WriteError>;

    /// `dry-run` or `kubernetes`, for the start-up log.
    fn kind(&self) -> &'static str;
}

/// Writes nothing and says so.
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRunWriter;

#[async_trait]
impl SecretWriter for DryRunWriter {
    async fn apply(
        &self,
        secret: &ManagedSecret,
        _budget: &dyn CreationBudget,
    ) -> Result<WriteOutcome, WriteError> {
        Ok(WriteOutcome::NotWritten(dry_run_warning(secret)))
    }

    fn kind(&self) -> &'static str {
        "dry-run"
    }
}

/// The warning for a Secret that was not written: its name and keys, no values.
fn dry_run_warning(secret: &ManagedSecret) -> String {
    let keys: Vec<&str> = secret.data.keys().map(String::as_str).collect();
    format!(
        "dry run: Sesame did not write Secret {}/{} (keys: {})",
        secret.namespace,
        secret.name,
        keys.join(", ")
    )
}

/// Labels of a namespace, for `namespaceSelector` policy rules.
#[async_trait]
pub trait NamespaceLabels: Send + Sync + 'static {
    /// `None` when the namespace is not known (yet).
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;

    /// As [`labels`](Self::labels), and when the cache has not seen the
    /// namespace (its watch can lag a namespace created a moment ago) the
    /// source's own answer: admission calls this one.
    async fn labels_now(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.labels(namespace)
    }
}

/// The managed Secrets that exist, for a Pod whose store is down.
#[async_trait]
pub trait LastKnownGood: Send + Sync + 'static {
    /// The managed Secret `namespace/name` from the cluster's copy, only
    /// when its provenance MAC verifies (a tenant can write a Secret of any
    /// name in its own namespace); `None` otherwise, or when it is being
    /// deleted. Answers from memory: no API call on the admission path.
    fn lookup(&self, namespace: &str, name: &str) -> Option<KnownSecret>;

    /// Tells the app team that a Pod was admitted against `secret` because
    /// `stores` failed (a Kubernetes Event on the Secret). Best effort and
    /// brief: a failure is logged, never a denial.
    async fn record_use(&self, namespace: &str, secret: &str, stores: &[String], refreshed_at: &str);
}
