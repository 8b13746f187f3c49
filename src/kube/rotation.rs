//! Rotation: the leader refreshes the managed Secrets Sesame wrote (their
//! MAC verifies; others are ignored and reported once) when their stores'
//! `refreshInterval` has passed. Before anything is fetched, the current
//! policy is run again for every recorded reference, with the Secret's
//! namespace (its labels from the Namespace cache) and the recorded service
//! account: a reference it no longer grants is not refreshed, and its key
//! leaves the Secret (with a log line and an Event on the Secret). Values
//! come through the same function and are written in the same body as at
//! admission, so that mounted secret volumes pick up new values. Env vars
//! cannot change in a running Pod: workloads whose own Pod template asks
//! for it get a rolling restart (`restart`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Patch, PatchParams};
use ::kube::runtime::events::{Event, EventType, Recorder, Reporter};
use ::kube::runtime::reflector::Store;
use ::kube::{Api, Client};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::args::{RestartLimits, DEFAULT_WRITES_PER_SECOND};
use super::digest::any_value_differs;
use super::metrics::KubeMetrics;
use super::provenance::{KeyRing, Provenance, UnverifiedReport};
use super::restart::{RestartBudget, Restarter};
use super::secret::{
    apply_body, merged_owners, now_rfc3339, verify, ApplyBody, Recorded, SecretAnnotations, FIELD_MANAGER,
};
use crate::admission::NamespaceLabels;
use crate::inject::data::KeySource;
use crate::inject::{secret_data, DataError, Fetched, SecretRef};
use crate::pipeline::{Engine, Refusal, SharedEngine};
use crate::stores::{SecretData, StoreError, StoreRequest, WorkloadIdentity};

/// At most this many Secrets are signed again per pass after a new key,
/// so that a key rotation does not send the API server one write per
/// managed Secret at once.
const RESIGN_PER_PASS: usize = 100;

/// Spaces a pass's writes at least `1 / per_second` apart, so that a
/// rotation that changes thousands of Secrets at once never floods the API
/// server: 10,000 changed Secrets at 50 a second take 200 s.
pub(crate) struct Pacer {
    gap: Duration,
    next: tokio::time::Instant,
}

impl Pacer {
    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            gap: Duration::from_secs(1) / per_second.max(1),
            next: tokio::time::Instant::now(),
        }
    }

    /// Returns when the next write may go.
    pub(crate) async fn ready(&mut self) {
        tokio::time::sleep_until(self.next).await;
        self.next = self.next.max(tokio::time::Instant::now()) + self.gap;
    }
}

/// Store answers of one pass: each distinct (request, identity) is read
/// once per pass, however many Secrets share it, failures included (a store
/// that is down costs one timeout per path, not one per Secret).
type PassReads = HashMap<(StoreRequest, Option<WorkloadIdentity>), Result<Arc<SecretData>, StoreError>>;

/// When the Secret's values were last written or confirmed: its (signed)
/// `refreshed-at`, else its creation time (pure).
pub(crate) fn last_refreshed(recorded: &Recorded, secret: &Secret) -> Option<Timestamp> {
    recorded
        .refreshed_at
        .parse::<Timestamp>()
        .ok()
        .or_else(|| secret.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// When the Secret is due: the shortest interval among its references, each
/// its own `refresh=` (held to `minimum`) or else its store's
/// `refreshInterval`; `None` when none of them refreshes (pure).
pub(crate) fn refresh_interval(
    sources: &BTreeMap<String, KeySource>,
    interval_of: impl Fn(&str) -> Option<Duration>,
    minimum: Duration,
) -> Option<Duration> {
    sources
        .values()
        .flat_map(KeySource::references)
        .filter_map(|r| crate::inject::refresh::interval(r.refresh, interval_of(&r.store), minimum))
        .min()
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
    #[error("namespace {0} is not (yet) in the Namespace cache, so its labels are unknown")]
    NamespaceUnknown(String),
    #[error("the API server refused the update: {0}")]
    Write(String),
}

impl RotationError {
    /// Metric label.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Data(DataError::Store { error, .. }) => error.class(),
            Self::Data(DataError::Property { .. }) => "missing_property",
            Self::Data(DataError::Render { .. }) => "render",
            Self::Data(DataError::NotFetched { .. }) | Self::UnknownStore(_) => "unknown_store",
            Self::NamespaceUnknown(_) => "namespace_unknown",
            Self::Write(_) => "write",
        }
    }
}

