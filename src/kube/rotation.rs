//! Rotation: the leader re-resolves the references recorded on each managed
//! Secret when its stores' `refreshInterval` has passed, and updates the
//! Secret when a value changed, so that mounted secret volumes pick up the
//! new value. Env vars cannot change in a running Pod: Secrets of Pods that
//! asked for it (`<prefix>/restart-on-rotation: "true"`) get their
//! Deployment, StatefulSet or DaemonSet restarted the way
//! `kubectl rollout restart` does it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Patch, PatchParams};
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::reflector::Store;
use ::kube::{Api, Client};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::metrics::KubeMetrics;
use super::secret::{
    apply_body, merged_owners, now_rfc3339, parse_sources, stored_data_equals, with_new_data, ApplyBody,
    SecretAnnotations, FIELD_MANAGER,
};
use crate::inject::{secret_data, DataError, Fetched, SecretRef};
use crate::pipeline::{Engine, SharedEngine};
use crate::stores::{StoreRequest, WorkloadIdentity};

/// The annotation `kubectl rollout restart` sets on the Pod template.
pub(crate) const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// When the Secret's values were last written or confirmed: the
/// `refreshed-at` annotation, else its creation time (pure).
pub(crate) fn last_refreshed(secret: &Secret, keys: &SecretAnnotations) -> Option<Timestamp> {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&keys.refreshed_at))
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| secret.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The shortest refresh interval among the stores the Secret uses; `None`
/// when none of them refreshes (pure).
pub(crate) fn refresh_interval(
    sources: &BTreeMap<String, SecretRef>,
    interval_of: impl Fn(&str) -> Option<Duration>,
) -> Option<Duration> {
    sources.values().filter_map(|r| interval_of(&r.store)).min()
}

/// Whether a Secret refreshed at `last` is due (pure). A Secret with no
/// known refresh time is due at once.
pub(crate) fn is_due(last: Option<Timestamp>, interval: Duration, now: Timestamp) -> bool {
    let interval = SignedDuration::try_from(interval).unwrap_or(SignedDuration::MAX);
    last.is_none_or(|t| t.saturating_add(interval).unwrap_or(t) <= now)
}

/// Why a Secret could not be rotated. No values, only references and classes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RotationError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("unknown store \"{0}\"")]
    UnknownStore(String),
    #[error("the API server refused the update: {0}")]
    Write(String),
}

impl RotationError {
    /// Metric label.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Data(DataError::Store { error, .. }) => error.class(),
            Self::Data(DataError::Property { .. }) => "missing_property",
            Self::Data(DataError::NotFetched { .. }) | Self::UnknownStore(_) => "unknown_store",
            Self::Write(_) => "write",
        }
    }
}

/// The fetches a Secret's sources need, each once.
pub(crate) fn fetches(sources: &BTreeMap<String, SecretRef>) -> BTreeSet<StoreRequest> {
    sources.values().map(SecretRef::request).collect()
}

/// The workload to restart for one owner of the Secret (pure). A
/// ReplicaSet is followed to its controlling Deployment (`rs_controller`).
pub(crate) fn restart_target(
    owner: &OwnerReference,
    rs_controller: Option<&OwnerReference>,
) -> Option<(&'static str, String)> {
    match (owner.kind.as_str(), owner.api_version.as_str()) {
        ("ReplicaSet", "apps/v1") => rs_controller
            .filter(|c| c.kind == "Deployment" && c.api_version == "apps/v1")
            .map(|c| ("Deployment", c.name.clone())),
        ("Deployment", "apps/v1") => Some(("Deployment", owner.name.clone())),
        ("StatefulSet", "apps/v1") => Some(("StatefulSet", owner.name.clone())),
        ("DaemonSet", "apps/v1") => Some(("DaemonSet", owner.name.clone())),
        _ => None,
    }
}

/// The strategic merge patch of `kubectl rollout restart`.
pub(crate) fn restart_patch(now: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}})
}

/// What a rotation pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub checked: usize,
    pub updated: Vec<String>,
    pub unchanged: usize,
    pub failed: usize,
    pub restarted: Vec<String>,
}

/// Re-resolves due Secrets against the stores and writes changes.
pub struct Rotator {
    pub client: Client,
    pub cache: Store<Secret>,
    pub engine: SharedEngine,
    pub metrics: Arc<KubeMetrics>,
}

