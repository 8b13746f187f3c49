//! HTTP ↔ pipeline: decode an AdmissionReview, run the pipeline, write the
//! managed Secret, encode the AdmissionResponse, log the decision. Requests
//! that are not admission reviews get an error; everything else gets an
//! answer (`allowed` or a safe `deny`), never a 5xx.

pub mod ports;
mod request;
pub mod review;
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tracing::Instrument;

use crate::denial::DenialClass;
use crate::inject::PodView;
use crate::pipeline::{Caller, Engine, FindKnownSecret, PodInput, SharedEngine, Verdict};
use crate::policy::{CreationLimiter, CreationRate};
use crate::telemetry::Metrics;
pub use ports::{
    CreationBudget, DryRunWriter, KnownSecret, LastKnownGood, NamespaceLabels, SecretWriter, Unlimited,
    WriteError, WriteOutcome,
};
use request::{Operation, RequestError};
use review::{ResponseOut, ReviewIn, ReviewOut, StatusOut, API_VERSION, KIND};

/// Why a review got no AdmissionResponse: the request was not a usable
/// AdmissionReview (HTTP 400), or the answer could not be encoded (HTTP 500).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("expected an AdmissionReview of apiVersion admission.k8s.io/v1, got {kind} of {api_version}")]
    WrongType { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the request's uid is not a UID (at most 128 letters, digits, '-', '_' and '.')")]
    BadUid,
    /// Not the client's fault (HTTP 500).
    #[error("the answer could not be encoded: {0}")]
    Encode(String),
}

impl ReviewError {
    /// A request that is not a usable AdmissionReview (HTTP 400), rather
    /// than a failure on Sesame's side (HTTP 500).
    pub(crate) fn is_bad_request(&self) -> bool {
        !matches!(self, Self::Encode(_))
    }

    fn outcome(&self) -> Outcome {
        if self.is_bad_request() {
            Outcome::BadRequest
        } else {
            Outcome::Failed
        }
    }
}

/// What a review came to: the `outcome` of `sesame_admission_reviews_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No object to look at: allowed without a look.
    Skipped,
    /// Allowed without a patch.
    Allowed,
    /// Allowed with a patch.
    Mutated,
    Denied(DenialClass),
    /// The request was not a usable AdmissionReview (HTTP 400).
    BadRequest,
    /// The answer could not be made (HTTP 500).
    Failed,
}

impl Outcome {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Skipped => "skipped",
            Self::Allowed => "allowed",
            Self::Mutated => "mutated",
            Self::Denied(class) => class.outcome(),
            Self::BadRequest => "bad_request",
            Self::Failed => "error",
        }
    }
}

/// The admission side of the server.
pub struct Admission {
    engine: SharedEngine,
    writer: Arc<dyn SecretWriter>,
    metrics: Arc<Metrics>,
    namespaces: Option<Arc<dyn NamespaceLabels>>,
    last_known_good: Option<Arc<dyn LastKnownGood>>,
    caller: Caller,
    creations: CreationLimiter,
}

impl Admission {
    /// Callers are taken to be unauthenticated until [`Self::with_callers`]
    /// says otherwise.
    pub fn new(engine: SharedEngine, writer: Arc<dyn SecretWriter>, metrics: Arc<Metrics>) -> Self {
        Self {
            engine,
            writer,
            metrics,
            namespaces: None,
            last_known_good: None,
            caller: Caller::Unauthenticated,
            creations: CreationLimiter::default(),
        }
    }

    /// Who calls: `Trusted` when the webhook port requires a client
    /// certificate chaining to the configured CA.
    pub fn with_callers(mut self, caller: Caller) -> Self {
        self.caller = caller;
        self
    }

    /// Gives the policy namespace labels (for `namespaceSelector` rules).
    pub fn with_namespaces(mut self, namespaces: Arc<dyn NamespaceLabels>) -> Self {
        self.namespaces = Some(namespaces);
        self
    }

    /// Lets a Pod in secretRef mode whose store is down be admitted
    /// against its existing, verified managed Secret.
    pub fn with_last_known_good(mut self, secrets: Arc<dyn LastKnownGood>) -> Self {
        self.last_known_good = Some(secrets);
        self
    }

