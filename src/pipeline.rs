//! The admission pipeline for one Pod: annotations → references → policy →
//! stores → plan → patch. `serve` and `mutate` both run exactly this.

mod memo;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use json_patch::PatchOperation;

use crate::config::{Config, LoadedConfig};
use crate::denial::DenialClass;
use crate::inject::annotations::{self, GrammarError, Mode, PodRequest, INJECTED_SUFFIX};
use crate::inject::data::KeySource;
use crate::inject::limits::{self, LimitExceeded};
use crate::inject::patch::encoded_len;
use crate::inject::plan::{secret_name, MANAGED_PREFIX};
use crate::inject::{
    build_patch, build_plan, Fetched, Grant, LimitsConfig, ManagedSecret, PlanInput, PodView, SecretRef,
};
use crate::policy::{NamespacePolicy, PolicyDenial, Subject};
use crate::stores::{
    SecretData, SecretLocator, SecretValue, StoreError, StoreRequest, Stores, WorkloadIdentity,
};
use crate::telemetry::Metrics;
use crate::validate::{escape_controls, Quote};
pub use memo::MemoUse;

/// Everything the pipeline needs, built once from the configuration and
/// swapped whole when the configuration changes.
pub struct Engine {
    prefix: String,
    marker_key: String,
    policy: NamespacePolicy,
    stores: Stores,
    resolve_timeout: Duration,
    /// Per store: how often managed Secrets using it are re-resolved.
    refresh_intervals: std::collections::HashMap<String, Duration>,
    /// How much one review may ask for.
    limits: LimitsConfig,
    /// Whether the workload webhook denies rather than warns.
    deny_workloads: bool,
    /// The shortest `refresh=` a reference may ask for.
    min_refresh: Duration,
    /// Verdicts kept for the identical Pods that follow.
    memo: memo::Memo,
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
    /// The namespace's labels, from the Namespace cache; `None` without a
    /// cluster (rules with a `namespaceSelector` then match nothing).
    pub namespace_labels: Option<&'a std::collections::BTreeMap<String, String>>,
    /// Who gets the answer: inline values go only to a caller Sesame
    /// trusts, unless the policy accepts the risk.
    pub caller: Caller,
    /// Finds the managed Secret of a namespace by name, verified as
    /// Sesame's own (the admission path's `LastKnownGood` port): a Pod in
    /// secretRef mode whose store is down is admitted against it.
    pub last_known_good: Option<FindKnownSecret<'a>>,
}

/// Finds a verified managed Secret by namespace and name.
pub type FindKnownSecret<'a> = &'a (dyn Fn(&str, &str) -> Option<KnownSecret> + Sync);

/// A managed Secret as the cluster holds it, read back only after its
/// provenance MAC verified: what it records and the data it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownSecret {
    pub service_account: String,
    pub references: Vec<SecretRef>,
    /// Key → what its value is made from.
    pub sources: BTreeMap<String, KeySource>,
    /// The keys it holds; Sesame's copy of the cluster keeps no values.
    pub keys: std::collections::BTreeSet<String>,
    /// RFC 3339 time of its last write or check against the stores.
    pub refreshed_at: String,
}

/// A Pod admitted against its existing managed Secret because stores failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromLastKnownGood {
    /// The managed Secret the Pod uses, unchanged.
    pub secret: String,
    /// The stores that failed, sorted.
    pub stores: Vec<String>,
    pub refreshed_at: String,
}

/// Who gets the pipeline's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The person running `sesame mutate`, or a webhook caller that
    /// presented a client certificate chaining to `--client-ca-file`.
    Trusted,
    /// A webhook caller Sesame cannot authenticate: it may be any Pod that
    /// can reach the webhook port, with a forged review.
    Unauthenticated,
}

/// What happens to the Pod.
#[derive(Debug)]
pub enum Verdict {
    /// No Sesame annotation: allowed, no patch.
    Untouched,
    /// Shared: the memo hands one to every identical Pod.
    Mutated(Arc<Mutation>),
    Denied(Denial),
}

#[derive(Debug, Clone)]
pub struct Mutation {
    pub patch: Vec<PatchOperation>,
    /// The Secret to apply before answering (secretRef mode).
    pub secret: Option<ManagedSecret>,
    pub grants: Vec<Grant>,
    pub warnings: Vec<String>,
    /// Set when a store failed and the Pod uses its managed Secret as it
    /// is (then `secret` is `None`: nothing is written).
    pub last_known_good: Option<Box<FromLastKnownGood>>,
    /// The patch as an AdmissionResponse carries it, made by the first
    /// review that answers with this mutation.
    pub(crate) encoded: std::sync::OnceLock<Option<Box<serde_json::value::RawValue>>>,
}

/// A refusal whose message is safe to show: it names annotations, stores,
/// paths and rules, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Why: the class knows the HTTP code and the metric label.
    pub class: DenialClass,
    pub message: String,
    /// The references involved, for the audit log line.
    pub references: Vec<SecretRef>,
}

impl Denial {
    /// The message's control and bidirectional characters are escaped
    /// here, the one way out for every denial: whatever a message quotes
    /// from the Pod cannot break or reorder it.
    pub(crate) fn new(class: DenialClass, message: String, references: Vec<SecretRef>) -> Self {
        Self {
            class,
            message: escape_controls(&message).into_owned(),
            references,
        }
    }

    fn with_references(mut self, references: Vec<SecretRef>) -> Self {
        self.references = references;
        self
    }

    pub(crate) fn limit(exceeded: LimitExceeded, references: Vec<SecretRef>) -> Self {
        Self::new(DenialClass::Limit, exceeded.to_string(), references)
    }

    /// The HTTP code of the AdmissionResponse status.
    pub fn code(&self) -> u16 {
        self.class.code()
    }
}

impl Engine {
    /// An engine over stores built elsewhere (tests, benches).
    pub fn new(config: &Config, stores: Stores) -> Self {
        Self {
            marker_key: format!("{}/{}", config.annotation_prefix, INJECTED_SUFFIX),
            prefix: config.annotation_prefix.clone(),
            policy: NamespacePolicy::new(&config.policy),
            stores,
            resolve_timeout: config.resolve_timeout,
            refresh_intervals: config
                .stores
                .iter()
                .filter_map(|s| s.refresh_interval.map(|d| (s.name.clone(), d)))
                .collect(),
            limits: config.limits,
            deny_workloads: config.workloads.deny,
            min_refresh: config.rotation.min_refresh,
            memo: memo::Memo::default(),
        }
    }

