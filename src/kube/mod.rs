//! The Kubernetes API side: the client, the managed-Secret writer and the
//! Namespace cache (implementations of the admission path's ports),
//! watch-backed caches, the watch of Sesame's own ConfigMap, and
//! (leader-elected) garbage collection and rotation.

mod args;
pub mod certs;
pub mod client;
pub(crate) mod config_map;
pub mod gc;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod namespaces;
pub(crate) mod reflect;
pub mod rotation;
pub mod secret;
pub mod writer;

use std::sync::Arc;

use tokio::sync::watch;

pub(crate) use args::KubeArgs;
pub use args::{CertMode, KubeMode};

use crate::pipeline::SharedEngine;
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// How long start-up waits for the caches' first list.
const CACHE_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a Lease stays valid without renewal (client-go's default).
const LEASE_DURATION: std::time::Duration = std::time::Duration::from_secs(15);

/// What [`start`] built.
pub struct Started {
    /// Writes managed Secrets through the API (the admission path's `SecretWriter`).
    pub writer: Arc<writer::KubeSecretWriter>,
    /// Namespace labels from a watch (the admission path's `NamespaceLabels`).
    pub namespaces: Arc<namespaces::NamespaceCache>,
    /// Whether this replica holds the leader Lease.
    pub leading: watch::Receiver<bool>,
}

/// Starts the Kubernetes side of `serve`: the managed-Secret writer with its
/// cache, the Namespace cache, and the leader-elected background loops, as
/// tasks of `tasks`. Waits (briefly) for the first list of both caches, so
/// that the first reviews see current Secrets and namespace labels. At
/// shutdown the Lease is released before its task ends.
pub async fn start(
    client: &::kube::Client,
    prefix: &str,
    args: &KubeArgs,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    tasks: &Tasks,
) -> Started {
    let (writer, secrets_watch) = writer::KubeSecretWriter::watching(client.clone(), prefix);
    tasks.spawn("watch of managed Secrets", secrets_watch);
    let (namespaces, namespaces_watch) = namespaces::NamespaceCache::watching(client.clone());
    tasks.spawn("watch of Namespaces", namespaces_watch);
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
    let lease_namespace = args.lease_namespace();
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
    let schedule = leader::Schedule::new(LEASE_DURATION, args.gc_interval);
    let (leading_tx, leading) = watch::channel(false);
    tasks.spawn(
        "rotation and garbage collection",
        leader::work(gc, rotator, engine, leading.clone(), schedule),
    );
    tasks.spawn_draining(
        "leader election",
        leader::keep_lease(elector, leading_tx, kube_metrics, schedule, tasks.token()),
    );
    Started {
        writer: Arc::new(writer),
        namespaces: Arc::new(namespaces),
        leading,
    }
}
