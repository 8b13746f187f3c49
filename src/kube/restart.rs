//! Rolling restarts after a rotation, only where the workload asked for
//! them. The owners of a (verified) managed Secret only suggest candidates:
//! a ReplicaSet is followed to its Deployment, and every candidate
//! Deployment, StatefulSet or DaemonSet is restarted only when its own Pod
//! template opts in (`<prefix>/restart-on-rotation: "true"`) and its own
//! annotations produce this very Secret. Nothing a tenant can put on a
//! Secret (owners, annotations) decides alone. The restart is the one
//! `kubectl rollout restart` makes, conditional on the resourceVersion of
//! the template that was checked; an Argo Rollout (itself, or as the
//! controller of a ReplicaSet) is restarted through its `spec.restartAt`.
//!
//! Restarts are bounded (`RestartBudget`): a workload is restarted at most
//! once per `--restart-cooldown`, however many of its Secrets rotate, and
//! the cluster at most `--max-restarts-per-minute` times a minute. A
//! restart held back is deferred, not dropped: the rotator asks again on
//! later passes until it is made.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use ::kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::events::{Event, EventType, Recorder};
use ::kube::{Api, Client};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::args::RestartLimits;
use super::client::is_conflict;
use super::metrics::KubeMetrics;
use super::secret::{now_rfc3339, Recorded, FIELD_MANAGER};
use crate::inject::plan::secret_name_with_templates;
use crate::inject::{PodView, RefTemplate, SecretRef};
use crate::pipeline::{service_account, Engine};

/// The annotation `kubectl rollout restart` sets on the Pod template.
pub(crate) const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// How a kind of workload is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RestartStyle {
    /// Strategic merge patch of the Pod template's `restartedAt` annotation.
    TemplateAnnotation,
    /// JSON merge patch of `spec.restartAt` (Argo Rollouts; a custom
    /// resource takes no strategic merge patch).
    RestartAt,
}

/// A kind that can be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WorkloadKind {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub plural: &'static str,
    pub style: RestartStyle,
}

const fn apps(kind: &'static str, plural: &'static str) -> WorkloadKind {
    WorkloadKind {
        kind,
        api_version: "apps/v1",
        plural,
        style: RestartStyle::TemplateAnnotation,
    }
}

/// Argo Rollouts' Rollout.
pub(crate) const ROLLOUT: WorkloadKind = WorkloadKind {
    kind: "Rollout",
    api_version: "argoproj.io/v1alpha1",
    plural: "rollouts",
    style: RestartStyle::RestartAt,
};

/// The kinds that can be restarted.
const WORKLOADS: [WorkloadKind; 4] = [
    apps("Deployment", "deployments"),
    apps("StatefulSet", "statefulsets"),
    apps("DaemonSet", "daemonsets"),
    ROLLOUT,
];

fn workload_kind(api_version: &str, kind: &str) -> Option<WorkloadKind> {
    WORKLOADS
        .iter()
        .find(|w| w.kind == kind && w.api_version == api_version)
        .copied()
}