/// The fetches a Secret's sources need, each once.
pub(crate) fn fetches(sources: &BTreeMap<String, KeySource>) -> BTreeSet<StoreRequest> {
    sources
        .values()
        .flat_map(KeySource::references)
        .map(SecretRef::request)
        .collect()
}

/// A key whose reference (or one of whose template's placeholders) the
/// current policy no longer grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Revoked {
    pub key: String,
    /// The reference refused: for a template, the first placeholder refused.
    pub reference: SecretRef,
    /// The policy's sentence (names rules and paths, never values).
    pub reason: String,
}

/// What the current policy says about a Secret's recorded references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reauthorised {
    /// The keys still granted, with their references: what is refreshed.
    pub granted: BTreeMap<String, KeySource>,
    /// The keys no longer granted: removed from the Secret.
    pub revoked: Vec<Revoked>,
}

/// Runs the current policy for every reference `secret` records, as
/// admission runs it (`Engine::authorize`), for the recorded service
/// account in the Secret's namespace with `labels` (pure). A store that is
/// no longer configured fails the whole Secret, which keeps its values: that
/// is a configuration change, not a policy decision.
pub(crate) fn reauthorise(
    engine: &Engine,
    secret: &Recorded,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<Reauthorised, RotationError> {
    let mut granted = BTreeMap::new();
    let mut revoked = Vec::new();
    // A template key is granted only while every placeholder is.
    'keys: for (key, source) in &secret.sources {
        for reference in source.references() {
            match engine.authorize(&secret.namespace, labels, &secret.service_account, reference) {
                Ok(_) => {}
                Err(Refusal::UnknownStore { store, .. }) => return Err(RotationError::UnknownStore(store)),
                Err(Refusal::Policy(denial)) => {
                    revoked.push(Revoked {
                        key: key.clone(),
                        reference: reference.clone(),
                        reason: denial.to_string(),
                    });
                    continue 'keys;
                }
            }
        }
        granted.insert(key.clone(), source.clone());
    }
    Ok(Reauthorised { granted, revoked })
}

/// What a rotation pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub checked: usize,
    pub updated: Vec<String>,
    pub unchanged: usize,
    pub failed: usize,
    pub restarted: Vec<String>,
    /// `namespace/name` of Secrets whose MAC did not verify: not touched.
    pub unverified: Vec<String>,
    /// Keys removed because the policy no longer grants them, `namespace/name/key`.
    pub revoked: Vec<String>,
    /// Secrets signed again with the newest key.
    pub resigned: usize,
    /// The pass did nothing: the provenance keys are not known yet.
    pub waiting_for_keys: bool,
    /// Store reads the pass made: distinct (request, identity) pairs.
    pub reads: usize,
    /// Secrets the pass wrote (rotated, keys removed, or signed again).
    pub writes: usize,
}

/// What one Secret's rotation did.
struct Rotated {
    /// A value is new.
    changed: bool,
    /// A key left the Secret (revoked, or not Sesame's).
    removed: bool,
    revoked: Vec<Revoked>,
    /// The Secret was written; when not, its values and record were
    /// already what the stores and the policy say.
    written: bool,
}

/// Refreshes due managed Secrets against the stores and writes changes.
pub struct Rotator {
    client: Client,
    cache: Store<Secret>,
    engine: SharedEngine,
    namespaces: Arc<dyn NamespaceLabels>,
    provenance: Provenance,
    metrics: Arc<KubeMetrics>,
    events: Recorder,
    unverified: UnverifiedReport,
    restarts: std::sync::Mutex<RestartBudget>,
    /// `namespace/name` of rotated Secrets whose restarts the budget held
    /// back: asked again every pass until made.
    deferred: std::sync::Mutex<BTreeSet<String>>,
    /// `namespace/name` → (resourceVersion, when): due Secrets whose
    /// values the stores confirmed unchanged. They are not written (a pass
    /// writes only what changed), so their `refreshed-at` stays; this
    /// keeps them from being due again before their interval.
    confirmed: std::sync::Mutex<HashMap<String, (String, Timestamp)>>,
    pacer: tokio::sync::Mutex<Pacer>,
}