    /// `kubernetes` or `dry-run`.
    pub fn writer_kind(&self) -> &'static str {
        self.writer.kind()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers one review. `timeout` is the API server's own deadline for
    /// the call, when it sent one (`?timeout=5s`).
    pub async fn review(&self, body: &[u8], timeout: Option<Duration>) -> Result<Vec<u8>, ReviewError> {
        let mut out = Vec::with_capacity(1024);
        self.review_into(body, timeout, Instant::now(), &mut out).await?;
        Ok(out)
    }

    /// Answers one review into `out`. `received` is when the body was
    /// complete: the recorded review duration runs from then until the
    /// answer is written in full and everything the review built is freed.
    pub(crate) async fn review_into<W: std::io::Write>(
        &self,
        body: &[u8],
        timeout: Option<Duration>,
        received: Instant,
        out: &mut W,
    ) -> Result<(), ReviewError> {
        let in_flight = self.metrics.review_started();
        let answered = self.answer(body, timeout, received, out).await;
        let outcome = match &answered {
            Ok(outcome) => *outcome,
            Err(e) => e.outcome(),
        };
        self.metrics.review(outcome.label(), received.elapsed());
        drop(in_flight);
        answered.map(|_| ())
    }

    /// Decodes, decides and encodes; returns what the review came to.
    async fn answer<W: std::io::Write>(
        &self,
        body: &[u8],
        timeout: Option<Duration>,
        received: Instant,
        out: &mut W,
    ) -> Result<Outcome, ReviewError> {
        // One pass over the body: the Pod is decoded with the review. Only a
        // body that fails it is read again, in two steps, so that a Pod that
        // cannot be read (a denial) is told apart from a body that is not a
        // review (a 400), with the same answers as ever.
        let (request, object) = match serde_json::from_slice::<ReviewIn<PodView>>(body) {
            Ok(review) => {
                let mut request = checked_head(review)?;
                let object = request.object.take().map(Ok);
                (request.without_object(), object)
            }
            Err(_) => {
                let review: ReviewIn<&serde_json::value::RawValue> =
                    serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
                let request = checked_head(review)?;
                let object = request
                    .object
                    .map(|o| serde_json::from_str::<PodView>(o.get()).map_err(|e| e.to_string()));
                (request.without_object(), object)
            }
        };
        let engine = self.engine.load();
        // Time spent waiting for a turn counts against the API server's deadline.
        let timeout = timeout.map(|t| t.saturating_sub(received.elapsed()));
        let (response, outcome) = self.decide(&engine, &request, object, timeout, received).await;
        write_answer(out, response)?;
        Ok(outcome)
    }

    async fn decide(
        &self,
        engine: &Engine,
        request: &review::RequestIn<()>,
        object: Option<Result<PodView, String>>,
        timeout: Option<Duration>,
        started: Instant,
    ) -> (ResponseOut, Outcome) {
        let allow = || ResponseOut {
            uid: request.uid.clone(),
            allowed: true,
            ..Default::default()
        };
        let (operation, namespace) = match request::check(request) {
            Ok(checked) => checked,
            Err(e) => return refuse(&request.uid, &e),
        };
        let Some(object) = object else {
            return (allow(), Outcome::Skipped);
        };
        let pod: PodView = match object {
            Ok(p) => p,
            Err(error) => {
                // serde's message quotes the offending text: cut to the limit.
                let message = format!(
                    "the Pod in the review could not be read: {}",
                    engine.limits().quote().of(&error)
                );
                return (
                    deny(&request.uid, DenialClass::Malformed, message),
                    Outcome::Denied(DenialClass::Malformed),
                );
            }
        };
        if operation == Operation::AddEphemeralContainers {
            return match engine.guard_ephemeral_containers(&pod) {
                None => (allow(), Outcome::Allowed),
                Some(d) => {
                    tracing::info!(uid = %request.uid, namespace, allowed = false, class = d.class.label(), reason = %d.message, "admission decision");
                    (deny(&request.uid, d.class, d.message), Outcome::Denied(d.class))
                }
            };
        }
        if !engine.concerns(&pod) {
            return (allow(), Outcome::Allowed);
        }
        // Known to the Namespace cache when there is one: a forged review
        // for a namespace that does not exist gets nothing written.
        let labels = match &self.namespaces {
            Some(n) => match cached_or_read(n.as_ref(), namespace).await {
                Some(labels) => Some(labels),
                None => {
                    return refuse(
                        &request.uid,
                        &RequestError::UnknownNamespace(namespace.to_owned()),
                    )
                }
            },
            None => None,
        };
        let dry_run = request.dry_run.unwrap_or(false);
        let pod_name = request
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| pod.display_name());
        let span = tracing::info_span!("review", uid = %request.uid, namespace, pod = %pod_name, dry_run);

