//! Namespace labels for the policy, from a metadata-only watch of
//! Namespaces: no API call per review.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use ::kube::core::PartialObjectMeta;
use ::kube::runtime::reflector::{ObjectRef, Store};
use ::kube::runtime::watcher;
use ::kube::{Api, Client};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Namespace;
use tokio::sync::Semaphore;

use crate::admission::NamespaceLabels;

/// Namespace reads in flight at most, for namespaces the cache has not
/// seen: a flood of reviews naming made-up namespaces costs the API server
/// this many GETs at a time, and the rest are refused at once.
const MAX_READS: usize = 4;

/// The watch-backed cache of Namespace metadata.
#[derive(Clone)]
pub struct NamespaceCache {
    store: Store<PartialObjectMeta<Namespace>>,
    api: Api<PartialObjectMeta<Namespace>>,
    reads: Arc<Semaphore>,
}

impl NamespaceCache {
    /// The cache, and the future that keeps it current, for the caller to run.
    pub fn watching(client: Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let (store, watch) =
            super::reflect::reflector(api.clone(), watcher::Config::default(), "namespaces", keep_labels);
        let reads = Arc::new(Semaphore::new(MAX_READS));
        (Self { store, api, reads }, watch)
    }

    /// Waits until the first list has arrived (or the watch stopped).
    pub async fn wait_until_ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }
}

/// The policy reads a Namespace's name and labels only; the rest (e.g. a
/// `last-applied-configuration` annotation of several KiB) is not kept.
fn keep_labels(ns: &mut PartialObjectMeta<Namespace>) {
    let meta = &mut ns.metadata;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

#[async_trait]
impl NamespaceLabels for NamespaceCache {
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        let ns = self.store.get(&ObjectRef::new(namespace))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
    }

    /// A miss is read from the API (metadata only): a namespace created
    /// with its workload in one `kubectl apply` is often reviewed before
    /// the watch delivers it. What is read is not cached; the watch
    /// brings it. A namespace being deleted counts as unknown, as the
    /// API server itself refuses new Pods there.
    async fn labels_now(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        if let Some(labels) = self.labels(namespace) {
            return Some(labels);
        }
        if namespace.is_empty() || namespace.len() > 63 {
            return None;
        }
        let _permit = self.reads.try_acquire().ok()?;
        match self.api.get_metadata_opt(namespace).await {
            Ok(Some(ns)) if ns.metadata.deletion_timestamp.is_none() => {
                tracing::debug!(namespace, "namespace not in the cache yet: read from the API");
                Some(ns.metadata.labels.unwrap_or_default())
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(namespace, error = %e, "namespace not in the cache and not readable");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_a_namespaces_name_and_labels_only() {
        let mut ns: PartialObjectMeta<Namespace> = serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "team-a", "resourceVersion": "7",
                "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4096)},
                "finalizers": ["kubernetes"],
            }
        }))
        .unwrap();
        keep_labels(&mut ns);
        assert_eq!(ns.metadata.name.as_deref(), Some("team-a"));
        assert_eq!(ns.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(ns.metadata.labels.unwrap()["team"], "a");
        assert!(ns.metadata.annotations.is_none() && ns.metadata.finalizers.is_none());
    }
}
