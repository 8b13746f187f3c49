//! The install manifests in deploy/: the kustomize base, its overlays and
//! components, and the Helm chart. Each is rendered with the real tools
//! (`kubectl kustomize`, `helm template`), every rendered object is checked
//! against the Kubernetes schema (the typed `k8s-openapi` structs, with
//! unknown fields denied by a strict round trip), and the settings the install
//! promises (webhook scope and failure handling, hardening, probes, the guard
//! policy, the configuration) are asserted on the rendered output.
//!
//! Needs `kubectl` and `helm` (scripts/deps/30-kubectl-helm.sh). Without them
//! the tests skip with one line, or fail when `SESAME_REQUIRE_TOOLS=1`.
//! `SESAME_E2E_KUBECONFIG` pointing at a real API server adds a server-side
//! dry run of every rendered object.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser as _;
use futures::FutureExt as _;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use sesame::config::Config;

const NS: &str = "sesame-system";
const MARKER: &str = "sesame.dev/injected";

// ---------------------------------------------------------------- tools

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tool from .tools/bin (what scripts/test.sh installs) or PATH; `None`
/// (with one line) when missing, a failure when tools are required.
fn tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(t) = std::env::var_os("SESAME_TOOLS") {
        dirs.push(PathBuf::from(t).join("bin"));
    }
    dirs.push(root().join(".tools/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    if let Some(found) = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Some(found);
    }
    if std::env::var("SESAME_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!(
            "{name} is required (SESAME_REQUIRE_TOOLS=1) but not found; run scripts/deps/30-kubectl-helm.sh"
        );
    }
    eprintln!("skipping: {name} not found (scripts/deps/30-kubectl-helm.sh installs it)");
    None
}

fn tools() -> Option<(PathBuf, PathBuf)> {
    Some((tool("kubectl")?, tool("helm")?))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every YAML document of a rendered stream, as JSON.
fn parse_stream(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kustomize(kubectl: &Path, dir: &Path) -> Vec<Value> {
    parse_stream(&run(Command::new(kubectl).arg("kustomize").arg(dir)))
}

/// A kustomization in a scratch directory on top of `resources` and
/// `components` (paths relative to the repository root).
fn kustomize_with(kubectl: &Path, name: &str, extra: &str) -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("deploy-test")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // kustomize wants relative paths; climb from the scratch dir to `/`.
    let up = "../".repeat(dir.components().count() - 1);
    let base = format!("{up}{}", root().display().to_string().trim_start_matches('/'));
    let text = extra.replace("{root}", &base);
    std::fs::write(dir.join("kustomization.yaml"), text).unwrap();
    kustomize(kubectl, &dir)
}

fn overlay(kubectl: &Path, name: &str) -> Vec<Value> {
    kustomize(kubectl, &root().join("deploy/overlays").join(name))
}

fn all_components(kubectl: &Path) -> Vec<Value> {
    kustomize_with(
        kubectl,
        "all-components",
        "resources:\n  - {root}/deploy/overlays/self-managed\ncomponents:\n  - {root}/deploy/components/servicemonitor\n  - {root}/deploy/components/object-selector\n  - {root}/deploy/components/networkpolicy\n",
    )
}

fn helm(helm: &Path, set: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "sesame"])
        .arg(root().join("deploy/helm/sesame"))
        .args(["--namespace", NS]);
    for s in set {
        cmd.args(["--set", s]);
    }
    parse_stream(&run(&mut cmd))
}

/// Values that switch every option away from its default.
const HELM_NON_DEFAULT: &[&str] = &[
    "certificates.mode=cert-manager",
    "serviceMonitor.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.apiServerCIDRs={10.0.0.1/32}",
    "networkPolicy.stores[0].cidr=10.1.0.0/16",
    "networkPolicy.stores[0].ports={8200}",
    "webhook.objectSelector.enabled=true",
    "webhook.failurePolicy=Ignore",
    "webhook.timeoutSeconds=8",
    "webhook.excludedNamespaces={kube-system,monitoring}",
    "replicas=3",
    "priorityClassName=system-cluster-critical",
    "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
];

// ---------------------------------------------------------------- schema

/// Deserializes `obj` into `T` and serializes it back: a field `T` does not
/// know (a typo, a wrong nesting) is missing from the round trip, and a value
/// of the wrong type fails to deserialize.
fn strict<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    diff(obj, &back, String::new(), &mut problems);
    if problems.is_empty() {
        Ok(typed)
    } else {
        Err(problems.join("; "))
    }
}

fn diff(rendered: &Value, typed: &Value, path: String, out: &mut Vec<String>) {
    match (rendered, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (k, v) in r {
                let p = format!("{path}.{k}");
                match t.get(k) {
                    None if v.is_null() => out.push(format!("{p}: null value")),
                    None => out.push(format!("{p}: unknown field")),
                    Some(tv) => diff(v, tv, p, out),
                }
            }
        }
        (Value::Array(r), Value::Array(t)) if r.len() == t.len() => {
            for (i, (rv, tv)) in r.iter().zip(t).enumerate() {
                diff(rv, tv, format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: rendered {a}, schema gives {b}")),
    }
}

// The CRDs below are not in k8s-openapi: strict structs for the fields the
// manifests use, following the CRD references (monitoring.coreos.com/v1
// ServiceMonitor of the Prometheus Operator API docs; cert-manager.io/v1
// Issuer and Certificate of the cert-manager API reference).

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CustomObject<S> {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: S,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    endpoints: Vec<ServiceMonitorEndpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorEndpoint {
    port: String,
    path: String,
    interval: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssuerSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    self_signed: Option<BTreeMap<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<CaIssuer>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaIssuer {
    secret_name: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateSpec {
    secret_name: String,
    #[serde(rename = "isCA", skip_serializing_if = "Option::is_none")]
    is_ca: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    common_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_names: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    renew_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usages: Option<Vec<String>>,
    private_key: CertificatePrivateKey,
    issuer_ref: IssuerRef,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificatePrivateKey {
    algorithm: String,
    size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_policy: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssuerRef {
    kind: String,
    name: String,
}

fn custom<S: DeserializeOwned + Serialize>(obj: &Value, api_version: &str) -> Result<(), String> {
    let typed: CustomObject<S> = strict(obj)?;
    if typed.api_version != api_version {
        return Err(format!("apiVersion {} is not {api_version}", typed.api_version));
    }
    Ok(())
}

/// Validates one rendered object against the schema of its kind; an object
/// of a kind the manifests are not expected to hold fails.
fn validate(obj: &Value) -> Result<(), String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    match kind {
        "Namespace" => strict::<Namespace>(obj).map(drop),
        "ServiceAccount" => strict::<ServiceAccount>(obj).map(drop),
        "ClusterRole" => strict::<ClusterRole>(obj).map(drop),
        "ClusterRoleBinding" => strict::<ClusterRoleBinding>(obj).map(drop),
        "Role" => strict::<Role>(obj).map(drop),
        "RoleBinding" => strict::<RoleBinding>(obj).map(drop),
        "ConfigMap" => strict::<ConfigMap>(obj).map(drop),
        "Service" => strict::<Service>(obj).map(drop),
        "Deployment" => strict::<Deployment>(obj).map(drop),
        "PodDisruptionBudget" => strict::<PodDisruptionBudget>(obj).map(drop),
        "MutatingWebhookConfiguration" => strict::<MutatingWebhookConfiguration>(obj).map(drop),
        "ValidatingAdmissionPolicy" => strict::<ValidatingAdmissionPolicy>(obj).map(drop),
        "ValidatingAdmissionPolicyBinding" => strict::<ValidatingAdmissionPolicyBinding>(obj).map(drop),
        "NetworkPolicy" => strict::<NetworkPolicy>(obj).map(drop),
        "ServiceMonitor" => custom::<ServiceMonitorSpec>(obj, "monitoring.coreos.com/v1"),
        "Issuer" => custom::<IssuerSpec>(obj, "cert-manager.io/v1"),
        "Certificate" => custom::<CertificateSpec>(obj, "cert-manager.io/v1"),
        other => Err(format!("no schema for kind {other:?}")),
    }
}

fn validate_all(what: &str, objects: &[Value]) {
    assert!(!objects.is_empty(), "{what}: rendered nothing");
    let problems: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            validate(o)
                .err()
                .map(|e| format!("{} {}: {e}", o["kind"], o["metadata"]["name"]))
        })
        .collect();
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------- lookups

fn kinds_and_names(objects: &[Value]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_owned(),
                o["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn one<T: DeserializeOwned>(objects: &[Value], kind: &str) -> T {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    serde_json::from_value(found[0].clone()).unwrap()
}

/// The object of `kind` named `name`.
fn named<T: DeserializeOwned>(objects: &[Value], kind: &str, name: &str) -> T {
    let found = objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    serde_json::from_value(found.clone()).unwrap()
}

fn has_kind(objects: &[Value], kind: &str) -> bool {
    objects.iter().any(|o| o["kind"] == kind)
}

/// Label-selector semantics (the subset Kubernetes defines for
/// matchLabels and the four operators), to check which namespaces match.
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown selector operator {other}"),
        }
    });
    labels_ok && exprs_ok
}

/// A namespace's labels as the API server sets them, plus `extra`.
fn namespace(name: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    labels
}

fn webhooks(objects: &[Value]) -> Vec<MutatingWebhook> {
    one::<MutatingWebhookConfiguration>(objects, "MutatingWebhookConfiguration")
        .webhooks
        .unwrap_or_default()
}

fn webhook<'a>(hooks: &'a [MutatingWebhook], name: &str) -> &'a MutatingWebhook {
    hooks
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no webhook {name}"))
}