    /// Builds the stores of a loaded configuration and the engine over
    /// them. `kube` is the Kubernetes client, for the `kubernetes` store.
    pub async fn from_config(
        loaded: &LoadedConfig,
        metrics: &Arc<Metrics>,
        kube: Option<&::kube::Client>,
    ) -> anyhow::Result<Self> {
        let stores = Stores::from_config(&loaded.config.stores, &loaded.base_dir, metrics, kube).await?;
        Ok(Self::new(&loaded.config, stores))
    }

    /// The engine of a changed configuration. Stores whose section did not
    /// change are kept, with their caches and tokens: editing a policy rule
    /// logs in to no store again and empties no cache.
    pub async fn reload(
        &self,
        loaded: &LoadedConfig,
        metrics: &Arc<Metrics>,
        kube: Option<&::kube::Client>,
    ) -> anyhow::Result<Self> {
        let stores = self
            .stores
            .rebuilt(&loaded.config.stores, &loaded.base_dir, metrics, kube)
            .await?;
        Ok(Self::new(&loaded.config, stores))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The refresh interval of a store, if it has one.
    pub(crate) fn refresh_interval(&self, store: &str) -> Option<Duration> {
        self.refresh_intervals.get(store).copied()
    }

    pub fn resolve_timeout(&self) -> Duration {
        self.resolve_timeout
    }

    /// The limits per review.
    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The cheap test that lets un-annotated Pods through without work.
    pub fn wants(&self, pod: &PodView) -> bool {
        annotations::has_requests(&self.prefix, pod.annotations().map(|(k, _)| k))
    }

    /// Whether the pipeline has anything to say about the Pod: it asks for
    /// secrets, or it uses a managed Secret by name (which it may only do
    /// for the Secret its own annotations produce).
    pub(crate) fn concerns(&self, pod: &PodView) -> bool {
        self.wants(pod) || !pod.secret_names_with_prefix(MANAGED_PREFIX).is_empty()
    }

    /// What the Pod's (or a workload template's) annotations ask for, as
    /// the pipeline reads them: parsed (messages quoting at most
    /// `limits.maxQuotedChars` of any piece), with the paths of namespaced
    /// stores qualified (`name` means `namespace/name`) and each version in
    /// its store's one spelling. Admission and the restart check after a
    /// rotation read annotations only through this.
    pub(crate) fn request(&self, namespace: &str, pod: &PodView) -> Result<PodRequest, GrammarError> {
        let empty = Default::default();
        let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        let mut request = annotations::parse_with(&self.prefix, annotations, self.limits.quote())?;
        let placeholders = request
            .templates
            .iter_mut()
            .flat_map(|t| t.template.placeholders_mut().map(|p| &mut p.reference));
        for r in request
            .injections
            .iter_mut()
            .map(|i| &mut i.reference)
            .chain(placeholders)
        {
            let Some(store) = self.stores.get(&r.store) else {
                continue;
            };
            if store.inner().namespaced() && !r.path.contains('/') {
                r.path = format!("{namespace}/{}", r.path);
            }
            // `version=01` and `version=1` are one secret for the limits,
            // the fetch, the cache and the Secret's keys.
            if let Some(v) = &r.version {
                let canonical = store.canonical_version(v).into_owned();
                r.version = Some(canonical);
            }
        }
        Ok(request)
    }

    /// Whether the current policy lets `service_account` in `namespace`
    /// (with its labels, when known) read `reference`: the name of the rule
    /// that grants it, or why not. The one check admission runs before
    /// fetching and rotation runs again before every refresh.
    pub(crate) fn authorize(
        &self,
        namespace: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
        service_account: &str,
        reference: &SecretRef,
    ) -> Result<&str, Refusal> {
        let Some(store) = self.stores.get(&reference.store) else {
            let mut known: Vec<&str> = self.stores.names().collect();
            known.sort_unstable();
            return Err(Refusal::UnknownStore {
                store: reference.store.clone(),
                configured: known.join(", "),
            });
        };
        let subject = Subject {
            namespace,
            namespace_labels,
            service_account: Some(service_account),
        };
        let namespaced = store.inner().namespaced();
        self.policy
            .authorize_in(&subject, &reference.store, &reference.path, namespaced)
            .map_err(Refusal::Policy)
    }

    /// Runs the whole pipeline for one Pod.
    pub async fn evaluate(&self, input: &PodInput<'_>) -> Verdict {
        self.evaluate_answered(input).await.0
    }

    /// [`Self::evaluate`], answered from the memo when an identical Pod
    /// was mutated from store answers the caches still hold as they were:
    /// the Pods of one ReplicaSet cost one evaluation.
    pub async fn evaluate_memoised(&self, input: &PodInput<'_>) -> (Verdict, MemoUse) {
        let Some(key) = memo::Key::of(input) else {
            return (self.evaluate(input).await, MemoUse::Skipped);
        };
        if let Some(entry) = self.memo.get(&key) {
            let a = &entry.answers;
            if self
                .stores
                .still_cached(&a.requests, a.identity.as_ref(), &a.data)
            {
                return (Verdict::Mutated(entry.mutation.clone()), MemoUse::Hit);
            }
            self.memo.forget(&key);
        }
        let (verdict, answers) = self.evaluate_answered(input).await;
        // Answers come only with a mutation made from them, never with a
        // last-known-good admission (`evaluate_wanted`).
        if let (Verdict::Mutated(m), Some(answers)) = (&verdict, answers) {
            self.memo.keep(key, answers, m.clone());
        }
        (verdict, MemoUse::Miss)
    }

    /// The verdict, and for a mutation made from answers that all came
    /// from the stores (or their caches), those answers.
    async fn evaluate_answered(&self, input: &PodInput<'_>) -> (Verdict, Option<memo::Answers>) {
        if !self.wants(input.pod) {
            let used_managed = input.pod.secret_names_with_prefix(MANAGED_PREFIX);
            let verdict = match used_managed.first() {
                None => Verdict::Untouched,
                Some(name) => Verdict::Denied(foreign_secret(name, None)),
            };
            return (verdict, None);
        }
        match self.evaluate_wanted(input).await {
            Ok((m, answers)) => (Verdict::Mutated(Arc::new(m)), answers),
            Err(d) => (Verdict::Denied(d), None),
        }
    }

    /// The pipeline for a Pod that asks for secrets.
    async fn evaluate_wanted(
        &self,
        input: &PodInput<'_>,
    ) -> Result<(Mutation, Option<memo::Answers>), Denial> {
        let quote = self.limits.quote();
        let request = match self.request(input.namespace, input.pod) {
            Ok(r) => r,
            Err(e) => return Err(Denial::new(DenialClass::Malformed, e.to_string(), Vec::new())),
        };
        let asked = asked(&request, quote);
        let references: Vec<SecretRef> = asked.iter().map(|(_, r, _)| (*r).clone()).collect();
        // Before policy and fetch: the counts of what the Pod asks for.
        if let Err(e) =
            limits::check_request(&self.limits, &request.injections, &request.templates, input.pod)
        {
            return Err(Denial::limit(e, references));
        }
        if let Err(e) = self.check_refresh(&asked) {
            return Err(e.with_references(references));
        }
        let service_account = service_account(input.pod);
        if let Some(message) = self.inline_refusal(request.mode, input.caller) {
            return Err(Denial::new(DenialClass::Policy, message, references));
        }

        // Policy first: nothing is fetched for a Pod that may not have it.
        let mut grants = Vec::with_capacity(asked.len());
        for (source, r, placeholder) in &asked {
            match self.authorize(input.namespace, input.namespace_labels, service_account, r) {
                Ok(rule) => grants.push(Grant {
                    annotation: (*source).to_owned(),
                    reference: (*r).clone(),
                    rule: rule.to_owned(),
                }),
                Err(refusal) => {
                    let (class, message) = refusal.explained(source, placeholder.as_deref(), quote);
                    return Err(Denial::new(class, message, references));
                }
            }
        }

        // One request per reference, parallel to `asked`: the injections'
        // first, then the placeholders'.
        let requests: Vec<StoreRequest> = asked
            .iter()
            .map(|(_, r, _)| StoreRequest {
                store: r.store.clone(),
                locator: SecretLocator::new(r.path.clone(), r.version.clone()),
            })
            .collect();
        let budget = input
            .budget
            .map_or(self.resolve_timeout, |b| b.min(self.resolve_timeout));
        // Stores with `identity: pod` read as this ServiceAccount, after
        // Sesame's policy allowed every reference above.
        let identity = WorkloadIdentity::new(input.namespace, service_account).ok();
        let mut resolved = self.stores.resolve(&requests, identity.as_ref(), budget).await;
        let fresh: Option<Vec<Arc<SecretData>>> = resolved.iter().map(|r| r.as_ref().ok().cloned()).collect();
        let placeholder_answers = resolved.split_off(request.injections.len().min(resolved.len()));
        let template_answers: Fetched = requests[request.injections.len().min(requests.len())..]
            .iter()
            .cloned()
            .zip(placeholder_answers)
            .collect();
        if request.mode == Mode::SecretRef {
            if let Some(mutation) =
                self.try_last_known_good(input, &request, service_account, &references, &grants, &resolved)
            {
                return Ok((mutation, None));
            }
        }
        let mutation = self.finish(
            input,
            &request,
            service_account,
            references,
            grants,
            &resolved,
            &template_answers,
        )?;
        let answers = fresh.map(|data| memo::Answers {
            requests,
            identity,
            data,
        });
        Ok((mutation, answers))
    }

    /// From the answers on: limits, plan, patch.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        input: &PodInput<'_>,
        request: &PodRequest,
        service_account: &str,
        references: Vec<SecretRef>,
        grants: Vec<Grant>,
        resolved: &[Result<Arc<SecretData>, StoreError>],
        template_answers: &Fetched,
    ) -> Result<Mutation, Denial> {
        let quote = self.limits.quote();
        let used_managed = input.pod.secret_names_with_prefix(MANAGED_PREFIX);
        // Before the plan: what the answers would add to the Pod.
        if let Err(e) = limits::check_answers(
            &self.limits,
            &request.injections,
            resolved,
            limits::Templates {
                templates: &request.templates,
                answers: template_answers,
            },
            input.pod,
            request.mode,
        ) {
            return Err(Denial::limit(e, references));
        }

        let mut plan = match build_plan(&PlanInput {
            namespace: input.namespace,
            service_account,
            pod: input.pod,
            mode: request.mode,
            inline_allowed: self.policy.inline_allowed(input.namespace),
            injections: &request.injections,
            resolved,
            templates: &request.templates,
            template_answers,
            quote,
        }) {
            Ok(p) => p,
            Err(e) => return Err(Denial::new(e.class(), e.to_string(), references)),
        };
        if let Some(secret) = &mut plan.secret {
            secret.restart_on_rotation = request.restart_on_rotation;
        }
        let secret_name = plan.secret.as_ref().map(|s| s.name.as_str());
        if let Some(name) = used_managed.iter().find(|n| Some(n.as_str()) != secret_name) {
            let mut denial = foreign_secret(name, secret_name);
            denial.references = references;
            return Err(denial);
        }
        let patch = match build_patch(input.pod, &plan, input.base, &self.marker_key, secret_name, quote) {
            Ok(p) => p,
            Err(e) => return Err(Denial::new(e.class(), e.to_string(), references)),
        };
        if let Err(e) = limits::check_patch(&self.limits, encoded_len(&patch)) {
            return Err(Denial::limit(e, references));
        }
        // Grants only for what was placed: skipped optional references are warnings.
        let warnings = plan
            .warnings
            .iter()
            .map(|w| escape_controls(w).into_owned())
            .collect();
        Ok(Mutation {
            patch,
            secret: plan.secret,
            grants,
            warnings,
            last_known_good: None,
            encoded: Default::default(),
        })
    }

