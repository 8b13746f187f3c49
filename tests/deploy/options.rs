//! Each chart option for real platforms reaches the rendered objects: the
//! ServiceAccount and cloud identity, extra environment, arguments and
//! volumes, host networking and ports, security contexts and scheduling, the
//! update strategy and the webhook timeout. Values the schema refuses are in
//! `schema::helm_rejects_values_that_would_break_the_webhook`; the kustomize
//! counterparts are compared in `parity`.

use std::collections::BTreeMap;

use clap::Parser as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::lookup::{has_kind, one, selects, webhooks};
use crate::render::{
    helm, helm_non_default, helm_values, host_network, tools, HELM_HOST_NETWORK, HELM_NO_FIXED_IDS,
};
use crate::NS;

fn deployment(objects: &[Value]) -> (BTreeMap<String, String>, PodSpec) {
    let d: Deployment = one(objects, "Deployment");
    let spec = d.spec.unwrap();
    let labels = spec.template.metadata.unwrap().labels.unwrap_or_default();
    (labels, spec.template.spec.unwrap())
}

fn sesame_container(pod: &PodSpec) -> Container {
    pod.containers
        .iter()
        .find(|c| c.name == "sesame")
        .unwrap()
        .clone()
}

/// Every (Cluster)RoleBinding's subjects: (name, namespace).
fn subjects(objects: &[Value]) -> Vec<(String, String)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
        .flat_map(|o| o["subjects"].as_array().unwrap().clone())
        .map(|s| {
            assert_eq!(s["kind"], "ServiceAccount");
            (
                s["name"].as_str().unwrap().to_owned(),
                s["namespace"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn service_account_and_cloud_identity() {
    let Some((_, helm_bin)) = tools() else { return };
    // Defaults: the chart's own account, bound by every binding.
    let default = helm(&helm_bin, &[]);
    let sa: ServiceAccount = one(&default, "ServiceAccount");
    assert_eq!(sa.metadata.name.as_deref(), Some("sesame"));
    assert!(sa.metadata.annotations.is_none());
    let (_, pod) = deployment(&default);
    assert_eq!(pod.service_account_name.as_deref(), Some("sesame"));

    // A named account with the cloud identity annotations (IRSA, Azure
    // workload identity) and the Pod label Azure's webhook looks for.
    let platform = helm_non_default(&helm_bin);
    let sa: ServiceAccount = one(&platform, "ServiceAccount");
    assert_eq!(sa.metadata.name.as_deref(), Some("sesame-runner"));
    let annotations = sa.metadata.annotations.unwrap();
    assert_eq!(
        annotations["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::111122223333:role/sesame"
    );
    assert_eq!(
        annotations["azure.workload.identity/client-id"],
        "00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(sa.automount_service_account_token, Some(true));
    let (labels, pod) = deployment(&platform);
    assert_eq!(pod.service_account_name.as_deref(), Some("sesame-runner"));
    assert_eq!(pod.automount_service_account_token, Some(true));
    assert_eq!(labels["azure.workload.identity/use"], "true");
    let subjects_of = subjects(&platform);
    assert_eq!(
        subjects_of.len(),
        2,
        "cert-manager mode: Sesame's ClusterRole and the Lease Role"
    );
    assert!(
        subjects_of.iter().all(|(n, ns)| n == "sesame-runner" && ns == NS),
        "{subjects_of:?}"
    );
    // Pod labels do not leak into the selectors (a change would orphan Pods).
    let d: Deployment = one(&platform, "Deployment");
    let selector = d.spec.unwrap().selector.match_labels.unwrap();
    assert!(!selector.contains_key("azure.workload.identity/use"));
    let svc: Service = one(&platform, "Service");
    assert!(!svc
        .spec
        .unwrap()
        .selector
        .unwrap()
        .contains_key("azure.workload.identity/use"));

    // An account the platform made: not rendered, but run as and bound.
    let existing = helm(
        &helm_bin,
        &[
            "serviceAccount.create=false",
            "serviceAccount.name=platform-sesame",
        ],
    );
    assert!(!has_kind(&existing, "ServiceAccount"));
    let (_, pod) = deployment(&existing);
    assert_eq!(pod.service_account_name.as_deref(), Some("platform-sesame"));
    assert!(subjects(&existing).iter().all(|(n, _)| n == "platform-sesame"));
}

#[test]
fn extra_environment_arguments_and_volumes() {
    let Some((_, helm_bin)) = tools() else { return };
    let default = sesame_container(&deployment(&helm(&helm_bin, &[])).1);
    let (_, pod) = deployment(&helm_non_default(&helm_bin));
    let c = sesame_container(&pod);

    // Sesame's own environment stays, the extra comes after it.
    let env: Vec<String> = c.env.clone().unwrap().into_iter().map(|e| e.name).collect();
    let own: Vec<String> = default.env.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(&env[..own.len()], &own[..]);
    assert_eq!(&env[own.len()..], ["AWS_REGION", "SSL_CERT_FILE"]);
    let region = c
        .env
        .clone()
        .unwrap()
        .into_iter()
        .find(|e| e.name == "AWS_REGION")
        .unwrap();
    assert_eq!(region.value.as_deref(), Some("eu-west-1"));

    // The extra argument is one `sesame serve` accepts, after the chart's.
    let args = c.args.clone().unwrap();
    assert_eq!(args.last().map(String::as_str), Some("--reload-interval=30s"));
    assert!(args.iter().any(|a| a.starts_with("--config=")));
    let argv: Vec<String> = c.command.clone().unwrap().into_iter().chain(args).collect();
    let cli = sesame::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let sesame::cli::Command::Serve(serve) = cli.command else {
        panic!("not serve: {argv:?}")
    };
    assert_eq!(serve.reload_interval, std::time::Duration::from_secs(30));

    // A store's CA from a ConfigMap and a projected token with an audience,
    // each mounted read-only where the extra mounts say.
    let volumes: BTreeMap<String, Value> = pod
        .volumes
        .clone()
        .unwrap()
        .into_iter()
        .map(|v| (v.name.clone(), serde_json::to_value(v).unwrap()))
        .collect();
    assert_eq!(volumes["store-ca"]["configMap"]["name"], "store-ca");
    assert_eq!(
        volumes["vault-token"]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "vault"
    );
    for own in ["config", "tls", "file-store"] {
        assert!(volumes.contains_key(own), "the chart's {own} volume stays");
    }
    let mounts: BTreeMap<String, (String, Option<bool>)> = c
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| (m.name, (m.mount_path, m.read_only)))
        .collect();
    assert_eq!(
        mounts["store-ca"],
        ("/etc/sesame/store-ca".to_string(), Some(true))
    );
    assert_eq!(
        mounts["vault-token"],
        ("/var/run/secrets/vault".to_string(), Some(true))
    );
    for name in mounts.keys() {
        assert!(volumes.contains_key(name), "mount {name} has its volume");
    }
}

#[test]
fn host_network_and_ports() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    // Default: the Pod network, ports 8443 and 8080.
    let (_, pod) = deployment(&helm(&helm_bin, &[]));
    assert_eq!(pod.host_network, None);
    let ports = |c: &Container| -> BTreeMap<String, i32> {
        c.ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.container_port))
            .collect()
    };
    assert_eq!(
        ports(&sesame_container(&pod)),
        BTreeMap::from([("webhook".into(), 8443), ("admin".into(), 8080)])
    );

    for (what, objects, webhook, admin) in [
        (
            "helm host network",
            helm(&helm_bin, HELM_HOST_NETWORK),
            10443,
            10080,
        ),
        ("helm other ports", helm_non_default(&helm_bin), 9443, 9080),
    ] {
        let (_, pod) = deployment(&objects);
        let c = sesame_container(&pod);
        assert_eq!(
            ports(&c),
            BTreeMap::from([("webhook".into(), webhook), ("admin".into(), admin)]),
            "{what}"
        );
        let args = c.args.clone().unwrap();
        assert!(args.contains(&format!("--tls-port={webhook}")), "{what}");
        assert!(args.contains(&format!("--admin-port={admin}")), "{what}");
        // The Service, the probes and the NetworkPolicy name the ports, so
        // they follow.
        let svc: Service = one(&objects, "Service");
        let targets: Vec<IntOrString> = svc
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| p.target_port.unwrap())
            .collect();
        assert_eq!(
            targets,
            [
                IntOrString::String("webhook".into()),
                IntOrString::String("admin".into())
            ],
            "{what}"
        );
        for probe in [&c.startup_probe, &c.liveness_probe, &c.readiness_probe] {
            let port = probe.clone().unwrap().http_get.unwrap().port;
            assert_eq!(port, IntOrString::String("admin".into()), "{what}");
        }
        // The webhook still calls the Service's 443.
        for w in webhooks(&objects) {
            assert_eq!(w.client_config.service.unwrap().port, Some(443), "{what}");
        }
    }
    let (_, pod) = deployment(&helm(&helm_bin, HELM_HOST_NETWORK));
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));

    // kustomize: the component, and the namespace's Pod Security level it needs.
    let objects = host_network(&kubectl);
    let (_, pod) = deployment(&objects);
    assert_eq!(pod.host_network, Some(true));
    let ns: Namespace = one(&objects, "Namespace");
    assert_eq!(
        ns.metadata.labels.unwrap()["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

#[test]
fn security_contexts_scheduling_and_updates() {
    let Some((_, helm_bin)) = tools() else { return };
    // OpenShift: no fixed IDs, the rest of the hardening stays.
    let (_, pod) = deployment(&helm(&helm_bin, HELM_NO_FIXED_IDS));
    let psc = pod.security_context.clone().unwrap();
    assert_eq!(
        (psc.run_as_user, psc.run_as_group, psc.fs_group),
        (None, None, None)
    );
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let sc = sesame_container(&pod).security_context.unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));

    // Own affinity, spread, security context: they replace the chart's.
    let custom = helm_values(
        &helm_bin,
        r#"
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: example.com/pool, operator: In, values: [platform]}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: DoNotSchedule
    labelSelector:
      matchLabels: {app.kubernetes.io/name: sesame}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities: {drop: [ALL]}
  seLinuxOptions: {level: "s0:c123,c456"}
"#,
        &[],
    );
    let (labels, pod) = deployment(&custom);
    let affinity = pod.affinity.clone().unwrap();
    assert!(affinity.pod_anti_affinity.is_none(), "the default is replaced");
    assert!(affinity.node_affinity.is_some());
    let spread = pod.topology_spread_constraints.clone().unwrap();
    assert_eq!(spread.len(), 1);
    assert_eq!(spread[0].when_unsatisfiable, "DoNotSchedule");
    assert!(selects(spread[0].label_selector.as_ref().unwrap(), &labels));
    assert_eq!(
        sesame_container(&pod)
            .security_context
            .unwrap()
            .se_linux_options
            .unwrap()
            .level
            .as_deref(),
        Some("s0:c123,c456")
    );

    // Defaults: spread over zones and nodes, preferred anti-affinity, Linux.
    let (labels, pod) = deployment(&helm(&helm_bin, &[]));
    let spread = pod.topology_spread_constraints.clone().unwrap();
    let keys: Vec<&str> = spread.iter().map(|t| t.topology_key.as_str()).collect();
    assert_eq!(keys, ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]);
    assert!(spread
        .iter()
        .all(|t| t.when_unsatisfiable == "ScheduleAnyway"
            && selects(t.label_selector.as_ref().unwrap(), &labels)));
    assert_eq!(
        pod.node_selector.clone().unwrap(),
        BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())])
    );

    // The platform's pool, tolerations and update strategy.
    let platform = helm_non_default(&helm_bin);
    let (_, pod) = deployment(&platform);
    let selector = pod.node_selector.clone().unwrap();
    assert_eq!(selector["kubernetes.io/os"], "linux");
    assert_eq!(selector["example.com/pool"], "platform");
    assert_eq!(
        pod.tolerations.clone().unwrap()[0].key.as_deref(),
        Some("example.com/pool")
    );
    let d: Deployment = one(&platform, "Deployment");
    let rolling = d.spec.unwrap().strategy.unwrap().rolling_update.unwrap();
    assert_eq!(
        (rolling.max_surge, rolling.max_unavailable),
        (Some(IntOrString::Int(0)), Some(IntOrString::Int(1)))
    );
}

#[test]
fn webhook_timeout_up_to_the_api_limit() {
    let Some((_, helm_bin)) = tools() else { return };
    let objects = helm(
        &helm_bin,
        &["webhook.timeoutSeconds=30", "config.resolveTimeout=9s"],
    );
    for w in webhooks(&objects) {
        assert_eq!(w.timeout_seconds, Some(30), "{}", w.name);
    }
    crate::manifests::check_webhooks("helm timeoutSeconds 30", &objects, "Fail", &["kube-system"]);
}
