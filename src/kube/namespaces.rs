//! Namespace labels for the policy, from a metadata-only watch of
//! Namespaces: no API call per review.

use std::collections::BTreeMap;
use std::future::Future;

use ::kube::core::PartialObjectMeta;
use ::kube::runtime::reflector::{ObjectRef, Store};
use ::kube::runtime::watcher;
use ::kube::{Api, Client};
use k8s_openapi::api::core::v1::Namespace;

use crate::admission::NamespaceLabels;

/// The watch-backed cache of Namespace metadata.
#[derive(Clone)]
pub struct NamespaceCache {
    store: Store<PartialObjectMeta<Namespace>>,
}

impl NamespaceCache {
    /// The cache, and the future that keeps it current, for the caller to run.
    pub fn watching(client: Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let (store, watch) =
            super::reflect::reflector(api, watcher::Config::default(), "namespaces", keep_labels);
        (Self { store }, watch)
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

impl NamespaceLabels for NamespaceCache {
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        let ns = self.store.get(&ObjectRef::new(namespace))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
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