/// The literal value of the Sesame container's environment variable `name`.
fn env_of(objects: &[Value], name: &str) -> String {
    let d: Deployment = one(objects, "Deployment");
    let container = d.spec.unwrap().template.spec.unwrap().containers.remove(0);
    container
        .env
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value)
        .unwrap_or_else(|| panic!("no {name} in the Deployment"))
}

fn configmap_config(objects: &[Value]) -> Config {
    let cm: ConfigMap = one(objects, "ConfigMap");
    let text = cm
        .data
        .unwrap_or_default()
        .remove("sesame.yaml")
        .expect("sesame.yaml in the ConfigMap");
    Config::from_yaml(&text, "ConfigMap sesame.yaml").unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------- checks

/// The webhook promises of the install, on any rendering.
fn check_webhooks(what: &str, objects: &[Value], closed_policy: &str, excluded: &[&str]) {
    let hooks = webhooks(objects);
    let names: Vec<&str> = hooks.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["inject.sesame.dev", "inject-open.sesame.dev"], "{what}");
    let resolve = configmap_config(objects).resolve_timeout;
    let service: Service = one(objects, "Service");
    for w in &hooks {
        let ctx = format!("{what}: webhook {}", w.name);
        assert_eq!(w.admission_review_versions, ["v1"], "{ctx}");
        assert_eq!(w.side_effects, "NoneOnDryRun", "{ctx}");
        assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"), "{ctx}");
        let timeout = w.timeout_seconds.expect("timeoutSeconds set");
        assert!(
            timeout < 10 && u64::from(timeout.unsigned_abs()) > resolve.as_secs(),
            "{ctx}: timeoutSeconds {timeout} must be below 10 and above resolveTimeout {resolve:?}"
        );
        let rules = w.rules.clone().unwrap_or_default();
        assert_eq!(rules.len(), 1, "{ctx}");
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(&["CREATE".to_string()][..]),
            "{ctx}"
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_string()][..]),
            "{ctx}"
        );
        assert_eq!(
            rules[0].api_groups.as_deref(),
            Some(&[String::new()][..]),
            "{ctx}"
        );
        assert!(
            w.client_config.ca_bundle.is_none(),
            "{ctx}: a caBundle in the manifest would overwrite the injected one"
        );
        let svc = w.client_config.service.as_ref().expect("service reference");
        assert_eq!(svc.name, service.metadata.name.clone().unwrap(), "{ctx}");
        assert_eq!(svc.namespace, NS, "{ctx}");
        assert_eq!(svc.path.as_deref(), Some("/mutate"), "{ctx}");
        let port = svc.port.unwrap_or(443);
        let service_port = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == port))
            .unwrap_or_else(|| panic!("{ctx}: Service has no port {port}"));
        assert_eq!(
            service_port.target_port,
            Some(IntOrString::String("webhook".into())),
            "{ctx}"
        );
        let conditions = w.match_conditions.clone().unwrap_or_default();
        assert_eq!(conditions.len(), 1, "{ctx}");
        assert!(
            conditions[0].expression.contains("'sesame.dev/'")
                && conditions[0].expression.contains(&format!("'{MARKER}'")),
            "{ctx}: matchCondition must select request annotations and skip the marker: {}",
            conditions[0].expression
        );
    }
    let closed = webhook(&hooks, "inject.sesame.dev");
    let open = webhook(&hooks, "inject-open.sesame.dev");
    assert_eq!(closed.failure_policy.as_deref(), Some(closed_policy), "{what}");
    assert_eq!(open.failure_policy.as_deref(), Some("Ignore"), "{what}");

    // Which namespaces reach which webhook.
    let closed_sel = closed.namespace_selector.clone().unwrap_or_default();
    let open_sel = open.namespace_selector.clone().unwrap_or_default();
    let guard = has_kind(objects, "ValidatingAdmissionPolicyBinding").then(|| {
        one::<ValidatingAdmissionPolicyBinding>(objects, "ValidatingAdmissionPolicyBinding")
            .spec
            .match_resources
            .and_then(|m| m.namespace_selector)
            .unwrap_or_default()
    });
    let mut cases = vec![
        (namespace("team-a", &[]), (true, false, true)),
        (
            namespace("team-b", &[("sesame.dev/failure-policy", "open")]),
            (false, true, false),
        ),
        (
            namespace("team-c", &[("sesame.dev/failure-policy", "closed")]),
            (true, false, true),
        ),
        (
            namespace("legacy", &[("sesame.dev/ignore", "true")]),
            (false, false, false),
        ),
        (
            namespace(
                "legacy-open",
                &[
                    ("sesame.dev/ignore", "true"),
                    ("sesame.dev/failure-policy", "open"),
                ],
            ),
            (false, false, false),
        ),
        (namespace(NS, &[]), (false, false, false)),
    ];
    for ns in excluded {
        cases.push((namespace(ns, &[]), (false, false, false)));
        cases.push((
            namespace(ns, &[("sesame.dev/failure-policy", "open")]),
            (false, false, false),
        ));
    }
    for (labels, (want_closed, want_open, want_guard)) in cases {
        let ns = &labels["kubernetes.io/metadata.name"];
        assert_eq!(
            selects(&closed_sel, &labels),
            want_closed,
            "{what}: {ns} {labels:?} and inject.sesame.dev"
        );
        assert_eq!(
            selects(&open_sel, &labels),
            want_open,
            "{what}: {ns} {labels:?} and inject-open.sesame.dev"
        );
        if let Some(g) = &guard {
            assert_eq!(
                selects(g, &labels),
                want_guard,
                "{what}: {ns} {labels:?} and the guard binding"
            );
        }
    }
}