impl Rotator {
    /// A rotator over the cache of managed Secrets. `namespaces` gives the
    /// labels the policy is run with; `provenance` the keys that tell
    /// Sesame's Secrets from others.
    pub fn new(
        client: Client,
        cache: Store<Secret>,
        engine: SharedEngine,
        namespaces: Arc<dyn NamespaceLabels>,
        provenance: Provenance,
        metrics: Arc<KubeMetrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: "sesame".into(),
            instance: Some(super::lease::identity()),
        };
        Self {
            events: Recorder::new(client.clone(), reporter),
            unverified: UnverifiedReport::new("rotation", metrics.clone()),
            client,
            cache,
            engine,
            namespaces,
            provenance,
            metrics,
            restarts: std::sync::Mutex::new(RestartBudget::new(RestartLimits::default())),
            deferred: std::sync::Mutex::default(),
            confirmed: std::sync::Mutex::default(),
            pacer: tokio::sync::Mutex::new(Pacer::new(DEFAULT_WRITES_PER_SECOND)),
        }
    }

    /// Writes per second a pass may send (default [`DEFAULT_WRITES_PER_SECOND`]).
    #[must_use]
    pub fn with_write_rate(mut self, per_second: u32) -> Self {
        self.pacer = tokio::sync::Mutex::new(Pacer::new(per_second));
        self
    }

    fn confirmed(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Timestamp)>> {
        self.confirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the stores last confirmed `secret` unchanged, while it is still
    /// the version they confirmed.
    fn confirmed_at(&self, name: &str, secret: &Secret) -> Option<Timestamp> {
        let confirmed = self.confirmed();
        let (version, at) = confirmed.get(name)?;
        (secret.metadata.resource_version.as_deref() == Some(version.as_str())).then_some(*at)
    }

    async fn pace(&self) {
        self.pacer.lock().await.ready().await;
    }

    /// Bounds the restarts after rotations (default: `RestartLimits::default()`).
    #[must_use]
    pub fn with_restart_limits(mut self, limits: RestartLimits) -> Self {
        self.restarts = std::sync::Mutex::new(RestartBudget::new(limits));
        self
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Restarts what asked for it after `secret` rotated; a restart the
    /// budget held back is remembered and asked again next pass.
    async fn restart(
        &self,
        engine: &Engine,
        secret: &Secret,
        recorded: &Recorded,
        name: &str,
    ) -> Vec<String> {
        let restarter = Restarter {
            client: &self.client,
            engine,
            metrics: &self.metrics,
            budget: &self.restarts,
            events: &self.events,
        };
        let done = restarter.restart(secret, recorded).await;
        if done.deferred {
            self.deferred().insert(name.to_owned());
        } else {
            self.deferred().remove(name);
        }
        done.restarted
    }

    /// One pass over the cached managed Secrets.
    pub async fn run_once(&self, leading: &watch::Receiver<bool>) -> RotationReport {
        let mut report = RotationReport::default();
        let Some(ring) = self.provenance.current() else {
            report.waiting_for_keys = true;
            return report;
        };
        let engine = self.engine.load_full();
        let keys = SecretAnnotations::new(engine.prefix());
        let now = Timestamp::now();
        let mut oldest = SignedDuration::ZERO;
        let mut on_older_keys = 0;
        let secrets = self.cache.state();
        self.unverified.retain(secrets.iter().map(AsRef::as_ref));
        {
            let present: BTreeSet<String> = secrets
                .iter()
                .map(|s| {
                    format!(
                        "{}/{}",
                        s.metadata.namespace.as_deref().unwrap_or(""),
                        s.metadata.name.as_deref().unwrap_or("")
                    )
                })
                .collect();
            self.deferred().retain(|n| present.contains(n));
            self.confirmed().retain(|n, _| present.contains(n));
        }
        let mut reads = PassReads::new();
        for secret in &secrets {
            let name = format!(
                "{}/{}",
                secret.metadata.namespace.as_deref().unwrap_or(""),
                secret.metadata.name.as_deref().unwrap_or("")
            );
            let (recorded, verified) = match verify(secret, &keys, &ring) {
                Ok(v) => v,
                Err(e) => {
                    self.unverified.note(secret, e.label(), &e);
                    report.unverified.push(name);
                    continue;
                }
            };
            let due = refresh_interval(
                &recorded.sources,
                |s| engine.refresh_interval(s),
                engine.min_refresh(),
            )
            .is_some_and(|interval| {
                let last = last_refreshed(&recorded, secret).max(self.confirmed_at(&name, secret));
                let age = last.map_or(SignedDuration::ZERO, |t| now.duration_since(t));
                let due = is_due(last, interval, now);
                if !due {
                    oldest = oldest.max(age);
                }
                due
            });
            if !*leading.borrow() {
                break;
            }
            if !due && self.deferred().contains(&name) {
                report
                    .restarted
                    .extend(self.restart(&engine, secret, &recorded, &name).await);
            }
            if !due {
                // Not due: only signed again when an older key made its MAC.
                if !verified.current && report.resigned >= RESIGN_PER_PASS {
                    on_older_keys += 1;
                } else if !verified.current {
                    self.pace().await;
                    match self.resign(secret, &recorded, &keys, &ring).await {
                        Ok(()) => {
                            self.metrics.resigned();
                            report.resigned += 1;
                            report.writes += 1;
                        }
                        Err(e) => {
                            tracing::debug!(secret = %name, error = %e, "not signed again; next pass");
                            on_older_keys += 1;
                        }
                    }
                }
                continue;
            }
            report.checked += 1;
            let current = verified.current;
            match self
                .rotate(&engine, secret, &recorded, (&keys, &ring), current, &mut reads)
                .await
            {
                Ok(rotated) => {
                    if rotated.written {
                        report.writes += 1;
                        self.confirmed().remove(&name);
                    } else if let Some(version) = secret.metadata.resource_version.clone() {
                        self.confirmed().insert(name.clone(), (version, now));
                    }
                    for r in &rotated.revoked {
                        report.revoked.push(format!("{name}/{}", r.key));
                    }
                    if rotated.changed || rotated.removed {
                        self.metrics.rotation("updated");
                        tracing::info!(secret = %name, "managed Secret rotated");
                        if rotated.changed {
                            self.record_rotation(secret, &recorded).await;
                        }
                        report.updated.push(name.clone());
                    } else {
                        self.metrics.rotation("unchanged");
                        report.unchanged += 1;
                    }
                    // A key that just left is no reason to restart, and a
                    // restarted Pod would be denied it anyway.
                    if rotated.changed && rotated.revoked.is_empty() && recorded.restart_on_rotation {
                        report
                            .restarted
                            .extend(self.restart(&engine, secret, &recorded, &name).await);
                    }
                }
                Err(e) => {
                    self.metrics.rotation_failure(e.class());
                    tracing::warn!(secret = %name, error = %e, "managed Secret not rotated");
                    report.failed += 1;
                    let age = last_refreshed(&recorded, secret)
                        .map_or(SignedDuration::ZERO, |t| now.duration_since(t));
                    oldest = oldest.max(age);
                    if !verified.current {
                        on_older_keys += 1;
                    }
                }
            }
        }
        report.reads = reads.len();
        self.metrics.set_oldest_unrefreshed(oldest.as_secs());
        self.metrics.set_on_older_keys(on_older_keys);
        report
    }

    /// Re-authorises and re-resolves one Secret, and writes it as the
    /// admission path writes it (the same data function, the same body,
    /// signed with the newest key), with its new `refreshed-at` either way.
    /// Keys no longer granted, or not Sesame's, leave the Secret.
    async fn rotate(
        &self,
        engine: &Engine,
        secret: &Secret,
        recorded: &Recorded,
        (keys, ring): (&SecretAnnotations, &KeyRing),
        signed_with_current: bool,
        reads: &mut PassReads,
    ) -> Result<Rotated, RotationError> {
        let labels = self
            .namespaces
            .labels(&recorded.namespace)
            .ok_or_else(|| RotationError::NamespaceUnknown(recorded.namespace.clone()))?;
        let decision = reauthorise(engine, recorded, Some(&labels))?;
        // Stores with `identity: pod` read as the ServiceAccount the Secret
        // was admitted under: the record is under the Secret's MAC, so a
        // tenant cannot swap it for another account of its namespace.
        let identity = WorkloadIdentity::new(&recorded.namespace, &recorded.service_account).ok();
        let fetched = self
            .fetch(engine, &decision.granted, identity.as_ref(), reads)
            .await?;
        let data = secret_data(&decision.granted, &fetched)?;
        let changed = any_value_differs(secret, &data);
        let leaving: Vec<String> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .filter(|k| !data.contains_key(k))
            .collect();
        let managed = recorded.with_data(decision.granted.clone(), data);
        let owners = merged_owners(secret.metadata.owner_references.as_deref().unwrap_or(&[]), &[]);
        let ApplyBody(mut body) = apply_body(&managed, &owners, keys, &now_rfc3339(), Some(ring));
        if !changed && leaving.is_empty() && signed_with_current && same_record(&body, secret, keys) {
            return Ok(Rotated {
                changed: false,
                removed: false,
                revoked: decision.revoked,
                written: false,
            });
        }
        // A merge patch keeps keys it does not name: remove them by name.
        for key in &leaving {
            body["data"][key.as_str()] = Value::Null;
        }
        // Optimistic concurrency: a Secret written since the cache saw it is left alone.
        body["metadata"]["resourceVersion"] = json!(secret.metadata.resource_version);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &managed.namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        self.pace().await;
        api.patch(&managed.name, &params, &Patch::Merge(&ApplyBody(body)))
            .await
            .map_err(|e| match e {
                ::kube::Error::Api(s) => RotationError::Write(format!("{} {}", s.code, s.reason)),
                other => RotationError::Write(other.to_string()),
            })?;
        if !decision.revoked.is_empty() {
            self.report_revoked(secret, recorded, &decision.revoked).await;
        }
        Ok(Rotated {
            changed,
            removed: !leaving.is_empty(),
            revoked: decision.revoked,
            written: true,
        })
    }

    /// A log line per key and an Event on the Secret: references and the
    /// policy's reasons, no values.
    async fn report_revoked(&self, secret: &Secret, recorded: &Recorded, revoked: &[Revoked]) {
        self.metrics.revoked(revoked.len());
        for r in revoked {
            tracing::warn!(
                namespace = %recorded.namespace,
                secret = %recorded.name,
                key = %r.key,
                reference = %r.reference,
                reason = %r.reason,
                "the policy no longer grants this reference; its key was removed from the managed Secret"
            );
        }
        let listed: Vec<String> = revoked
            .iter()
            .map(|r| format!("{} ({})", r.key, r.reference))
            .collect();
        let note = format!(
            "Sesame removed {} key(s) whose reference the policy no longer grants to service account {}: {}",
            revoked.len(),
            recorded.service_account,
            listed.join(", ")
        );
        self.record_on_secret(secret, recorded, EventType::Warning, "ReferenceNotGranted", note)
            .await;
    }

    /// A `Normal` Event `ManagedSecretRotated` on a Secret whose values
    /// changed: which keys come from which references, never a value.
    async fn record_rotation(&self, secret: &Secret, recorded: &Recorded) {
        let keys: Vec<String> = recorded.sources.keys().cloned().collect();
        let note = format!(
            "Sesame refreshed managed Secret {} from its stores; keys: {}",
            recorded.name,
            keys.join(", ")
        );
        self.record_on_secret(secret, recorded, EventType::Normal, "ManagedSecretRotated", note)
            .await;
    }

    /// Publishes a rotation Event on the managed Secret (best effort: a
    /// failure is logged). `note` names keys and references, never a value.
    async fn record_on_secret(
        &self,
        secret: &Secret,
        recorded: &Recorded,
        type_: EventType,
        reason: &str,
        mut note: String,
    ) {
        truncate(&mut note, 1000);
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(recorded.name.clone()),
            namespace: Some(recorded.namespace.clone()),
            uid: secret.metadata.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Rotate".into(),
            secondary: None,
        };
        if let Err(e) = self.events.publish(&event, &reference).await {
            tracing::warn!(namespace = %recorded.namespace, secret = %recorded.name, error = %e, "could not record the Event");
        }
    }

    /// Signs a Secret again with the newest key (its record unchanged),
    /// conditional on the resourceVersion read.
    async fn resign(
        &self,
        secret: &Secret,
        recorded: &Recorded,
        keys: &SecretAnnotations,
        ring: &KeyRing,
    ) -> Result<(), ::kube::Error> {
        let patch = json!({
            "metadata": {
                "resourceVersion": secret.metadata.resource_version,
                "annotations": {keys.provenance.as_str(): recorded.mac(ring)},
            }
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), &recorded.namespace)
            .patch(&recorded.name, &params, &Patch::Merge(&patch))
            .await
            .map(drop)
    }

    /// Values through the stores' caches, as admission sees them: a value
    /// newer than what admission would write could be overwritten again by
    /// the next admission within `cacheTtl`. A rotation therefore shows up
    /// within `refreshInterval + cacheTtl`.
    /// `identity` is the ServiceAccount the Secret was admitted under.
    async fn fetch(
        &self,
        engine: &Engine,
        sources: &BTreeMap<String, KeySource>,
        identity: Option<&WorkloadIdentity>,
        reads: &mut PassReads,
    ) -> Result<Fetched, RotationError> {
        let mut keyed = Vec::new();
        for r in fetches(sources) {
            let store = engine
                .stores()
                .get(&r.store)
                .ok_or_else(|| RotationError::UnknownStore(r.store.clone()))?;
            // Only a store that reads as the Pod answers per identity.
            let who = store.mode().is_pod().then(|| identity.cloned()).flatten();
            keyed.push((r, who));
        }
        let missing: Vec<&(StoreRequest, Option<WorkloadIdentity>)> =
            keyed.iter().filter(|k| !reads.contains_key(*k)).collect();
        if !missing.is_empty() {
            let requests: Vec<StoreRequest> = missing.iter().map(|(r, _)| r.clone()).collect();
            let answers = engine
                .stores()
                .resolve(&requests, identity, engine.resolve_timeout())
                .await;
            for (k, answer) in missing.into_iter().zip(answers) {
                reads.insert(k.clone(), answer);
            }
        }
        Ok(keyed
            .into_iter()
            .filter_map(|k| {
                let answer = reads.get(&k)?.clone();
                Some((k.0, answer))
            })
            .collect())
    }
}

