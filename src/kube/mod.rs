//! The Kubernetes API side: the `SecretWriter` seam with its dry-run and
//! API implementations, the client, watch-backed caches of managed Secrets
//! and Namespaces, and (leader-elected) garbage collection and rotation.

pub mod client;
pub mod namespaces;
pub mod reflect;
pub mod secret;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::admission::Admission;
use crate::cli::KubeArgs;
use crate::config::Config;
use crate::inject::ManagedSecret;
use crate::pipeline::SharedEngine;
use crate::telemetry::Metrics;

/// Labels of a namespace, for `namespaceSelector` policy rules.
pub trait NamespaceLabels: Send + Sync + 'static {
    /// `None` when the namespace is not known (yet).
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
}

/// Starts the Kubernetes side of `serve`: the managed-Secret writer with its
/// cache, the Namespace cache, and the leader-elected background loops.
/// Everything stops when `shutdown` turns true.
pub fn start(
    client: &::kube::Client,
    admission: Admission,
    config: &Config,
    args: &KubeArgs,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Admission {
    let _ = (args, engine, metrics);
    let writer = writer::KubeSecretWriter::start(client.clone(), &config.annotation_prefix, shutdown.clone());
    let namespaces = namespaces::NamespaceCache::start(client.clone(), shutdown);
    admission
        .with_writer(Arc::new(writer))
        .with_namespaces(Arc::new(namespaces))
}

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

/// Why a Secret could not be written. Messages carry API status codes and
/// reasons, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the API server refused the managed Secret {name}: {reason}")]
    Refused { name: String, reason: String },
    #[error("the API server could not be reached to write the managed Secret {name}: {reason}")]
    Unreachable { name: String, reason: String },
}

/// Writes the plan's Secret before the Pod is admitted.
#[async_trait]
pub trait SecretWriter: Send + Sync + 'static {
    async fn apply(&self, secret: &ManagedSecret) -> Result<WriteOutcome, WriteError>;

    /// `dry-run` or `kubernetes`, for the start-up log.
    fn kind(&self) -> &'static str;
}

/// Writes nothing and says so.
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRunWriter;

#[async_trait]
impl SecretWriter for DryRunWriter {
    async fn apply(&self, secret: &ManagedSecret) -> Result<WriteOutcome, WriteError> {
        Ok(WriteOutcome::NotWritten(dry_run_warning(secret)))
    }

    fn kind(&self) -> &'static str {
        "dry-run"
    }
}

/// The warning for a Secret that was not written: its name and keys, no values.
pub fn dry_run_warning(secret: &ManagedSecret) -> String {
    let keys: Vec<&str> = secret.data.keys().map(String::as_str).collect();
    format!(
        "dry run: Sesame did not write Secret {}/{} (keys: {})",
        secret.namespace,
        secret.name,
        keys.join(", ")
    )
}