        // Leave a margin for writing the Secret and answering.
        let budget = timeout.map(|t| {
            t.saturating_sub(Duration::from_millis(1500))
                .max(Duration::from_millis(100))
        });
        let lookup = |namespace: &str, name: &str| {
            self.last_known_good
                .as_ref()
                .and_then(|secrets| secrets.lookup(namespace, name))
        };
        let input = PodInput {
            namespace,
            pod: &pod,
            base: "",
            budget,
            namespace_labels: labels.as_ref(),
            caller: self.caller,
            last_known_good: self
                .last_known_good
                .as_ref()
                .map(|_| &lookup as FindKnownSecret<'_>),
        };
        let (verdict, memo) = engine.evaluate_memoised(&input).instrument(span.clone()).await;
        self.metrics.plan_memo(memo.label());
        // The Secret is written before answering: a Pod never points at a
        // Secret that does not exist. A memoised verdict is no exception:
        // the Secret is checked against the cluster's copy every time.
        let secret = match &verdict {
            Verdict::Mutated(m) => m.secret.as_ref(),
            _ => None,
        };
        let written = match secret {
            Some(secret) => Some({
                let began = Instant::now();
                let result = if dry_run {
                    DryRunWriter.apply(secret, &Unlimited).await
                } else {
                    let budget = NamespaceBudget {
                        limiter: &self.creations,
                        rate: engine.new_secrets(),
                    };
                    self.writer.apply(secret, &budget).instrument(span.clone()).await
                };
                // The cold path (a Secret written) apart from an up-to-date one.
                self.metrics
                    .secret_write_duration(write_label(&result), began.elapsed());
                result
            }),
            _ => None,
        };
        if let (Verdict::Mutated(m), Some(secrets), false) = (&verdict, &self.last_known_good, dry_run) {
            if let Some(known) = &m.last_known_good {
                secrets
                    .record_use(namespace, &known.secret, &known.stores, &known.refreshed_at)
                    .instrument(span.clone())
                    .await;
            }
        }
        // No await below: the span may be entered for the decision's log line.
        let _enter = span.enter();
        match verdict {
            Verdict::Untouched => (allow(), Outcome::Allowed),
            Verdict::Denied(d) => {
                let refs: Vec<String> = d.references.iter().map(ToString::to_string).collect();
                tracing::info!(
                    allowed = false,
                    code = d.code(),
                    class = d.class.label(),
                    references = ?refs,
                    reason = %d.message,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "admission decision"
                );
                (deny(&request.uid, d.class, d.message), Outcome::Denied(d.class))
            }
            Verdict::Mutated(m) => {
                let mut warnings = m.warnings.clone();
                if let Some(result) = written {
                    match result {
                        Ok(outcome) => {
                            self.metrics.secret_write(outcome.label());
                            if let WriteOutcome::NotWritten(w) = outcome {
                                warnings.push(w);
                            }
                        }
                        Err(e @ WriteError::TooManyNew { .. }) => {
                            self.metrics.secret_write("rate_limited");
                            let class = DenialClass::RateLimited;
                            tracing::warn!(allowed = false, class = class.label(), reason = %e, "admission decision");
                            let message = format!("{e}; the Pod is not admitted");
                            return (deny(&request.uid, class, message), Outcome::Denied(class));
                        }
                        Err(e) => {
                            self.metrics.secret_write("failed");
                            let class = DenialClass::SecretWrite;
                            tracing::warn!(allowed = false, class = class.label(), reason = %e, "admission decision");
                            let message = format!(
                                "{e}; the Pod is not admitted, since it would refer to a Secret that may not exist"
                            );
                            return (deny(&request.uid, class, message), Outcome::Denied(class));
                        }
                    }
                }
                let granted: Vec<String> = m
                    .grants
                    .iter()
                    .map(|g| format!("{} by rule {}", g.reference, g.rule))
                    .collect();
                if let Some(known) = &m.last_known_good {
                    for store in &known.stores {
                        self.metrics.last_known_good(store);
                    }
                    tracing::warn!(
                        audit = true,
                        stores = ?known.stores,
                        secret = %known.secret,
                        refreshed_at = %known.refreshed_at,
                        references = ?granted,
                        "store unavailable; admitted against the last known good managed Secret"
                    );
                }
                tracing::info!(
                    allowed = true,
                    mutated = !m.patch.is_empty(),
                    references = ?granted,
                    secret = m.secret.as_ref().map(|s| s.name.as_str()).unwrap_or(""),
                    warnings = warnings.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "admission decision"
                );
                let mut response = allow();
                if !m.patch.is_empty() {
                    match m.encoded.get_or_init(|| encode_patch(&m.patch)) {
                        Some(patch) => {
                            response.patch = Some(patch.clone());
                            response.patch_type = Some("JSONPatch");
                        }
                        None => {
                            let class = DenialClass::Internal;
                            return (
                                deny(&request.uid, class, "the patch could not be encoded".into()),
                                Outcome::Denied(class),
                            );
                        }
                    }
                }
                let secret = m
                    .secret
                    .as_ref()
                    .map(|s| s.name.as_str())
                    .or(m.last_known_good.as_ref().map(|k| k.secret.as_str()));
                response.audit_annotations = audit_annotations(&granted, secret);
                if let Some(known) = &m.last_known_good {
                    response
                        .audit_annotations
                        .insert("lastKnownGood".to_owned(), known.stores.join(", "));
                }
                response.warnings = warnings;
                let outcome = if m.patch.is_empty() {
                    Outcome::Allowed
                } else {
                    Outcome::Mutated
                };
                (response, outcome)
            }
        }
    }
}

