//! The workload path (`POST /validate-workloads`): a validating review of a
//! Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob, answered
//! with a warning for each reason its Pods would be denied, which kubectl
//! prints at `kubectl apply`. Nothing is fetched or written. With
//! `workloads.deny` the workload itself is denied when it is created, or
//! when an update changes its Pod template (an update that leaves a
//! template as it was, a scale say, is never blocked).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::request::{self, RequestError};
use super::review::{RequestIn, ResponseOut, ReviewIn};
use super::{checked_head, deny, write_answer, Admission, ReviewError};
use crate::inject::PodView;
use crate::pipeline::{Denial, Engine, PodInput};
use crate::validate::escape_controls;

/// The API server keeps at most this many warnings of one answer as they
/// are; more would be noise at the terminal anyway.
const MAX_WARNINGS: usize = 20;
/// Longer warnings are cut by the API server: cut here, where the cut is known.
const MAX_WARNING_CHARS: usize = 256;

/// What a workload review came to: the `outcome` of
/// `sesame_workload_reviews_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkloadOutcome {
    /// The template does not concern Sesame.
    Skipped,
    /// Nothing the Pods would be denied for.
    Clean,
    Warned,
    Denied,
    /// The review is not one the path is registered for (a 4xx denial).
    Refused,
    BadRequest,
    Failed,
}

impl WorkloadOutcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Skipped => "skipped",
            Self::Clean => "clean",
            Self::Warned => "warned",
            Self::Denied => "denied",
            Self::Refused => "refused",
            Self::BadRequest => "bad_request",
            Self::Failed => "error",
        }
    }
}

impl Admission {
    /// Answers one workload review into `out`.
    pub(crate) fn review_workload_into<W: std::io::Write>(
        &self,
        body: &[u8],
        out: &mut W,
    ) -> Result<(), ReviewError> {
        let answered = self.answer_workload(body, out);
        let outcome = match &answered {
            Ok(outcome) => *outcome,
            Err(e) if e.is_bad_request() => WorkloadOutcome::BadRequest,
            Err(_) => WorkloadOutcome::Failed,
        };
        self.metrics.workload_review(outcome.label());
        answered.map(|_| ())
    }

    fn answer_workload<W: std::io::Write>(
        &self,
        body: &[u8],
        out: &mut W,
    ) -> Result<WorkloadOutcome, ReviewError> {
        let review: ReviewIn<&RawValue> =
            serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
        let request = checked_head(review)?;
        let engine = self.engine.load();
        let (response, outcome) = self.decide_workload(&engine, &request);
        write_answer(out, response)?;
        Ok(outcome)
    }