/// Hardening, probes, shutdown timing and wiring of the Deployment.
fn check_deployment(what: &str, objects: &[Value]) {
    let d: Deployment = one(objects, "Deployment");
    let spec = d.spec.expect("spec");
    assert!(spec.replicas.unwrap_or(1) >= 2, "{what}: at least two replicas");
    let template_labels = spec
        .template
        .metadata
        .clone()
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert!(
        selects(&spec.selector, &template_labels),
        "{what}: selector matches the template"
    );
    let pod = spec.template.spec.expect("pod spec");

    let psc = pod.security_context.clone().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true), "{what}");
    assert_eq!(psc.run_as_user, Some(65532), "{what}");
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".into()),
        "{what}"
    );
    assert!(
        !pod.topology_spread_constraints
            .clone()
            .unwrap_or_default()
            .is_empty(),
        "{what}: topology spread"
    );
    let anti = pod
        .affinity
        .clone()
        .and_then(|a| a.pod_anti_affinity)
        .expect("pod anti-affinity");
    for term in anti
        .preferred_during_scheduling_ignored_during_execution
        .unwrap_or_default()
    {
        let sel = term
            .pod_affinity_term
            .label_selector
            .expect("anti-affinity selector");
        assert!(
            selects(&sel, &template_labels),
            "{what}: anti-affinity selects the Sesame Pods"
        );
    }

    assert_eq!(pod.containers.len(), 1, "{what}");
    let c = &pod.containers[0];
    let sc = c.security_context.clone().expect("container securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()]),
        "{what}"
    );

    let ports: BTreeMap<String, i32> = c
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.container_port))
        .collect();
    let args = c.args.clone().unwrap_or_default();
    let arg = |flag: &str| -> String {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
            .unwrap_or_else(|| panic!("{what}: no --{flag}"))
            .to_owned()
    };
    assert_eq!(
        ports["webhook"].to_string(),
        arg("tls-port"),
        "{what}: container port matches --tls-port"
    );
    assert_eq!(
        ports["admin"].to_string(),
        arg("admin-port"),
        "{what}: container port matches --admin-port"
    );
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe.clone().and_then(|p| p.http_get).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        assert_eq!(
            get.port,
            IntOrString::String("admin".into()),
            "{what}: probes on the admin port"
        );
    }

    // Grace period: preStop pause + drain, with room to spare.
    let pause = c
        .lifecycle
        .clone()
        .and_then(|l| l.pre_stop)
        .and_then(|h| h.sleep)
        .expect("preStop sleep")
        .seconds;
    let drain = humantime::parse_duration(&arg("drain-timeout"))
        .unwrap()
        .as_secs() as i64;
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(
        pause >= 1 && grace > pause + drain,
        "{what}: grace {grace} must exceed preStop {pause} + drain {drain}"
    );

    let res = c.resources.clone().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(
            res.requests.as_ref().is_some_and(|r| r.contains_key(key)),
            "{what}: {key} request"
        );
        assert!(
            res.limits.as_ref().is_some_and(|r| r.contains_key(key)),
            "{what}: {key} limit"
        );
    }

    // Config and certificates are mounted where the flags point.
    let mounts: BTreeMap<String, String> = c
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.mount_path, m.name))
        .collect();
    let config_dir = Path::new(&arg("config")).parent().unwrap().display().to_string();
    let volumes = pod.volumes.clone().unwrap_or_default();
    let config_volume = volumes.iter().find(|v| v.name == mounts[&config_dir]).unwrap();
    let config_map = config_volume.config_map.clone().expect("config from a ConfigMap");
    let cm: ConfigMap = one(objects, "ConfigMap");
    assert_eq!(
        config_map.name,
        cm.metadata.name.unwrap(),
        "{what}: the ConfigMap is mounted"
    );
    assert!(
        mounts.contains_key(&arg("cert-dir")),
        "{what}: cert dir is mounted"
    );

    // The PodDisruptionBudget and the Service select these Pods.
    let pdb: PodDisruptionBudget = one(objects, "PodDisruptionBudget");
    let pdb_spec = pdb.spec.unwrap();
    assert!(
        selects(&pdb_spec.selector.unwrap(), &template_labels),
        "{what}: PDB selects the Pods"
    );
    assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(1)), "{what}");
    let svc: Service = one(objects, "Service");
    let svc_sel = svc.spec.unwrap().selector.unwrap();
    assert!(
        svc_sel.iter().all(|(k, v)| template_labels.get(k) == Some(v)),
        "{what}: Service selects the Pods"
    );
}

/// The guard policy is present, keyed on the marker, and bound to it.
fn check_guard(what: &str, objects: &[Value]) {
    let vap: ValidatingAdmissionPolicy = one(objects, "ValidatingAdmissionPolicy");
    let spec = vap.spec.expect("spec");
    let validations = spec.validations.unwrap_or_default();
    assert_eq!(validations.len(), 1, "{what}");
    assert!(
        validations[0].expression.contains(&format!("'{MARKER}'")),
        "{what}: the guard tests the marker"
    );
    let message = validations[0].message.clone().unwrap_or_default();
    assert!(
        message.starts_with("Sesame did not process this Pod"),
        "{what}: {message}"
    );
    assert!(message.contains(MARKER), "{what}");
    let conditions = spec.match_conditions.unwrap_or_default();
    let condition = &conditions[0].expression;
    assert!(
        condition.contains("'sesame.dev/'") && condition.contains(&format!("k != '{MARKER}'")),
        "{what}: {condition}"
    );
    let rules = spec
        .match_constraints
        .and_then(|m| m.resource_rules)
        .unwrap_or_default();
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["pods".to_string()][..]),
        "{what}"
    );
    let binding: ValidatingAdmissionPolicyBinding = one(objects, "ValidatingAdmissionPolicyBinding");
    let bspec = binding.spec;
    assert_eq!(
        Some(bspec.policy_name),
        vap.metadata.name,
        "{what}: binding names the policy"
    );
    assert_eq!(bspec.validation_actions, ["Deny"], "{what}");
}

// ---------------------------------------------------------------- tests

#[test]
fn kustomize_renders_schema_valid_objects() {
    let Some((kubectl, _)) = tools() else { return };
    let base = kustomize(&kubectl, &root().join("deploy/base"));
    let expected: BTreeSet<(String, String)> = [
        ("Namespace", NS),
        ("ServiceAccount", "sesame"),
        ("ClusterRole", "sesame"),
        ("ClusterRoleBinding", "sesame"),
        ("ClusterRole", "sesame-certificates"),
        ("ClusterRoleBinding", "sesame-certificates"),
        ("Role", "sesame"),
        ("RoleBinding", "sesame"),
        ("ConfigMap", "sesame-config"),
        ("Service", "sesame"),
        ("Deployment", "sesame"),
        ("PodDisruptionBudget", "sesame"),
        ("MutatingWebhookConfiguration", "sesame"),
        ("ValidatingAdmissionPolicy", "sesame-injection-guard"),
        ("ValidatingAdmissionPolicyBinding", "sesame-injection-guard"),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n.to_owned()))
    .collect();
    assert_eq!(kinds_and_names(&base), expected);
    for o in &base {
        if o["kind"] != "Namespace" && !o["metadata"]["namespace"].is_null() {
            assert_eq!(o["metadata"]["namespace"], NS, "{}", o["kind"]);
        }
    }
    validate_all("base", &base);

    let self_managed = overlay(&kubectl, "self-managed");
    assert_eq!(kinds_and_names(&self_managed), expected);
    validate_all("overlays/self-managed", &self_managed);

    let cm = overlay(&kubectl, "cert-manager");
    let extra: BTreeSet<_> = kinds_and_names(&cm).difference(&expected).cloned().collect();
    let missing: BTreeSet<_> = expected.difference(&kinds_and_names(&cm)).cloned().collect();
    let certificate_rbac: BTreeSet<_> = [
        ("ClusterRole", "sesame-certificates"),
        ("ClusterRoleBinding", "sesame-certificates"),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n.to_owned()))
    .collect();
    assert_eq!(
        missing, certificate_rbac,
        "cert-manager drops the certificate RBAC"
    );
    let want: BTreeSet<_> = [
        ("Issuer", "sesame-selfsigned"),
        ("Issuer", "sesame-ca"),
        ("Certificate", "sesame-ca"),
        ("Certificate", "sesame-tls"),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n.to_owned()))
    .collect();
    assert_eq!(extra, want);
    validate_all("overlays/cert-manager", &cm);

    let all = all_components(&kubectl);
    assert!(has_kind(&all, "ServiceMonitor") && has_kind(&all, "NetworkPolicy"));
    validate_all("all components", &all);
}

