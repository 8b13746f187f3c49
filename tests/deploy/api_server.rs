//! A real API server judges the rendered objects, runs the guard's CEL and
//! calls the installed webhook.

use std::path::PathBuf;

use serde_json::Value;

use crate::render::{
    all_components, client_auth, helm, helm_non_default, host_network, overlay, root, run, tools,
    HELM_CLIENT_AUTH_BUNDLE, HELM_HOST_NETWORK, HELM_NO_FIXED_IDS,
};
use crate::scratch::{marked, Scratch};
use crate::{MARKER, NS};

/// The objects of a rendering that a server-side dry run into `scratch` can
/// judge: its namespaced objects moved into the scratch namespace, without
/// the Namespace itself and the kinds of CRDs the server lacks
/// (ServiceMonitor, PrometheusRule, cert-manager).
fn for_dry_run(scratch: &Scratch, objects: Vec<Value>) -> Vec<Value> {
    let mut docs = Vec::new();
    for mut o in objects {
        let kind = o["kind"].as_str().unwrap_or_default().to_owned();
        if matches!(
            kind.as_str(),
            "Namespace" | "ServiceMonitor" | "PrometheusRule" | "Issuer" | "Certificate"
        ) {
            continue;
        }
        if o["metadata"]["namespace"].is_string() {
            o["metadata"]["namespace"] = Value::String(scratch.name.clone());
        }
        docs.push(o);
    }
    docs
}

