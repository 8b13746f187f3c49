//! The Kubernetes API side: the `SecretWriter` seam with its dry-run and
//! API implementations, the client, watch-backed caches of managed Secrets
//! and Namespaces, and (leader-elected) garbage collection and rotation.

pub mod certs;
pub mod client;
pub mod gc;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod namespaces;
pub mod reflect;
pub mod rotation;
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

/// How long start-up waits for the caches' first list.
const CACHE_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a Lease stays valid without renewal (client-go's default).
const LEASE_DURATION: std::time::Duration = std::time::Duration::from_secs(15);

/// The namespace Sesame runs in: `--namespace` (the Deployment sets it from
/// the downward API), else the service-account mount; `default` outside a
/// cluster.
pub fn own_namespace(args: &KubeArgs) -> String {
    if let Some(ns) = args.namespace.as_deref().filter(|s| !s.is_empty()) {
        return ns.to_owned();
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// Labels of a namespace, for `namespaceSelector` policy rules.
pub trait NamespaceLabels: Send + Sync + 'static {
    /// `None` when the namespace is not known (yet).
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
}

/// What [`start`] hands back.
pub struct Started {
    pub admission: Admission,
    /// Ends once the leader Lease is released at shutdown.
    pub task: tokio::task::JoinHandle<()>,
    /// Whether this replica holds the leader Lease.
    pub leading: watch::Receiver<bool>,
}

/// Starts the Kubernetes side of `serve`: the managed-Secret writer with its
/// cache, the Namespace cache, and the leader-elected background loops.
/// Waits (briefly) for the first list of both caches, so that the first
/// reviews see current Secrets and namespace labels. Everything stops when
/// `shutdown` turns true.
pub async fn start(
    client: &::kube::Client,
    admission: Admission,
    config: &Config,
    args: &KubeArgs,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Started {
    let writer = writer::KubeSecretWriter::start(client.clone(), &config.annotation_prefix, shutdown.clone());
    let namespaces = namespaces::NamespaceCache::start(client.clone(), shutdown.clone());
    let synced = tokio::time::timeout(CACHE_SYNC_TIMEOUT, async {
        let _ = writer.cache().wait_until_ready().await;
        namespaces.wait_until_ready().await;
    })
    .await;
    match synced {
        Ok(()) => tracing::info!("managed Secret and Namespace caches synced"),
        Err(_) => tracing::warn!(
            "caches not synced within {}s; serving anyway: Secrets are read before writing, and namespaceSelector rules match nothing until Namespaces are known",
            CACHE_SYNC_TIMEOUT.as_secs()
        ),
    }
    let kube_metrics = Arc::new(metrics::KubeMetrics::register(&metrics));
    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| own_namespace(args));
    let identity = leader::identity();
    tracing::info!(lease = %format!("{lease_namespace}/{}", args.lease_name), %identity, "leader election for garbage collection and rotation");
    let elector = lease::LeaseElector::new(
        client.clone(),
        &lease_namespace,
        &args.lease_name,
        &identity,
        LEASE_DURATION,
    );
    let gc = gc::GarbageCollector {
        client: client.clone(),
        cache: writer.cache().clone(),
        grace: args.gc_grace,
        page_size: 500,
        metrics: kube_metrics.clone(),
    };
    let rotator = rotation::Rotator {
        client: client.clone(),
        cache: writer.cache().clone(),
        engine: engine.clone(),
        metrics: kube_metrics.clone(),
    };
    let (task, leading) = leader::spawn(
        elector,
        gc,
        rotator,
        engine,
        kube_metrics,
        leader::Schedule::new(LEASE_DURATION, args.gc_interval),
        shutdown,
    );
    let admission = admission
        .with_writer(Arc::new(writer))
        .with_namespaces(Arc::new(namespaces));
    Started {
        admission,
        task,
        leading,
    }
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
