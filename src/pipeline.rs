//! The admission pipeline for one Pod: annotations → references → policy →
//! stores → plan → patch. `serve` and `mutate` both run exactly this.

use std::sync::Arc;
use std::time::Duration;

use json_patch::PatchOperation;

use crate::config::Config;
use crate::inject::annotations::{self, INJECTED_SUFFIX};
use crate::inject::{build_patch, build_plan, Grant, ManagedSecret, PlanInput, PodView, SecretRef};
use crate::policy::NamespacePolicy;
use crate::stores::{SecretLocator, StoreRequest, Stores};

/// Everything the pipeline needs, built once from the configuration and
/// swapped whole when the configuration changes.
pub struct Engine {
    prefix: String,
    marker_key: String,
    policy: NamespacePolicy,
    stores: Stores,
    resolve_timeout: Duration,
}

/// The Pod to work on.
pub struct PodInput<'a> {
    /// `request.namespace` of the AdmissionRequest (never the Pod's own metadata).
    pub namespace: &'a str,
    pub pod: &'a PodView,
    /// JSON Pointer to the Pod inside the document (`""`, `/spec/template`, ...).
    pub base: &'a str,
    /// A tighter budget than the configured one (the API server's `timeout`).
    pub budget: Option<Duration>,
}

/// What happens to the Pod.
#[derive(Debug)]
pub enum Verdict {
    /// No Sesame annotation: allowed, no patch.
    Untouched,
    Mutated(Mutation),
    Denied(Denial),
}

#[derive(Debug)]
pub struct Mutation {
    pub patch: Vec<PatchOperation>,
    /// The Secret to apply before answering (secretRef mode).
    pub secret: Option<ManagedSecret>,
    pub grants: Vec<Grant>,
    pub warnings: Vec<String>,
}

/// A refusal whose message is safe to show: it names annotations, stores,
/// paths and rules, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: u16,
    /// Metric label: `malformed`, `policy`, `not_found`, `unreachable`, ...
    pub class: &'static str,
    pub message: String,
    /// The references involved, for the audit log line.
    pub references: Vec<SecretRef>,
}

impl Denial {
    fn new(code: u16, class: &'static str, message: String, references: Vec<SecretRef>) -> Self {
        Self {
            code,
            class,
            message,
            references,
        }
    }
}

impl Engine {
    pub fn new(config: &Config, stores: Stores) -> Result<Self, String> {
        Ok(Self {
            marker_key: format!("{}/{}", config.annotation_prefix, INJECTED_SUFFIX),
            prefix: config.annotation_prefix.clone(),
            policy: NamespacePolicy::new(&config.policy)?,
            stores,
            resolve_timeout: config.resolve_timeout,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn marker_key(&self) -> &str {
        &self.marker_key
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    pub fn policy(&self) -> &NamespacePolicy {
        &self.policy
    }

    /// The cheap test that lets un-annotated Pods through without work.
    pub fn wants(&self, pod: &PodView) -> bool {
        annotations::has_requests(&self.prefix, pod.annotations().map(|(k, _)| k))
    }

    /// Runs the whole pipeline for one Pod.
    pub async fn evaluate(&self, input: &PodInput<'_>) -> Verdict {
        if !self.wants(input.pod) {
            return Verdict::Untouched;
        }
        let empty = Default::default();
        let annotations = input.pod.metadata.annotations.as_ref().unwrap_or(&empty);
        let request = match annotations::parse(&self.prefix, annotations) {
            Ok(r) => r,
            Err(e) => return Verdict::Denied(Denial::new(400, "malformed", e.to_string(), Vec::new())),
        };
        let references: Vec<SecretRef> = request.injections.iter().map(|i| i.reference.clone()).collect();

        // Policy first: nothing is fetched for a Pod that may not have it.
        let mut grants = Vec::with_capacity(request.injections.len());
        for injection in &request.injections {
            let r = &injection.reference;
            if self.stores.get(&r.store).is_none() {
                let mut known: Vec<&str> = self.stores.names().collect();
                known.sort_unstable();
                return Verdict::Denied(Denial::new(
                    400,
                    "unknown_store",
                    format!(
                        "annotation \"{}\": no store is named \"{}\" (configured: {})",
                        injection.source,
                        r.store,
                        known.join(", ")
                    ),
                    references,
                ));
            }
            match self.policy.authorize(input.namespace, &r.store, &r.path) {
                Ok(rule) => grants.push(Grant {
                    annotation: injection.source.clone(),
                    reference: r.clone(),
                    rule: rule.to_owned(),
                }),
                Err(denial) => {
                    return Verdict::Denied(Denial::new(
                        403,
                        "policy",
                        format!("annotation \"{}\": {denial}", injection.source),
                        references,
                    ))
                }
            }
        }

        let requests: Vec<StoreRequest> = request
            .injections
            .iter()
            .map(|i| StoreRequest {
                store: i.reference.store.clone(),
                locator: SecretLocator::new(i.reference.path.clone(), i.reference.version.clone()),
            })
            .collect();
        let budget = input
            .budget
            .map_or(self.resolve_timeout, |b| b.min(self.resolve_timeout));
        let resolved = self.stores.resolve(&requests, budget).await;

        let plan = match build_plan(&PlanInput {
            namespace: input.namespace,
            pod: input.pod,
            mode: request.mode,
            inline_allowed: self.policy.inline_allowed(input.namespace),
            injections: &request.injections,
            resolved: &resolved,
        }) {
            Ok(p) => p,
            Err(e) => return Verdict::Denied(Denial::new(e.code(), e.class(), e.to_string(), references)),
        };
        let secret_name = plan.secret.as_ref().map(|s| s.name.as_str());
        let patch = match build_patch(input.pod, &plan, input.base, &self.marker_key, secret_name) {
            Ok(p) => p,
            Err(e) => return Verdict::Denied(Denial::new(422, "conflict", e.0, references)),
        };
        // Grants only for what was placed: skipped optional references are warnings.
        let warnings = plan.warnings;
        Verdict::Mutated(Mutation {
            patch,
            secret: plan.secret,
            grants,
            warnings,
        })
    }
}

/// Shares an engine between the server and a config reloader.
pub type SharedEngine = Arc<arc_swap::ArcSwap<Engine>>;
