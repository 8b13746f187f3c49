//! The `kubernetes` store: reads Secrets through the API with Sesame's own
//! service account. A locator path is `namespace/name` (the pipeline
//! qualifies a bare `name` with the Pod's namespace; the policy decides
//! which namespaces a Pod may read). The Secret's data keys are properties.
//!
//! RBAC: `get` on `secrets` in every namespace Pods may read from (see
//! deploy/base/rbac.yaml).

use std::sync::Arc;

use ::kube::{Api, Client};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;

use super::common::error_code;
use super::{SecretData, SecretLocator, SecretValue, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::validate::{is_dns_label, is_dns_subdomain};

/// `stores[].kubernetes`: Secrets read with Sesame's own service account.
/// A reference path is `name` (a Secret in the Pod's namespace) or
/// `namespace/name`; the pipeline turns `name` into `<Pod namespace>/name`
/// before the policy sees it, and a rule only grants another namespace when
/// its path names that namespace literally.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesStoreConfig {}

pub struct KubernetesStore {
    client: Option<Client>,
}

impl KubernetesStore {
    /// `client` is `None` when `serve` runs without a Kubernetes API (or in
    /// `mutate`): every fetch then fails as unreachable, and the store is
    /// not ready.
    pub fn new(client: Option<Client>) -> Self {
        Self { client }
    }

    async fn fetch_one(&self, client: &Client, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        if locator.version.is_some() {
            return Err(StoreError::InvalidRequest(
                "Kubernetes Secrets have no versions; drop version=".into(),
            ));
        }
        let (namespace, name) = split_path(&locator.path)?;
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| store_error(&e))?
            .ok_or(StoreError::NotFound)?;
        let mut properties = std::collections::BTreeMap::new();
        for (k, v) in secret.data.into_iter().flatten() {
            properties.insert(k, SecretValue::new(v.0));
        }
        // `stringData` is write-only: the API server never returns it.
        Ok(SecretData::Properties(properties))
    }
}

/// `namespace/name`, both valid Kubernetes names.
pub(crate) fn split_path(path: &str) -> Result<(&str, &str), StoreError> {
    let (namespace, name) = path.split_once('/').ok_or_else(|| {
        StoreError::InvalidRequest("a Kubernetes Secret path is <name> or <namespace>/<name>".into())
    })?;
    if !is_dns_label(namespace) {
        return Err(StoreError::InvalidRequest(format!(
            "\"{namespace}\" is not a namespace name"
        )));
    }
    if !is_dns_subdomain(name) || name.contains('/') {
        return Err(StoreError::InvalidRequest(format!(
            "\"{name}\" is not a Secret name"
        )));
    }
    Ok((namespace, name))
}

/// The `reason`s of a Kubernetes `Status` (`metav1.StatusReason`) that a
/// message may name.
const STATUS_REASONS: &[&str] = &[
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "AlreadyExists",
    "Conflict",
    "Gone",
    "Invalid",
    "ServerTimeout",
    "Timeout",
    "TooManyRequests",
    "MethodNotAllowed",
    "NotAcceptable",
    "RequestEntityTooLarge",
    "UnsupportedMediaType",
    "InternalError",
    "Expired",
    "ServiceUnavailable",
];

/// Maps an API failure to a store failure; messages carry the status and
/// its reason, not the Status message (which names the Secret) nor the
/// text of a transport or credential failure (an exec credential plugin's
/// output, for one).
pub fn store_error(e: &::kube::Error) -> StoreError {
    match e {
        ::kube::Error::Api(s) => {
            let status = format!("{} {}", s.code, error_code(Some(&s.reason), STATUS_REASONS));
            let status = status.trim_end().to_owned();
            match s.code {
                404 => StoreError::NotFound,
                401 | 403 => StoreError::Unauthorized(status),
                429 => StoreError::Throttled,
                code if code >= 500 => StoreError::Unreachable(status),
                _ => StoreError::InvalidResponse(status),
            }
        }
        ::kube::Error::SerdeError(_) => StoreError::InvalidResponse("the Secret could not be read".into()),
        _ => StoreError::Unreachable("the request to the API server failed".into()),
    }
}

#[async_trait]
impl Store for KubernetesStore {
    fn provider(&self) -> &'static str {
        "kubernetes"
    }

    fn namespaced(&self) -> bool {
        true
    }

    async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        match &self.client {
            Some(client) => self.fetch_one(client, locator).await,
            None => Err(StoreError::Unreachable("no Kubernetes API configured".into())),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        match &self.client {
            Some(_) => Ok(()),
            None => Err(StoreError::Unreachable("no Kubernetes API configured".into())),
        }
    }
}

/// Builds the store.
pub fn build(client: Option<&Client>) -> Arc<dyn Store> {
    Arc::new(KubernetesStore::new(client.cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_namespace_and_name() {
        assert_eq!(split_path("team-a/db-creds").unwrap(), ("team-a", "db-creds"));
        assert_eq!(
            split_path("team-a/tls.example.com").unwrap(),
            ("team-a", "tls.example.com")
        );
        for bad in ["db", "Team/db", "team-a/db/extra", "team-a/DB", "-a/db"] {
            assert!(
                matches!(split_path(bad), Err(StoreError::InvalidRequest(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn without_a_cluster_every_fetch_is_unreachable() {
        let store = KubernetesStore::new(None);
        let answers = store
            .fetch(
                &[SecretLocator::new("a/b", None)],
                &crate::stores::RequestLimit::default(),
            )
            .await;
        assert!(matches!(answers[0], Err(StoreError::Unreachable(_))));
        assert!(store.check().await.is_err());
        assert!(store.namespaced());
    }
}
