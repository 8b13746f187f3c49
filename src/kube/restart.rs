//! Rolling restarts after a rotation, only where the workload asked for
//! them. The owners of a (verified) managed Secret only suggest candidates:
//! a ReplicaSet is followed to its Deployment, and every candidate
//! Deployment, StatefulSet or DaemonSet is restarted only when its own Pod
//! template opts in (`<prefix>/restart-on-rotation: "true"`) and its own
//! annotations produce this very Secret. Nothing a tenant can put on a
//! Secret (owners, annotations) decides alone. The restart is the one
//! `kubectl rollout restart` makes, conditional on the resourceVersion of
//! the template that was checked.

use std::collections::BTreeSet;

use ::kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use ::kube::core::PartialObjectMeta;
use ::kube::{Api, Client};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::Deserialize;
use serde_json::{json, Value};

use super::client::is_conflict;
use super::metrics::KubeMetrics;
use super::secret::{now_rfc3339, Recorded, FIELD_MANAGER};
use crate::inject::plan::secret_name_with_templates;
use crate::inject::{PodView, RefTemplate, SecretRef};
use crate::pipeline::{service_account, Engine};

/// The annotation `kubectl rollout restart` sets on the Pod template.
pub(crate) const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// The kinds that can be restarted, with their resource names.
const WORKLOADS: [(&str, &str); 3] = [
    ("Deployment", "deployments"),
    ("StatefulSet", "statefulsets"),
    ("DaemonSet", "daemonsets"),
];

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
}

impl Refused {
    /// Metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::NotOptedIn => "not_opted_in",
            Self::OtherSecret => "other_secret",
            Self::Unparsable => "unparsable",
        }
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
/// StatefulSet or DaemonSet itself, or the Deployment that controls a
/// ReplicaSet (`rs_controller`). Anything else has nothing to roll.
pub(crate) fn candidate(
    owner: &OwnerReference,
    rs_controller: Option<&OwnerReference>,
) -> Option<(&'static str, String)> {
    if owner.api_version != "apps/v1" {
        return None;
    }
    if owner.kind == "ReplicaSet" {
        return rs_controller
            .filter(|c| c.kind == "Deployment" && c.api_version == "apps/v1")
            .map(|c| ("Deployment", c.name.clone()));
    }
    WORKLOADS
        .iter()
        .find(|(kind, _)| *kind == owner.kind)
        .map(|(kind, _)| (*kind, owner.name.clone()))
}

/// The strategic merge patch of `kubectl rollout restart`, conditional on
/// `resource_version` (the template that was checked).
pub(crate) fn restart_patch(now: &str, resource_version: Option<&str>) -> Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}},
    })
}

fn workload_api(client: &Client, namespace: &str, kind: &str) -> Option<Api<DynamicObject>> {
    let (kind, plural) = WORKLOADS.iter().find(|(k, _)| *k == kind)?;
    let gvk = GroupVersionKind::gvk("apps", "v1", kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    Some(Api::namespaced_with(client.clone(), namespace, &resource))
}

/// Restarts the workloads among a rotated Secret's owners that asked for it.
pub(crate) struct Restarter<'a> {
    pub client: &'a Client,
    pub engine: &'a Engine,
    pub metrics: &'a KubeMetrics,
}

impl Restarter<'_> {
    /// The candidates `secret`'s owners suggest, each once.
    async fn candidates(&self, secret: &Secret, namespace: &str) -> BTreeSet<(&'static str, String)> {
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

    /// Checks every candidate's template and restarts those that asked;
    /// returns `Kind/name` of each restarted.
    pub(crate) async fn restart(&self, secret: &Secret, recorded: &Recorded) -> Vec<String> {
        let namespace = recorded.namespace.as_str();
        let mut done = Vec::new();
        for (kind, name) in self.candidates(secret, namespace).await {
            let Some(api) = workload_api(self.client, namespace, kind) else {
                continue;
            };
            // Once more when the workload changed between the check and the patch.
            for attempt in 0..2 {
                match self.check_and_restart(&api, kind, &name, recorded).await {
                    Ok(true) => {
                        self.metrics.restart(kind);
                        tracing::info!(namespace, kind, name = %name, "rolling restart after rotation");
                        done.push(format!("{kind}/{name}"));
                    }
                    Ok(false) => {}
                    Err(e) if attempt == 0 && is_conflict(&e) => continue,
                    Err(e) => {
                        self.metrics.rotation_failure("restart");
                        tracing::warn!(namespace, kind, name = %name, error = %e, "rolling restart failed");
                    }
                }
                break;
            }
        }
        done
    }

    /// Reads the workload, checks its template, and patches it when it
    /// asked: `Ok(true)` when restarted.
    async fn check_and_restart(
        &self,
        api: &Api<DynamicObject>,
        kind: &'static str,
        name: &str,
        recorded: &Recorded,
    ) -> Result<bool, ::kube::Error> {
        let Some(workload) = api.get_opt(name).await? else {
            return Ok(false);
        };
        let template = workload
            .data
            .pointer("/spec/template")
            .and_then(|t| PodView::deserialize(t).ok())
            .unwrap_or_default();
        if let Err(refused) = template_asks_for_restart(self.engine, &recorded.namespace, &template, recorded)
        {
            self.metrics.restart_refused(refused.label());
            tracing::info!(
                namespace = %recorded.namespace,
                kind,
                name,
                secret = %recorded.name,
                reason = refused.label(),
                "not restarted: its Pod template does not ask for restarts on rotation of this Secret"
            );
            return Ok(false);
        }
        let patch = restart_patch(&now_rfc3339(), workload.metadata.resource_version.as_deref());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        api.patch(name, &params, &Patch::Strategic(&patch)).await?;
        Ok(true)
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
        assert_eq!(
            candidate(&owner("ReplicaSet", "web-5d4f"), Some(&deploy)),
            Some(("Deployment", "web".to_owned()))
        );
        // A bare ReplicaSet has nothing to roll.
        assert_eq!(candidate(&owner("ReplicaSet", "rs"), None), None);
        assert_eq!(
            candidate(&owner("StatefulSet", "db"), None),
            Some(("StatefulSet", "db".to_owned()))
        );
        assert_eq!(
            candidate(&owner("DaemonSet", "agent"), None),
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
}