impl Rotator {
    /// One pass over the cached managed Secrets.
    pub async fn run_once(&self, leading: &watch::Receiver<bool>) -> RotationReport {
        let engine = self.engine.load_full();
        let keys = SecretAnnotations::new(engine.prefix());
        let now = Timestamp::now();
        let mut report = RotationReport::default();
        let mut oldest = SignedDuration::ZERO;
        for secret in self.cache.state() {
            let Some(sources) = parse_sources(&secret, &keys) else {
                continue;
            };
            let Some(interval) = refresh_interval(&sources, |s| engine.refresh_interval(s)) else {
                continue;
            };
            let last = last_refreshed(&secret, &keys);
            let age = last.map_or(SignedDuration::ZERO, |t| now.duration_since(t));
            if !is_due(last, interval, now) {
                oldest = oldest.max(age);
                continue;
            }
            if !*leading.borrow() {
                break;
            }
            report.checked += 1;
            let name = format!(
                "{}/{}",
                secret.metadata.namespace.as_deref().unwrap_or(""),
                secret.metadata.name.as_deref().unwrap_or("")
            );
            match self.rotate(&engine, &secret, &sources, &keys).await {
                Ok(false) => {
                    self.metrics.rotation("unchanged");
                    report.unchanged += 1;
                }
                Ok(true) => {
                    self.metrics.rotation("updated");
                    tracing::info!(secret = %name, "managed Secret rotated");
                    report.updated.push(name);
                    let restart = secret
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(&keys.restart_on_rotation))
                        .is_some_and(|v| v == "true");
                    if restart {
                        report.restarted.extend(self.restart(&secret).await);
                    }
                }
                Err(e) => {
                    self.metrics.rotation_failure(e.class());
                    tracing::warn!(secret = %name, error = %e, "managed Secret not rotated");
                    report.failed += 1;
                    oldest = oldest.max(age);
                }
            }
        }
        self.metrics.set_oldest_unrefreshed(oldest.as_secs());
        report
    }

    /// Re-resolves one Secret; `Ok(true)` when its data changed. The
    /// Secret is written as the admission path writes it (the same data
    /// function, the same body), with its new `refreshed-at` either way.
    async fn rotate(
        &self,
        engine: &Engine,
        secret: &Secret,
        sources: &BTreeMap<String, SecretRef>,
        keys: &SecretAnnotations,
    ) -> Result<bool, RotationError> {
        // The identity the Secret was admitted under, for stores with
        // `identity: pod`. A managed Secret does not record its Pod's
        // ServiceAccount yet; until it does, such stores refuse to rotate it
        // (they never read with Sesame's own identity instead).
        let identity: Option<WorkloadIdentity> = None;
        let fetched = self.fetch(engine, sources, identity.as_ref()).await?;
        let data = secret_data(sources, &fetched)?;
        let changed = !stored_data_equals(secret, &data);
        let managed = with_new_data(secret, keys, sources.clone(), data);
        let owners = merged_owners(secret.metadata.owner_references.as_deref().unwrap_or(&[]), &[]);
        let ApplyBody(mut body) = apply_body(&managed, &owners, keys, &now_rfc3339());
        // Optimistic concurrency: a Secret written since the cache saw it is left alone.
        body["metadata"]["resourceVersion"] = json!(secret.metadata.resource_version);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &managed.namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        api.patch(&managed.name, &params, &Patch::Merge(&ApplyBody(body)))
            .await
            .map_err(|e| match e {
                ::kube::Error::Api(s) => RotationError::Write(format!("{} {}", s.code, s.reason)),
                other => RotationError::Write(other.to_string()),
            })?;
        Ok(changed)
    }

    /// Values through the stores' caches, as admission sees them: a value
    /// newer than what admission would write could be overwritten again by
    /// the next admission within `cacheTtl`. A rotation therefore shows up
    /// within `refreshInterval + cacheTtl`.
    /// `identity` is the ServiceAccount the Secret was admitted under.
    async fn fetch(
        &self,
        engine: &Engine,
        sources: &BTreeMap<String, SecretRef>,
        identity: Option<&WorkloadIdentity>,
    ) -> Result<Fetched, RotationError> {
        let requests: Vec<StoreRequest> = fetches(sources).into_iter().collect();
        if let Some(r) = requests.iter().find(|r| engine.stores().get(&r.store).is_none()) {
            return Err(RotationError::UnknownStore(r.store.clone()));
        }
        let answers = engine
            .stores()
            .resolve(&requests, identity, engine.resolve_timeout())
            .await;
        Ok(requests.into_iter().zip(answers).collect())
    }

    /// Restarts the workloads that own the Secret; returns `Kind/name` of each.
    async fn restart(&self, secret: &Secret) -> Vec<String> {
        let namespace = secret.metadata.namespace.as_deref().unwrap_or("");
        let mut targets = BTreeSet::new();
        for owner in secret.metadata.owner_references.iter().flatten() {
            let rs_controller = if owner.kind == "ReplicaSet" {
                let api: Api<PartialObjectMeta<ReplicaSet>> = Api::namespaced(self.client.clone(), namespace);
                match api.get_opt(&owner.name).await {
                    Ok(Some(rs)) => rs
                        .metadata
                        .owner_references
                        .into_iter()
                        .flatten()
                        .find(|o| o.controller == Some(true)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(replicaset = %owner.name, error = %e, "cannot read ReplicaSet for a restart");
                        None
                    }
                }
            } else {
                None
            };
            match restart_target(owner, rs_controller.as_ref()) {
                Some(t) => {
                    targets.insert(t);
                }
                None => {
                    tracing::info!(kind = %owner.kind, name = %owner.name, "owner cannot be restarted; skipped")
                }
            }
        }
        let now = now_rfc3339();
        let patch = Patch::Strategic(restart_patch(&now));
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let mut done = Vec::new();
        for (kind, name) in targets {
            let result = match kind {
                "Deployment" => Api::<Deployment>::namespaced(self.client.clone(), namespace)
                    .patch(&name, &params, &patch)
                    .await
                    .map(drop),
                "StatefulSet" => Api::<StatefulSet>::namespaced(self.client.clone(), namespace)
                    .patch(&name, &params, &patch)
                    .await
                    .map(drop),
                _ => Api::<DaemonSet>::namespaced(self.client.clone(), namespace)
                    .patch(&name, &params, &patch)
                    .await
                    .map(drop),
            };
            match result {
                Ok(()) => {
                    self.metrics.restart(kind);
                    tracing::info!(namespace, kind, name = %name, "rolling restart after rotation");
                    done.push(format!("{kind}/{name}"));
                }
                Err(e) => {
                    self.metrics.rotation_failure("restart");
                    tracing::warn!(namespace, kind, name = %name, error = %e, "rolling restart failed");
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn rec(store: &str, path: &str, property: Option<&str>) -> SecretRef {
        SecretRef {
            store: store.into(),
            path: path.into(),
            property: property.map(str::to_owned),
            version: None,
        }
    }

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        }
    }

    #[test]
    fn due_after_the_shortest_interval_of_its_stores() {
        let sources: BTreeMap<String, SecretRef> = [
            ("a".to_owned(), rec("vault", "x", None)),
            ("b".to_owned(), rec("aws", "y", None)),
            ("c".to_owned(), rec("file", "z", None)),
        ]
        .into();
        let intervals = |s: &str| match s {
            "vault" => Some(Duration::from_secs(300)),
            "aws" => Some(Duration::from_secs(60)),
            _ => None,
        };
        assert_eq!(
            refresh_interval(&sources, intervals),
            Some(Duration::from_secs(60))
        );
        let only_file: BTreeMap<String, SecretRef> = [("c".to_owned(), rec("file", "z", None))].into();
        assert_eq!(refresh_interval(&only_file, intervals), None);

        assert!(!is_due(Some(at(0)), Duration::from_secs(60), at(59)));
        assert!(is_due(Some(at(0)), Duration::from_secs(60), at(60)));
        assert!(is_due(None, Duration::from_secs(60), at(0)));
    }

    #[test]
    fn last_refreshed_prefers_the_annotation() {
        let keys = SecretAnnotations::new("sesame.dev");
        let mut s = Secret {
            metadata: ObjectMeta {
                creation_timestamp: Some(Time(at(0))),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(last_refreshed(&s, &keys), Some(at(0)));
        s.metadata.annotations = Some([(keys.refreshed_at.clone(), at(500).to_string())].into());
        assert_eq!(last_refreshed(&s, &keys), Some(at(500)));
    }

    #[test]
    fn one_fetch_per_secret_and_failures_keep_their_class() {
        let sources: BTreeMap<String, SecretRef> = [
            ("db.password".to_owned(), rec("vault", "app/db", Some("password"))),
            ("db.user".to_owned(), rec("vault", "app/db", Some("user"))),
            ("token".to_owned(), rec("file", "token", None)),
        ]
        .into();
        assert_eq!(fetches(&sources).len(), 2, "one fetch per secret, not per key");
        let mut fetched = Fetched::new();
        fetched.insert(
            rec("vault", "app/db", None).request(),
            Err(crate::stores::StoreError::Throttled),
        );
        let e = RotationError::from(secret_data(&sources, &fetched).unwrap_err());
        assert_eq!(e.class(), "throttled");
        fetched.insert(
            rec("vault", "app/db", None).request(),
            Ok(Arc::new(
                crate::stores::SecretData::Properties(Default::default()),
            )),
        );
        let e = RotationError::from(secret_data(&sources, &fetched).unwrap_err());
        assert_eq!(e.class(), "missing_property");
    }

    #[test]
    fn restarts_walk_replicaset_to_deployment() {
        let deploy = OwnerReference {
            controller: Some(true),
            ..owner("Deployment", "web")
        };
        assert_eq!(
            restart_target(&owner("ReplicaSet", "web-5d4f"), Some(&deploy)),
            Some(("Deployment", "web".to_owned()))
        );
        // A bare ReplicaSet has nothing to roll.
        assert_eq!(restart_target(&owner("ReplicaSet", "rs"), None), None);
        assert_eq!(
            restart_target(&owner("StatefulSet", "db"), None),
            Some(("StatefulSet", "db".to_owned()))
        );
        assert_eq!(
            restart_target(&owner("DaemonSet", "agent"), None),
            Some(("DaemonSet", "agent".to_owned()))
        );
        let job = OwnerReference {
            api_version: "batch/v1".into(),
            ..owner("Job", "migrate")
        };
        assert_eq!(restart_target(&job, None), None);
        assert_eq!(
            restart_patch("2026-01-01T00:00:00Z")["spec"]["template"]["metadata"]["annotations"]
                [RESTARTED_AT],
            "2026-01-01T00:00:00Z"
        );
    }
}