/// Which restarts may be made now (pure, given the instants): the last
/// restart of each workload and the restarts of the last minute, on this
/// replica's monotonic clock.
#[derive(Debug, Default)]
pub(crate) struct RestartBudget {
    limits: RestartLimits,
    last: HashMap<String, Instant>,
    recent: VecDeque<Instant>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl RestartBudget {
    pub(crate) fn new(limits: RestartLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Whether `workload` (`namespace/Kind/name`) may be restarted at `now`.
    /// `restarted_at` is the last restart the workload itself records (its
    /// template's `restartedAt`, or a Rollout's `restartAt`) and `wall` the
    /// wall-clock now: that record outlives a change of leader, the
    /// in-memory one does not depend on clocks agreeing.
    pub(crate) fn check(
        &mut self,
        workload: &str,
        restarted_at: Option<Timestamp>,
        now: Instant,
        wall: Timestamp,
    ) -> Result<(), Refused> {
        let cooldown = self.limits.cooldown;
        self.last.retain(|_, at| now.duration_since(*at) < cooldown);
        while self
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= MINUTE)
        {
            self.recent.pop_front();
        }
        let signed = SignedDuration::try_from(cooldown).unwrap_or(SignedDuration::MAX);
        let recorded_recently = restarted_at.is_some_and(|t| {
            let age = wall.duration_since(t);
            age >= SignedDuration::ZERO && age < signed
        });
        if self.last.contains_key(workload) || recorded_recently {
            return Err(Refused::Cooldown);
        }
        if self.recent.len() >= usize::try_from(self.limits.per_minute).unwrap_or(usize::MAX) {
            return Err(Refused::ClusterCap);
        }
        Ok(())
    }

    /// Counts a restart made at `now`.
    pub(crate) fn record(&mut self, workload: &str, now: Instant) {
        if !self.limits.cooldown.is_zero() {
            self.last.insert(workload.to_owned(), now);
        }
        self.recent.push_back(now);
    }
}

/// Why a candidate is not restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The template does not carry `<prefix>/restart-on-rotation: "true"`.
    NotOptedIn,
    /// The template's annotations produce another Secret (other
    /// references, another service account), or none.
    OtherSecret,
    /// The template's annotations do not parse.
    Unparsable,
    /// Restarted within `--restart-cooldown`: deferred.
    Cooldown,
    /// `--max-restarts-per-minute` reached: deferred.
    ClusterCap,
}

impl Refused {
    /// Metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::NotOptedIn => "not_opted_in",
            Self::OtherSecret => "other_secret",
            Self::Unparsable => "unparsable",
            Self::Cooldown => "cooldown",
            Self::ClusterCap => "cluster_cap",
        }
    }

    /// Whether the restart is only held back, to be made later.
    pub(crate) fn deferred(&self) -> bool {
        matches!(self, Self::Cooldown | Self::ClusterCap)
    }
}

/// Whether a workload's Pod `template` in `namespace` asks for a restart
/// when `secret` rotates (pure): it opts in, and its annotations, read as
/// the pipeline reads them (`Engine::request`), under the template's
/// service account, give this Secret's name as the plan names it
/// (`secret_name`). An optional reference the Secret does not hold is left
/// out, as the plan leaves out an optional secret that was missing.
pub(crate) fn template_asks_for_restart(
    engine: &Engine,
    namespace: &str,
    template: &PodView,
    secret: &Recorded,
) -> Result<(), Refused> {
    let request = engine
        .request(namespace, template)
        .map_err(|_| Refused::Unparsable)?;
    if !request.restart_on_rotation {
        return Err(Refused::NotOptedIn);
    }
    let held: BTreeSet<&SecretRef> = secret.references.iter().collect();
    let mut references: BTreeSet<SecretRef> = request
        .injections
        .iter()
        .filter(|i| !i.optional || held.contains(&i.reference))
        .map(|i| i.reference.clone())
        .collect();
    // A template counts as the plan counts it: an optional one only when
    // the Secret holds every placeholder it was rendered from.
    let templates: Vec<&RefTemplate> = request
        .templates
        .iter()
        .filter(|t| !t.optional || t.references().all(|r| held.contains(r)))
        .inspect(|t| references.extend(t.references().cloned()))
        .map(|t| &t.template)
        .collect();
    let references: Vec<SecretRef> = references.into_iter().collect();
    let produced = secret_name_with_templates(namespace, service_account(template), &references, &templates);
    if namespace == secret.namespace && !references.is_empty() && produced == secret.name {
        Ok(())
    } else {
        Err(Refused::OtherSecret)
    }
}

/// The workload kind a Secret's owner suggests (pure): a Deployment,
/// StatefulSet, DaemonSet or Argo Rollout itself, or the Deployment or
/// Rollout that controls a ReplicaSet (`rs_controller`). Anything else has
/// nothing to roll.
pub(crate) fn candidate(
    owner: &OwnerReference,
    rs_controller: Option<&OwnerReference>,
) -> Option<(WorkloadKind, String)> {
    if owner.kind == "ReplicaSet" && owner.api_version == "apps/v1" {
        return rs_controller.and_then(|c| {
            workload_kind(&c.api_version, &c.kind)
                .filter(|w| w.kind == "Deployment" || *w == ROLLOUT)
                .map(|w| (w, c.name.clone()))
        });
    }
    workload_kind(&owner.api_version, &owner.kind).map(|w| (w, owner.name.clone()))
}