/// The `outcome` label of a Secret write, as `sesame_secret_writes_total` counts it.
fn write_label(result: &Result<WriteOutcome, WriteError>) -> &'static str {
    match result {
        Ok(outcome) => outcome.label(),
        Err(WriteError::TooManyNew { .. }) => "rate_limited",
        Err(_) => "failed",
    }
}

/// Writes the AdmissionReview that carries `response`.
fn write_answer<W: std::io::Write>(out: &mut W, response: ResponseOut) -> Result<(), ReviewError> {
    let answer = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response,
    };
    serde_json::to_writer(out, &answer).map_err(|e| ReviewError::Encode(e.to_string()))
}

/// The review's type, request and uid checked; the request is returned.
fn checked_head<O>(review: ReviewIn<O>) -> Result<review::RequestIn<O>, ReviewError> {
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::WrongType {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    // The uid is echoed in the answer: without a plain one there is none to give.
    if !request::uid_is_valid(&request.uid) {
        return Err(ReviewError::BadUid);
    }
    Ok(request)
}

/// The patch as the JSON string of its base64, ready to be written raw.
fn encode_patch(patch: &[json_patch::PatchOperation]) -> Option<Box<serde_json::value::RawValue>> {
    let mut json = Vec::with_capacity(256 * patch.len());
    serde_json::to_writer(&mut json, patch).ok()?;
    let mut quoted = String::with_capacity(json.len().div_ceil(3) * 4 + 2);
    quoted.push('"');
    base64::engine::general_purpose::STANDARD.encode_string(&json, &mut quoted);
    quoted.push('"');
    serde_json::value::RawValue::from_string(quoted).ok()
}

/// The creation budget of the review's namespace.
struct NamespaceBudget<'a> {
    limiter: &'a CreationLimiter,
    rate: CreationRate,
}

impl CreationBudget for NamespaceBudget<'_> {
    fn may_create(&self, namespace: &str) -> bool {
        self.limiter.try_take(namespace, &self.rate, Instant::now())
    }
}

/// A review that does not fit what the webhook is registered for.
fn refuse(uid: &str, e: &RequestError) -> (ResponseOut, Outcome) {
    let class = DenialClass::Request;
    tracing::info!(uid, allowed = false, class = class.label(), reason = %e, "admission decision");
    (deny(uid, class, e.to_string()), Outcome::Denied(class))
}

fn deny(uid: &str, class: DenialClass, message: String) -> ResponseOut {
    // Escaped again for the messages made here (escaping twice changes nothing).
    let message = crate::validate::escape_controls(&message).into_owned();
    ResponseOut {
        uid: uid.to_owned(),
        allowed: false,
        status: Some(StatusOut::failure(class.code(), message)),
        ..Default::default()
    }
}

