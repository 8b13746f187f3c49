//! A real API server judges the rendered objects, runs the guard's CEL and
//! calls the installed webhook.

use std::path::PathBuf;

use serde_json::Value;

use crate::render::{
    all_components, helm, helm_non_default, host_network, overlay, root, run, tools, HELM_HOST_NETWORK,
    HELM_NO_FIXED_IDS,
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
