//! Garbage collection of managed Secrets that no Pod uses any more (bare
//! Pods, Pods another webhook denied after Sesame wrote their Secret).
//! Owned Secrets also go with their owners through Kubernetes' own garbage
//! collector; this catches the rest.
//!
//! It scales with the managed Secrets, not with the cluster: candidates come
//! from the watch-backed Secret cache, and only namespaces that hold a
//! candidate are listed, metadata only and page by page. A Pod names its
//! Secret in the marker annotation Sesame puts on every Pod it mutates, so
//! no Pod spec is read.
//!
//! A Secret is kept while an owner it names still exists (a Deployment
//! scaled to 0 keeps its ReplicaSet, which owns the Secret): it is then the
//! last known good copy for the next Pod, and Kubernetes' garbage collector
//! removes it with its last owner. Owners are looked up in the Secret's own
//! namespace only, so an ownerReference a tenant adds can at worst keep a
//! Secret of its own namespace.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Preconditions};
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::events::{Event, EventType, Recorder, Reporter};
use ::kube::runtime::reflector::Store;
use ::kube::{Api, Client};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

use super::metrics::KubeMetrics;
use super::provenance::{Provenance, UnverifiedReport};
use super::secret::{verify, SecretAnnotations};
use crate::inject::annotations::INJECTED_SUFFIX;

/// Whether a Secret is old enough to be collected (pure).
pub(crate) fn past_grace(secret: &Secret, now: Timestamp, grace: Duration) -> bool {
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    secret
        .metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|t| t.0.saturating_add(grace).unwrap_or(t.0) <= now)
}

/// Namespaces that hold at least one Secret past its grace period (pure):
/// the only ones whose Pods need listing.
pub(crate) fn namespaces_to_scan<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    now: Timestamp,
    grace: Duration,
) -> BTreeSet<String> {
    secrets
        .into_iter()
        .filter(|s| past_grace(s, now, grace) && s.metadata.deletion_timestamp.is_none())
        .filter_map(|s| s.metadata.namespace.clone())
        .collect()
}

/// The Secrets of `namespace` to delete: past grace and named by no Pod's
/// marker annotation (pure).
pub(crate) fn select_garbage<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    namespace: &str,
    referenced: &HashSet<String>,
    now: Timestamp,
    grace: Duration,
) -> Vec<&'a Secret> {
    secrets
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
        .filter(|s| s.metadata.deletion_timestamp.is_none() && past_grace(s, now, grace))
        .filter(|s| s.metadata.name.as_ref().is_some_and(|n| !referenced.contains(n)))
        .collect()
}

