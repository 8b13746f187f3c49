//! The last known good copy: the admission path's `LastKnownGood` port over
//! the watch-backed cache of managed Secrets. Only a Secret whose provenance
//! MAC verifies is handed out: a tenant can create a Secret of any name,
//! with Sesame's label and annotations, in its own namespace.

use std::collections::BTreeMap;

use ::kube::runtime::reflector::{ObjectRef, Store};
use k8s_openapi::api::core::v1::Secret;

use super::provenance::Provenance;
use super::secret::{verify, SecretAnnotations};
use crate::admission::{KnownSecret, LastKnownGood};
use crate::stores::SecretValue;

/// Managed Secrets as the cache holds them, verified on every lookup.
pub struct KnownGoodSecrets {
    cache: Store<Secret>,
    keys: SecretAnnotations,
    provenance: Provenance,
}

impl KnownGoodSecrets {
    /// Over the writer's cache; `prefix` is the annotation prefix.
    pub fn new(cache: Store<Secret>, prefix: &str, provenance: Provenance) -> Self {
        Self {
            cache,
            keys: SecretAnnotations::new(prefix),
            provenance,
        }
    }
}

impl LastKnownGood for KnownGoodSecrets {
    fn lookup(&self, namespace: &str, name: &str) -> Option<KnownSecret> {
        let secret = self.cache.get(&ObjectRef::new(name).within(namespace))?;
        known(&secret, &self.keys, &self.provenance)
    }
}

/// What a stored Secret holds, when it is Sesame's own and not being deleted.
fn known(secret: &Secret, keys: &SecretAnnotations, provenance: &Provenance) -> Option<KnownSecret> {
    if secret.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ring = provenance.current()?;
    let (recorded, _) = match verify(secret, keys, &ring) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(
                namespace = secret.metadata.namespace.as_deref().unwrap_or(""),
                secret = secret.metadata.name.as_deref().unwrap_or(""),
                reason = e.label(),
                "a Secret named like a managed Secret is not Sesame's; not used as the last known good copy"
            );
            return None;
        }
    };
    let data: BTreeMap<String, SecretValue> = secret
        .data
        .as_ref()?
        .iter()
        .map(|(k, v)| (k.clone(), SecretValue::new(v.0.clone())))
        .collect();
    Some(KnownSecret {
        service_account: recorded.service_account,
        references: recorded.references,
        sources: recorded.sources,
        data,
        refreshed_at: recorded.refreshed_at,
    })
}