    /// When stores failed with an outage (not a "not found" or a refusal)
    /// and the managed Secret for exactly these references exists, verified
    /// as Sesame's, with every key the plan needs: the Pod admitted against
    /// it as it is. `None` means the normal path decides (and denies).
    fn try_last_known_good(
        &self,
        input: &PodInput<'_>,
        request: &PodRequest,
        service_account: &str,
        references: &[SecretRef],
        grants: &[Grant],
        resolved: &[Result<Arc<SecretData>, StoreError>],
    ) -> Option<Mutation> {
        let lookup = input.last_known_good?;
        // A template's key holds a rendering, from which no placeholder's
        // answer can be read back: such a Pod waits for its stores. Inline
        // values would need the values themselves, which are not kept.
        if !request.templates.is_empty() || request.mode == Mode::Inline {
            return None;
        }
        let failed: Vec<usize> = (0..resolved.len()).filter(|i| resolved[*i].is_err()).collect();
        if failed.is_empty()
            || failed
                .iter()
                .any(|i| !resolved[*i].as_ref().is_err_and(StoreError::is_outage))
        {
            return None;
        }
        let wanted: Vec<SecretRef> = references
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let name = secret_name(input.namespace, service_account, &wanted);
        let known = lookup(input.namespace, &name)?;
        let recorded: std::collections::BTreeSet<&SecretRef> = known.references.iter().collect();
        if known.service_account != service_account || recorded != wanted.iter().collect() {
            return None;
        }
        let mut answers = resolved.to_vec();
        let mut stores = std::collections::BTreeSet::new();
        for i in failed {
            let reference = &request.injections.get(i)?.reference;
            answers[i] = Ok(Arc::new(stored_answer(&known, reference)?));
            stores.insert(reference.store.clone());
        }
        let Ok(mut m) = self.finish(
            input,
            request,
            service_account,
            references.to_vec(),
            grants.to_vec(),
            &answers,
            &Fetched::default(),
        ) else {
            return None;
        };
        // The patch refers to the stored Secret's keys: they must be the ones it holds.
        let planned = m.secret.take()?;
        if planned.name != name
            || planned.sources != known.sources
            || !planned.data.keys().all(|k| known.keys.contains(k))
        {
            return None;
        }
        let stores: Vec<String> = stores.into_iter().collect();
        m.warnings.push(
            escape_controls(&last_known_good_warning(
                &stores,
                &name,
                &known.refreshed_at,
                std::time::SystemTime::now(),
            ))
            .into_owned(),
        );
        m.last_known_good = Some(Box::new(FromLastKnownGood {
            secret: name,
            stores,
            refreshed_at: known.refreshed_at,
        }));
        Some(m)
    }
}

