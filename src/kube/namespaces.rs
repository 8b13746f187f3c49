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
        let (store, watch) = super::reflect::reflector(api, watcher::Config::default(), "namespaces");
        (Self { store }, watch)
    }

    /// Waits until the first list has arrived (or the watch stopped).
    pub async fn wait_until_ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }
}

impl NamespaceLabels for NamespaceCache {
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        let ns = self.store.get(&ObjectRef::new(namespace))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
    }
}