#[test]
fn helm_chart_renders_schema_valid_objects_and_lints_clean() {
    let Some((_, helm_bin)) = tools() else { return };
    let lint = run(Command::new(&helm_bin)
        .args(["lint", "--strict"])
        .arg(root().join("deploy/helm/sesame")));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let lint = run(Command::new(&helm_bin)
        .args(["lint", "--strict"])
        .arg(root().join("deploy/helm/sesame"))
        .args(HELM_NON_DEFAULT.iter().flat_map(|s| ["--set", s])));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let default = helm(&helm_bin, &[]);
    validate_all("helm defaults", &default);
    assert!(
        !has_kind(&default, "ServiceMonitor")
            && !has_kind(&default, "NetworkPolicy")
            && !has_kind(&default, "Certificate")
    );

    let custom = helm(&helm_bin, HELM_NON_DEFAULT);
    validate_all("helm non-default values", &custom);
    for kind in ["ServiceMonitor", "NetworkPolicy", "Certificate", "Issuer"] {
        assert!(has_kind(&custom, kind), "{kind} rendered");
    }
    let d: Deployment = one(&custom, "Deployment");
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert!(pod.containers[0]
        .image
        .as_deref()
        .unwrap()
        .starts_with("sesame@sha256:"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );

    let no_guard = helm(&helm_bin, &["guard.enabled=false", "replicas=1"]);
    validate_all("helm without guard", &no_guard);
    assert!(
        !has_kind(&no_guard, "ValidatingAdmissionPolicy")
            && !has_kind(&no_guard, "ValidatingAdmissionPolicyBinding")
    );
    assert!(
        !has_kind(&no_guard, "PodDisruptionBudget"),
        "no PDB for one replica: it would block every drain"
    );
}

#[test]
fn helm_rejects_values_that_would_break_the_webhook() {
    let Some((_, helm_bin)) = tools() else { return };
    let render = |set: &str, skip_schema: bool| {
        let mut cmd = Command::new(&helm_bin);
        cmd.args(["template", "sesame"])
            .arg(root().join("deploy/helm/sesame"))
            .args(["--set", set]);
        if skip_schema {
            cmd.arg("--skip-schema-validation");
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{set} must fail the render");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // values.schema.json: wrong values and misspelt keys.
    for (set, message) in [
        (
            "webhook.timeoutSeconds=15",
            "'/webhook/timeoutSeconds': maximum: got 15, want 10",
        ),
        (
            "webhook.failurePolicy=Sometimes",
            "'/webhook/failurePolicy': value must be one of",
        ),
        (
            "certificates.mode=manual",
            "'/certificates/mode': value must be one of",
        ),
        (
            "webhook.timeoutSecond=3",
            "additional properties 'timeoutSecond' not allowed",
        ),
        ("logFormat=xml", "'/logFormat': value must be one of"),
    ] {
        let stderr = render(set, false);
        assert!(stderr.contains(message), "{set}: {stderr}");
    }
    // The templates check again, for renders that skip the schema.
    for (set, message) in [
        (
            "webhook.timeoutSeconds=15",
            "timeoutSeconds must be between 1 and 10",
        ),
        (
            "webhook.failurePolicy=Sometimes",
            "failurePolicy must be Fail or Ignore",
        ),
        ("certificates.mode=manual", "certificates.mode must be"),
        ("networkPolicy.enabled=true", "needs networkPolicy.apiServerCIDRs"),
    ] {
        let stderr = render(set, true);
        assert!(stderr.contains(message), "{set}: {stderr}");
    }
}

#[test]
fn webhook_scope_failure_handling_and_exclusions() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let base = overlay(&kubectl, "self-managed");
    check_webhooks("kustomize", &base, "Fail", &["kube-system"]);
    check_webhooks("helm defaults", &helm(&helm_bin, &[]), "Fail", &["kube-system"]);
    let custom = helm(&helm_bin, HELM_NON_DEFAULT);
    check_webhooks(
        "helm non-default",
        &custom,
        "Ignore",
        &["kube-system", "monitoring"],
    );
    for w in webhooks(&custom) {
        assert_eq!(w.timeout_seconds, Some(8));
    }

    // The object selector: off by default, on with the component or value.
    assert!(webhooks(&base).iter().all(|w| w.object_selector.is_none()));
    let inject = BTreeMap::from([("sesame.dev/inject".to_string(), "true".to_string())]);
    for (what, objects) in [("component", all_components(&kubectl)), ("helm", custom)] {
        for w in webhooks(&objects) {
            let sel = w.object_selector.expect("objectSelector");
            assert!(selects(&sel, &inject), "{what}: labelled Pod is sent");
            assert!(
                !selects(&sel, &BTreeMap::new()),
                "{what}: unlabelled Pod is not sent"
            );
        }
    }
}

#[test]
fn deployment_is_hardened_and_drains() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    check_deployment("kustomize", &overlay(&kubectl, "self-managed"));
    check_deployment("helm defaults", &helm(&helm_bin, &[]));
    check_deployment("helm non-default", &helm(&helm_bin, HELM_NON_DEFAULT));
}

#[test]
fn guard_policy_keys_on_the_marker() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    check_guard("kustomize", &overlay(&kubectl, "self-managed"));
    check_guard("helm", &helm(&helm_bin, &[]));
    // The marker the guard tests is the one the code writes.
    assert_eq!(
        MARKER,
        format!(
            "{}/{}",
            sesame::config::DEFAULT_PREFIX,
            sesame::inject::annotations::INJECTED_SUFFIX
        )
    );
}

#[test]
fn configmaps_hold_a_valid_configuration() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let from_kustomize = configmap_config(&kustomize(&kubectl, &root().join("deploy/base")));
    let from_helm = configmap_config(&helm(&helm_bin, &[]));
    assert_eq!(
        from_kustomize, from_helm,
        "the chart's default configuration is the base's"
    );
    // A configuration given through a values file reaches the ConfigMap intact.
    let values = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deploy-test-values.yaml");
    std::fs::write(
        &values,
        "config:\n  stores:\n    - name: dev\n      file: {path: /etc/sesame/stores/secrets.yaml}\n  policy:\n    rules:\n      - {name: own, namespaces: ['*'], stores: [dev], paths: ['apps/{namespace}/**']}\n",
    )
    .unwrap();
    let custom = configmap_config(&parse_stream(&run(Command::new(&helm_bin)
        .args(["template", "sesame"])
        .arg(root().join("deploy/helm/sesame"))
        .args(["--namespace", NS, "-f"])
        .arg(&values))));
    assert_eq!(custom.stores[0].name, "dev");
    assert_eq!(custom.policy.rules[0].paths, ["apps/{namespace}/**"]);
}

#[test]
fn chart_matches_the_kustomize_base() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let pairs = [
        (overlay(&kubectl, "self-managed"), helm(&helm_bin, &[])),
        (
            overlay(&kubectl, "cert-manager"),
            helm(&helm_bin, &["certificates.mode=cert-manager"]),
        ),
    ];
    for (k, h) in &pairs {
        // The chart leaves the namespace to `helm install --create-namespace`.
        let mut k_names = kinds_and_names(k);
        k_names.remove(&("Namespace".to_owned(), NS.to_owned()));
        assert_eq!(k_names, kinds_and_names(h));
        let k_hooks = serde_json::to_value(webhooks(k)).unwrap();
        let h_hooks = serde_json::to_value(webhooks(h)).unwrap();
        assert_eq!(k_hooks, h_hooks, "webhook rules and settings");
        for kind in ["ClusterRole", "Role"] {
            let rules = |objs: &[Value]| -> BTreeMap<String, Value> {
                objs.iter()
                    .filter(|o| o["kind"] == kind)
                    .map(|o| {
                        (
                            o["metadata"]["name"].as_str().unwrap().to_owned(),
                            o["rules"].clone(),
                        )
                    })
                    .collect()
            };
            assert_eq!(rules(k), rules(h), "{kind} rules");
        }
        for kind in ["ValidatingAdmissionPolicy", "Certificate", "Issuer", "Service"] {
            // By name: the two renderers order objects of one kind differently.
            let specs = |objs: &[Value]| -> BTreeMap<String, Value> {
                objs.iter()
                    .filter(|o| o["kind"] == kind)
                    .map(|o| {
                        let mut s = o["spec"].clone();
                        s.as_object_mut().unwrap().remove("selector");
                        (o["metadata"]["name"].as_str().unwrap().to_owned(), s)
                    })
                    .collect()
            };
            assert_eq!(specs(k), specs(h), "{kind} specs");
        }
        let annotations = |objs: &[Value]| {
            one::<MutatingWebhookConfiguration>(objs, "MutatingWebhookConfiguration")
                .metadata
                .annotations
        };
        assert_eq!(
            annotations(k),
            annotations(h),
            "webhook annotations (CA injection)"
        );
        // The container is the same, and so are the volumes.
        let pod = |objs: &[Value]| {
            let d: Deployment = one(objs, "Deployment");
            d.spec.unwrap().template.spec.unwrap()
        };
        let (kp, hp) = (pod(k), pod(h));
        let mut kc = serde_json::to_value(&kp.containers).unwrap();
        let mut hc = serde_json::to_value(&hp.containers).unwrap();
        for c in [&mut kc, &mut hc] {
            c[0].as_object_mut().unwrap().remove("image");
            // The chart passes the log level explicitly.
            let args = c[0]["args"].as_array_mut().unwrap();
            args.retain(|a| !a.as_str().unwrap().starts_with("--log-level="));
        }
        assert_eq!(kc, hc, "container");
        // By name: a strategic-merge patch moves the patched volume first.
        let volumes = |p: &k8s_openapi::api::core::v1::PodSpec| -> BTreeMap<String, Value> {
            p.volumes
                .iter()
                .flatten()
                .map(|v| (v.name.clone(), serde_json::to_value(v).unwrap()))
                .collect()
        };
        assert_eq!(volumes(&kp), volumes(&hp), "volumes");
        assert_eq!(
            kp.termination_grace_period_seconds,
            hp.termination_grace_period_seconds
        );
        assert_eq!(kp.security_context, hp.security_context);
    }
}

