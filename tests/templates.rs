//! Templates end to end: a Pod asks for `DATABASE_URL` built from four
//! properties of a database secret. Over real TLS the server answers with a
//! `secretKeyRef` (the value never enters the Pod spec) and writes the
//! rendered text into the managed Secret on the in-memory API server of
//! tests/support/fake_api.rs (which follows the documented wire format);
//! rotation re-renders the key when a placeholder's value changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/fake_api.rs"]
mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use clap::Parser as _;
use common::*;
use fake_api::FakeApi;
use serde_json::{json, Value};
use sesame::kube::metrics::KubeMetrics;
use sesame::kube::namespaces::NamespaceCache;
use sesame::kube::provenance::Provenance;
use sesame::kube::rotation::Rotator;
use sesame::kube::writer::KubeSecretWriter;
use tokio::sync::watch;

const URL: &str = "postgres://{{ dev:apps/team-a/db#username }}:{{ dev:apps/team-a/db#password | urlquery }}@{{ dev:apps/team-a/db#host }}:{{ dev:apps/team-a/db#port }}/orders";

fn decoded(secret: &Value, key: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD
        .decode(
            secret["data"][key]
                .as_str()
                .unwrap_or_else(|| panic!("no key {key}: {secret}")),
        )
        .unwrap();
    String::from_utf8(b).unwrap()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..250 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_is_rendered_into_the_managed_secret_over_real_tls() {
    let api = FakeApi::start().await;
    api.put("namespaces", "", "team-a", json!({"metadata": {}}));
    let dir = tempfile::tempdir().unwrap();
    // A password with every character that would break a URL.
    let secrets = SECRETS.replace("s3cr3t-team-a-password", "\"p@ss:w/rd%\"");
    write_config(dir.path(), CONFIG, &secrets);
    let ca = write_certs(&dir.path().join("certs"));
    let kubeconfig = api.write_kubeconfig(dir.path());
    let p = |name: &str| dir.path().join(name).display().to_string();
    let cli = sesame::cli::Cli::parse_from([
        "sesame".to_owned(),
        "serve".into(),
        format!("--config={}", p("sesame.yaml")),
        format!("--cert-dir={}", p("certs")),
        "--bind-address=127.0.0.1".into(),
        "--tls-port=0".into(),
        "--admin-port=0".into(),
        "--kube=required".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--namespace=sesame-system".into(),
    ]);
    let sesame::cli::Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let handle = sesame::run::start(&args).await.unwrap();
    let url = format!("https://127.0.0.1:{}/mutate", handle.webhook_addr.port());
    let client = client_for(&ca, false);

    let review = with_annotations(
        "real-pod-create-bare.json",
        &[("sesame.dev/template.DATABASE_URL", URL)],
    );
    let body: Value = client
        .post(&url)
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = &body["response"];
    assert_eq!(response["allowed"], true, "{response}");
    let pod = patched_pod(&review, response);
    let name = pod["metadata"]["annotations"]["sesame.dev/injected"]
        .as_str()
        .unwrap()
        .to_owned();
    // First, before the container's own LOG_LEVEL, as a secretKeyRef.
    let env = &pod["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["name"], "DATABASE_URL");
    assert_eq!(
        env[0]["valueFrom"]["secretKeyRef"],
        json!({"name": name, "key": "template.DATABASE_URL"})
    );
    assert_eq!(env[1]["name"], "LOG_LEVEL");
    let patch = response["patch"].as_str().unwrap();
    let patch = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(patch).unwrap()).unwrap();
    assert!(
        !patch.contains("p@ss") && !patch.contains("p%40ss"),
        "a value in the patch: {patch}"
    );

    // The managed Secret holds the rendered URL and records the placeholders.
    let secret = api.get("secrets", "team-a", &name).expect("the managed Secret");
    assert_eq!(
        decoded(&secret, "template.DATABASE_URL"),
        "postgres://team_a:p%40ss%3Aw%2Frd%25@db.team-a.svc:5432/orders"
    );
    let sources: Value = serde_json::from_str(
        secret["metadata"]["annotations"]["sesame.dev/sources"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let parts = sources["template.DATABASE_URL"]["template"].as_array().unwrap();
    let refs: Vec<&Value> = parts.iter().filter_map(|p| p.get("value")).collect();
    assert_eq!(refs.len(), 4);
    assert_eq!(
        refs[1]["ref"],
        json!({"store": "dev", "path": "apps/team-a/db", "property": "password"})
    );
    assert_eq!(refs[1]["functions"], json!(["urlquery"]));
    assert!(
        !secret["metadata"]["annotations"].to_string().contains("p@ss"),
        "a value in the annotations"
    );

    handle.shutdown();
    handle.wait().await;
}

/// The provenance key of the rotation test.
fn provenance() -> Provenance {
    Provenance::with_keys(vec![(1, vec![42; 32])]).unwrap()
}

#[tokio::test]
async fn rotation_re_renders_a_template_when_a_placeholder_changes() {
    let api = FakeApi::start().await;
    api.put("namespaces", "", "team-a", json!({"metadata": {}}));
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("apps/team-a")).unwrap();
    let db = secrets.join("apps/team-a/db.env");
    std::fs::write(&db, "username=app\npassword=old:pw\nhost=db.svc\nport=5432\n").unwrap();
    let yaml = "stores:\n  - {name: dev, file: {path: secrets}, cacheTtl: 0s, refreshInterval: 60s}\npolicy:\n  rules:\n    - {name: own, namespaces: ['*'], stores: [dev], paths: ['apps/{namespace}/**']}\n";
    let config = sesame::config::Config::from_yaml(yaml, "t").unwrap();
    let metrics = Arc::new(sesame::telemetry::Metrics::new());
    let stores = sesame::stores::Stores::from_config(&config.stores, dir.path(), &metrics, None)
        .await
        .unwrap();
    let engine = sesame::pipeline::Engine::new(&config, stores);

    // The Secret as admission plans it for the Pod, written an hour ago.
    let pod: sesame::inject::PodView = serde_json::from_value(json!({
        "metadata": {"annotations": {"sesame.dev/template.DATABASE_URL": URL}},
        "spec": {"containers": [{"name": "app"}]}
    }))
    .unwrap();
    let verdict = engine
        .evaluate(&sesame::pipeline::PodInput {
            namespace: "team-a",
            pod: &pod,
            base: "",
            budget: None,
            namespace_labels: None,
            caller: sesame::pipeline::Caller::Trusted,
            last_known_good: None,
        })
        .await;
    let sesame::pipeline::Verdict::Mutated(mutation) = verdict else {
        panic!("not mutated: {verdict:?}")
    };
    let planned = mutation.secret.clone().unwrap();
    let keys = provenance();
    let mut object = sesame::kube::secret::manifest(&planned, "sesame.dev", &keys, "2020-01-01T00:00:00Z");
    object["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    api.put("secrets", "team-a", &planned.name, object);
    assert_eq!(
        decoded(
            &api.get("secrets", "team-a", &planned.name).unwrap(),
            "template.DATABASE_URL"
        ),
        "postgres://app:old%3Apw@db.svc:5432/orders"
    );

    // The password changes in the store; the next pass re-renders the key.
    std::fs::write(&db, "username=app\npassword=new@pw\nhost=db.svc\nport=5432\n").unwrap();
    let (writer, watch_secrets) = KubeSecretWriter::watching(api.client(), "sesame.dev", keys.clone());
    tokio::spawn(watch_secrets);
    let (namespaces, watch_namespaces) = NamespaceCache::watching(api.client());
    tokio::spawn(watch_namespaces);
    tokio::time::timeout(Duration::from_secs(5), namespaces.wait_until_ready())
        .await
        .unwrap();
    eventually("the cache", || writer.cache().state().len() == 1).await;
    let rotator = Rotator::new(
        api.client(),
        writer.cache().clone(),
        Arc::new(arc_swap::ArcSwap::from_pointee(engine)),
        Arc::new(namespaces),
        keys,
        Arc::new(KubeMetrics::register(&metrics)),
    );
    let (_lead, leading) = watch::channel(true);
    let report = rotator.run_once(&leading).await;
    assert_eq!(report.updated, [format!("team-a/{}", planned.name)], "{report:?}");
    let rotated = api.get("secrets", "team-a", &planned.name).unwrap();
    assert_eq!(
        decoded(&rotated, "template.DATABASE_URL"),
        "postgres://app:new%40pw@db.svc:5432/orders"
    );
    // Still Sesame's: the record (placeholders included) verifies.
    assert_eq!(
        rotated["metadata"]["annotations"]["sesame.dev/sources"],
        serde_json::to_value(sesame::kube::secret::manifest(
            &planned,
            "sesame.dev",
            &provenance(),
            "x"
        ))
        .unwrap()["metadata"]["annotations"]["sesame.dev/sources"]
    );
}
