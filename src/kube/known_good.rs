//! The last known good copy: the admission path's `LastKnownGood` port over
//! the watch-backed cache of managed Secrets. Only a Secret whose provenance
//! MAC verifies is handed out: a tenant can create a Secret of any name,
//! with Sesame's label and annotations, in its own namespace.

use std::time::Duration;

use ::kube::runtime::events::{Event, EventType, Recorder, Reporter};
use ::kube::runtime::reflector::{ObjectRef, Store};
use ::kube::Client;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};

use super::provenance::Provenance;
use super::secret::{verify, SecretAnnotations};
use crate::admission::{KnownSecret, LastKnownGood};

/// Managed Secrets as the cache holds them, verified on every lookup.
pub struct KnownGoodSecrets {
    cache: Store<Secret>,
    keys: SecretAnnotations,
    provenance: Provenance,
    events: Recorder,
}

/// How long the admission path waits for its Event to be recorded.
const EVENT_TIMEOUT: Duration = Duration::from_millis(500);

impl KnownGoodSecrets {
    /// Over the writer's cache; `prefix` is the annotation prefix.
    pub fn new(client: Client, cache: Store<Secret>, prefix: &str, provenance: Provenance) -> Self {
        let reporter = Reporter {
            controller: "sesame".into(),
            instance: Some(super::lease::identity()),
        };
        Self {
            cache,
            keys: SecretAnnotations::new(prefix),
            provenance,
            events: Recorder::new(client, reporter),
        }
    }
}

#[async_trait]
impl LastKnownGood for KnownGoodSecrets {
    fn lookup(&self, namespace: &str, name: &str) -> Option<KnownSecret> {
        let secret = self.cache.get(&ObjectRef::new(name).within(namespace))?;
        known(&secret, &self.keys, &self.provenance)
    }

    async fn record_use(&self, namespace: &str, secret: &str, stores: &[String], refreshed_at: &str) {
        let uid = self
            .cache
            .get(&ObjectRef::new(secret).within(namespace))
            .and_then(|s| s.metadata.uid.clone());
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(secret.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid,
            ..Default::default()
        };
        let names: Vec<String> = stores.iter().map(|s| format!("\"{s}\"")).collect();
        let event = Event {
            type_: EventType::Warning,
            reason: "AdmittedFromLastKnownGood".into(),
            note: Some(format!(
                "store {} unavailable: a Pod was admitted against this Secret, its values as written at {refreshed_at}",
                names.join(", ")
            )),
            action: "Admit".into(),
            secondary: None,
        };
        match tokio::time::timeout(EVENT_TIMEOUT, self.events.publish(&event, &reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(namespace = %namespace, secret = %secret, error = %e, "could not record the Event")
            }
            Err(_) => {
                tracing::warn!(namespace = %namespace, secret = %secret, "recording the Event took too long; skipped")
            }
        }
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
    let keys = secret.data.as_ref()?.keys().cloned().collect();
    Some(KnownSecret {
        service_account: recorded.service_account,
        references: recorded.references,
        sources: recorded.sources,
        keys,
        refreshed_at: recorded.refreshed_at,
    })
}