#[test]
fn cert_manager_mode_waits_for_its_certificate() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    for (what, objects) in [
        ("kustomize", overlay(&kubectl, "cert-manager")),
        ("helm", helm(&helm_bin, &["certificates.mode=cert-manager"])),
    ] {
        let mwc: MutatingWebhookConfiguration = one(&objects, "MutatingWebhookConfiguration");
        let inject = mwc.metadata.annotations.unwrap_or_default()["cert-manager.io/inject-ca-from"].clone();
        assert_eq!(inject, format!("{NS}/sesame-tls"), "{what}");
        let serving = objects
            .iter()
            .find(|o| o["kind"] == "Certificate" && o["metadata"]["name"] == "sesame-tls")
            .expect("serving Certificate");
        assert_eq!(serving["spec"]["secretName"], "sesame-tls", "{what}");
        assert_eq!(
            serving["spec"]["dnsNames"][0],
            format!("sesame.{NS}.svc"),
            "{what}"
        );
        let d: Deployment = one(&objects, "Deployment");
        let volumes = d.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        let tls = volumes
            .iter()
            .find(|v| v.name == "tls")
            .unwrap()
            .secret
            .clone()
            .unwrap();
        assert_eq!(tls.secret_name.as_deref(), Some("sesame-tls"), "{what}");
        assert_eq!(tls.optional, Some(false), "{what}: waits for the certificate");
        // cert-manager writes the caBundle, so Sesame gets no access to it,
        // and Sesame serves the mounted files.
        let role: ClusterRole = one(&objects, "ClusterRole");
        assert!(
            role.rules.unwrap_or_default().iter().all(|r| !r
                .resources
                .clone()
                .unwrap_or_default()
                .contains(&"mutatingwebhookconfigurations".to_string())),
            "{what}"
        );
        assert_eq!(env_of(&objects, "SESAME_CERT_MODE"), "files", "{what}");
    }
}

// ---------------------------------------------------------------- RBAC

#[test]
fn rbac_is_least_privilege() {
    let Some((kubectl, _)) = tools() else { return };
    let objects = overlay(&kubectl, "self-managed");
    let roles: Vec<ClusterRole> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .map(|o| serde_json::from_value(o.clone()).unwrap())
        .collect();
    assert_eq!(roles.len(), 2);
    for rule in roles.into_iter().flat_map(|r| r.rules.unwrap_or_default()) {
        let verbs = rule.verbs.clone();
        assert!(
            !verbs
                .iter()
                .any(|v| v == "*" || v == "escalate" || v == "bind" || v == "impersonate"),
            "{rule:?}"
        );
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(!resources.iter().any(|r| r == "*"), "{rule:?}");
        if resources.contains(&"mutatingwebhookconfigurations".to_string()) {
            assert_eq!(
                rule.resource_names,
                Some(vec!["sesame".to_string()]),
                "only its own webhook"
            );
        }
        if resources.contains(&"pods".to_string()) {
            assert_eq!(
                verbs,
                ["list"],
                "Pods are never read one by one, watched nor changed"
            );
        }
    }
    let lease_role: Role = one(&objects, "Role");
    assert_eq!(lease_role.metadata.namespace.as_deref(), Some(NS));
    for rule in lease_role.rules.unwrap_or_default() {
        if rule.verbs.iter().any(|v| v != "create") {
            assert_eq!(
                rule.resource_names,
                Some(vec!["sesame-leader".to_string()]),
                "only the leader Lease is read and renewed"
            );
        }
    }
    let sa: ServiceAccount = one(&objects, "ServiceAccount");
    for name in ["sesame", "sesame-certificates"] {
        let binding: ClusterRoleBinding = named(&objects, "ClusterRoleBinding", name);
        assert_eq!(binding.role_ref.name, name);
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            (sa.metadata.name.as_deref().unwrap(), Some(NS))
        );
    }
    // Sesame is told the names its RBAC grants.
    assert_eq!(env_of(&objects, "SESAME_CERT_MODE"), "self-managed");
    assert_eq!(env_of(&objects, "SESAME_WEBHOOK_CONFIG"), "sesame");
}

// ---------------------------------------------------------------- real API server

/// A scratch namespace on the API server that `SESAME_E2E_KUBECONFIG` names,
/// plus the cluster-scoped objects a test installed there; all are deleted
/// when it drops, also when the test fails.
struct Scratch {
    kubectl: PathBuf,
    kubeconfig: std::ffi::OsString,
    name: String,
    installed: Vec<PathBuf>,
}

impl Scratch {
    /// `None` (with one line) when no API server is configured.
    fn new(purpose: &str) -> Option<Self> {
        let Some(kubeconfig) = std::env::var_os("SESAME_E2E_KUBECONFIG") else {
            eprintln!("skipping: SESAME_E2E_KUBECONFIG not set (no API server for this check)");
            return None;
        };
        let (kubectl, _) = tools()?;
        let scratch = Self {
            kubectl,
            kubeconfig,
            // Namespaces outlive the test (no controller removes them):
            // the random part keeps a reused pid from colliding.
            name: format!(
                "sesame-{purpose}-{}-{:04x}",
                std::process::id(),
                fastrand::u16(..)
            ),
            installed: Vec::new(),
        };
        run(&mut scratch.kubectl(&["create", "namespace", &scratch.name]));
        // A service account for test Pods, in case no controller makes one.
        let _ = scratch
            .kubectl(&["-n", &scratch.name, "create", "serviceaccount", "default"])
            .output();
        Some(scratch)
    }

    fn kubectl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    /// Writes `value` as a JSON file named after the scratch namespace.
    fn file(&self, suffix: &str, value: &Value) -> PathBuf {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{suffix}.json", self.name));
        std::fs::write(&path, value.to_string()).unwrap();
        path
    }