/// The API server records these under the webhook's name in its audit log.
fn audit_annotations(granted: &[String], secret: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !granted.is_empty() {
        out.insert("granted".to_owned(), granted.join("; "));
    }
    if let Some(s) = secret {
        out.insert("secret".to_owned(), s.to_owned());
    }
    out
}

/// The cache's labels, and only on a miss the boxed future of
/// `labels_now` (which may read the API): a hit allocates nothing.
async fn cached_or_read(
    namespaces: &dyn NamespaceLabels,
    namespace: &str,
) -> Option<BTreeMap<String, String>> {
    match namespaces.labels(namespace) {
        Some(labels) => Some(labels),
        None => namespaces.labels_now(namespace).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{AddOperation, PatchOperation};

    async fn admission(metrics: &Arc<Metrics>) -> Admission {
        let config = crate::config::Config::from_yaml(
            "stores: [{name: dev, file: {path: none.yaml}}]\npolicy: {rules: []}\n",
            "test",
        )
        .expect("config");
        let stores =
            crate::stores::Stores::from_config(&config.stores, std::path::Path::new("."), metrics, None)
                .await
                .expect("stores");
        let engine = Engine::new(&config, stores);
        Admission::new(
            Arc::new(arc_swap::ArcSwap::from_pointee(engine)),
            Arc::new(DryRunWriter),
            metrics.clone(),
        )
    }

    /// An answer sink that takes its time over the first write.
    struct SlowSink {
        out: Vec<u8>,
        delay: Option<Duration>,
    }

    impl std::io::Write for SlowSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(d) = self.delay.take() {
                std::thread::sleep(d);
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn series<'t>(text: &'t str, name: &str) -> Option<&'t str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
    }

    /// Knows no namespace, like a cache whose watch has not delivered it.
    struct NoNamespaces;

    impl NamespaceLabels for NoNamespaces {
        fn labels(&self, _: &str) -> Option<std::collections::BTreeMap<String, String>> {
            None
        }
    }

    /// A Deployment applied together with its namespace is often reviewed
    /// before Sesame's watch has the namespace: the workload path warns and
    /// never blocks it (admission checks each Pod).
    #[tokio::test]
    async fn a_workload_in_a_namespace_not_seen_yet_is_warned_not_denied() {
        let metrics = Arc::new(Metrics::new());
        let admission = admission(&metrics).await.with_namespaces(Arc::new(NoNamespaces));
        let review = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-2","kind":{"group":"apps","version":"v1","kind":"Deployment"},"operation":"CREATE","namespace":"new-team","object":{"spec":{"template":{"metadata":{"annotations":{"sesame.dev/env.A":"dev:x#y"}},"spec":{"containers":[{"name":"app","image":"x"}]}}}}}}"#;
        let mut out = Vec::new();
        admission
            .review_workload_into(review, &mut out)
            .expect("answered");
        let answer: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let warning = answer["response"]["warnings"][0].as_str().unwrap_or_default();
        assert!(
            warning.contains("has not seen namespace new-team yet"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn the_review_duration_includes_writing_the_answer() {
        let metrics = Arc::new(Metrics::new());
        let admission = admission(&metrics).await;
        let review = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"a","object":{"metadata":{}}}}"#;
        // Encoding this answer takes at least 300 ms; deciding it, microseconds.
        let mut sink = SlowSink {
            out: Vec::new(),
            delay: Some(Duration::from_millis(300)),
        };
        admission
            .review_into(review, None, Instant::now(), &mut sink)
            .await
            .expect("answered");
        let answer: serde_json::Value = serde_json::from_slice(&sink.out).expect("JSON");
        assert_eq!(answer["response"]["uid"], "u-1");
        let text = metrics.encode();
        let h = "sesame_admission_review_duration_seconds";
        assert_eq!(series(&text, &format!("{h}_count")), Some("1"), "{text}");
        // Recorded after the answer was written: not in any bucket up to 0.25 s.
        assert_eq!(
            series(&text, &format!("{h}_bucket{{le=\"0.25\"}}")),
            Some("0"),
            "{text}"
        );
        assert_eq!(
            series(&text, &format!("{h}_bucket{{le=\"+Inf\"}}")),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            series(&text, "sesame_admission_reviews_in_flight"),
            Some("0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_request_that_is_not_a_review_is_recorded_with_its_duration() {
        let metrics = Arc::new(Metrics::new());
        let admission = admission(&metrics).await;
        let err = admission
            .review(b"not json", None)
            .await
            .expect_err("not a review");
        assert!(err.is_bad_request());
        let text = metrics.encode();
        assert_eq!(
            series(&text, "sesame_admission_reviews_total{outcome=\"bad_request\"}"),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            series(&text, "sesame_admission_review_duration_seconds_count"),
            Some("1")
        );
    }

    /// The Pod is decoded with the review in one pass; a body where that
    /// fails is read again, and gets the answer it always got.
    #[tokio::test]
    async fn a_pod_that_cannot_be_read_is_told_apart_from_a_body_that_is_no_review() {
        let metrics = Arc::new(Metrics::new());
        let admission = admission(&metrics).await;
        let review = |api_version: &str, kind: &str, object: &str| {
            format!(
                r#"{{"apiVersion":"{api_version}","kind":"AdmissionReview","request":{{"uid":"u-1","kind":{{"group":"","version":"v1","kind":"{kind}"}},"operation":"CREATE","namespace":"a","object":{object}}}}}"#
            )
        };
        let answer = |body: String| {
            let admission = &admission;
            async move {
                let out = admission.review(body.as_bytes(), None).await?;
                let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
                Ok::<_, ReviewError>(v["response"].clone())
            }
        };
        let bad_pod = r#"{"metadata":{"annotations":"not a map"}}"#;

        let r = answer(review(API_VERSION, "Pod", bad_pod))
            .await
            .expect("answered");
        assert_eq!(r["allowed"], false, "{r}");
        let message = r["status"]["message"].as_str().expect("message");
        assert!(
            message.contains("the Pod in the review could not be read"),
            "{message}"
        );

        // The review's own checks come first, as before: a 400 or a refusal, not a Malformed denial.
        let err = answer(review("admission.k8s.io/v1beta1", "Pod", bad_pod))
            .await
            .expect_err("wrong type");
        assert!(matches!(err, ReviewError::WrongType { .. }), "{err}");
        let r = answer(review(API_VERSION, "Deployment", bad_pod))
            .await
            .expect("answered");
        assert!(
            r["status"]["message"].as_str().expect("message").contains("Pods"),
            "{r}"
        );
        let err = answer(review(API_VERSION, "Pod", r#"{"metadata":"#))
            .await
            .expect_err("not JSON");
        assert!(matches!(err, ReviewError::NotJson(_)), "{err}");

        // Readable in one pass: no object is skipped, a plain Pod allowed.
        let r = answer(review(API_VERSION, "Pod", "null"))
            .await
            .expect("answered");
        assert_eq!(r["allowed"], true, "{r}");
        let r = answer(review(API_VERSION, "Pod", r#"{"metadata":{"name":"p"}}"#))
            .await
            .expect("answered");
        assert_eq!(r["allowed"], true, "{r}");
        let text = metrics.encode();
        for (outcome, n) in [
            ("denied_malformed", "1"),
            ("denied_request", "1"),
            ("bad_request", "2"),
            ("skipped", "1"),
            ("allowed", "1"),
        ] {
            assert_eq!(
                series(
                    &text,
                    &format!("sesame_admission_reviews_total{{outcome=\"{outcome}\"}}")
                ),
                Some(n),
                "{outcome}: {text}"
            );
        }
    }

    #[test]
    fn encoded_patch_is_a_json_string_of_the_base64_patch() {
        let patch = vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations", "sesame.dev/injected"]),
            value: serde_json::json!("sesame-0123 \"quoted\" / ~"),
        })];
        let raw = encode_patch(&patch).expect("encodes");
        let text: String = serde_json::from_str(raw.get()).expect("a JSON string");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64");
        let decoded: Vec<PatchOperation> = serde_json::from_slice(&bytes).expect("a JSON Patch");
        assert_eq!(decoded, patch);
        let response = ResponseOut {
            uid: "u".into(),
            allowed: true,
            patch: Some(raw),
            patch_type: Some("JSONPatch"),
            ..Default::default()
        };
        let out: serde_json::Value = serde_json::to_value(&response).expect("serialises");
        assert_eq!(
            out["patch"].as_str().map(str::len),
            Some(bytes.len().div_ceil(3) * 4)
        );
    }
}
