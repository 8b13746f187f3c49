//! The pipeline run on a workload's Pod template with no store read and
//! no write: every reason for which the Pods the workload creates would be
//! denied that does not depend on the values (grammar, limits, policy,
//! container names, env var, file and mount clashes, a managed Secret of
//! other Pods). Unlike admission, which stops at the first, it collects
//! them all, so that one `kubectl apply` shows the author everything to fix.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::denial::DenialClass;
use crate::inject::annotations::{PodRequest, Target};
use crate::inject::limits;
use crate::inject::plan::{PlanError, MANAGED_PREFIX};
use crate::inject::{build_patch, build_plan, Fetched, PlanInput, SecretRef};
use crate::pipeline::{asked, foreign_secret, service_account, Denial, Engine, PodInput};
use crate::stores::{SecretData, SecretValue, StoreRequest};

/// What would be denied, as the sentences admission would give, in the
/// order admission checks them.
pub(crate) fn problems(engine: &Engine, input: &PodInput<'_>) -> Vec<Denial> {
    let used_managed = input.pod.secret_names_with_prefix(MANAGED_PREFIX);
    if !engine.wants(input.pod) {
        return used_managed
            .iter()
            .map(|name| foreign_secret(name, None))
            .collect();
    }
    let quote = engine.limits().quote();
    // A template that does not parse says nothing more.
    let request = match engine.request(input.namespace, input.pod) {
        Ok(r) => r,
        Err(e) => return vec![Denial::new(DenialClass::Malformed, e.to_string(), Vec::new())],
    };
    if let Err(e) = limits::check_request(
        engine.limits(),
        &request.injections,
        &request.templates,
        input.pod,
    ) {
        return vec![Denial::limit(e, Vec::new())];
    }
    let mut out = Vec::new();
    if let Err(denial) = engine.check_refresh(&asked(&request, quote)) {
        out.push(denial);
    }
    if let Some(message) = engine.inline_refusal(request.mode, input.caller) {
        out.push(Denial::new(DenialClass::Policy, message, Vec::new()));
    }
    let sa = service_account(input.pod);
    for (source, r, placeholder) in asked(&request, quote) {
        if let Err(refusal) = engine.authorize(input.namespace, input.namespace_labels, sa, r) {
            let (class, message) = refusal.explained(source, placeholder.as_deref(), quote);
            out.push(Denial::new(class, message, vec![r.clone()]));
        }
    }
    out.extend(layout_problems(engine, input, &request, &used_managed));
    out
}

/// The plan and patch built on stand-in values: what they refuse that no
/// value could change. A stand-in secret has exactly the properties the
/// Pod names and nothing else, so an env var or file it produces is one
/// the real secret produces too; failures that depend on the values
/// (missing properties, templates' functions) are left to admission.
fn layout_problems(
    engine: &Engine,
    input: &PodInput<'_>,
    request: &PodRequest,
    used_managed: &std::collections::BTreeSet<String>,
) -> Vec<Denial> {
    let quote = engine.limits().quote();
    let answers = stand_ins(request);
    let answer = |r: &SecretRef| {
        answers
            .get(&r.request())
            .cloned()
            .unwrap_or_else(|| Arc::new(stand_in(&[])))
    };
    let mut out = Vec::new();
    // An annotation the plan refuses is set aside and the plan made again,
    // so that the others are checked too.
    let mut request = request.clone();
    let mut set_aside = false;
    let plan = loop {
        let resolved: Vec<_> = request
            .injections
            .iter()
            .map(|i| Ok(answer(&i.reference)))
            .collect();
        let template_answers: Fetched = request
            .templates
            .iter()
            .flat_map(|t| t.references())
            .map(|r| (r.request(), Ok(answer(r))))
            .collect();
        let plan = build_plan(&PlanInput {
            namespace: input.namespace,
            service_account: service_account(input.pod),
            pod: input.pod,
            mode: request.mode,
            inline_allowed: engine.inline_allowed(input.namespace),
            injections: &request.injections,
            resolved: &resolved,
            templates: &request.templates,
            template_answers: &template_answers,
            quote,
        });
        match plan {
            Ok(plan) => break plan,
            Err(e @ (PlanError::UnknownContainer { .. } | PlanError::Invalid { .. })) => {
                out.push(Denial::new(e.class(), e.to_string(), Vec::new()));
                let (PlanError::UnknownContainer { annotation, .. } | PlanError::Invalid { annotation, .. }) =
                    e
                else {
                    return out;
                };
                let before = request.injections.len() + request.templates.len();
                request.injections.retain(|i| i.source != annotation);
                request.templates.retain(|t| t.source != annotation);
                if request.injections.len() + request.templates.len() == before {
                    return out;
                }
                set_aside = true;
            }
            Err(e @ (PlanError::Conflict { .. } | PlanError::InlineForbidden { .. })) => {
                out.push(Denial::new(e.class(), e.to_string(), Vec::new()));
                return out;
            }
            Err(_) => return out,
        }
    };
    let own = plan.secret.as_ref().map(|s| s.name.as_str());
    // With an optional reference, or one set aside, the name depends on
    // what the store has.
    let certain = !set_aside
        && !request.injections.iter().any(|i| i.optional)
        && !request.templates.iter().any(|t| t.optional);
    if certain {
        if let Some(name) = used_managed.iter().find(|n| Some(n.as_str()) != own) {
            out.push(foreign_secret(name, own));
        }
    }
    if let Err(e) = build_patch(input.pod, &plan, "", engine.marker_key(), own, quote) {
        out.push(Denial::new(e.class(), e.to_string(), Vec::new()));
    }
    out
}

/// One stand-in per secret the Pod reads: an object with the properties
/// some reference names, or a single value when none names one and no
/// injection wants every property.
fn stand_ins(request: &PodRequest) -> HashMap<StoreRequest, Arc<SecretData>> {
    let mut wanted: HashMap<StoreRequest, (Vec<&str>, bool)> = HashMap::new();
    let injections = request.injections.iter().map(|i| {
        let every_property = matches!(i.target, Target::EnvFrom { .. } | Target::Dir { .. });
        (&i.reference, every_property)
    });
    let placeholders = request
        .templates
        .iter()
        .flat_map(|t| t.references())
        .map(|r| (r, false));
    for (r, every_property) in injections.chain(placeholders) {
        let entry = wanted.entry(r.request()).or_default();
        entry.0.extend(r.property.as_deref());
        entry.1 |= every_property;
    }
    wanted
        .into_iter()
        .map(|(key, (props, every_property))| {
            let data = if props.is_empty() && !every_property {
                SecretData::Value(crate::inject::data::STAND_IN.into())
            } else {
                stand_in(&props)
            };
            (key, Arc::new(data))
        })
        .collect()
}

fn stand_in(properties: &[&str]) -> SecretData {
    let map: BTreeMap<String, SecretValue> = properties
        .iter()
        .map(|p| ((*p).to_owned(), SecretValue::from(crate::inject::data::STAND_IN)))
        .collect();
    SecretData::Properties(map)
}
