//! What the manifests promise, asserted on every rendering: webhook scope and
//! failure handling, the Deployment's hardening, probes and shutdown timing,
//! the guard policy, the configuration, cert-manager mode, and release names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::lookup::{
    config_configmap, configmap_config, env_of, has_kind, named, namespace, one, selects, webhook, webhooks,
};
use crate::render::{
    all_components, client_auth, helm, helm_non_default, host_network, kustomize, overlay, parse_stream,
    root, run, tools, HELM_CLIENT_AUTH, HELM_CLIENT_AUTH_BUNDLE, HELM_HOST_NETWORK, HELM_NO_FIXED_IDS,
};
use crate::schema::validate_all;
use crate::{MARKER, NS};
use serde_json::Value;

/// The webhook promises of the install, on any rendering.
pub(crate) fn check_webhooks(what: &str, objects: &[Value], closed_policy: &str, excluded: &[&str]) {
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
            timeout <= 30 && u64::from(timeout.unsigned_abs()) > resolve.as_secs(),
            "{ctx}: timeoutSeconds {timeout} must be at most 30 (the API's limit) and above resolveTimeout {resolve:?}"
        );
        // Pod creation, and ephemeral containers added to a running Pod
        // (the managed-Secret guard must see those too).
        let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = w
            .rules
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                (
                    r.operations.unwrap_or_default(),
                    r.api_groups.unwrap_or_default(),
                    r.resources.unwrap_or_default(),
                )
            })
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rules,
            [
                (s(&["CREATE"]), s(&[""]), s(&["pods"])),
                (s(&["UPDATE"]), s(&[""]), s(&["pods/ephemeralcontainers"])),
            ],
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
pub(crate) fn check_deployment(what: &str, objects: &[Value]) {
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
    // A fixed UID, when there is one (OpenShift assigns its own), is not root.
    assert_ne!(psc.run_as_user, Some(0), "{what}");
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

    assert_eq!(
        pod.node_selector
            .clone()
            .unwrap_or_default()
            .get("kubernetes.io/os")
            .map(String::as_str),
        Some("linux"),
        "{what}: Linux nodes only"
    );
    assert_eq!(pod.automount_service_account_token, Some(true), "{what}");

    assert_eq!(pod.containers.len(), 1, "{what}");
    let c = &pod.containers[0];
    // Explicit: an image whose entrypoint is the bare binary works too.
    assert_eq!(
        c.command.as_deref(),
        Some(&["/sesame".to_string(), "serve".to_string()][..]),
        "{what}: command"
    );
    let env = c.env.clone().unwrap_or_default();
    let bind = env.iter().find(|e| e.name == "SESAME_BIND_ADDRESS");
    if pod.host_network == Some(true) {
        // On the node's network: the node's address, not every interface.
        assert_eq!(
            bind.and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("status.podIP"),
            "{what}: host network binds the Pod's (node's) IP"
        );
        assert_eq!(
            pod.dns_policy.as_deref(),
            Some("ClusterFirstWithHostNet"),
            "{what}"
        );
    } else {
        assert!(bind.is_none() && pod.dns_policy.is_none(), "{what}");
    }
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
    for (probe, path) in [
        (&c.startup_probe, "/startupz"),
        (&c.liveness_probe, "/livez"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe.clone().and_then(|p| p.http_get).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        assert_eq!(
            get.port,
            IntOrString::String("admin".into()),
            "{what}: probes on the admin port"
        );
    }

    // The start-up probe gives Sesame its certificate deadline (60 s,
    // CERT_BOOTSTRAP_DEADLINE in src/run/serve.rs) plus the cache sync (10 s,
    // CACHE_SYNC_TIMEOUT in src/kube/mod.rs) before the kubelet restarts it;
    // the liveness probe only starts after it passed.
    let startup = c.startup_probe.clone().unwrap();
    let window = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert!(
        window >= 60 + 10,
        "{what}: the start-up probe allows {window} s, less than Sesame's start-up deadline"
    );

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
    let cm = config_configmap(objects);
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
pub(crate) fn check_guard(what: &str, objects: &[Value]) {
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

#[test]
fn webhook_scope_failure_handling_and_exclusions() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let base = overlay(&kubectl, "self-managed");
    check_webhooks("kustomize", &base, "Fail", &["kube-system"]);
    check_webhooks("helm defaults", &helm(&helm_bin, &[]), "Fail", &["kube-system"]);
    let custom = helm_non_default(&helm_bin);
    check_webhooks(
        "helm non-default",
        &custom,
        "Ignore",
        &["kube-system", "monitoring"],
    );
    for w in webhooks(&custom) {
        assert_eq!(w.timeout_seconds, Some(25));
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
    check_deployment("helm non-default", &helm_non_default(&helm_bin));
    check_deployment("helm host network", &helm(&helm_bin, HELM_HOST_NETWORK));
    check_deployment("helm no fixed IDs", &helm(&helm_bin, HELM_NO_FIXED_IDS));
    check_deployment("kustomize host-network", &host_network(&kubectl));
    check_deployment("kustomize client-auth", &client_auth(&kubectl));
    check_deployment("helm client auth", &helm(&helm_bin, HELM_CLIENT_AUTH_BUNDLE));
}

/// `--client-ca-file` names a file that the ConfigMap volume holds, mounted
/// as a directory (a subPath mount would never see a replaced bundle); the
/// default renders leave client authentication off.
#[test]
fn client_auth_mounts_the_ca_bundle_it_names() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let renders = [
        (
            "kustomize client-auth",
            client_auth(&kubectl),
            "sesame-client-ca",
            "ca.crt",
        ),
        (
            "helm client auth",
            helm(&helm_bin, HELM_CLIENT_AUTH),
            "sesame-client-ca",
            "ca.crt",
        ),
        (
            "helm client auth, bundle rendered",
            helm(&helm_bin, HELM_CLIENT_AUTH_BUNDLE),
            "sesame-client-ca",
            "bundle.pem",
        ),
    ];
    for (what, objects, config_map, key) in renders {
        let d: Deployment = one(&objects, "Deployment");
        let pod = d.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        let file = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SESAME_CLIENT_CA_FILE")
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("{what}: SESAME_CLIENT_CA_FILE"));
        assert!(
            !c.args.iter().flatten().any(|a| a.starts_with("--client-ca-file")),
            "{what}: one way to pass it"
        );
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| file.starts_with(&format!("{}/", m.mount_path)))
            .unwrap_or_else(|| panic!("{what}: no mount holds {file}"));
        assert_eq!(mount.sub_path, None, "{what}");
        assert_eq!(mount.read_only, Some(true), "{what}");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap();
        let cm = volume
            .config_map
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: a ConfigMap volume"));
        assert_eq!(cm.name, config_map, "{what}");
        assert_ne!(cm.optional, Some(true), "{what}: no bundle, no start");
        let relative = &file[mount.mount_path.len() + 1..];
        let items = cm.items.clone().unwrap_or_default();
        assert!(
            items.iter().any(|i| i.key == key && i.path == relative),
            "{what}: {items:?} must put key {key} at {relative}"
        );
    }
    let rendered = helm(&helm_bin, HELM_CLIENT_AUTH_BUNDLE);
    let bundle = rendered
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "sesame-client-ca")
        .expect("the chart renders the bundle it was given");
    assert_eq!(
        bundle["data"]["bundle.pem"].as_str().unwrap().trim_end(),
        "-----BEGIN CERTIFICATE-----"
    );
    assert!(
        !helm(&helm_bin, HELM_CLIENT_AUTH)
            .iter()
            .any(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "sesame-client-ca"),
        "an existing ConfigMap is not rendered over"
    );
    for (what, objects) in [
        ("kustomize", overlay(&kubectl, "self-managed")),
        ("helm defaults", helm(&helm_bin, &[])),
    ] {
        let d: Deployment = one(&objects, "Deployment");
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert!(
            !pod.containers[0]
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "SESAME_CLIENT_CA_FILE"),
            "{what}: client authentication is opt-in"
        );
    }
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
    let cm_name = cm.metadata.name.unwrap();
    assert_eq!(config_volume.config_map.clone().unwrap().name, cm_name);
    // Sesame watches the ConfigMap it mounts, and its Role lets it.
    assert_eq!(env_of(&objects, "SESAME_CONFIG_MAP"), cm_name);
    let role: Role = one(&objects, "Role");
    assert!(role.rules.unwrap().iter().any(|r| {
        r.resources == Some(vec!["configmaps".to_string()]) && r.resource_names == Some(vec![cm_name.clone()])
    }));
    let binding: ValidatingAdmissionPolicyBinding = one(&objects, "ValidatingAdmissionPolicyBinding");
    let vap: ValidatingAdmissionPolicy = one(&objects, "ValidatingAdmissionPolicy");
    assert_eq!(Some(binding.spec.policy_name), vap.metadata.name);
}