/// The strategic merge patch of `kubectl rollout restart`, conditional on
/// `resource_version` (the template that was checked).
pub(crate) fn restart_patch(now: &str, resource_version: Option<&str>) -> Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}},
    })
}

/// The JSON merge patch that restarts an Argo Rollout (its controller
/// replaces every Pod created before `restartAt`), conditional on
/// `resource_version`.
pub(crate) fn rollout_restart_patch(now: &str, resource_version: Option<&str>) -> Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"restartAt": now},
    })
}

/// When the workload says it was last restarted (pure): the template's
/// `restartedAt` annotation, or a Rollout's `spec.restartAt`.
pub(crate) fn last_restart(kind: WorkloadKind, object: &Value) -> Option<Timestamp> {
    let text = match kind.style {
        RestartStyle::TemplateAnnotation => object
            .pointer("/spec/template/metadata/annotations")
            .and_then(|a| a.get(RESTARTED_AT)),
        RestartStyle::RestartAt => object.pointer("/spec/restartAt"),
    };
    text.and_then(Value::as_str).and_then(|t| t.parse().ok())
}

fn workload_api(client: &Client, namespace: &str, kind: WorkloadKind) -> Api<DynamicObject> {
    let (group, version) = kind.api_version.split_once('/').unwrap_or(("", kind.api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind.kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, kind.plural);
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// What the restarts after one rotation did.
#[derive(Debug, Default)]
pub(crate) struct Restarts {
    /// `Kind/name` of each workload restarted.
    pub restarted: Vec<String>,
    /// A restart was held back by the cooldown or the cap: ask again later.
    pub deferred: bool,
}

/// Restarts the workloads among a rotated Secret's owners that asked for it.
pub(crate) struct Restarter<'a> {
    pub client: &'a Client,
    pub engine: &'a Engine,
    pub metrics: &'a KubeMetrics,
    pub budget: &'a Mutex<RestartBudget>,
    pub events: &'a Recorder,
}

impl Restarter<'_> {
    /// The candidates `secret`'s owners suggest, each once.
    async fn candidates(&self, secret: &Secret, namespace: &str) -> BTreeSet<(WorkloadKind, String)> {
        let mut out = BTreeSet::new();
        for owner in secret.metadata.owner_references.iter().flatten() {
            let rs_controller = if owner.kind == "ReplicaSet" && owner.api_version == "apps/v1" {
                let api: Api<PartialObjectMeta<ReplicaSet>> = Api::namespaced(self.client.clone(), namespace);
                match api.get_opt(&owner.name).await {
                    Ok(rs) => rs.and_then(|rs| {
                        rs.metadata
                            .owner_references
                            .into_iter()
                            .flatten()
                            .find(|o| o.controller == Some(true))
                    }),
                    Err(e) => {
                        tracing::warn!(namespace, replicaset = %owner.name, error = %e, "cannot read ReplicaSet for a restart");
                        None
                    }
                }
            } else {
                None
            };
            match candidate(owner, rs_controller.as_ref()) {
                Some(c) => {
                    out.insert(c);
                }
                None => {
                    tracing::debug!(namespace, kind = %owner.kind, name = %owner.name, "owner cannot be restarted; skipped")
                }
            }
        }
        out
    }

    /// Checks every candidate's template and restarts those that asked,
    /// within the budget.
    pub(crate) async fn restart(&self, secret: &Secret, recorded: &Recorded) -> Restarts {
        let namespace = recorded.namespace.as_str();
        let mut done = Restarts::default();
        for (kind, name) in self.candidates(secret, namespace).await {
            let api = workload_api(self.client, namespace, kind);
            // Once more when the workload changed between the check and the patch.
            for attempt in 0..2 {
                match self.check_and_restart(&api, kind, &name, recorded).await {
                    Ok(Ok(())) => {
                        self.metrics.restart(kind.kind);
                        tracing::info!(namespace, kind = kind.kind, name = %name, "rolling restart after rotation");
                        done.restarted.push(format!("{}/{name}", kind.kind));
                    }
                    Ok(Err(refused)) => done.deferred |= refused.deferred(),
                    Err(e) if attempt == 0 && is_conflict(&e) => continue,
                    Err(e) => {
                        self.metrics.rotation_failure("restart");
                        tracing::warn!(namespace, kind = kind.kind, name = %name, error = %e, "rolling restart failed");
                    }
                }
                break;
            }
        }
        done
    }

    /// Reads the workload, checks its template and the budget, and patches
    /// it when it asked: `Ok(Ok(()))` when restarted.
    async fn check_and_restart(
        &self,
        api: &Api<DynamicObject>,
        kind: WorkloadKind,
        name: &str,
        recorded: &Recorded,
    ) -> Result<Result<(), Refused>, ::kube::Error> {
        let Some(workload) = api.get_opt(name).await? else {
            return Ok(Err(Refused::OtherSecret));
        };
        let template = workload
            .data
            .pointer("/spec/template")
            .and_then(|t| PodView::deserialize(t).ok())
            .unwrap_or_default();
        let namespace = recorded.namespace.as_str();
        if let Err(refused) = template_asks_for_restart(self.engine, namespace, &template, recorded) {
            return Ok(Err(self.refused(kind, &workload, recorded, refused).await));
        }
        let key = format!("{namespace}/{}/{name}", kind.kind);
        let now = Instant::now();
        let checked = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(&key, last_restart(kind, &workload.data), now, Timestamp::now());
        if let Err(refused) = checked {
            return Ok(Err(self.refused(kind, &workload, recorded, refused).await));
        }
        let rv = workload.metadata.resource_version.as_deref();
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        match kind.style {
            RestartStyle::TemplateAnnotation => {
                let patch = restart_patch(&now_rfc3339(), rv);
                api.patch(name, &params, &Patch::Strategic(&patch)).await?;
            }
            RestartStyle::RestartAt => {
                let patch = rollout_restart_patch(&now_rfc3339(), rv);
                api.patch(name, &params, &Patch::Merge(&patch)).await?;
            }
        }
        self.budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(&key, now);
        let note = format!(
            "Sesame restarted this {} because managed Secret {} was rotated",
            kind.kind, recorded.name
        );
        self.record(kind, &workload, EventType::Normal, "RestartedAfterRotation", note)
            .await;
        Ok(Ok(()))
    }

    /// Counts and logs a restart not made; a deferred one (the cooldown,
    /// the cluster cap) is also an Event on the workload, where its team
    /// looks for why the Pods still run the old values.
    async fn refused(
        &self,
        kind: WorkloadKind,
        workload: &DynamicObject,
        recorded: &Recorded,
        refused: Refused,
    ) -> Refused {
        self.metrics.restart_refused(refused.label());
        let name = workload.metadata.name.as_deref().unwrap_or("");
        let (namespace, secret, reason) = (recorded.namespace.as_str(), &recorded.name, refused.label());
        if !refused.deferred() {
            tracing::info!(namespace, kind = kind.kind, name, %secret, reason, "not restarted: its Pod template does not ask for restarts on rotation of this Secret");
            return refused;
        }
        tracing::info!(namespace, kind = kind.kind, name, %secret, reason, "restart deferred: restarted within the cooldown, or the cluster-wide cap is reached");
        let limits = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .limits;
        let why = match refused {
            Refused::Cooldown => format!(
                "it was restarted less than {} ago (--restart-cooldown)",
                humantime::format_duration(limits.cooldown)
            ),
            _ => format!(
                "the cluster-wide cap of {} restarts a minute is reached (--max-restarts-per-minute)",
                limits.per_minute
            ),
        };
        let note = format!(
            "Sesame deferred the restart after managed Secret {secret} was rotated: {why}; it restarts this {} on a later pass",
            kind.kind
        );
        self.record(kind, workload, EventType::Normal, "RestartDeferred", note)
            .await;
        refused
    }

    /// Publishes an Event on the workload (best effort: a failure is logged).
    async fn record(
        &self,
        kind: WorkloadKind,
        workload: &DynamicObject,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let reference = ObjectReference {
            api_version: Some(kind.api_version.into()),
            kind: Some(kind.kind.into()),
            name: workload.metadata.name.clone(),
            namespace: workload.metadata.namespace.clone(),
            uid: workload.metadata.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Restart".into(),
            secondary: None,
        };
        if let Err(e) = self.events.publish(&event, &reference).await {
            tracing::warn!(namespace = ?reference.namespace, kind = kind.kind, name = ?reference.name, error = %e, "could not record the Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::stores::Stores;
    use crate::telemetry::Metrics;

    async fn engine() -> Engine {
        let config = Config::from_yaml(
            "stores:\n  - {name: dev, file: {path: secrets.yaml}}\n  - {name: k8s, kubernetes: {}}\npolicy:\n  rules:\n    - {name: own, namespaces: ['*'], stores: ['*'], paths: ['apps/{namespace}/**', '{namespace}/*']}\n",
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

    fn template(annotations: &[(&str, &str)], service_account: Option<&str>) -> PodView {
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        serde_json::from_value(json!({
            "metadata": {"annotations": annotations},
            "spec": {"serviceAccountName": service_account, "containers": [{"name": "app"}]},
        }))
        .unwrap()
    }

    fn reference(text: &str) -> SecretRef {
        text.parse().unwrap()
    }

    /// The Secret that Pods of `service_account` asking for `references`
    /// in team-a get, as the plan names and records it.
    fn recorded(service_account: &str, references: &[&str]) -> Recorded {
        let mut references: Vec<SecretRef> = references.iter().map(|r| reference(r)).collect();
        references.sort();
        Recorded {
            namespace: "team-a".into(),
            name: crate::inject::plan::secret_name("team-a", service_account, &references),
            service_account: service_account.into(),
            references,
            sources: BTreeMap::new(),
            restart_on_rotation: true,
            refreshed_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    const OPT_IN: (&str, &str) = ("sesame.dev/restart-on-rotation", "true");

    #[tokio::test]
    async fn a_workload_that_opted_in_and_produces_the_secret_is_restarted() {
        let e = engine().await;
        let secret = recorded("web", &["dev:apps/team-a/db#password"]);
        let t = template(
            &[("sesame.dev/env.PW", "dev:apps/team-a/db#password"), OPT_IN],
            Some("web"),
        );
        assert_eq!(template_asks_for_restart(&e, "team-a", &t, &secret), Ok(()));
        // A bare name of a namespaced store is qualified as admission does.
        let k8s = recorded("default", &["k8s:team-a/db#password"]);
        let t = template(&[("sesame.dev/env.PW", "k8s:db#password"), OPT_IN], None);
        assert_eq!(template_asks_for_restart(&e, "team-a", &t, &k8s), Ok(()));
    }

    /// What a tenant can arrange on its side (owners and the restart flag
    /// on a Secret) does not make another workload restart: the workload's
    /// own template decides.
    #[tokio::test]
    async fn the_template_decides_not_the_secret() {
        let e = engine().await;
        let secret = recorded("web", &["dev:apps/team-a/db#password"]);
        let asks = [("sesame.dev/env.PW", "dev:apps/team-a/db#password")];
        // The template uses the Secret but did not opt in.
        assert_eq!(
            template_asks_for_restart(&e, "team-a", &template(&asks, Some("web")), &secret),
            Err(Refused::NotOptedIn)
        );
        // Opted in, but for another Secret: other references ...
        let other = template(
            &[("sesame.dev/env.PW", "dev:apps/team-a/other"), OPT_IN],
            Some("web"),
        );
        assert_eq!(
            template_asks_for_restart(&e, "team-a", &other, &secret),
            Err(Refused::OtherSecret)
        );
        // ... a reference more ...
        let more = template(
            &[
                ("sesame.dev/env.PW", "dev:apps/team-a/db#password"),
                ("sesame.dev/env.USER", "dev:apps/team-a/db#user"),
                OPT_IN,
            ],
            Some("web"),
        );
        assert_eq!(
            template_asks_for_restart(&e, "team-a", &more, &secret),
            Err(Refused::OtherSecret)
        );
        // ... another service account ...
        let ci = template(&[asks[0], OPT_IN], Some("ci"));
        assert_eq!(
            template_asks_for_restart(&e, "team-a", &ci, &secret),
            Err(Refused::OtherSecret)
        );
        // ... another namespace (the same annotations name another Secret there) ...
        assert_eq!(
            template_asks_for_restart(&e, "team-b", &template(&[asks[0], OPT_IN], Some("web")), &secret),
            Err(Refused::OtherSecret)
        );
        // ... or nothing at all.
        assert_eq!(
            template_asks_for_restart(&e, "team-a", &template(&[OPT_IN], Some("web")), &secret),
            Err(Refused::OtherSecret)
        );
        assert_eq!(
            template_asks_for_restart(
                &e,
                "team-a",
                &template(&[("sesame.dev/env.PW", "::"), OPT_IN], Some("web")),
                &secret
            ),
            Err(Refused::Unparsable)
        );
    }

    #[tokio::test]
    async fn optional_references_the_secret_does_not_hold_are_left_out() {
        let e = engine().await;
        let secret = recorded("web", &["dev:apps/team-a/db#password"]);
        let t = template(
            &[
                ("sesame.dev/env.PW", "dev:apps/team-a/db#password"),
                ("sesame.dev/env.EXTRA", "dev:apps/team-a/extra optional=true"),
                OPT_IN,
            ],
            Some("web"),
        );
        assert_eq!(template_asks_for_restart(&e, "team-a", &t, &secret), Ok(()));
        // A required one is not.
        let t = template(
            &[
                ("sesame.dev/env.PW", "dev:apps/team-a/db#password"),
                ("sesame.dev/env.EXTRA", "dev:apps/team-a/extra"),
                OPT_IN,
            ],
            Some("web"),
        );
        assert_eq!(
            template_asks_for_restart(&e, "team-a", &t, &secret),
            Err(Refused::OtherSecret)
        );
    }

    #[test]
    fn owners_suggest_candidates_only_among_workloads() {
        let owner = |kind: &str, name: &str| OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        };
        let deploy = OwnerReference {
            controller: Some(true),
            ..owner("Deployment", "web")
        };
        let kind = |(w, n): (WorkloadKind, String)| (w.kind, n);
        assert_eq!(
            candidate(&owner("ReplicaSet", "web-5d4f"), Some(&deploy)).map(kind),
            Some(("Deployment", "web".to_owned()))
        );
        // Argo Rollouts: a Rollout, and the Rollout controlling a ReplicaSet.
        let rollout = OwnerReference {
            api_version: "argoproj.io/v1alpha1".into(),
            controller: Some(true),
            ..owner("Rollout", "canary")
        };
        assert_eq!(candidate(&rollout, None), Some((ROLLOUT, "canary".to_owned())));
        assert_eq!(
            candidate(&owner("ReplicaSet", "canary-7f"), Some(&rollout)),
            Some((ROLLOUT, "canary".to_owned()))
        );
        // A kind named Rollout in another group is not one.
        let other = OwnerReference {
            api_version: "example.com/v1".into(),
            ..rollout.clone()
        };
        assert_eq!(candidate(&other, None), None);
        assert_eq!(candidate(&owner("ReplicaSet", "x"), Some(&other)), None);
        // A bare ReplicaSet has nothing to roll.
        assert_eq!(candidate(&owner("ReplicaSet", "rs"), None), None);
        assert_eq!(
            candidate(&owner("StatefulSet", "db"), None).map(kind),
            Some(("StatefulSet", "db".to_owned()))
        );
        assert_eq!(
            candidate(&owner("DaemonSet", "agent"), None).map(kind),
            Some(("DaemonSet", "agent".to_owned()))
        );
        let job = OwnerReference {
            api_version: "batch/v1".into(),
            ..owner("Job", "migrate")
        };
        assert_eq!(candidate(&job, None), None);
        let foreign = OwnerReference {
            api_version: "example.com/v1".into(),
            ..owner("Deployment", "web")
        };
        assert_eq!(candidate(&foreign, None), None);
        let patch = restart_patch("2026-01-01T00:00:00Z", Some("42"));
        assert_eq!(
            patch["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn rollout_patch_and_recorded_restarts() {
        let patch = rollout_restart_patch("2026-01-01T00:00:00Z", Some("7"));
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "7"}, "spec": {"restartAt": "2026-01-01T00:00:00Z"}})
        );
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let rollout = json!({"spec": {"restartAt": "2026-01-01T00:00:00Z"}});
        assert_eq!(last_restart(ROLLOUT, &rollout), Some(t));
        let deployment = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: "2026-01-01T00:00:00Z"}}}}});
        assert_eq!(last_restart(WORKLOADS[0], &deployment), Some(t));
        assert_eq!(last_restart(WORKLOADS[0], &rollout), None);
    }

    #[test]
    fn a_workload_is_restarted_once_per_cooldown() {
        let limits = RestartLimits {
            cooldown: Duration::from_secs(600),
            per_minute: 100,
        };
        let mut budget = RestartBudget::new(limits);
        let t0 = Instant::now();
        let wall: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(budget.check("a/Deployment/web", None, t0, wall), Ok(()));
        budget.record("a/Deployment/web", t0);
        // Its other Secrets rotating moments later restart nothing.
        let soon = t0 + Duration::from_secs(1);
        assert_eq!(
            budget.check("a/Deployment/web", None, soon, wall),
            Err(Refused::Cooldown)
        );
        // Another workload is not held back.
        assert_eq!(budget.check("a/Deployment/api", None, soon, wall), Ok(()));
        let later = t0 + Duration::from_secs(599);
        assert_eq!(
            budget.check("a/Deployment/web", None, later, wall),
            Err(Refused::Cooldown)
        );
        let after = t0 + Duration::from_secs(600);
        assert_eq!(budget.check("a/Deployment/web", None, after, wall), Ok(()));
        // The workload's own record counts too (a restart by the previous
        // leader, or by hand): within the cooldown it defers ...
        let fresh = Instant::now();
        let mut budget = RestartBudget::new(limits);
        let recent = wall.checked_sub(SignedDuration::from_secs(60)).unwrap();
        assert_eq!(
            budget.check("a/Deployment/web", Some(recent), fresh, wall),
            Err(Refused::Cooldown)
        );
        // ... and an old one does not.
        let old = wall.checked_sub(SignedDuration::from_secs(3600)).unwrap();
        assert_eq!(budget.check("a/Deployment/web", Some(old), fresh, wall), Ok(()));
        // A zero cooldown bounds nothing.
        let mut none = RestartBudget::new(RestartLimits {
            cooldown: Duration::ZERO,
            per_minute: 100,
        });
        none.record("a/Deployment/web", fresh);
        assert_eq!(none.check("a/Deployment/web", Some(wall), fresh, wall), Ok(()));
    }

    #[test]
    fn the_cluster_is_capped_per_minute() {
        let mut budget = RestartBudget::new(RestartLimits {
            cooldown: Duration::from_secs(600),
            per_minute: 3,
        });
        let t0 = Instant::now();
        let wall: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for i in 0..3u64 {
            let w = format!("a/Deployment/w{i}");
            let at = t0 + Duration::from_secs(i);
            assert_eq!(budget.check(&w, None, at, wall), Ok(()));
            budget.record(&w, at);
        }
        let at = t0 + Duration::from_secs(10);
        assert_eq!(
            budget.check("a/Deployment/w3", None, at, wall),
            Err(Refused::ClusterCap)
        );
        // A minute after the first, one more may go.
        let at = t0 + Duration::from_secs(60);
        assert_eq!(budget.check("a/Deployment/w3", None, at, wall), Ok(()));
        assert!(Refused::ClusterCap.deferred() && Refused::Cooldown.deferred());
        assert!(!Refused::NotOptedIn.deferred());
    }
}
