//! The runner of the self-managed certificates: reads and writes the
//! certificate Secret with optimistic concurrency, publishes the caBundle
//! of the webhook configuration, and swaps the served certificate. The
//! decisions are the state machine's (`state`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Patch, PatchParams, PostParams};
use ::kube::{Api, Client};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::metrics::CertMetrics;
use super::state::{carry_out, decide, rfc3339, Decision, Material, Policy, CHANGED_AT};
use crate::certs::{CertError, CertResolver, TlsError};
use crate::kube::client::{api_reason, is_conflict};
use crate::telemetry::Metrics;

/// Field manager of the caBundle writes: Sesame owns that field only, so
/// re-applying the manifests (kubectl, Helm) never conflicts with it.
pub const FIELD_MANAGER: &str = "sesame-certificates";

/// Why the certificates could not be read, written or published. Messages
/// carry API statuses, never certificate or key material.
#[derive(Debug, thiserror::Error)]
pub enum CertSyncError {
    #[error("certificate Secret {namespace}/{name}: {reason}")]
    Secret {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("caBundle of MutatingWebhookConfiguration {name}: {reason}")]
    Webhook { name: String, reason: String },
    #[error("certificate Secret {namespace}/{name} holds no usable certificate yet")]
    NotReady { namespace: String, name: String },
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error("serving certificate: {0}")]
    Serving(#[from] TlsError),
}

/// The outcome of one pass over the Secret.
#[derive(Debug, Clone)]
pub struct Synced {
    pub material: Material,
    pub decision: Decision,
    /// Whether this replica wrote the Secret.
    pub wrote: bool,
}

/// Keeps the certificate Secret and the webhook's caBundle.
pub struct CertManager {
    secrets: Api<Secret>,
    webhooks: Api<MutatingWebhookConfiguration>,
    validating: Api<ValidatingWebhookConfiguration>,
    namespace: String,
    secret_name: String,
    webhook_name: String,
    policy: Policy,
    metrics: CertMetrics,
}