/// What a store would have answered for `reference`, as far as the stored
/// Secret holds it: for each key whose source is this secret (at this
/// version), the property, with a stand-in value. The plan built on it is
/// only checked for its keys and its patch, which names keys, not values.
/// `None` when the Secret holds none of them.
fn stored_answer(known: &KnownSecret, reference: &SecretRef) -> Option<SecretData> {
    let mut properties = BTreeMap::new();
    let mut whole = None;
    for (key, source) in &known.sources {
        let Some(source) = source.as_reference() else {
            continue;
        };
        if source.store != reference.store
            || source.path != reference.path
            || source.version != reference.version
        {
            continue;
        }
        if !known.keys.contains(key) {
            return None;
        }
        let value = SecretValue::from(crate::inject::data::STAND_IN);
        match &source.property {
            Some(p) => {
                properties.insert(p.clone(), value);
            }
            None => whole = Some(value),
        }
    }
    match (whole, properties.is_empty()) {
        (Some(value), true) => Some(SecretData::Value(value)),
        (None, false) => Some(SecretData::Properties(properties)),
        _ => None,
    }
}

/// The AdmissionResponse warning for a Pod admitted from its stored
/// Secret: the stores, the Secret, the age of its data. No value.
fn last_known_good_warning(
    stores: &[String],
    secret: &str,
    refreshed_at: &str,
    now: std::time::SystemTime,
) -> String {
    let age = humantime::parse_rfc3339_weak(refreshed_at)
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .map(|d| {
            format!(
                " ({} ago)",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            )
        })
        .unwrap_or_default();
    let names: Vec<String> = stores.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "store {} unavailable: admitted against the last known good managed Secret {secret}, values written at {refreshed_at}{age}; its values are not updated until the store answers",
        names.join(", ")
    )
}

/// Why a reference is not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no store is named \"{store}\" (configured: {configured})")]
    UnknownStore { store: String, configured: String },
    #[error(transparent)]
    Policy(PolicyDenial),
}

impl Refusal {
    /// The denial's class and sentence for the reference in annotation
    /// `source` (at `placeholder` of a template), quoting at most `quote`.
    pub(crate) fn explained(
        mut self,
        source: &str,
        placeholder: Option<&str>,
        quote: Quote,
    ) -> (DenialClass, String) {
        let class = match &mut self {
            Self::UnknownStore { .. } => DenialClass::UnknownStore,
            Self::Policy(denial) => {
                if let PolicyDenial::PathNotAllowed { path, .. } = denial {
                    *path = quote.of(path).to_string();
                }
                DenialClass::Policy
            }
        };
        let at = match placeholder {
            Some(p) => format!("annotation \"{source}\": placeholder {p}"),
            None => format!("annotation \"{source}\""),
        };
        (class, format!("{at}: {self}"))
    }
}

/// Every reference of a request with the annotation it comes from, a
/// template's placeholders included (with the placeholder, quoted): each
/// is counted, authorised, fetched and audited like any other.
pub(crate) fn asked(request: &PodRequest, quote: Quote) -> Vec<(&str, &SecretRef, Option<String>)> {
    request
        .injections
        .iter()
        .map(|i| (i.source.as_str(), &i.reference, None))
        .chain(request.templates.iter().flat_map(|t| {
            t.template.placeholders().map(move |p| {
                (
                    t.source.as_str(),
                    &p.reference,
                    Some(quote.of(&p.to_string()).to_string()),
                )
            })
        }))
        .collect()
}