    /// Server-side dry run of `items`; the API server's answer when it
    /// refused or warned. A warning (e.g. a Pod Security violation) counts as
    /// a refusal; the note about a missing last-applied annotation on an
    /// object that already exists on the server does not.
    fn dry_run(&self, name: &str, items: Vec<Value>) -> Result<(), String> {
        let file = self.file(
            name,
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        );
        let out = self
            .kubectl(&["apply", "--dry-run=server", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warned = stderr
            .lines()
            .any(|l| l.contains("Warning") && !l.contains("last-applied-configuration"));
        if out.status.success() && !warned {
            Ok(())
        } else {
            Err(stderr.into_owned())
        }
    }

    /// Creates `items` for real; they are deleted on drop.
    fn install(&mut self, items: Vec<Value>) {
        let file = self.file(
            &format!("install-{}", self.installed.len()),
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        );
        run(self.kubectl(&["apply", "-f"]).arg(&file));
        self.installed.push(file);
    }

    /// A rendered cluster-scoped object under the scratch name, with its
    /// namespace selectors narrowed to the scratch namespace so that nothing
    /// else on the server is affected.
    fn scoped(&self, objects: &[Value], kind: &str) -> Value {
        let mut o = objects.iter().find(|o| o["kind"] == kind).unwrap().clone();
        o["metadata"] = serde_json::json!({"name": self.name});
        let only = serde_json::json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": [self.name]});
        let mut selectors: Vec<&mut Value> = match kind {
            "MutatingWebhookConfiguration" => o["webhooks"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .map(|w| &mut w["namespaceSelector"])
                .collect(),
            "ValidatingAdmissionPolicyBinding" => vec![&mut o["spec"]["matchResources"]["namespaceSelector"]],
            _ => Vec::new(),
        };
        for s in &mut selectors {
            s["matchExpressions"].as_array_mut().unwrap().push(only.clone());
        }
        if kind == "ValidatingAdmissionPolicyBinding" {
            o["spec"]["policyName"] = Value::String(self.name.clone());
        }
        o
    }

    /// Creates a Pod with `annotations` in the scratch namespace as a server
    /// dry run: the admitted (mutated) Pod, or the API server's refusal.
    fn create_pod(&self, annotations: Value) -> Result<Value, String> {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app", "namespace": self.name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}
        });
        let file = self.file("pod", &pod);
        let out = self
            .kubectl(&["create", "--dry-run=server", "-o", "json", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Repeats `create_pod` until `want` holds (for up to 10 s): new webhook
    /// configurations, policies and namespace labels reach the API server's
    /// admission chain within a second or two.
    fn eventually(
        &self,
        annotations: &Value,
        want: impl Fn(&Result<Value, String>) -> bool,
    ) -> Result<Value, String> {
        let mut last = self.create_pod(annotations.clone());
        for _ in 0..40 {
            if want(&last) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
            last = self.create_pod(annotations.clone());
        }
        last
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for file in &self.installed {
            // No waiting: a namespace never finishes terminating here.
            let _ = self
                .kubectl(&["delete", "--ignore-not-found", "--wait=false", "-f"])
                .arg(file)
                .output();
        }
        let _ = self
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

fn marked(pod: &Value) -> bool {
    !pod["metadata"]["annotations"][MARKER].is_null()
}

/// A real API server judges every rendered object
/// (`kubectl apply --dry-run=server`): schema, defaults, CEL compilation of
/// the guard and the match conditions. The namespaced objects go into the
/// scratch namespace, which enforces the restricted Pod Security level, so a
/// violation shows as a warning; kinds from CRDs the server lacks
/// (ServiceMonitor, cert-manager) are left out.
#[test]
fn api_server_accepts_the_rendered_objects() {
    let Some(scratch) = Scratch::new("dryrun") else {
        return;
    };
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    run(&mut scratch.kubectl(&[
        "label",
        "namespace",
        &scratch.name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]));
    let renders = [
        ("kustomize self-managed", overlay(&kubectl, "self-managed")),
        ("kustomize cert-manager", overlay(&kubectl, "cert-manager")),
        ("kustomize components", all_components(&kubectl)),
        ("helm defaults", helm(&helm_bin, &[])),
        ("helm non-default", helm(&helm_bin, HELM_NON_DEFAULT)),
    ];
    let mut failures = Vec::new();
    for (what, objects) in renders {
        let mut docs = Vec::new();
        for mut o in objects {
            let kind = o["kind"].as_str().unwrap_or_default().to_owned();
            if matches!(
                kind.as_str(),
                "Namespace" | "ServiceMonitor" | "Issuer" | "Certificate"
            ) {
                continue;
            }
            if o["metadata"]["namespace"].is_string() {
                o["metadata"]["namespace"] = Value::String(scratch.name.clone());
            }
            docs.push(o);
        }
        if let Err(stderr) = scratch.dry_run(&what.replace(' ', "-"), docs) {
            failures.push(format!("{what}:\n{stderr}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the API server refused or warned:\n{}",
        failures.join("\n")
    );
}

/// The guard policy as rendered, installed under the scratch name and bound
/// to the scratch namespace only, judged by the real API server: its CEL runs
/// there.
#[test]
fn api_server_enforces_the_guard() {
    let Some(mut scratch) = Scratch::new("guard") else {
        return;
    };
    let objects = overlay(&scratch.kubectl, "self-managed");
    scratch.install(vec![
        scratch.scoped(&objects, "ValidatingAdmissionPolicy"),
        scratch.scoped(&objects, "ValidatingAdmissionPolicyBinding"),
    ]);
    let asks = serde_json::json!({"sesame.dev/env.DB_PASSWORD": "vault:apps/db#password"});
    let refused = scratch.eventually(&asks, |r| r.is_err());
    let refusal = refused.expect_err("a Pod asking for Sesame without the marker is denied");
    assert!(refusal.contains("Sesame did not process this Pod"), "{refusal}");
    let with_marker = scratch.create_pod(serde_json::json!({
        "sesame.dev/env.DB_PASSWORD": "vault:apps/db#password",
        MARKER: "sesame-app-0123456789",
    }));
    assert!(with_marker.is_ok(), "a mutated Pod is admitted: {with_marker:?}");
    let plain = scratch.create_pod(serde_json::json!({"example.com/owner": "team-a"}));
    assert!(plain.is_ok(), "a Pod that does not ask is admitted: {plain:?}");
    let only_marker = scratch.create_pod(serde_json::json!({MARKER: "inline"}));
    assert!(
        only_marker.is_ok(),
        "the marker alone is not a request: {only_marker:?}"
    );
}

/// The webhook configuration and the guard as rendered from deploy/,
/// installed on a real API server with only the endpoint replaced (a Sesame
/// started here on 127.0.0.1 stands in for the Service, as no container
/// runtime runs here) and scoped to the scratch namespace. The API server must
/// send a Pod that asks to Sesame and admit the mutated Pod; while Sesame is
/// down, reject it (failurePolicy Fail), have the guard reject it
/// (failurePolicy Ignore), and admit it unmutated once the namespace is
/// labelled to fail open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_calls_the_installed_webhook() {
    let Some(mut scratch) = Scratch::new("webhook") else {
        return;
    };

    // Sesame on 127.0.0.1 with a certificate the webhook configuration trusts.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&scratch.name);
    let certs = sesame::certs::generate(&sesame::certs::service_sans("sesame", NS), 1).unwrap();
    sesame::certs::write(&dir.join("certs"), &certs).unwrap();
    let config = dir.join("sesame.yaml");
    std::fs::write(
        &config,
        format!(
            "stores:\n  - name: dev\n    file: {{path: {}}}\npolicy:\n  rules:\n    - {{name: shared, namespaces: ['*'], stores: [dev], paths: ['shared/*']}}\n",
            root().join("examples/secrets.yaml").display()
        ),
    )
    .unwrap();
    let mut args = sesame::cli::ServeArgs::loopback(config, dir.join("certs"));
    args.drain_timeout = std::time::Duration::from_secs(1);
    let server = sesame::run::start(&args).await.unwrap();
    let url = format!("https://127.0.0.1:{}/mutate", server.webhook_addr.port());

    let objects = overlay(&scratch.kubectl, "self-managed");
    let mut webhook = scratch.scoped(&objects, "MutatingWebhookConfiguration");
    for w in webhook["webhooks"].as_array_mut().unwrap() {
        w["clientConfig"] = serde_json::json!({"url": url, "caBundle": certs.ca_bundle()});
    }
    scratch.install(vec![
        webhook,
        scratch.scoped(&objects, "ValidatingAdmissionPolicy"),
        scratch.scoped(&objects, "ValidatingAdmissionPolicyBinding"),
    ]);

    let asks = serde_json::json!({"sesame.dev/env.NEW_CHECKOUT": "dev:shared/feature-flags#newCheckout"});
    let mutated = scratch.eventually(&asks, |r| r.as_ref().is_ok_and(marked));
    server.shutdown();
    server.wait().await;
    let refused = scratch.create_pod(asks.clone());
    // The platform's other choice, failurePolicy Ignore: the guard refuses.
    run(scratch
        .kubectl(&[
            "patch",
            "mutatingwebhookconfiguration",
            &scratch.name,
            "--type=json",
            "-p",
        ])
        .arg(r#"[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]"#));
    let guarded = scratch.eventually(&asks, |r| {
        r.as_ref()
            .is_err_and(|e| e.contains("Sesame did not process this Pod"))
    });
    run(&mut scratch.kubectl(&[
        "label",
        "namespace",
        &scratch.name,
        "sesame.dev/failure-policy=open",
    ]));
    let open = scratch.eventually(&asks, |r| r.is_ok());

    let pod = mutated.expect("the Pod is admitted once Sesame mutated it");
    assert!(marked(&pod), "marker set: {pod}");
    let env = &pod["spec"]["containers"][0]["env"][0];
    assert_eq!(env["name"], "NEW_CHECKOUT", "{pod}");
    assert!(
        env["valueFrom"]["secretKeyRef"]["name"]
            .as_str()
            .unwrap()
            .starts_with("sesame-"),
        "{pod}"
    );
    let refusal = refused.expect_err("with Sesame down, failurePolicy Fail rejects the Pod");
    assert!(
        refusal.contains("failed calling webhook \"inject.sesame.dev\""),
        "{refusal}"
    );
    let refusal = guarded.expect_err("with failurePolicy Ignore, the guard rejects the unmutated Pod");
    assert!(refusal.contains("ValidatingAdmissionPolicy"), "{refusal}");
    let pod = open.expect("a fail-open namespace admits the Pod while Sesame is down");
    assert!(!marked(&pod), "unmutated: {pod}");
}

/// Another release name and namespace reach every reference between objects.
#[test]
fn helm_release_name_and_namespace_flow_through() {
    let Some((_, helm_bin)) = tools() else { return };
    let objects = parse_stream(&run(Command::new(&helm_bin)
        .args(["template", "vault-injector"])
        .arg(root().join("deploy/helm/sesame"))
        .args([
            "--namespace",
            "platform",
            "--set",
            "certificates.mode=cert-manager",
        ])));
    validate_all("helm release vault-injector", &objects);
    let name = "vault-injector-sesame";
    for o in &objects {
        let object_name = o["metadata"]["name"].as_str().unwrap();
        assert!(object_name.starts_with(name), "{} {object_name}", o["kind"]);
        if !o["metadata"]["namespace"].is_null() {
            assert_eq!(
                o["metadata"]["namespace"], "platform",
                "{} {object_name}",
                o["kind"]
            );
        }
    }
    let hooks = webhooks(&objects);
    for w in &hooks {
        let svc = w.client_config.service.clone().unwrap();
        assert_eq!((svc.name.as_str(), svc.namespace.as_str()), (name, "platform"));
        let sel = w.namespace_selector.clone().unwrap();
        assert!(
            !selects(&sel, &namespace("platform", &[])),
            "its own namespace is excluded"
        );
        assert!(!selects(&sel, &namespace("kube-system", &[])));
    }
    let role: ClusterRole = one(&objects, "ClusterRole");
    let mwc: MutatingWebhookConfiguration = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(
        mwc.metadata.annotations.unwrap()["cert-manager.io/inject-ca-from"],
        format!("platform/{name}-tls")
    );
    assert!(role.rules.unwrap().iter().all(|r| r.resource_names.is_none()));
    let self_managed = parse_stream(&run(Command::new(&helm_bin)
        .args(["template", "vault-injector"])
        .arg(root().join("deploy/helm/sesame"))
        .args(["--namespace", "platform"])));
    let role: ClusterRole = named(&self_managed, "ClusterRole", &format!("{name}-certificates"));
    let mwc: MutatingWebhookConfiguration = one(&self_managed, "MutatingWebhookConfiguration");
    let names: Vec<String> = role
        .rules
        .unwrap()
        .into_iter()
        .filter_map(|r| r.resource_names)
        .flatten()
        .collect();
    assert_eq!(
        names,
        [mwc.metadata.name.clone().unwrap()],
        "RBAC names the webhook configuration it patches"
    );
    assert_eq!(
        env_of(&self_managed, "SESAME_WEBHOOK_CONFIG"),
        mwc.metadata.name.unwrap(),
        "and Sesame is told that name"
    );
    assert_eq!(env_of(&self_managed, "SESAME_SERVICE"), name);
    assert_eq!(
        env_of(&self_managed, "SESAME_CERT_SECRET"),
        format!("{name}-certs")
    );

    let d: Deployment = one(&objects, "Deployment");
    let pod = d.spec.unwrap().template.spec.unwrap();
    let sa: ServiceAccount = one(&objects, "ServiceAccount");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let binding: ClusterRoleBinding = one(&objects, "ClusterRoleBinding");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        (name, Some("platform"))
    );
    let volumes = pod.volumes.unwrap();
    let tls = volumes
        .iter()
        .find(|v| v.name == "tls")
        .unwrap()
        .secret
        .clone()
        .unwrap();
    let serving = objects
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["metadata"]["name"] == format!("{name}-tls"))
        .unwrap();
    assert_eq!(serving["spec"]["secretName"].as_str(), tls.secret_name.as_deref());
    assert_eq!(serving["spec"]["dnsNames"][0], format!("{name}.platform.svc"));
    let cm: ConfigMap = one(&objects, "ConfigMap");
    let config_volume = volumes.iter().find(|v| v.name == "config").unwrap();
    assert_eq!(
        config_volume.config_map.clone().unwrap().name,
        cm.metadata.name.unwrap()
    );
    let binding: ValidatingAdmissionPolicyBinding = one(&objects, "ValidatingAdmissionPolicyBinding");
    let vap: ValidatingAdmissionPolicy = one(&objects, "ValidatingAdmissionPolicy");
    assert_eq!(Some(binding.spec.policy_name), vap.metadata.name);
}

/// The flags `sesame serve` reads from the environment variable `env`.
fn flag_for_env(env: &str) -> Option<String> {
    use clap::CommandFactory;
    let cli = sesame::cli::Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    let flag = serve
        .get_arguments()
        .chain(cli.get_arguments())
        .find(|a| a.get_env().is_some_and(|e| e == env))
        .map(|a| format!("--{}", a.get_long().unwrap()));
    flag
}

/// The whole install, as deploy/overlays/self-managed renders it, applied to
/// a real API server under a fresh namespace (set by kustomize's own
/// namespace transformer) and, for cluster-scoped objects, fresh names. The
/// Deployment's container is replaced by a Sesame started here on 127.0.0.1
/// (no container runtime runs here) with the Deployment's own arguments and
/// environment, authenticated as the install's ServiceAccount with a token
/// from the TokenRequest API, so that the installed RBAC is what lets it
/// work. The webhook's endpoint becomes `url: https://127.0.0.1:PORT/mutate`
/// and its namespace selectors are narrowed to one test namespace; the
/// caBundle is left to Sesame (self-managed certificates). Checks: the
/// server accepts every object (dry run, then for real), Sesame creates its
/// certificate Secret and writes the caBundle, and a Pod in the test
/// namespace is mutated end to end with a secret read by the `kubernetes`
/// store and written as a managed Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_from_deploy_and_mutates_a_pod() {
    let Some(mut scratch) = Scratch::new("install") else {
        return;
    };
    let suffix = scratch.name.trim_start_matches("sesame-install-").to_owned();
    let install_ns = format!("sesame-inst-{suffix}");
    let objects = kustomize_with(
        &scratch.kubectl,
        &format!("install-{suffix}"),
        &format!("resources:\n  - {{root}}/deploy/overlays/self-managed\nnamespace: {install_ns}\n"),
    );
    validate_all("install render", &objects);

    // Fresh names for cluster-scoped objects, and every reference to them.
    let unique = |name: &str| format!("{name}-{suffix}");
    let webhook_name = unique("sesame");
    let only_test_ns =
        serde_json::json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": [scratch.name]});
    let mut namespace_obj = None;
    let mut rest = Vec::new();
    let mut container = None;
    let mut config_yaml = String::new();
    for mut o in objects {
        let kind = o["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "Namespace" => {
                o["metadata"]["name"] = Value::String(install_ns.clone());
                namespace_obj = Some(o);
                continue;
            }
            "ClusterRole" | "ClusterRoleBinding" | "ValidatingAdmissionPolicy" => {
                let name = o["metadata"]["name"].as_str().unwrap().to_owned();
                o["metadata"]["name"] = Value::String(unique(&name));
            }
            _ => {}
        }
        match kind.as_str() {
            "ClusterRole" => {
                for rule in o["rules"].as_array_mut().unwrap() {
                    if let Some(names) = rule["resourceNames"].as_array_mut() {
                        assert_eq!(names, &vec![Value::String("sesame".into())]);
                        *names = vec![Value::String(webhook_name.clone())];
                    }
                }
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                if kind == "ClusterRoleBinding" {
                    let role = o["roleRef"]["name"].as_str().unwrap().to_owned();
                    o["roleRef"]["name"] = Value::String(unique(&role));
                }
                // kustomize's `namespace:` leaves binding subjects alone
                // (docs/install.md says to patch them when moving Sesame).
                assert_eq!(o["subjects"][0]["namespace"], NS);
                o["subjects"][0]["namespace"] = Value::String(install_ns.clone());
            }
            "MutatingWebhookConfiguration" => {
                o["metadata"]["name"] = Value::String(webhook_name.clone());
                for w in o["webhooks"].as_array_mut().unwrap() {
                    assert!(w["clientConfig"]["caBundle"].is_null());
                    w["clientConfig"] = serde_json::json!({"url": "https://127.0.0.1:1/mutate"});
                    w["namespaceSelector"]["matchExpressions"]
                        .as_array_mut()
                        .unwrap()
                        .push(only_test_ns.clone());
                }
            }
            "ValidatingAdmissionPolicyBinding" => {
                o["metadata"]["name"] = Value::String(unique("sesame-injection-guard"));
                o["spec"]["policyName"] = Value::String(unique("sesame-injection-guard"));
                o["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
                    .as_array_mut()
                    .unwrap()
                    .push(only_test_ns.clone());
            }
            "Deployment" => {
                let c = &mut o["spec"]["template"]["spec"]["containers"][0];
                for e in c["env"].as_array_mut().unwrap() {
                    if e["name"] == "SESAME_WEBHOOK_CONFIG" {
                        e["value"] = Value::String(webhook_name.clone());
                    }
                }
                container = Some(c.clone());
            }
            "ConfigMap" => config_yaml = o["data"]["sesame.yaml"].as_str().unwrap().to_owned(),
            _ => {}
        }
        assert!(
            o["metadata"]["namespace"].is_null() || o["metadata"]["namespace"] == install_ns,
            "{kind} in {}",
            o["metadata"]["namespace"]
        );
        rest.push(o);
    }
    let container = container.expect("a Deployment");

    // The namespace first (the server dry-runs objects only into an existing
    // one), then every object as a dry run, then for real.
    scratch.install(vec![namespace_obj.expect("a Namespace")]);
    if let Err(stderr) = scratch.dry_run("install-all", rest.clone()) {
        panic!("dry run refused: {stderr}");
    }
    let sa = container_sa(&rest);
    scratch.install(rest);
    run(&mut scratch.kubectl(&[
        "get",
        &format!("mutatingwebhookconfiguration/{webhook_name}"),
        &format!("validatingadmissionpolicy/{}", unique("sesame-injection-guard")),
        &format!(
            "validatingadmissionpolicybinding/{}",
            unique("sesame-injection-guard")
        ),
    ]));

    // A kubeconfig for the install's ServiceAccount (TokenRequest API).
    let token = run(&mut scratch.kubectl(&["create", "token", &sa, "-n", &install_ns, "--duration=1h"]));
    let admin = serde_norway::from_str::<Value>(
        &std::fs::read_to_string(std::env::var("SESAME_E2E_KUBECONFIG").unwrap()).unwrap(),
    )
    .unwrap();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&scratch.name);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("sesame-sa.kubeconfig");
    std::fs::write(
        &kubeconfig,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "sa", "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        })
        .to_string(),
    )
    .unwrap();

    // The shipped configuration with a `kubernetes` store added: Sesame
    // reads the application's Secret with its own ServiceAccount.
    let mut config: Value = serde_norway::from_str(&config_yaml).unwrap();
    config["stores"] = serde_json::json!([{"name": "k8s", "kubernetes": {}}]);
    config["policy"]["rules"] = serde_json::json!([
        {"name": "own", "namespaces": ["*"], "stores": ["k8s"], "paths": ["{namespace}/*"]}
    ]);
    let config_file = dir.join("sesame.yaml");
    std::fs::write(&config_file, serde_norway::to_string(&config).unwrap()).unwrap();

    // The container's arguments and environment, with what must differ on
    // this machine: files, loopback ports, the kubeconfig.
    let mut argv: Vec<String> = vec!["sesame".into()];
    for a in container["args"].as_array().unwrap() {
        let a = a.as_str().unwrap();
        let local = match a.split_once('=').map(|(f, _)| f) {
            Some("--config") => format!("--config={}", config_file.display()),
            Some("--cert-dir") => format!("--cert-dir={}", dir.join("no-tls").display()),
            Some("--tls-port") => "--tls-port=0".into(),
            Some("--admin-port") => "--admin-port=0".into(),
            Some("--log-format") => "--log-format=text".into(),
            _ => a.to_owned(),
        };
        argv.push(local);
    }
    // The image's entrypoint is `sesame serve`; global flags go first.
    let (global, serve): (Vec<String>, Vec<String>) = argv
        .into_iter()
        .partition(|a| a == "sesame" || a.starts_with("--log-"));
    let mut argv = global;
    argv.push("serve".into());
    argv.extend(serve);
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = match (&e["value"], e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.namespace")) => install_ns.clone(),
            (_, Some("metadata.name")) => continue, // the Lease identity; read from the env
            other => panic!("unexpected env {name}: {other:?}"),
        };
        let flag = flag_for_env(name).unwrap_or_else(|| panic!("{name} is not a flag of sesame serve"));
        argv.push(format!("{flag}={value}"));
    }
    argv.extend([
        "--bind-address=127.0.0.1".into(),
        "--kube=required".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--reload-interval=1s".into(),
    ]);
    let args = match sesame::cli::Cli::parse_from(&argv).command {
        sesame::cli::Command::Serve(a) => a,
        _ => unreachable!(),
    };
    assert_eq!(args.kube.certs.cert_mode, sesame::kube::CertMode::SelfManaged);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = sesame::run::start(&args).await.unwrap();
    let outcome =
        std::panic::AssertUnwindSafe(installed_checks(&scratch, &install_ns, &webhook_name, &server))
            .catch_unwind()
            .await;
    server.shutdown();
    server.wait().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The ServiceAccount the rendered Deployment runs as.
fn container_sa(objects: &[Value]) -> String {
    let d = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    d["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn installed_checks(
    scratch: &Scratch,
    install_ns: &str,
    webhook_name: &str,
    server: &sesame::run::ServerHandle,
) {
    // Sesame made its certificate Secret and wrote the caBundle of every
    // webhook, all as the install's ServiceAccount.
    let secret: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "-n",
        install_ns,
        "get",
        "secret",
        "sesame-certs",
        "-o",
        "json",
    ])))
    .unwrap();
    let ca = secret["data"]["ca.crt"].as_str().unwrap().to_owned();
    let mwc: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "get",
        "mutatingwebhookconfiguration",
        webhook_name,
        "-o",
        "json",
        "--show-managed-fields",
    ])))
    .unwrap();
    for w in mwc["webhooks"].as_array().unwrap() {
        assert_eq!(
            w["clientConfig"]["caBundle"].as_str(),
            Some(ca.as_str()),
            "{}",
            w["name"]
        );
    }
    assert!(mwc["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["manager"] == sesame::kube::certs::FIELD_MANAGER));

    // The endpoint: this Sesame.
    run(scratch
        .kubectl(&["patch", "mutatingwebhookconfiguration", webhook_name, "--type=json", "-p"])
        .arg(
            Value::Array(
                (0..2)
                    .map(|i| serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig/url"), "value": format!("https://127.0.0.1:{}/mutate", server.webhook_addr.port())}))
                    .collect(),
            )
            .to_string(),
        ));

    // The application's Secret, read by the `kubernetes` store.
    run(&mut scratch.kubectl(&[
        "-n",
        &scratch.name,
        "create",
        "secret",
        "generic",
        "app-db",
        "--from-literal=password=install-test-password",
    ]));
    let asks = serde_json::json!({"sesame.dev/env.DB_PASSWORD": "k8s:app-db#password"});
    let dry = scratch.eventually(&asks, |r| r.as_ref().is_ok_and(marked));
    let dry = dry.unwrap_or_else(|e| panic!("the installed webhook did not mutate: {e}"));
    assert!(marked(&dry));

    // For real: the Pod is stored mutated and its managed Secret exists.
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": scratch.name, "annotations": asks},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    });
    let file = scratch.file("app-pod", &pod);
    let created: Value =
        serde_json::from_str(&run(scratch.kubectl(&["create", "-o", "json", "-f"]).arg(&file))).unwrap();
    let env = &created["spec"]["containers"][0]["env"][0];
    assert_eq!(env["name"], "DB_PASSWORD", "{created}");
    let managed = env["valueFrom"]["secretKeyRef"]["name"].as_str().unwrap();
    assert_eq!(created["metadata"]["annotations"][MARKER], managed);
    let secret: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "-n",
        &scratch.name,
        "get",
        "secret",
        managed,
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sesame"
    );
    let key = env["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str().unwrap())
            .unwrap(),
        b"install-test-password"
    );
    assert!(server.readiness.get(), "ready");
    // Leader election ran on the installed Role.
    let lease: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "-n",
        install_ns,
        "get",
        "lease",
        "sesame-leader",
        "-o",
        "json",
    ])))
    .unwrap();
    assert!(lease["spec"]["holderIdentity"].is_string(), "{lease}");
}