/// The workload warnings' ValidatingWebhookConfiguration: the same Service
/// on its own path, every workload kind on CREATE and UPDATE, never able to
/// block (Ignore, no side effects), the mutating webhook's exclusions, a
/// caBundle from Sesame or cert-manager; off and deny through Helm values.
#[test]
fn workload_warnings_webhook_is_advisory_and_scoped_like_the_pod_webhook() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    for (what, objects) in [
        ("kustomize", overlay(&kubectl, "self-managed")),
        ("helm", helm(&helm_bin, &[])),
    ] {
        let vwc: ValidatingWebhookConfiguration = one(&objects, "ValidatingWebhookConfiguration");
        let hooks = vwc.webhooks.unwrap_or_default();
        assert_eq!(hooks.len(), 1, "{what}");
        let w = &hooks[0];
        assert_eq!(w.name, "workloads.sesame.dev");
        assert_eq!(w.failure_policy.as_deref(), Some("Ignore"), "{what}");
        assert_eq!(w.side_effects, "None", "{what}");
        assert!(w.client_config.ca_bundle.is_none(), "{what}: filled at run time");
        let service = w.client_config.service.as_ref().unwrap();
        assert_eq!(service.path.as_deref(), Some("/validate-workloads"), "{what}");
        let pod_hook = webhook(&webhooks(&objects), "inject.sesame.dev").clone();
        let pod_service = pod_hook.client_config.service.clone().unwrap();
        assert_eq!(
            (&service.name, &service.namespace, service.port),
            (&pod_service.name, &pod_service.namespace, pod_service.port),
            "{what}: same Service"
        );
        let mut kinds: Vec<String> = w
            .rules
            .iter()
            .flatten()
            .flat_map(|r| {
                assert_eq!(
                    r.operations.as_deref(),
                    Some(&["CREATE".to_string(), "UPDATE".to_string()][..])
                );
                r.resources.clone().unwrap_or_default()
            })
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "cronjobs",
                "daemonsets",
                "deployments",
                "jobs",
                "replicasets",
                "statefulsets"
            ],
            "{what}"
        );
        // Never sent from the namespaces the Pod webhook never sees.
        let sel = w.namespace_selector.clone().unwrap();
        for ns in ["kube-system", NS] {
            assert!(!selects(&sel, &namespace(ns, &[])), "{what}: {ns}");
        }
        assert!(
            !selects(&sel, &namespace("team-a", &[("sesame.dev/ignore", "true")])),
            "{what}"
        );
        assert!(selects(&sel, &namespace("team-a", &[])), "{what}");
        assert!(
            selects(
                &sel,
                &namespace("team-a", &[("sesame.dev/failure-policy", "open")])
            ),
            "{what}"
        );
        let expression = &w.match_conditions.as_ref().unwrap()[0].expression;
        assert!(
            expression.contains("object.spec.template.metadata.annotations"),
            "{what}"
        );
        assert!(
            expression.contains("object.spec.jobTemplate.spec.template.metadata.annotations"),
            "{what}"
        );
        // RBAC for its caBundle.
        let role: ClusterRole = named(&objects, "ClusterRole", "sesame-certificates");
        assert!(role.rules.unwrap().iter().any(|r| r
            .resources
            .iter()
            .flatten()
            .any(|x| x == "validatingwebhookconfigurations")));
    }
    for (what, objects) in [
        ("kustomize", overlay(&kubectl, "cert-manager")),
        ("helm", helm(&helm_bin, &["certificates.mode=cert-manager"])),
    ] {
        let vwc: ValidatingWebhookConfiguration = one(&objects, "ValidatingWebhookConfiguration");
        let inject = vwc.metadata.annotations.unwrap_or_default()["cert-manager.io/inject-ca-from"].clone();
        assert_eq!(inject, format!("{NS}/sesame-tls"), "{what}");
    }
    let off = helm(&helm_bin, &["workloadWarnings.enabled=false"]);
    assert!(!has_kind(&off, "ValidatingWebhookConfiguration"));
    let text = |objects: &[Value]| {
        config_configmap(objects)
            .data
            .unwrap_or_default()
            .remove("sesame.yaml")
            .unwrap()
    };
    let deny = helm(&helm_bin, &["workloadWarnings.deny=true"]);
    // A configuration Sesame loads, with the switch on.
    configmap_config(&deny);
    assert!(
        text(&deny).contains("workloads:\n  deny: true\n"),
        "{}",
        text(&deny)
    );
    assert!(!text(&helm(&helm_bin, &[])).contains("workloads"));
}
