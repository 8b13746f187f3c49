//! The Kubernetes API side: the client, the managed-Secret writer and the
//! Namespace cache (implementations of the admission path's ports),
//! the verified managed Secrets as last known good copies, watch-backed caches, the watch of Sesame's own ConfigMap, the provenance
//! keys that tell Sesame's managed Secrets from look-alikes, and
//! (leader-elected) garbage collection, rotation and the restarts workloads
//! asked for.

mod args;
pub mod certs;
pub mod client;
pub(crate) mod config_map;
pub mod digest;
pub mod gc;
pub mod known_good;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod namespaces;
pub mod provenance;
pub(crate) mod reflect;
pub(crate) mod restart;
pub mod rotation;
pub mod secret;
pub mod writer;

use std::sync::Arc;

use tokio::sync::watch;

pub(crate) use args::KubeArgs;
pub use args::{CertMode, KubeMode, RestartLimits};

use crate::pipeline::SharedEngine;
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// How long start-up waits for the caches' first list.
const CACHE_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a Lease stays valid without renewal (client-go's default).
const LEASE_DURATION: std::time::Duration = std::time::Duration::from_secs(15);

/// How often every replica re-reads the provenance key Secret: a key the
/// operator adds is used everywhere within this time.
const PROVENANCE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// What [`start`] built.
pub struct Started {
    /// Writes managed Secrets through the API (the admission path's `SecretWriter`).
    pub writer: Arc<writer::KubeSecretWriter>,
    /// Namespace labels from a watch (the admission path's `NamespaceLabels`).
    pub namespaces: Arc<namespaces::NamespaceCache>,
    /// The verified managed Secrets (the admission path's `LastKnownGood`).
    pub known_good: Arc<known_good::KnownGoodSecrets>,
    /// Whether this replica holds the leader Lease.
    pub leading: watch::Receiver<bool>,
    /// The provenance keys (empty while the key Secret cannot be read).
    pub provenance: provenance::Provenance,
}

/// Starts the Kubernetes side of `serve`: the provenance keys, the
/// managed-Secret writer with its cache, the Namespace cache, and the
/// leader-elected background loops, as tasks of `tasks`. Waits (briefly)
/// for the keys and the first list of both caches, so that the first
/// reviews sign their Secrets and see current Secrets and namespace labels.
/// At shutdown the Lease is released before its task ends.
pub async fn start(
    client: &::kube::Client,
    prefix: &str,
    args: &KubeArgs,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    tasks: &Tasks,
) -> Started {
    let kube_metrics = Arc::new(metrics::KubeMetrics::register(&metrics));
    let provenance = provenance::Provenance::empty();
    let own_namespace = args.own_namespace();
    let keys = provenance::ProvenanceManager::new(
        client.clone(),
        &own_namespace,
        &args.provenance_secret,
        provenance.clone(),
        kube_metrics.clone(),
    );
    let (writer, secrets_watch) =
        writer::KubeSecretWriter::watching(client.clone(), prefix, provenance.clone());
    tasks.spawn("watch of managed Secrets", secrets_watch);
    let (namespaces, namespaces_watch) = namespaces::NamespaceCache::watching(client.clone());
    tasks.spawn("watch of Namespaces", namespaces_watch);
    // The keys and the caches at once: neither waits for the other.
    let ((), synced) = tokio::join!(
        keys.bootstrap(CACHE_SYNC_TIMEOUT),
        tokio::time::timeout(CACHE_SYNC_TIMEOUT, async {
            let _ = writer.cache().wait_until_ready().await;
            namespaces.wait_until_ready().await;
        })
    );
    tasks.spawn(
        "check of the provenance keys",
        keys.run(PROVENANCE_CHECK_INTERVAL),
    );
    match synced {
        Ok(()) => tracing::info!("managed Secret and Namespace caches synced"),
        Err(_) => tracing::warn!(
            "caches not synced within {}s; serving anyway: Secrets are read before writing, and namespaceSelector rules match nothing until Namespaces are known",
            CACHE_SYNC_TIMEOUT.as_secs()
        ),
    }
    let lease_namespace = args.lease_namespace();
    let identity = lease::identity();
    tracing::info!(lease = %format!("{lease_namespace}/{}", args.lease_name), %identity, "leader election for garbage collection and rotation");
    let elector = lease::LeaseElector::new(
        client.clone(),
        &lease_namespace,
        &args.lease_name,
        &identity,
        LEASE_DURATION,
    );
    let namespaces = Arc::new(namespaces);
    let gc = gc::GarbageCollector::new(
        client.clone(),
        writer.cache().clone(),
        provenance.clone(),
        args.gc_grace,
        500,
        kube_metrics.clone(),
    );
    let rotator = rotation::Rotator::new(
        client.clone(),
        writer.cache().clone(),
        engine.clone(),
        namespaces.clone(),
        provenance.clone(),
        kube_metrics.clone(),
    )
    .with_restart_limits(args.restart_limits())
    .with_write_rate(args.rotation_writes_per_second);
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
    let known_good = Arc::new(known_good::KnownGoodSecrets::new(
        client.clone(),
        writer.cache().clone(),
        prefix,
        provenance.clone(),
    ));
    Started {
        known_good,
        writer: Arc::new(writer),
        namespaces,
        leading,
        provenance,
    }
}
