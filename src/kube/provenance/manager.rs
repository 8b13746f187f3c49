//! The runner of the provenance key Secret: reads it, creates it or gives
//! it a key with optimistic concurrency (the way the self-managed
//! certificate Secret is agreed), and hands the keys to every part of
//! Sesame through [`Provenance`]. The decisions are `keys`'.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::kube::api::{Patch, PatchParams, PostParams};
use ::kube::{Api, Client};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ring::rand::SecureRandom;
use serde_json::json;

use super::keys::{self, Decision, NEW_KEY_BYTES};
use super::mac::KeyRing;
use super::Provenance;
use crate::kube::client::{api_reason, is_conflict};
use crate::kube::metrics::KubeMetrics;

/// Why the keys could not be read or written. Messages carry API statuses
/// and data key names, never key material.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("provenance key Secret {namespace}/{name}: {reason}")]
    Secret {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("no random bytes for a new provenance key")]
    Random,
}

/// Keeps the provenance key Secret and the shared keys.
pub struct ProvenanceManager {
    secrets: Api<Secret>,
    namespace: String,
    name: String,
    provenance: Provenance,
    metrics: Arc<KubeMetrics>,
    /// What was last reported about entries that are not keys, so that the
    /// periodic check logs a change once.
    reported: Mutex<(Vec<u32>, Vec<String>)>,
}

impl ProvenanceManager {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        provenance: Provenance,
        metrics: Arc<KubeMetrics>,
    ) -> Self {
        Self {
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            provenance,
            metrics,
            reported: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    fn error(&self, reason: String) -> ProvenanceError {
        ProvenanceError::Secret {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason,
        }
    }

    /// One pass: reads the key Secret, creates it or adds a key when needed
    /// (with the resourceVersion read; a lost race re-reads), and makes its
    /// keys the shared ones.
    pub async fn sync(&self) -> Result<KeyRing, ProvenanceError> {
        for _ in 0..3 {
            let secret = self
                .secrets
                .get_opt(&self.name)
                .await
                .map_err(|e| self.error(api_reason(&e)))?;
            let read = secret.as_ref().map(keys::read);
            let written = match (keys::decide(read.as_ref()), &secret, &read) {
                (Decision::Use, _, Some(k)) => match &k.ring {
                    Some(ring) => {
                        self.adopt(ring, &k.ignored);
                        return Ok(ring.clone());
                    }
                    None => continue,
                },
                (Decision::Create, _, _) => {
                    // The keys in use, if the Secret went away: every
                    // managed Secret signed with them keeps verifying.
                    let ring = match self.provenance.current() {
                        Some(r) => (*r).clone(),
                        None => new_ring(1)?,
                    };
                    self.create(&ring).await.map(|()| (ring, "created"))
                }
                (Decision::AddKey { id }, Some(current), _) => {
                    let ring = new_ring(id)?;
                    self.add_key(current, &ring)
                        .await
                        .map(|()| (ring, "given a new key"))
                }
                _ => continue,
            };
            match written {
                Ok((ring, what)) => {
                    tracing::info!(secret = %format!("{}/{}", self.namespace, self.name), what, "provenance key Secret written");
                    self.adopt(&ring, &[]);
                    return Ok(ring);
                }
                Err(e) if is_conflict(&e) => {
                    tracing::debug!(secret = %self.name, "another replica wrote the provenance key Secret first; reading it again");
                }
                Err(e) => return Err(self.error(api_reason(&e))),
            }
        }
        Err(self.error("kept changing while being written (three conflicts in a row)".into()))
    }

    /// Makes `ring` the shared keys; logs what changed (ids only).
    fn adopt(&self, ring: &KeyRing, ignored: &[String]) {
        self.provenance.set(ring.clone());
        self.metrics.set_provenance_keys(ring.ids().len());
        let ids = ring.ids();
        let Ok(mut reported) = self.reported.lock() else {
            return;
        };
        if reported.0 != ids {
            tracing::info!(keys = ?ids, signing = ring.signing_id(), "provenance keys in use");
        }
        if reported.1 != ignored {
            for entry in ignored {
                tracing::warn!(secret = %self.name, entry = %entry, "provenance key Secret: entry ignored");
            }
        }
        *reported = (ids, ignored.to_vec());
    }

    async fn create(&self, ring: &KeyRing) -> Result<(), ::kube::Error> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                // Not `app.kubernetes.io/managed-by: sesame`: that label
                // marks managed Secrets, which garbage collection may delete.
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".to_owned(), "sesame".to_owned()),
                    (
                        "app.kubernetes.io/component".to_owned(),
                        "provenance-key".to_owned(),
                    ),
                ])),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(keys::data(ring)),
            ..Default::default()
        };
        self.secrets
            .create(&PostParams::default(), &secret)
            .await
            .map(drop)
    }

    /// Adds the new key of `ring` (its only one) with a merge patch that
    /// carries the resourceVersion read: refused with 409 if anyone wrote
    /// in between.
    async fn add_key(&self, current: &Secret, ring: &KeyRing) -> Result<(), ::kube::Error> {
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "data": keys::data(ring),
        });
        self.secrets
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    }

    /// Start-up: one pass, bounded by `deadline`. On failure admission goes
    /// on without a MAC and the leader's loops wait; [`Self::run`] retries.
    pub async fn bootstrap(&self, deadline: Duration) {
        match tokio::time::timeout(deadline, self.sync()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.unavailable(&e.to_string()),
            Err(_) => self.unavailable(&format!("no answer within {}s", deadline.as_secs())),
        }
    }

    fn unavailable(&self, reason: &str) {
        self.metrics.set_provenance_keys(0);
        tracing::warn!(
            %reason,
            "provenance keys not available: managed Secrets are written without a MAC, and rotation and garbage collection wait until the keys can be read"
        );
    }

    /// Re-reads the key Secret every `interval`, so that a key the operator
    /// adds is used everywhere, and a deleted Secret is written again. Runs
    /// until dropped.
    pub async fn run(self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.sync().await {
                if self.provenance.current().is_none() {
                    self.unavailable(&e.to_string());
                } else {
                    tracing::warn!(error = %e, "provenance key check failed; keeping the keys in use");
                }
            }
        }
    }
}

/// A ring of one new random key with id `id`.
fn new_ring(id: u32) -> Result<KeyRing, ProvenanceError> {
    let mut bytes = vec![0u8; NEW_KEY_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ProvenanceError::Random)?;
    KeyRing::new(vec![(id, bytes)]).map_err(|_| ProvenanceError::Random)
}