/// Whether the Secret already carries every annotation `body` would write,
/// other than the refresh time and the MAC, and `restart-on-rotation`
/// exactly when `body` sets it (pure).
fn same_record(body: &Value, secret: &Secret, keys: &SecretAnnotations) -> bool {
    let Some(wanted) = body["metadata"]["annotations"].as_object() else {
        return false;
    };
    let empty = BTreeMap::new();
    let stored = secret.metadata.annotations.as_ref().unwrap_or(&empty);
    let volatile = [&keys.refreshed_at, &keys.provenance];
    wanted
        .iter()
        .filter(|(k, _)| !volatile.contains(k))
        .all(|(k, v)| {
            v.as_str()
                .is_some_and(|v| stored.get(k).map(String::as_str) == Some(v))
        })
        && stored.contains_key(&keys.restart_on_rotation) == wanted.contains_key(&keys.restart_on_rotation)
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::stores::{SecretValue, Stores};
    use crate::telemetry::Metrics;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::ByteString;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn rec(store: &str, path: &str, property: Option<&str>) -> SecretRef {
        SecretRef {
            store: store.into(),
            path: path.into(),
            property: property.map(str::to_owned),
            version: None,
            refresh: None,
        }
    }

    #[test]
    fn due_after_the_shortest_interval_of_its_stores() {
        let sources: BTreeMap<String, KeySource> = [
            ("a".to_owned(), rec("vault", "x", None).into()),
            ("b".to_owned(), rec("aws", "y", None).into()),
            ("c".to_owned(), rec("file", "z", None).into()),
        ]
        .into();
        let intervals = |s: &str| match s {
            "vault" => Some(Duration::from_secs(300)),
            "aws" => Some(Duration::from_secs(60)),
            _ => None,
        };
        let min = Duration::from_secs(60);
        assert_eq!(
            refresh_interval(&sources, intervals, min),
            Some(Duration::from_secs(60))
        );
        let only_file: BTreeMap<String, KeySource> = [("c".to_owned(), rec("file", "z", None).into())].into();
        assert_eq!(refresh_interval(&only_file, intervals, min), None);
        // A reference's own refresh= makes the Secret due when it is due,
        // even for a store that does not refresh; held to the minimum.
        let own = |secs| SecretRef {
            refresh: Some(Duration::from_secs(secs)),
            ..rec("file", "z", None)
        };
        let with_own: BTreeMap<String, KeySource> = [
            ("a".to_owned(), rec("vault", "x", None).into()),
            ("c".to_owned(), own(120).into()),
        ]
        .into();
        assert_eq!(
            refresh_interval(&with_own, intervals, min),
            Some(Duration::from_secs(120))
        );
        let below: BTreeMap<String, KeySource> = [("c".to_owned(), own(20).into())].into();
        assert_eq!(refresh_interval(&below, intervals, min), Some(min));

        assert!(!is_due(Some(at(0)), Duration::from_secs(60), at(59)));
        assert!(is_due(Some(at(0)), Duration::from_secs(60), at(60)));
        assert!(is_due(None, Duration::from_secs(60), at(0)));
    }

    fn recorded(namespace: &str, service_account: &str, sources: &[(&str, SecretRef)]) -> Recorded {
        let sources: BTreeMap<String, KeySource> = sources
            .iter()
            .map(|(k, r)| ((*k).to_owned(), r.clone().into()))
            .collect();
        Recorded {
            namespace: namespace.into(),
            name: "sesame-0123456789abcdef".into(),
            service_account: service_account.into(),
            references: sources
                .values()
                .flat_map(KeySource::references)
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            sources,
            restart_on_rotation: false,
            refreshed_at: at(500).to_string(),
        }
    }

    #[test]
    fn last_refreshed_is_the_signed_annotation() {
        let s = Secret {
            metadata: ObjectMeta {
                creation_timestamp: Some(Time(at(0))),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut r = recorded("a", "default", &[]);
        assert_eq!(last_refreshed(&r, &s), Some(at(500)));
        r.refreshed_at = "not a time".into();
        assert_eq!(last_refreshed(&r, &s), Some(at(0)));
    }

    #[test]
    fn one_fetch_per_secret_and_failures_keep_their_class() {
        let sources: BTreeMap<String, KeySource> = [
            (
                "db.password".to_owned(),
                rec("vault", "app/db", Some("password")).into(),
            ),
            ("db.user".to_owned(), rec("vault", "app/db", Some("user")).into()),
            ("token".to_owned(), rec("file", "token", None).into()),
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
        assert_eq!(
            RotationError::NamespaceUnknown("x".into()).class(),
            "namespace_unknown"
        );
    }

    /// The policy of the tests: each namespace its own subtree of the file
    /// store and its own Secrets of the `kubernetes` store; `ci` also
    /// `shared/*`; namespaces labelled `tier: gold` also `gold/*`.
    async fn engine() -> Engine {
        let config = Config::from_yaml(
            "stores:\n  - {name: dev, file: {path: secrets.yaml}}\n  - {name: k8s, kubernetes: {}}\npolicy:\n  rules:\n    - {name: own, namespaces: ['*'], stores: [dev], paths: ['apps/{namespace}/**']}\n    - {name: own-k8s, namespaces: ['*'], stores: [k8s], paths: ['{namespace}/*']}\n    - {name: ci, namespaces: ['*'], serviceAccounts: [ci], stores: [dev], paths: ['shared/*']}\n    - {name: gold, namespaceSelector: {matchLabels: {tier: gold}}, stores: [dev], paths: ['gold/*']}\n",
            "t",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secrets.yaml"), "{}\n").unwrap();
        let stores = Stores::from_config(&config.stores, dir.path(), &Arc::new(Metrics::new()), None)
            .await
            .unwrap();
        Engine::new(&config, stores)
    }

    /// A signed record can only name what Sesame recorded, but the policy
    /// may have changed since (or the Secret may have been replayed): each
    /// reference is granted again, or its key goes.
    #[tokio::test]
    async fn rotation_grants_only_what_the_current_policy_grants() {
        let e = engine().await;
        let own = rec("dev", "apps/team-a/db", Some("password"));
        let secret = recorded(
            "team-a",
            "web",
            &[
                ("own", own.clone()),
                ("other-team", rec("dev", "apps/team-b/db", Some("password"))),
                (
                    "kube-system",
                    rec("k8s", "kube-system/admin-token", Some("token")),
                ),
                ("k8s-own", rec("k8s", "team-a/db", Some("password"))),
                ("ungranted", rec("dev", "nobody/db", None)),
                ("outside", rec("dev", "../outside", None)),
                ("ci-only", rec("dev", "shared/token", None)),
                ("gold-only", rec("dev", "gold/token", None)),
            ],
        );
        let plain: BTreeMap<String, String> = BTreeMap::new();
        let decision = reauthorise(&e, &secret, Some(&plain)).unwrap();
        assert_eq!(decision.granted.keys().collect::<Vec<_>>(), ["k8s-own", "own"]);
        let revoked: Vec<&str> = decision.revoked.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            revoked,
            [
                "ci-only",
                "gold-only",
                "kube-system",
                "other-team",
                "outside",
                "ungranted"
            ]
        );
        let outside = decision.revoked.iter().find(|r| r.key == "outside").unwrap();
        assert!(outside.reason.contains("not allowed"), "{}", outside.reason);

        // The recorded subject and the namespace's current labels count.
        let as_ci = recorded("team-a", "ci", &[("ci-only", rec("dev", "shared/token", None))]);
        assert_eq!(reauthorise(&e, &as_ci, Some(&plain)).unwrap().revoked, []);
        let gold: BTreeMap<String, String> = [("tier".to_owned(), "gold".to_owned())].into();
        let in_gold = recorded("team-a", "web", &[("gold-only", rec("dev", "gold/token", None))]);
        assert_eq!(reauthorise(&e, &in_gold, Some(&gold)).unwrap().revoked, []);
        assert_eq!(reauthorise(&e, &in_gold, Some(&plain)).unwrap().revoked.len(), 1);

        // A store that is gone from the configuration fails the Secret
        // without removing anything.
        let gone = recorded("team-a", "web", &[("x", rec("vault", "apps/team-a/db", None))]);
        assert_eq!(
            reauthorise(&e, &gone, Some(&plain)),
            Err(RotationError::UnknownStore("vault".into()))
        );
    }

    /// A template key is granted while every placeholder is; one refused
    /// placeholder takes the key out, named in the revocation.
    #[tokio::test]
    async fn a_template_key_needs_every_placeholder_granted() {
        let e = engine().await;
        let parse = |text: &str| {
            let a: BTreeMap<String, String> =
                [("sesame.dev/template.URL".to_owned(), text.to_owned())].into();
            crate::inject::annotations::parse("sesame.dev", &a)
                .unwrap()
                .templates
                .remove(0)
                .template
        };
        let mut secret = recorded("team-a", "web", &[]);
        secret.sources = [
            (
                "template.OK".to_owned(),
                KeySource::Template {
                    template: parse("{{ dev:apps/team-a/db#user }}:{{ dev:apps/team-a/db#password }}"),
                },
            ),
            (
                "template.STOLEN".to_owned(),
                KeySource::Template {
                    template: parse(
                        "{{ dev:apps/team-a/db#user }}:{{ dev:apps/team-b/db#password | base64 }}",
                    ),
                },
            ),
        ]
        .into();
        let decision = reauthorise(&e, &secret, Some(&BTreeMap::new())).unwrap();
        assert_eq!(decision.granted.keys().collect::<Vec<_>>(), ["template.OK"]);
        assert_eq!(decision.revoked.len(), 1);
        assert_eq!(decision.revoked[0].key, "template.STOLEN");
        assert_eq!(decision.revoked[0].reference.path, "apps/team-b/db");
        // Every placeholder is fetched, each secret once.
        assert_eq!(fetches(&secret.sources).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_writes_and_banks_no_burst_while_idle() {
        let mut pacer = Pacer::new(50);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pacer.ready().await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(80),
            "the first at once, then 20 ms apart"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle = tokio::time::Instant::now();
        pacer.ready().await;
        pacer.ready().await;
        assert_eq!(
            idle.elapsed(),
            Duration::from_millis(20),
            "ten idle seconds allow one write at once, not 500"
        );
    }

    #[test]
    fn only_new_values_count_as_a_change() {
        let mut stored = Secret {
            data: Some(
                [
                    ("a".to_owned(), ByteString(b"1".to_vec())),
                    ("b".to_owned(), ByteString(b"2".to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        crate::kube::digest::digested(&mut stored, "sesame.dev");
        let same: BTreeMap<String, SecretValue> = [("a".to_owned(), SecretValue::from("1"))].into();
        assert!(
            !any_value_differs(&stored, &same),
            "a key leaving is not a new value"
        );
        let new: BTreeMap<String, SecretValue> = [("a".to_owned(), SecretValue::from("9"))].into();
        assert!(any_value_differs(&stored, &new));
        let added: BTreeMap<String, SecretValue> = [("c".to_owned(), SecretValue::from("3"))].into();
        assert!(any_value_differs(&stored, &added));
        let mut note = "é".repeat(600);
        truncate(&mut note, 1000);
        assert!(note.len() <= 1000 && note.is_char_boundary(note.len()));
    }
}