impl CertManager {
    pub fn new(
        client: Client,
        namespace: &str,
        secret_name: &str,
        webhook_name: &str,
        policy: Policy,
        metrics: &Metrics,
    ) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), namespace),
            webhooks: Api::all(client.clone()),
            validating: Api::all(client),
            namespace: namespace.to_owned(),
            secret_name: secret_name.to_owned(),
            webhook_name: webhook_name.to_owned(),
            policy,
            metrics: CertMetrics::register(metrics),
        }
    }

    fn secret_error(&self, reason: String) -> CertSyncError {
        CertSyncError::Secret {
            namespace: self.namespace.clone(),
            name: self.secret_name.clone(),
            reason,
        }
    }

    fn webhook_error(&self, reason: String) -> CertSyncError {
        CertSyncError::Webhook {
            name: self.webhook_name.clone(),
            reason,
        }
    }

    /// One pass: reads the Secret, decides, and (when `may_write`) writes
    /// the result with the resourceVersion read. A lost race (409) re-reads
    /// and takes the winner's certificate. `bundle_published` says whether
    /// the caBundle already holds the Secret's CAs: the switch to a new CA
    /// waits for it.
    pub async fn sync(&self, may_write: bool, bundle_published: bool) -> Result<Synced, CertSyncError> {
        for _ in 0..3 {
            let secret = self
                .secrets
                .get_opt(&self.secret_name)
                .await
                .map_err(|e| self.secret_error(api_reason(&e)))?;
            let material = secret.as_ref().and_then(Material::from_secret);
            let now = OffsetDateTime::now_utc();
            let decision = decide(material.as_ref(), &self.policy, now);
            let blocked = decision == Decision::SwitchToNewCa && !bundle_published;
            if !decision.writes() || !may_write || blocked {
                let material = material.ok_or_else(|| CertSyncError::NotReady {
                    namespace: self.namespace.clone(),
                    name: self.secret_name.clone(),
                })?;
                return Ok(Synced {
                    material,
                    decision,
                    wrote: false,
                });
            }
            let Some(next) = carry_out(&decision, material.as_ref(), &self.policy, now)? else {
                continue;
            };
            let written = match &secret {
                None => self.create(&next).await,
                Some(s) => self.update(s, &next).await,
            };
            match written {
                Ok(()) => {
                    match &decision {
                        Decision::Create { reason } | Decision::RenewServing { reason } => {
                            tracing::info!(secret = %self.secret_name, change = decision.label(), %reason, "certificate Secret written")
                        }
                        _ => {
                            tracing::info!(secret = %self.secret_name, change = decision.label(), "certificate Secret written")
                        }
                    }
                    self.metrics.changed(&decision);
                    return Ok(Synced {
                        material: next,
                        decision,
                        wrote: true,
                    });
                }
                Err(e) if is_conflict(&e) => {
                    tracing::debug!(secret = %self.secret_name, "another replica wrote the certificate Secret first; reading it again");
                }
                Err(e) => return Err(self.secret_error(api_reason(&e))),
            }
        }
        Err(self.secret_error("kept changing while being written (three conflicts in a row)".into()))
    }

    async fn create(&self, material: &Material) -> Result<(), ::kube::Error> {
        let data = material
            .data()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.secret_name.clone()),
                namespace: Some(self.namespace.clone()),
                // Not `app.kubernetes.io/managed-by: sesame`: that label marks
                // managed Secrets, which garbage collection may delete.
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".to_owned(), "sesame".to_owned()),
                    (
                        "app.kubernetes.io/component".to_owned(),
                        "webhook-certificates".to_owned(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([(CHANGED_AT.to_owned(), rfc3339(material))])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Default::default()
        };
        self.secrets
            .create(&PostParams::default(), &secret)
            .await
            .map(drop)
    }

    /// A merge patch that carries the resourceVersion read: the API server
    /// refuses it with 409 if anyone wrote in between.
    async fn update(&self, current: &Secret, material: &Material) -> Result<(), ::kube::Error> {
        let patch = json!({
            "metadata": {
                "resourceVersion": current.metadata.resource_version,
                "annotations": {CHANGED_AT: rfc3339(material)},
            },
            "data": material.data(),
        });
        self.secrets
            .patch(&self.secret_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    }

    /// Makes every webhook of the configuration trust exactly `bundle` (PEM),
    /// and those of the ValidatingWebhookConfiguration of the same name
    /// (the workload warnings) when it is installed: `Ok(true)` when it
    /// wrote, `Ok(false)` when both were already so. Each write is a
    /// server-side apply of the caBundle fields alone.
    pub async fn publish(&self, bundle: &str) -> Result<bool, CertSyncError> {
        let mutating = self
            .webhooks
            .get(&self.webhook_name)
            .await
            .map_err(|e| self.webhook_error(api_reason(&e)))?;
        let hooks = bundles(
            mutating
                .webhooks
                .iter()
                .flatten()
                .map(|w| (&w.name, &w.client_config.ca_bundle)),
        );
        if hooks.is_empty() {
            return Err(self.webhook_error("it has no webhooks".into()));
        }
        let mut wrote = self
            .apply_bundle(&self.webhooks, "MutatingWebhookConfiguration", &hooks, bundle)
            .await?;
        // Optional: a 404 means the workload warnings are not installed.
        match self.validating.get_opt(&self.webhook_name).await {
            Ok(Some(validating)) => {
                let hooks = bundles(
                    validating
                        .webhooks
                        .iter()
                        .flatten()
                        .map(|w| (&w.name, &w.client_config.ca_bundle)),
                );
                wrote |= self
                    .apply_bundle(&self.validating, "ValidatingWebhookConfiguration", &hooks, bundle)
                    .await?;
            }
            Ok(None) => {}
            // Without the RBAC for it (an older install), the Pod path still works.
            Err(e) => tracing::debug!(error = %api_reason(&e), "ValidatingWebhookConfiguration not readable"),
        }
        Ok(wrote)
    }

    /// Server-side applies `bundle` to the webhooks `hooks` (name, current
    /// caBundle) of the configuration of `kind`, unless all have it.
    async fn apply_bundle<K>(
        &self,
        api: &Api<K>,
        kind: &str,
        hooks: &[(String, Option<Vec<u8>>)],
        bundle: &str,
    ) -> Result<bool, CertSyncError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        if hooks.iter().all(|(_, b)| b.as_deref() == Some(bundle.as_bytes())) {
            return Ok(false);
        }
        let encoded = ByteString(bundle.as_bytes().to_vec());
        let entries: Vec<serde_json::Value> = hooks
            .iter()
            .map(|(name, _)| json!({"name": name, "clientConfig": {"caBundle": encoded}}))
            .collect();
        let apply = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": self.webhook_name},
            "webhooks": entries,
        });
        api.patch(
            &self.webhook_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&apply),
        )
        .await
        .map_err(|e| self.webhook_error(format!("{kind}: {}", api_reason(&e))))?;
        tracing::info!(webhook = %self.webhook_name, kind, webhooks = hooks.len(), "caBundle written");
        Ok(true)
    }

    /// Start-up, on every replica: creates or repairs the Secret if needed
    /// (whoever comes first; the others read the winner's), publishes the
    /// caBundle, and returns the certificate to serve. Retries transient
    /// failures for up to `deadline`.
    pub async fn bootstrap(&self, deadline: Duration) -> Result<(Material, CertResolver), CertSyncError> {
        let started = tokio::time::Instant::now();
        let synced = loop {
            match self.sync(true, false).await {
                Ok(s) => break s,
                Err(e) if started.elapsed() < deadline => {
                    tracing::warn!(error = %e, "self-managed certificate not available yet; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let key = synced.material.certified_key(&self.secret_name)?;
        if let Err(e) = self.publish(&synced.material.trust_bundle()).await {
            tracing::warn!(error = %e, "could not write the caBundle; retrying in the background");
        }
        self.metrics.observe(&synced.material);
        tracing::info!(
            secret = %format!("{}/{}", self.namespace, self.secret_name),
            decision = synced.decision.label(),
            wrote = synced.wrote,
            "serving the self-managed certificate"
        );
        Ok((synced.material, CertResolver::new(key)))
    }

    /// Keeps the certificates, every `interval`: the leader renews and
    /// publishes, every replica serves what the Secret holds. Runs until
    /// dropped; the caller runs it as a task.
    pub async fn run(
        self,
        resolver: Arc<CertResolver>,
        serving: Material,
        mut leading: watch::Receiver<bool>,
        interval: Duration,
    ) {
        let mut fingerprint = serving.serving_fingerprint();
        loop {
            tokio::time::sleep(interval).await;
            let lead = *leading.borrow_and_update();
            if let Err(e) = self.pass(lead, &resolver, &mut fingerprint).await {
                tracing::warn!(error = %e, leading = lead, "certificate check failed; serving the current certificate");
            }
        }
    }

    /// One background pass. The leader first makes the caBundle match the
    /// Secret as read, so that a switch to a new CA only follows a
    /// published bundle; after a write it publishes again.
    async fn pass(
        &self,
        leading: bool,
        resolver: &CertResolver,
        fingerprint: &mut [u8; 32],
    ) -> Result<(), CertSyncError> {
        let mut published = false;
        if leading {
            let before = self
                .secrets
                .get_opt(&self.secret_name)
                .await
                .map_err(|e| self.secret_error(api_reason(&e)))?
                .as_ref()
                .and_then(Material::from_secret);
            if let Some(m) = before {
                match self.publish(&m.trust_bundle()).await {
                    Ok(_) => published = true,
                    Err(e) => tracing::warn!(error = %e, "could not write the caBundle"),
                }
            }
        }
        let synced = self.sync(leading, published).await?;
        if synced.wrote {
            self.publish(&synced.material.trust_bundle()).await?;
        }
        let new_fingerprint = synced.material.serving_fingerprint();
        if new_fingerprint != *fingerprint {
            resolver.set(synced.material.certified_key(&self.secret_name)?);
            *fingerprint = new_fingerprint;
            tracing::info!(secret = %self.secret_name, "serving certificate replaced");
        }
        self.metrics.observe(&synced.material);
        Ok(())
    }
}

/// Each webhook's name and current caBundle.
fn bundles<'a>(
    hooks: impl Iterator<Item = (&'a String, &'a Option<ByteString>)>,
) -> Vec<(String, Option<Vec<u8>>)> {
    hooks
        .map(|(name, bundle)| (name.clone(), bundle.as_ref().map(|b| b.0.clone())))
        .collect()
}