/// Where an ownerReference points, when it names a namespaced object in
/// plain Kubernetes spelling (pure): the group/version, kind and name go
/// into a request path, and they are tenant-writable text.
pub(crate) fn owner_target(
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Option<(GroupVersionKind, String)> {
    let (group, version) = owner
        .api_version
        .rsplit_once('/')
        .unwrap_or(("", &owner.api_version));
    let dns = |t: &str| {
        !t.is_empty()
            && t.len() <= 253
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    let plain = (group.is_empty() || dns(group))
        && !version.is_empty()
        && version
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !owner.kind.is_empty()
        && owner.kind.len() <= 63
        && owner.kind.bytes().all(|b| b.is_ascii_alphanumeric())
        && dns(&owner.name)
        && !owner.name.contains("..");
    plain.then(|| {
        (
            GroupVersionKind::gvk(group, version, &owner.kind),
            owner.name.clone(),
        )
    })
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub namespaces: usize,
    pub pods_seen: usize,
    pub deleted: Vec<String>,
    /// `namespace/name` of labelled Secrets whose MAC did not verify: never deleted.
    pub unverified: Vec<String>,
    /// `namespace/name` of unused Secrets kept because an owner still exists.
    pub kept_for_owner: Vec<String>,
    /// The pass did nothing: the provenance keys are not known yet.
    pub waiting_for_keys: bool,
}

/// Runs collection passes against the API.
pub struct GarbageCollector {
    client: Client,
    cache: Store<Secret>,
    provenance: Provenance,
    grace: Duration,
    /// Pods per list page.
    page_size: u32,
    metrics: Arc<KubeMetrics>,
    unverified: UnverifiedReport,
    /// `ManagedSecretDeleted` Events, for the app team's `kubectl get events`.
    events: Recorder,
}

impl GarbageCollector {
    /// A collector over the cache of managed Secrets: those older than
    /// `grace` that no Pod names go; Pods are listed `page_size` at a time.
    pub fn new(
        client: Client,
        cache: Store<Secret>,
        provenance: Provenance,
        grace: Duration,
        page_size: u32,
        metrics: Arc<KubeMetrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: "sesame".into(),
            instance: Some(super::lease::identity()),
        };
        Self {
            unverified: UnverifiedReport::new("gc", metrics.clone()),
            events: Recorder::new(client.clone(), reporter),
            client,
            cache,
            provenance,
            grace,
            page_size,
            metrics,
        }
    }

    /// Secret names the Pods of `namespace` use, from their marker annotation.
    async fn referenced(
        &self,
        namespace: &str,
        marker_key: &str,
    ) -> Result<(HashSet<String>, usize), ::kube::Error> {
        let api: Api<PartialObjectMeta<Pod>> = Api::namespaced(self.client.clone(), namespace);
        let mut names = HashSet::new();
        let mut seen = 0;
        let mut params = ListParams::default().limit(self.page_size);
        loop {
            let page = api.list(&params).await?;
            seen += page.items.len();
            for pod in &page.items {
                if let Some(name) = pod.metadata.annotations.as_ref().and_then(|a| a.get(marker_key)) {
                    names.insert(name.clone());
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok((names, seen)),
            }
        }
    }

    /// Whether an owner `secret` names still exists: same namespace, same
    /// uid. A failed lookup other than "not found" keeps the Secret (a
    /// delete cannot be undone; the next pass looks again).
    async fn an_owner_exists(&self, namespace: &str, secret: &Secret) -> bool {
        let owners = secret.metadata.owner_references.as_deref().unwrap_or(&[]);
        for owner in owners {
            let Some((gvk, name)) = owner_target(owner) else {
                continue;
            };
            let resource = ApiResource::from_gvk(&gvk);
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
            match api.get_opt(&name).await {
                Ok(Some(found)) if found.metadata.uid.as_deref() == Some(owner.uid.as_str()) => return true,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(namespace = %namespace, owner = %format!("{}/{name}", gvk.kind), error = %e, "could not look up a managed Secret's owner; keeping the Secret");
                    return true;
                }
            }
        }
        false
    }

    /// A `Normal` Event `ManagedSecretDeleted` on the deleted Secret: names
    /// and the reason only, never a value.
    async fn record_deletion(&self, namespace: &str, secret: &Secret) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(name.clone()),
            namespace: Some(namespace.to_owned()),
            uid: secret.metadata.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Normal,
            reason: "ManagedSecretDeleted".into(),
            note: Some(format!(
                "Sesame deleted managed Secret {name}: no Pod names it and no owner it names exists"
            )),
            action: "GarbageCollect".into(),
            secondary: None,
        };
        if let Err(e) = self.events.publish(&event, &reference).await {
            tracing::warn!(namespace = %namespace, secret = %name, error = %e, "could not record the Event");
        }
    }

    /// One pass (`prefix`: the annotation prefix). `leading` is checked
    /// before every delete so that a replica that lost the Lease stops at
    /// once.
    pub async fn run_once(
        &self,
        prefix: &str,
        leading: &watch::Receiver<bool>,
    ) -> Result<GcReport, ::kube::Error> {
        let mut report = GcReport::default();
        let Some(ring) = self.provenance.current() else {
            report.waiting_for_keys = true;
            return Ok(report);
        };
        let keys = SecretAnnotations::new(prefix);
        let marker_key = format!("{prefix}/{INJECTED_SUFFIX}");
        let now = Timestamp::now();
        let cached = self.cache.state();
        self.unverified.retain(cached.iter().map(AsRef::as_ref));
        let mut secrets: Vec<&Secret> = Vec::with_capacity(cached.len());
        for s in &cached {
            match verify(s, &keys, &ring) {
                Ok(_) => secrets.push(s),
                Err(e) => {
                    self.unverified.note(s, e.label(), &e);
                    report.unverified.push(format!(
                        "{}/{}",
                        s.metadata.namespace.as_deref().unwrap_or(""),
                        s.metadata.name.as_deref().unwrap_or("")
                    ));
                }
            }
        }
        let mut by_namespace: BTreeMap<String, Vec<&Secret>> = BTreeMap::new();
        for s in &secrets {
            if let Some(ns) = &s.metadata.namespace {
                by_namespace.entry(ns.clone()).or_default().push(s);
            }
        }
        for namespace in namespaces_to_scan(secrets.iter().copied(), now, self.grace) {
            let (referenced, seen) = self.referenced(&namespace, &marker_key).await?;
            report.namespaces += 1;
            report.pods_seen += seen;
            let candidates = by_namespace.get(&namespace).map(Vec::as_slice).unwrap_or(&[]);
            for secret in select_garbage(
                candidates.iter().copied(),
                &namespace,
                &referenced,
                now,
                self.grace,
            ) {
                if !*leading.borrow() {
                    return Ok(report);
                }
                let name = secret.metadata.name.clone().unwrap_or_default();
                if self.an_owner_exists(&namespace, secret).await {
                    report.kept_for_owner.push(format!("{namespace}/{name}"));
                    continue;
                }
                // Preconditions: a Secret re-applied since the cache saw it is kept.
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: secret.metadata.uid.clone(),
                        resource_version: secret.metadata.resource_version.clone(),
                    }),
                    ..Default::default()
                };
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
                match api.delete(&name, &params).await {
                    Ok(_) => {
                        tracing::info!(namespace = %namespace, secret = %name, "deleted unreferenced managed Secret");
                        self.metrics.gc_deleted();
                        self.record_deletion(&namespace, secret).await;
                        report.deleted.push(format!("{namespace}/{name}"));
                    }
                    Err(::kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn secret(ns: &str, name: &str, created: i64) -> Secret {
        Secret {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                creation_timestamp: Some(Time(at(created))),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn only_old_unreferenced_secrets_of_the_namespace_go() {
        let grace = Duration::from_secs(600);
        let secrets = [
            secret("a", "sesame-old-used", 0),
            secret("a", "sesame-old-unused", 0),
            secret("a", "sesame-new-unused", 900),
            secret("b", "sesame-other-ns", 0),
        ];
        let referenced: HashSet<String> = ["sesame-old-used".to_owned(), "inline".to_owned()].into();
        let now = at(1000);
        let gone: Vec<&str> = select_garbage(&secrets, "a", &referenced, now, grace)
            .into_iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        assert_eq!(gone, ["sesame-old-unused"]);
    }

    #[test]
    fn only_plain_owner_references_are_looked_up() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owner = |api_version: &str, kind: &str, name: &str| OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            ..Default::default()
        };
        let (gvk, name) = owner_target(&owner("apps/v1", "ReplicaSet", "web-7d9c")).unwrap();
        assert_eq!(
            (gvk.group.as_str(), gvk.version.as_str(), gvk.kind.as_str()),
            ("apps", "v1", "ReplicaSet")
        );
        assert_eq!(name, "web-7d9c");
        let (gvk, _) = owner_target(&owner("v1", "ReplicationController", "rc")).unwrap();
        assert_eq!(gvk.group, "");
        for (api_version, kind, name) in [
            ("apps/v1", "ReplicaSet", "../../secrets/x"),
            ("apps/v1", "ReplicaSet", ".."),
            ("apps/v1/namespaces/kube-system", "Secret", "x"),
            ("apps/v1", "Replica/Set", "x"),
            ("v1?watch=true", "Pod", "x"),
            ("", "Pod", "x"),
            ("apps/v1", "", "x"),
            ("apps/v1", "ReplicaSet", ""),
        ] {
            assert!(
                owner_target(&owner(api_version, kind, name)).is_none(),
                "{api_version} {kind} {name}"
            );
        }
    }

    #[test]
    fn only_namespaces_with_old_secrets_are_listed() {
        let grace = Duration::from_secs(600);
        let mut deleting = secret("c", "sesame-deleting", 0);
        deleting.metadata.deletion_timestamp = Some(Time(at(1)));
        let secrets = [
            secret("a", "x", 0),
            secret("a", "y", 0),
            secret("b", "young", 950),
            deleting,
        ];
        let scan = namespaces_to_scan(&secrets, at(1000), grace);
        assert_eq!(scan.into_iter().collect::<Vec<_>>(), ["a"]);
        // Exactly at the grace boundary counts as old enough.
        assert!(past_grace(&secret("a", "x", 400), at(1000), grace));
        assert!(!past_grace(&secret("a", "x", 401), at(1000), grace));
        // No creation time (never stored): never collected.
        let mut unknown = secret("a", "x", 0);
        unknown.metadata.creation_timestamp = None;
        assert!(!past_grace(&unknown, at(1000), grace));
    }
}