/// A real API server judges every rendered object
/// (`kubectl apply --dry-run=server`): schema, defaults, CEL compilation of
/// the guard and the match conditions. The namespaced objects go into a
/// scratch namespace that enforces the restricted Pod Security level, so a
/// violation shows as a warning. Host networking needs the privileged level:
/// the restricted namespace refuses those renders, and one labelled
/// privileged accepts them.
#[test]
fn api_server_accepts_the_rendered_objects() {
    let Some(scratch) = Scratch::new("dryrun") else {
        return;
    };
    let Some(privileged) = Scratch::new("dryrun-host") else {
        return;
    };
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    for (ns, level) in [(&scratch, "restricted"), (&privileged, "privileged")] {
        run(&mut ns.kubectl(&[
            "label",
            "namespace",
            &ns.name,
            &format!("pod-security.kubernetes.io/enforce={level}"),
            &format!("pod-security.kubernetes.io/warn={level}"),
        ]));
    }
    let renders = [
        ("kustomize self-managed", overlay(&kubectl, "self-managed")),
        ("kustomize cert-manager", overlay(&kubectl, "cert-manager")),
        ("kustomize components", all_components(&kubectl)),
        ("kustomize client-auth", client_auth(&kubectl)),
        ("helm client auth", helm(&helm_bin, HELM_CLIENT_AUTH_BUNDLE)),
        ("helm defaults", helm(&helm_bin, &[])),
        ("helm non-default", helm_non_default(&helm_bin)),
        ("helm no fixed IDs", helm(&helm_bin, HELM_NO_FIXED_IDS)),
        (
            "helm existing ServiceAccount",
            helm(
                &helm_bin,
                &["serviceAccount.create=false", "serviceAccount.name=default"],
            ),
        ),
        (
            "helm timeoutSeconds 30",
            helm(
                &helm_bin,
                &["webhook.timeoutSeconds=30", "config.resolveTimeout=9s"],
            ),
        ),
    ];
    let host = [
        ("kustomize host-network", host_network(&kubectl)),
        ("helm host network", helm(&helm_bin, HELM_HOST_NETWORK)),
    ];
    let mut failures = Vec::new();
    for (what, objects) in renders {
        let docs = for_dry_run(&scratch, objects);
        if let Err(stderr) = scratch.dry_run(&what.replace(' ', "-"), docs) {
            failures.push(format!("{what}:\n{stderr}"));
        }
    }
    for (what, objects) in host {
        let refused = scratch.dry_run(
            &format!("{}-restricted", what.replace(' ', "-")),
            for_dry_run(&scratch, objects.clone()),
        );
        match refused {
            Err(e) if e.contains("host namespaces (hostNetwork=true)") => {}
            other => failures.push(format!(
                "{what}: the restricted namespace must refuse host networking, got {other:?}"
            )),
        }
        let docs = for_dry_run(&privileged, objects);
        if let Err(stderr) = privileged.dry_run(&what.replace(' ', "-"), docs) {
            failures.push(format!("{what} (privileged namespace):\n{stderr}"));
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

/// Attack 2 (docs/security.md): the shipped webhook configuration sends
/// every Pod that refers to a managed Secret, in every field that can name
/// one, and the addition of ephemeral containers; Sesame, started here,
/// denies them. Without the `matchConditions` terms (or the rule for
/// `pods/ephemeralcontainers`) the API server would admit them uncalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_sends_every_pod_that_uses_a_managed_secret() {
    let Some(mut scratch) = Scratch::new("guarded") else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&scratch.name);
    let certs = sesame::certs::generate(&sesame::certs::service_sans("sesame", NS), 1).unwrap();
    sesame::certs::write(&dir.join("certs"), &certs).unwrap();
    let config = dir.join("sesame.yaml");
    std::fs::write(&config, "stores: []\npolicy: {rules: []}\n").unwrap();
    let mut args = sesame::cli::ServeArgs::loopback(config, dir.join("certs"));
    args.drain_timeout = std::time::Duration::from_secs(1);
    let server = sesame::run::start(&args).await.unwrap();
    let url = format!("https://127.0.0.1:{}/mutate", server.webhook_addr.port());
    let objects = overlay(&scratch.kubectl, "self-managed");
    let mut webhook = scratch.scoped(&objects, "MutatingWebhookConfiguration");
    for w in webhook["webhooks"].as_array_mut().unwrap() {
        w["clientConfig"] = serde_json::json!({"url": url, "caBundle": certs.ca_bundle()});
    }
    scratch.install(vec![webhook]);

    let name = "sesame-0123456789abcdef";
    let app = |extra: serde_json::Value| {
        serde_json::json!({"name": "app", "image": "app:1"})
            .as_object()
            .unwrap()
            .clone()
            .into_iter()
            .chain(extra.as_object().unwrap().clone())
            .collect::<serde_json::Map<_, _>>()
    };
    let secret_ref = serde_json::json!({"name": name});
    let volume = |plugin: serde_json::Value| {
        serde_json::json!({"containers": [app(serde_json::json!({}))], "volumes": [
            serde_json::Value::Object(serde_json::json!({"name": "v"}).as_object().unwrap().clone().into_iter().chain(plugin.as_object().unwrap().clone()).collect())
        ]})
    };
    let cases = [
        (
            "secret",
            volume(serde_json::json!({"secret": {"secretName": name}})),
        ),
        (
            "projected",
            volume(serde_json::json!({"projected": {"sources": [{"secret": {"name": name}}]}})),
        ),
        (
            "csi",
            volume(
                serde_json::json!({"csi": {"driver": "d.example.com", "nodePublishSecretRef": secret_ref}}),
            ),
        ),
        (
            "cephfs",
            volume(serde_json::json!({"cephfs": {"monitors": ["m"], "secretRef": secret_ref}})),
        ),
        (
            "rbd",
            volume(serde_json::json!({"rbd": {"monitors": ["m"], "image": "i", "secretRef": secret_ref}})),
        ),
        (
            "iscsi",
            volume(
                serde_json::json!({"iscsi": {"targetPortal": "t:3260", "iqn": "iqn.2001-04.com.example:s", "lun": 0, "secretRef": secret_ref}}),
            ),
        ),
        (
            "flexvolume",
            volume(serde_json::json!({"flexVolume": {"driver": "d", "secretRef": secret_ref}})),
        ),
        (
            "scaleio",
            volume(serde_json::json!({"scaleIO": {"gateway": "g", "system": "s", "secretRef": secret_ref}})),
        ),
        (
            "storageos",
            volume(serde_json::json!({"storageos": {"volumeName": "v", "secretRef": secret_ref}})),
        ),
        (
            "cinder",
            volume(serde_json::json!({"cinder": {"volumeID": "v", "secretRef": secret_ref}})),
        ),
        (
            "azurefile",
            volume(serde_json::json!({"azureFile": {"secretName": name, "shareName": "s"}})),
        ),
        (
            "pull",
            serde_json::json!({"containers": [app(serde_json::json!({}))], "imagePullSecrets": [{"name": name}]}),
        ),
        (
            "env",
            serde_json::json!({"containers": [app(serde_json::json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": name, "key": "k"}}}]}))]}),
        ),
        (
            "envfrom",
            serde_json::json!({"containers": [app(serde_json::json!({"envFrom": [{"secretRef": {"name": name}}]}))]}),
        ),
        (
            "init",
            serde_json::json!({"containers": [app(serde_json::json!({}))], "initContainers": [{"name": "init", "image": "i:1", "envFrom": [{"secretRef": {"name": name}}]}]}),
        ),
    ];
    // The webhook configuration needs a moment to reach the admission chain.
    let mut first = scratch.create_pod_with_spec("secret", cases[0].1.clone(), true);
    for _ in 0..40 {
        if first.as_ref().is_err_and(|e| e.contains("which Sesame manages")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        first = scratch.create_pod_with_spec("secret", cases[0].1.clone(), true);
    }
    let mut failures = Vec::new();
    for (what, spec) in &cases {
        match scratch.create_pod_with_spec(what, spec.clone(), true) {
            Err(e) if e.contains("which Sesame manages") => {}
            other => failures.push(format!("{what}: {other:?}")),
        }
    }
    let plain = scratch.create_pod_with_spec(
        "plain",
        volume(serde_json::json!({"secret": {"secretName": "app-secret"}})),
        true,
    );
    // Ephemeral containers are added to a Pod that exists.
    let pod = scratch.create_pod_with_spec(
        "debuggee",
        serde_json::json!({"containers": [app(serde_json::json!({}))]}),
        false,
    );
    let debug = |secret: &str| {
        let patch = serde_json::json!({"spec": {"ephemeralContainers": [{
            "name": format!("debug-{}", fastrand::u16(..)), "image": "busybox:1",
            "envFrom": [{"secretRef": {"name": secret}}]
        }]}});
        scratch
            .kubectl(&[
                "-n",
                &scratch.name,
                "patch",
                "pod",
                "debuggee",
                "--subresource=ephemeralcontainers",
                "--type=strategic",
                "-p",
            ])
            .arg(patch.to_string())
            .output()
            .unwrap()
    };
    let refused = debug(name);
    let allowed = debug("debug-tools");
    server.shutdown();
    server.wait().await;

    assert!(
        failures.is_empty(),
        "not sent to Sesame or not denied:\n{}",
        failures.join("\n")
    );
    assert!(
        plain.is_ok(),
        "a Pod using an ordinary Secret is admitted: {plain:?}"
    );
    pod.expect("the Pod to debug is created");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "an ephemeral container using a managed Secret was added"
    );
    assert!(stderr.contains("ephemeral container"), "{stderr}");
    assert!(
        allowed.status.success(),
        "an ephemeral container using no managed Secret is added: {}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}