    fn decide_workload(
        &self,
        engine: &Engine,
        request: &RequestIn<&RawValue>,
    ) -> (ResponseOut, WorkloadOutcome) {
        let uid = &request.uid;
        let allow = |warnings: Vec<String>| ResponseOut {
            uid: uid.clone(),
            allowed: true,
            warnings,
            ..Default::default()
        };
        let refused = |e: &RequestError| {
            let class = crate::denial::DenialClass::Request;
            tracing::info!(uid = %uid, allowed = false, class = class.label(), reason = %e, "workload review");
            (deny(uid, class, e.to_string()), WorkloadOutcome::Refused)
        };
        let checked = match request::check_workload(request) {
            Ok(c) => c,
            Err(e) => return refused(&e),
        };
        let kind = request.kind.kind.as_str();
        let Some(object) = request.object else {
            return (allow(Vec::new()), WorkloadOutcome::Skipped);
        };
        let template = match template_of(object.get(), checked.template) {
            Ok(Some(t)) => t,
            Ok(None) => return (allow(Vec::new()), WorkloadOutcome::Skipped),
            Err(e) => {
                // The API server validated the object: only a forged review
                // gets here. It gets a warning, never a block.
                let quote = engine.limits().quote();
                let warning = cut(&format!(
                    "Sesame could not read the Pod template of this {kind}: {}",
                    quote.of(&e)
                ));
                return (allow(vec![warning]), WorkloadOutcome::Warned);
            }
        };
        let (pod, raw_template) = template;
        if !engine.concerns(&pod) {
            return (allow(Vec::new()), WorkloadOutcome::Skipped);
        }
        let labels = match &self.namespaces {
            Some(n) => match n.labels(checked.namespace) {
                Some(labels) => Some(labels),
                // A namespace applied with its workloads is often reviewed
                // before the watch brings it. This path writes nothing and
                // admission checks every Pod, so it is never a block.
                None => {
                    let warning = format!(
                        "Sesame has not seen namespace {} yet: the references of this {kind}'s Pods are checked when the Pods are created",
                        checked.namespace
                    );
                    return (allow(vec![warning]), WorkloadOutcome::Warned);
                }
            },
            None => None,
        };
        let input = PodInput {
            namespace: checked.namespace,
            pod: &pod,
            base: checked.template,
            budget: None,
            namespace_labels: labels.as_ref(),
            caller: self.caller,
            last_known_good: None,
        };
        let problems = crate::preflight::problems(engine, &input);
        let name = request.name.as_deref().unwrap_or("");
        if problems.is_empty() {
            tracing::debug!(uid = %uid, namespace = checked.namespace, kind, name, "workload review: nothing to warn of");
            return (allow(Vec::new()), WorkloadOutcome::Clean);
        }
        let template_changed = !checked.update
            || request
                .old_object
                .as_deref()
                .and_then(|old| template_of_raw(old.get(), checked.template))
                .is_none_or(|old| old != raw_template);
        let denies = engine.deny_workloads() && template_changed;
        let reasons: Vec<&str> = problems.iter().map(|d| d.message.as_str()).collect();
        tracing::info!(
            uid = %uid,
            namespace = checked.namespace,
            kind,
            name,
            problems = problems.len(),
            denied = denies,
            reasons = ?reasons,
            "workload review: its Pods would be denied"
        );
        let warnings = warnings(kind, &problems);
        if denies {
            let first = &problems[0];
            let mut response = deny(uid, first.class, denial_message(kind, &problems));
            response.warnings = warnings;
            return (response, WorkloadOutcome::Denied);
        }
        (allow(warnings), WorkloadOutcome::Warned)
    }
}

/// The Pod template at `pointer` of the object, read as Sesame reads a
/// Pod, with its JSON to compare with the old object's.
fn template_of(object: &str, pointer: &str) -> Result<Option<(PodView, Value)>, String> {
    let Some(raw) = template_of_raw(object, pointer) else {
        return Ok(None);
    };
    let pod = PodView::deserialize(&raw).map_err(|e| e.to_string())?;
    Ok(Some((pod, raw)))
}

fn template_of_raw(object: &str, pointer: &str) -> Option<Value> {
    let mut value: Value = serde_json::from_str(object).ok()?;
    value.pointer_mut(pointer).map(Value::take)
}

/// One warning per problem, each cut to what the API server keeps, at most
/// [`MAX_WARNINGS`] of them (the last then says how many were left out).
fn warnings(kind: &str, problems: &[Denial]) -> Vec<String> {
    let mut out: Vec<String> = problems
        .iter()
        .take(MAX_WARNINGS)
        .map(|d| {
            cut(&format!(
                "Sesame will deny the Pods of this {kind}: {}",
                d.message
            ))
        })
        .collect();
    if problems.len() > MAX_WARNINGS {
        out.truncate(MAX_WARNINGS - 1);
        out.push(format!(
            "Sesame will deny the Pods of this {kind} for {} more reasons; `sesame mutate` on the manifest lists them",
            problems.len() - (MAX_WARNINGS - 1)
        ));
    }
    out
}

fn denial_message(kind: &str, problems: &[Denial]) -> String {
    let reasons: Vec<&str> = problems
        .iter()
        .take(MAX_WARNINGS)
        .map(|d| d.message.as_str())
        .collect();
    format!(
        "Sesame would deny every Pod of this {kind} (workloads.deny is on): {}",
        reasons.join("; ")
    )
}

/// `text`, escaped, in at most [`MAX_WARNING_CHARS`] characters.
fn cut(text: &str) -> String {
    let text = escape_controls(text);
    if text.chars().count() <= MAX_WARNING_CHARS {
        return text.into_owned();
    }
    let mut out: String = text.chars().take(MAX_WARNING_CHARS - 1).collect();
    out.push('…');
    out
}