/// The Pod's service account. The ServiceAccount admission plugin runs
/// before webhooks and sets `default` when the Pod names none; `mutate` and
/// the restart check (which reads workload templates) assume the same.
pub(crate) fn service_account(pod: &PodView) -> &str {
    pod.spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

impl Engine {
    /// The guard for ephemeral containers added to a running Pod: they get
    /// no injection, and may refer to no managed Secret, not even their
    /// Pod's own (which one that is was decided at creation from
    /// annotations that can have been edited since).
    pub(crate) fn guard_ephemeral_containers(&self, pod: &PodView) -> Option<Denial> {
        let names = pod.ephemeral_secret_names_with_prefix(MANAGED_PREFIX);
        let name = names.first()?;
        Some(Denial::new(
            DenialClass::Policy,
            format!(
                "an ephemeral container refers to Secret \"{name}\", which Sesame manages; ephemeral containers get no injection and may use no managed Secret"
            ),
            Vec::new(),
        ))
    }

    /// Why inline mode is refused to this caller, if it is: the values
    /// would go back in the admission response to a caller Sesame cannot
    /// authenticate.
    pub(crate) fn inline_refusal(&self, mode: Mode, caller: Caller) -> Option<String> {
        (mode == Mode::Inline && caller == Caller::Unauthenticated && !self.policy.inline_without_client_auth())
            .then(|| {
                "inline mode returns values in the admission response, and Sesame cannot authenticate its caller: \
                 start the server with --client-ca-file (and give the API server a client certificate), \
                 or accept the risk with policy.inline.allowWithoutClientAuth"
                    .to_owned()
            })
    }

    /// Whether inline mode is allowed in `namespace`.
    pub(crate) fn inline_allowed(&self, namespace: &str) -> bool {
        self.policy.inline_allowed(namespace)
    }

    /// Holds every reference to `rotation.minRefresh`, before any fetch.
    pub(crate) fn check_refresh(&self, asked: &[(&str, &SecretRef, Option<String>)]) -> Result<(), Denial> {
        crate::inject::refresh::check(
            self.min_refresh,
            asked.iter().map(|(s, r, p)| (*s, r.refresh, p.as_deref())),
        )
        .map_err(|e| Denial::new(DenialClass::Policy, e.to_string(), Vec::new()))
    }

    /// The shortest `refresh=` a reference may ask for (rotation holds
    /// recorded ones to it too).
    pub(crate) fn min_refresh(&self) -> Duration {
        self.min_refresh
    }

    /// Whether the workload webhook denies a template Sesame would deny.
    pub(crate) fn deny_workloads(&self) -> bool {
        self.deny_workloads
    }

    pub(crate) fn marker_key(&self) -> &str {
        &self.marker_key
    }

    /// How fast one namespace may get new managed Secrets.
    pub(crate) fn new_secrets(&self) -> crate::policy::CreationRate {
        self.policy.new_secrets()
    }
}

/// A Pod may not mount or reference a managed Secret other than its own:
/// that Secret holds values granted to other Pods' annotations.
pub(crate) fn foreign_secret(name: &str, own: Option<&str>) -> Denial {
    let allowed = match own {
        Some(own) => format!("only {own}, which its own annotations produce, may be used"),
        None => "its annotations produce none".to_owned(),
    };
    Denial::new(
        DenialClass::Policy,
        format!("the Pod refers to Secret \"{name}\", which Sesame manages for other Pods; {allowed}"),
        Vec::new(),
    )
}

/// Shares an engine between the server and a config reloader.
pub type SharedEngine = Arc<arc_swap::ArcSwap<Engine>>;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use async_trait::async_trait;

    use super::*;
    use crate::inject::annotations::SecretRef as Ref;
    use crate::stores::{CachedStore, SecretData, SecretValue, Store, StoreError};

    /// A namespaced in-memory store that records the paths it was asked for.
    struct Namespaced(std::sync::Mutex<Vec<String>>);

    #[async_trait]
    impl Store for Namespaced {
        fn provider(&self) -> &'static str {
            "test"
        }
        fn namespaced(&self) -> bool {
            true
        }
        async fn read(&self, l: &SecretLocator) -> Result<SecretData, StoreError> {
            self.0.lock().unwrap().push(l.path.clone());
            Ok(SecretData::Properties(
                [("password".to_owned(), SecretValue::from("pw"))].into(),
            ))
        }
    }

    fn engine(store: Arc<Namespaced>) -> Engine {
        engine_over(
            "stores:\n  - {name: k8s, kubernetes: {}}\npolicy:\n  rules:\n    - {name: own, namespaces: ['*'], stores: [k8s], paths: ['{namespace}/*']}\n    - {name: ci, namespaces: ['*'], serviceAccounts: [ci], stores: [k8s], paths: ['shared/*']}\n",
            "k8s",
            store,
            Duration::ZERO,
        )
    }

    /// An engine of `config` whose one store, `name`, is `store` behind a
    /// cache of `ttl`.
    fn engine_over(config: &str, name: &str, store: Arc<dyn Store>, ttl: Duration) -> Engine {
        let config = Config::from_yaml(config, "t").unwrap();
        let mut stores = Stores::default();
        let metrics = Arc::new(Metrics::new());
        stores.insert(
            name,
            Arc::new(CachedStore::new(name.into(), store, ttl, Duration::ZERO, metrics)),
        );
        Engine::new(&config, stores)
    }

    fn pod(annotations: &[(&str, &str)], extra_spec: serde_json::Value) -> PodView {
        let mut spec = serde_json::json!({"containers": [{"name": "app"}]});
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            s.extend(extra.clone());
        }
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        serde_json::from_value(serde_json::json!({"metadata": {"annotations": annotations}, "spec": spec}))
            .unwrap()
    }

    async fn run(engine: &Engine, pod: &PodView) -> Verdict {
        engine
            .evaluate(&PodInput {
                namespace: "team-a",
                pod,
                base: "",
                budget: None,
                namespace_labels: None,
                caller: Caller::Trusted,
                last_known_good: None,
            })
            .await
    }

    #[tokio::test]
    async fn namespaced_store_paths_are_qualified_before_policy_and_fetch() {
        let store = Arc::new(Namespaced(Default::default()));
        let e = engine(store.clone());
        let p = pod(
            &[
                ("sesame.dev/env.PW", "k8s:db#password"),
                ("sesame.dev/restart-on-rotation", "true"),
            ],
            serde_json::json!({}),
        );
        let Verdict::Mutated(m) = run(&e, &p).await else {
            panic!("not mutated")
        };
        assert_eq!(*store.0.lock().unwrap(), ["team-a/db"]);
        let secret = m.secret.clone().unwrap();
        assert_eq!(secret.references[0].path, "team-a/db");
        assert!(secret.restart_on_rotation);
        assert_eq!(m.grants[0].rule, "own");

        // Another namespace needs a rule naming it, and that rule is for the `ci` account only.
        let other = pod(
            &[("sesame.dev/env.PW", "k8s:shared/db#password")],
            serde_json::json!({}),
        );
        let Verdict::Denied(d) = run(&e, &other).await else {
            panic!("allowed")
        };
        assert_eq!(d.class, DenialClass::Policy);
        let mut ci = other.clone();
        ci.spec.service_account_name = Some("ci".into());
        assert!(matches!(run(&e, &ci).await, Verdict::Mutated(_)));
    }

    /// A template whose second placeholder the policy refuses: denied
    /// before anything is fetched, the denial naming that placeholder and
    /// listing every reference; the paths of namespaced stores are
    /// qualified inside templates too.
    #[tokio::test]
    async fn one_refused_placeholder_denies_the_template_before_any_fetch() {
        let store = Arc::new(Namespaced(Default::default()));
        let e = engine(store.clone());
        let p = pod(
            &[(
                "sesame.dev/template.URL",
                "{{ k8s:db#password }}/{{ k8s:shared/db#password | urlquery }}",
            )],
            serde_json::json!({}),
        );
        let Verdict::Denied(d) = run(&e, &p).await else {
            panic!("allowed")
        };
        assert_eq!(d.class, DenialClass::Policy);
        assert!(
            d.message.starts_with(
                "annotation \"sesame.dev/template.URL\": placeholder {{ k8s:shared/db#password | urlquery }}:"
            ),
            "{}",
            d.message
        );
        assert_eq!(d.references.len(), 2);
        assert_eq!(d.references[0].path, "team-a/db", "qualified");
        assert!(store.0.lock().unwrap().is_empty(), "nothing was fetched");

        // Allowed: each placeholder is granted and audited under the template's annotation.
        let ok = pod(
            &[(
                "sesame.dev/template.URL",
                "{{ k8s:db#password }}@{{ k8s:db#password | base64 }}",
            )],
            serde_json::json!({}),
        );
        let Verdict::Mutated(m) = run(&e, &ok).await else {
            panic!("denied")
        };
        assert_eq!(m.grants.len(), 2);
        assert!(m
            .grants
            .iter()
            .all(|g| g.annotation == "sesame.dev/template.URL" && g.rule == "own"));
        let secret = m.secret.clone().unwrap();
        assert_eq!(secret.data["template.URL"].expose(), b"pw@cHc=");
        assert_eq!(
            *store.0.lock().unwrap(),
            ["team-a/db"],
            "one fetch for both placeholders"
        );
    }

    /// Placeholders count against `maxReferences` like any reference.
    #[tokio::test]
    async fn placeholders_count_against_the_limits() {
        let config = Config::from_yaml(
            "stores:\n  - {name: k8s, kubernetes: {}}\nlimits: {maxReferences: 3}\npolicy:\n  rules:\n    - {name: own, namespaces: ['*'], stores: [k8s], paths: ['{namespace}/*']}\n",
            "t",
        )
        .unwrap();
        let store = Arc::new(Namespaced(Default::default()));
        let mut stores = Stores::default();
        stores.insert(
            "k8s",
            Arc::new(CachedStore::new(
                "k8s".into(),
                store.clone(),
                Duration::ZERO,
                Duration::ZERO,
                Arc::new(Metrics::new()),
            )),
        );
        let e = Engine::new(&config, stores);
        let p = pod(
            &[
                ("sesame.dev/env.A", "k8s:a#password"),
                (
                    "sesame.dev/template.B",
                    "{{ k8s:b#password }}{{ k8s:c#password }}{{ k8s:d#password }}",
                ),
            ],
            serde_json::json!({}),
        );
        let Verdict::Denied(d) = run(&e, &p).await else {
            panic!("allowed")
        };
        assert_eq!(d.class, DenialClass::Limit);
        assert!(
            d.message
                .contains("is 4, more than the 3 allowed (limits.maxReferences"),
            "{}",
            d.message
        );
        assert!(store.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_pod_may_only_use_its_own_managed_secret() {
        let e = engine(Arc::new(Namespaced(Default::default())));
        let own_name = crate::inject::plan::secret_name(
            "team-a",
            "default",
            &[Ref {
                store: "k8s".into(),
                path: "team-a/db".into(),
                property: Some("password".into()),
                version: None,
                refresh: None,
            }],
        );
        let mount =
            |name: &str| serde_json::json!({"volumes": [{"name": "x", "secret": {"secretName": name}}]});

        // No annotations, but mounts someone else's managed Secret.
        let bare = pod(&[], mount("sesame-0123456789abcdef"));
        assert!(e.concerns(&bare));
        let Verdict::Denied(d) = run(&e, &bare).await else {
            panic!("allowed")
        };
        assert_eq!(d.code(), 403);
        assert!(d.message.contains("sesame-0123456789abcdef"), "{}", d.message);

        // Annotated, but also mounts a Secret its annotations do not produce.
        let sneaky = pod(
            &[("sesame.dev/env.PW", "k8s:db#password")],
            mount("sesame-0123456789abcdef"),
        );
        let Verdict::Denied(d) = run(&e, &sneaky).await else {
            panic!("allowed")
        };
        assert!(d.message.contains(&own_name), "{}", d.message);

        // Its own Secret (a reinvoked webhook sees it already referenced) is fine.
        let own = pod(&[("sesame.dev/env.PW", "k8s:db#password")], mount(&own_name));
        assert!(matches!(run(&e, &own).await, Verdict::Mutated(_)));
        // The same annotations under another service account produce another
        // Secret: a Pod of `ci` cannot use the one written for `default`.
        let mut other_account = own.clone();
        other_account.spec.service_account_name = Some("ci".into());
        let Verdict::Denied(d) = run(&e, &other_account).await else {
            panic!("a Pod used another service account's managed Secret")
        };
        assert!(d.message.contains(&own_name), "{}", d.message);
        // Unrelated Secrets are none of Sesame's business.
        assert!(!e.concerns(&pod(&[], mount("app-secret"))));
    }

    /// A reload that changes only a policy rule keeps every store object
    /// and its cache; one that changes a store's section rebuilds that store
    /// alone.
    #[tokio::test]
    async fn a_reload_keeps_the_stores_whose_section_did_not_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "apps/x: one\n").unwrap();
        std::fs::write(dir.path().join("b.yaml"), "apps/y: two\n").unwrap();
        let config = |rule_paths: &str, b_ttl: &str| {
            format!(
                "stores:\n  - {{name: a, file: {{path: a.yaml}}, cacheTtl: 1h}}\n  - {{name: b, file: {{path: b.yaml}}, cacheTtl: {b_ttl}}}\npolicy:\n  rules:\n    - {{name: r, namespaces: ['*'], stores: ['*'], paths: [{rule_paths}]}}\n"
            )
        };
        let loaded = |yaml: String| {
            let path = dir.path().join("sesame.yaml");
            std::fs::write(&path, yaml).unwrap();
            Config::load(Some(&path)).unwrap()
        };
        let metrics = Arc::new(Metrics::new());
        let first = Engine::from_config(&loaded(config("'apps/**'", "1h")), &metrics, None)
            .await
            .unwrap();
        let read = |e: &Engine| {
            let requests = [StoreRequest {
                store: "a".into(),
                locator: SecretLocator::new("apps/x", None),
            }];
            let stores = e.stores().clone();
            async move { stores.resolve(&requests, None, Duration::from_secs(5)).await }
        };
        first.stores().upkeeps();
        assert!(read(&first).await[0].is_ok());
        // The value changes in the file; a cached copy still answers.
        std::fs::write(dir.path().join("a.yaml"), "apps/x: changed\n").unwrap();

        let policy_only = first
            .reload(&loaded(config("'apps/*'", "1h")), &metrics, None)
            .await
            .unwrap();
        for name in ["a", "b"] {
            assert!(
                Arc::ptr_eq(
                    first.stores().get(name).unwrap(),
                    policy_only.stores().get(name).unwrap()
                ),
                "store {name} was rebuilt"
            );
        }
        let again = read(&policy_only).await;
        assert_eq!(
            again[0].as_ref().unwrap().get(None).unwrap().expose(),
            b"one",
            "from the kept cache"
        );

        let b_changed = policy_only
            .reload(&loaded(config("'apps/*'", "5m")), &metrics, None)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(
            policy_only.stores().get("a").unwrap(),
            b_changed.stores().get("a").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            policy_only.stores().get("b").unwrap(),
            b_changed.stores().get("b").unwrap()
        ));
        // A kept store keeps its running upkeep; only the new one starts one.
        assert!(!b_changed.stores().get("a").unwrap().take_upkeep());
        assert!(b_changed.stores().get("b").unwrap().take_upkeep());
    }

    /// A store whose one value the test changes, counting reads.
    struct Rotating {
        value: std::sync::Mutex<String>,
        reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Store for Rotating {
        fn provider(&self) -> &'static str {
            "test"
        }
        async fn read(&self, _: &SecretLocator) -> Result<SecretData, StoreError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let value = self.value.lock().unwrap().clone();
            Ok(SecretData::Properties(
                [("pw".to_owned(), SecretValue::from(value.as_str()))].into(),
            ))
        }
    }

    fn rotating(value: &str) -> Arc<Rotating> {
        Arc::new(Rotating {
            value: std::sync::Mutex::new(value.to_owned()),
            reads: Default::default(),
        })
    }

    /// `inline` mode, so that the value is in the patch, and rules by
    /// namespace, ServiceAccount and namespace label.
    fn memo_engine(store: Arc<Rotating>, ttl: Duration) -> Engine {
        engine_over(
            "stores:\n  - {name: dev, file: {path: none.yaml}}\npolicy:\n  inline: {namespaces: ['*']}\n  rules:\n    - {name: own, namespaces: ['*'], stores: [dev], paths: ['apps/{namespace}/*']}\n    - {name: ci, namespaces: ['*'], serviceAccounts: [ci], stores: [dev], paths: ['ci/*']}\n    - {name: gold, namespaceSelector: {matchLabels: {tier: gold}}, stores: [dev], paths: ['gold/*']}\n",
            "dev",
            store,
            ttl,
        )
    }

    /// A ReplicaSet's Pod: its token volume's name is random per Pod.
    fn replica(path: &str, token_volume: &str) -> PodView {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "generateName": "api-7d9f8b-",
                "annotations": {"sesame.dev/mode": "inline", "sesame.dev/env.PW": format!("dev:{path}#pw")},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f8b",
                    "uid": "e9cf2b80-6c18-4d15-a78f-1bc3a9446440", "controller": true}]
            },
            "spec": {
                "containers": [{"name": "app", "volumeMounts": [{"name": token_volume,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}],
                "volumes": [{"name": token_volume, "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]
            }
        }))
        .unwrap()
    }

    async fn memoised(
        engine: &Engine,
        namespace: &str,
        pod: &PodView,
        labels: Option<&BTreeMap<String, String>>,
        caller: Caller,
    ) -> (Verdict, MemoUse) {
        engine
            .evaluate_memoised(&PodInput {
                namespace,
                pod,
                base: "",
                budget: None,
                namespace_labels: labels,
                caller,
                last_known_good: None,
            })
            .await
    }

    fn inline_value(v: &Verdict) -> String {
        let Verdict::Mutated(m) = v else {
            panic!("not mutated: {v:?}")
        };
        let patch = serde_json::to_value(&m.patch).unwrap();
        let values = patch.as_array().unwrap().iter().map(|op| &op["value"]);
        let env = values.flat_map(|v| v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]));
        let pw = env
            .into_iter()
            .find(|e| e["name"] == "PW")
            .expect("PW in the patch");
        pw["value"].as_str().unwrap().to_owned()
    }

    fn reads(store: &Rotating) -> usize {
        store.reads.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn the_pods_of_one_replica_set_cost_one_evaluation() {
        let store = rotating("v1");
        let e = memo_engine(store.clone(), Duration::from_secs(3600));
        let first = replica("apps/team-a/db", "kube-api-access-p6sh2");
        let (verdict, used) = memoised(&e, "team-a", &first, None, Caller::Trusted).await;
        assert_eq!((used, inline_value(&verdict).as_str()), (MemoUse::Miss, "v1"));
        let (again, used) = memoised(
            &e,
            "team-a",
            &replica("apps/team-a/db", "kube-api-access-x9q7k"),
            None,
            Caller::Trusted,
        )
        .await;
        assert_eq!(used, MemoUse::Hit);
        let (Verdict::Mutated(a), Verdict::Mutated(b)) = (&verdict, &again) else {
            panic!("not mutated")
        };
        assert!(Arc::ptr_eq(a, b), "the second Pod gets the first one's mutation");
        assert_eq!(reads(&store), 1);
        // The same verdict as evaluating it afresh.
        let input = PodInput {
            namespace: "team-a",
            pod: &first,
            base: "",
            budget: None,
            namespace_labels: None,
            caller: Caller::Trusted,
            last_known_good: None,
        };
        let Verdict::Mutated(fresh) = e.evaluate(&input).await else {
            panic!("not mutated")
        };
        assert_eq!(fresh.patch, b.patch);
    }

    /// Attacks on the memo: a copy of a memoised Pod, byte for byte, by a
    /// team that may not read its secrets; the same Pod under another
    /// ServiceAccount, in a namespace whose labels changed, or from a caller
    /// Sesame cannot authenticate. Each is evaluated and refused, never
    /// served the kept verdict.
    #[tokio::test]
    async fn a_memoised_verdict_serves_no_other_namespace_account_label_or_caller() {
        let store = rotating("team-a-secret");
        let e = memo_engine(store, Duration::from_secs(3600));
        let pod = replica("apps/team-a/db", "kube-api-access-p6sh2");
        let (v, _) = memoised(&e, "team-a", &pod, None, Caller::Trusted).await;
        inline_value(&v);
        let (v, used) = memoised(&e, "team-b", &pod, None, Caller::Trusted).await;
        assert!(
            matches!(v, Verdict::Denied(ref d) if d.class == DenialClass::Policy),
            "{v:?}"
        );
        assert_eq!(used, MemoUse::Miss);

        let mut ci = replica("ci/deploy-key", "kube-api-access-p6sh2");
        ci.spec.service_account_name = Some("ci".into());
        let (v, _) = memoised(&e, "team-a", &ci, None, Caller::Trusted).await;
        inline_value(&v);
        ci.spec.service_account_name = Some("default".into());
        let (v, used) = memoised(&e, "team-a", &ci, None, Caller::Trusted).await;
        assert!(
            matches!(v, Verdict::Denied(ref d) if d.class == DenialClass::Policy),
            "{v:?}"
        );
        assert_eq!(used, MemoUse::Miss);

        let gold: BTreeMap<String, String> = [("tier".to_owned(), "gold".to_owned())].into();
        let silver: BTreeMap<String, String> = [("tier".to_owned(), "silver".to_owned())].into();
        let shared = replica("gold/api-key", "kube-api-access-p6sh2");
        let (v, _) = memoised(&e, "team-a", &shared, Some(&gold), Caller::Trusted).await;
        inline_value(&v);
        let (v, used) = memoised(&e, "team-a", &shared, Some(&silver), Caller::Trusted).await;
        assert!(
            matches!(v, Verdict::Denied(ref d) if d.class == DenialClass::Policy),
            "{v:?}"
        );
        assert_eq!(used, MemoUse::Miss);

        let (v, used) = memoised(&e, "team-a", &pod, None, Caller::Unauthenticated).await;
        assert!(
            matches!(v, Verdict::Denied(ref d) if d.class == DenialClass::Policy),
            "{v:?}"
        );
        assert_eq!(used, MemoUse::Miss);
    }

    /// A kept verdict stands only while the cache holds the very answers it
    /// was made from: once the value's entry expires, the next Pod reads the
    /// store again and gets the rotated value.
    #[tokio::test]
    async fn a_rotated_value_is_never_served_from_the_memo() {
        let store = rotating("v1");
        let never = memo_engine(store.clone(), Duration::ZERO);
        let pod = replica("apps/team-a/db", "kube-api-access-p6sh2");
        let (v, _) = memoised(&never, "team-a", &pod, None, Caller::Trusted).await;
        assert_eq!(inline_value(&v), "v1");
        *store.value.lock().unwrap() = "v2".into();
        let (v, used) = memoised(&never, "team-a", &pod, None, Caller::Trusted).await;
        assert_eq!((used, inline_value(&v).as_str()), (MemoUse::Miss, "v2"));

        let store = rotating("v1");
        let e = memo_engine(store.clone(), Duration::from_millis(50));
        let (v, _) = memoised(&e, "team-a", &pod, None, Caller::Trusted).await;
        assert_eq!(inline_value(&v), "v1");
        *store.value.lock().unwrap() = "v2".into();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (v, used) = memoised(&e, "team-a", &pod, None, Caller::Trusted).await;
        assert_eq!((used, inline_value(&v).as_str()), (MemoUse::Miss, "v2"));
        assert_eq!(reads(&store), 2);
    }

    /// A Pod whose own volume named like Sesame's differs is another key:
    /// only foreign volume names are left out of it.
    #[tokio::test]
    async fn a_pod_that_differs_in_a_sesame_volume_is_evaluated_again() {
        let e = memo_engine(rotating("v1"), Duration::from_secs(3600));
        let pod = replica("apps/team-a/db", "kube-api-access-p6sh2");
        memoised(&e, "team-a", &pod, None, Caller::Trusted).await;
        let mut clash = pod.clone();
        clash.spec.volumes = Some(vec![
            serde_json::json!({"name": "sesame-0123456789", "emptyDir": {}}),
        ]);
        let (_, used) = memoised(&e, "team-a", &clash, None, Caller::Trusted).await;
        assert_eq!(used, MemoUse::Miss);
    }

    /// What a Pod view is made of here: its own volumes (name, mount
    /// path), mounted by its one container, and which of three references
    /// it asks for (env, a file under /var/run/sesame, a directory at
    /// /etc/tls), so that its mounts may clash with Sesame's.
    fn own_volumes_pod(volumes: &[(String, usize)], asks: u8) -> PodView {
        const PATHS: [&str; 4] = [
            "/var/run/sesame",
            "/etc/tls",
            "/data",
            "/var/run/secrets/kubernetes.io/serviceaccount",
        ];
        const ASKS: [(&str, &str); 3] = [
            ("sesame.dev/env.PW", "dev:apps/team-a/db#pw"),
            (
                "sesame.dev/file.token",
                "dev:apps/team-a/db#pw path=/var/run/sesame/token",
            ),
            ("sesame.dev/dir.tls", "dev:apps/team-a/tls path=/etc/tls"),
        ];
        let annotations: BTreeMap<&str, &str> = ASKS
            .iter()
            .enumerate()
            .filter(|(i, _)| asks & (1 << i) != 0)
            .map(|(_, a)| *a)
            .collect();
        let mounts: Vec<serde_json::Value> = volumes
            .iter()
            .map(|(name, path)| serde_json::json!({"name": name, "mountPath": PATHS[path % PATHS.len()]}))
            .collect();
        let volumes: Vec<serde_json::Value> = volumes
            .iter()
            .map(|(name, _)| serde_json::json!({"name": name, "emptyDir": {}}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": annotations},
            "spec": {"containers": [{"name": "app", "volumeMounts": mounts}], "volumes": volumes}
        }))
        .unwrap()
    }

    /// The same answer, as far as a Pod can tell.
    fn same_verdict(a: &Verdict, b: &Verdict) -> bool {
        match (a, b) {
            (Verdict::Mutated(x), Verdict::Mutated(y)) => {
                x.patch == y.patch && x.secret == y.secret && x.warnings == y.warnings && x.grants == y.grants
            }
            (Verdict::Denied(x), Verdict::Denied(y)) => x.class == y.class,
            (Verdict::Untouched, Verdict::Untouched) => true,
            _ => false,
        }
    }

    /// Names a Pod may give its own volumes: plain, a token volume's, one
    /// that looks like Sesame's, and the two Sesame plans for the file and
    /// the directory of `own_volumes_pod` (a volume of the Pod's own with
    /// such a name is a clash).
    const VOLUME_NAME: &str =
        "[a-z]{1,3}|kube-api-access-[a-z]{2}|sesame-[0-9a-f]{2}|sesame-04fec94232|sesame-9c83856a38";

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 128,
            failure_persistence: None,
            ..Default::default()
        })]

        /// A memo hit is what a fresh engine would answer. After one Pod
        /// was memoised, a second differs from it in the names of its own
        /// volumes (some of them named like Sesame's), in where it mounts
        /// them (some of them where Sesame mounts), in its name and labels:
        /// whenever the memo serves it, the answer is the fresh one.
        #[test]
        fn a_memo_hit_is_what_evaluating_afresh_gives(
            volumes in proptest::collection::vec((VOLUME_NAME, 0usize..4), 0..4),
            changes in proptest::collection::vec((proptest::option::of(VOLUME_NAME), proptest::option::of(0usize..4)), 4),
            asks in 1u8..8,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let first = own_volumes_pod(&volumes, asks);
                let changed: Vec<(String, usize)> = volumes
                    .iter()
                    .zip(&changes)
                    .map(|((name, path), (new_name, new_path))| {
                        (new_name.clone().unwrap_or_else(|| name.clone()), new_path.unwrap_or(*path))
                    })
                    .collect();
                let mut second = own_volumes_pod(&changed, asks);
                second.metadata.name = Some("web-1".into());
                second.metadata.labels = Some([("app".to_owned(), "other".to_owned())].into());

                let memo = memo_engine(rotating("v1"), Duration::from_secs(3600));
                memoised(&memo, "team-a", &first, None, Caller::Trusted).await;
                let (served, _) = memoised(&memo, "team-a", &second, None, Caller::Trusted).await;
                let fresh = memo_engine(rotating("v1"), Duration::from_secs(3600));
                let input = PodInput {
                    namespace: "team-a",
                    pod: &second,
                    base: "",
                    budget: None,
                    namespace_labels: None,
                    caller: Caller::Trusted,
                    last_known_good: None,
                };
                let expected = fresh.evaluate(&input).await;
                proptest::prop_assert!(same_verdict(&served, &expected), "served {served:?}, expected {expected:?}");
                Ok(())
            })?;
        }
    }
}
