//! Self-managed certificates against the fake API server of the Kubernetes
//! tests (tests/support/fake_api.rs, which follows the real wire format:
//! Secret create with 409 AlreadyExists, merge patches whose
//! `metadata.resourceVersion` is a precondition, server-side apply of the
//! MutatingWebhookConfiguration's `webhooks` list map). Each test asserts on
//! the requests Sesame sends and on the certificate it serves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/fake_api.rs"]
mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use fake_api::FakeApi;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use sesame::certs::{new_ca, new_serving, service_sans, CertInfo, CertResolver, KeyedCert};
use sesame::kube::certs::{CertManager, Decision, Material, Policy, CHANGED_AT, FIELD_MANAGER};
use sesame::telemetry::Metrics;
use time::OffsetDateTime;
use tokio::sync::watch;

const NS: &str = "sesame-system";
const SECRET: &str = "sesame-certs";
const WEBHOOK: &str = "sesame";
const SECRET_PATH: &str = "/api/v1/namespaces/sesame-system/secrets";
const WEBHOOK_PATH: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/sesame";

fn policy(overlap: Duration) -> Policy {
    Policy {
        sans: service_sans("sesame", NS),
        serving_validity: Duration::from_secs(3600),
        ca_validity: Duration::from_secs(36_000),
        overlap,
    }
}

fn manager(fake: &FakeApi, overlap: Duration) -> CertManager {
    CertManager::new(
        fake.client(),
        NS,
        SECRET,
        WEBHOOK,
        policy(overlap),
        &Metrics::new(),
    )
}

/// The webhook configuration as deploy/ renders it: two webhooks, no caBundle.
fn install_webhook(fake: &FakeApi) {
    let hook = |name: &str| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",
            "clientConfig": {"service": {"name": "sesame", "namespace": NS, "path": "/mutate", "port": 443}},
        })
    };
    fake.put(
        "mutatingwebhookconfigurations",
        "",
        WEBHOOK,
        json!({"metadata": {"name": WEBHOOK}, "webhooks": [hook("inject.sesame.dev"), hook("inject-open.sesame.dev")]}),
    );
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// The caBundle of every webhook, decoded.
fn bundles(fake: &FakeApi) -> Vec<String> {
    let mwc = fake.get("mutatingwebhookconfigurations", "", WEBHOOK).unwrap();
    mwc["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w["clientConfig"]["caBundle"]
                .as_str()
                .map(|b| unb64(&Value::String(b.into())))
                .unwrap_or_default()
        })
        .collect()
}

fn stored(fake: &FakeApi) -> Value {
    fake.get("secrets", NS, SECRET).expect("the certificate Secret")
}

fn stored_text(fake: &FakeApi, key: &str) -> String {
    unb64(&stored(fake)["data"][key])
}

fn secret_json(m: &Material) -> Value {
    let mut data = serde_json::Map::new();
    data.insert("ca.crt".into(), json!(b64(&m.ca.cert_pem)));
    data.insert("ca.key".into(), json!(b64(&m.ca.key_pem)));
    data.insert("tls.crt".into(), json!(b64(&m.serving.cert_pem)));
    data.insert("tls.key".into(), json!(b64(&m.serving.key_pem)));
    if let Some(p) = &m.previous_ca {
        data.insert("ca-previous.crt".into(), json!(b64(p)));
    }
    json!({"metadata": {"name": SECRET, "namespace": NS}, "type": "kubernetes.io/tls", "data": data})
}

/// The certificate a TLS handshake gets now.
fn served(resolver: &CertResolver) -> Vec<u8> {
    resolver.current().cert[0].as_ref().to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn ago(secs: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::seconds(secs)
}

#[tokio::test]
async fn first_start_creates_the_secret_and_writes_every_ca_bundle() {
    let fake = FakeApi::start().await;
    install_webhook(&fake);
    let (material, resolver) = manager(&fake, Duration::from_secs(30))
        .bootstrap(Duration::from_secs(5))
        .await
        .unwrap();

    let creates = fake.calls("POST", SECRET_PATH);
    assert_eq!(creates.len(), 1);
    let body = &creates[0].body;
    assert_eq!(body["metadata"]["name"], SECRET);
    assert_eq!(body["type"], "kubernetes.io/tls");
    let labels = body["metadata"]["labels"].as_object().unwrap();
    assert!(
        !labels.contains_key("app.kubernetes.io/managed-by"),
        "garbage collection must never see it as a managed Secret"
    );
    assert!(body["metadata"]["annotations"][CHANGED_AT].is_string());
    let mut keys: Vec<&str> = body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);

    // The caBundle: server-side apply of that field alone, for both webhooks.
    let applies = fake.calls("PATCH", WEBHOOK_PATH);
    assert_eq!(applies.len(), 1);
    let apply = &applies[0];
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert_eq!(apply.query["fieldManager"], FIELD_MANAGER);
    assert_eq!(apply.query["force"], "true");
    let entries = apply.body["webhooks"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert_eq!(e.as_object().unwrap().len(), 2, "name and clientConfig only: {e}");
        assert_eq!(
            e["clientConfig"].as_object().unwrap().len(),
            1,
            "caBundle only: {e}"
        );
    }
    let ca = stored_text(&fake, "ca.crt");
    assert_eq!(material.ca.cert_pem, ca);
    assert_eq!(bundles(&fake), vec![format!("{}\n", ca.trim_end()); 2]);
    // The rest of the configuration is untouched.
    let mwc = fake.get("mutatingwebhookconfigurations", "", WEBHOOK).unwrap();
    assert_eq!(mwc["webhooks"][0]["clientConfig"]["service"]["name"], "sesame");
    assert_eq!(mwc["webhooks"][1]["sideEffects"], "NoneOnDryRun");

    // It serves what the Secret holds, for the Service's names.
    assert_eq!(served(&resolver), der(&stored_text(&fake, "tls.crt")));
    let serving = CertInfo::parse(&stored_text(&fake, "tls.crt")).unwrap();
    assert!(serving.covers(&["sesame.sesame-system.svc".into()]));
    assert!(serving.signed_by(&CertInfo::parse(&ca).unwrap()));
}

/// The workload warnings' ValidatingWebhookConfiguration (same name) gets
/// the same caBundle when it is installed, and a second pass writes nothing.
#[tokio::test]
async fn the_workload_webhook_gets_the_ca_bundle_too() {
    let fake = FakeApi::start().await;
    install_webhook(&fake);
    fake.put(
        "validatingwebhookconfigurations",
        "",
        WEBHOOK,
        json!({"metadata": {"name": WEBHOOK}, "webhooks": [{
            "name": "workloads.sesame.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"service": {"name": "sesame", "namespace": NS, "path": "/validate-workloads", "port": 443}},
        }]}),
    );
    let m = manager(&fake, Duration::from_secs(30));
    m.bootstrap(Duration::from_secs(5)).await.unwrap();
    let ca = stored_text(&fake, "ca.crt");
    let vwc = fake.get("validatingwebhookconfigurations", "", WEBHOOK).unwrap();
    let bundle = vwc["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap();
    assert_eq!(unb64(&json!(bundle)), format!("{}\n", ca.trim_end()));
    assert_eq!(
        vwc["webhooks"][0]["clientConfig"]["service"]["path"],
        "/validate-workloads"
    );
    let path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/sesame";
    assert_eq!(fake.calls("PATCH", path).len(), 1);
    assert!(
        !m.publish(&unb64(&json!(bundle))).await.unwrap(),
        "nothing left to write"
    );
    assert_eq!(fake.calls("PATCH", path).len(), 1);
}

#[tokio::test]
async fn a_second_replica_reuses_the_secret_and_writes_nothing() {
    let fake = FakeApi::start().await;
    install_webhook(&fake);
    let (_, first) = manager(&fake, Duration::from_secs(30))
        .bootstrap(Duration::from_secs(5))
        .await
        .unwrap();
    let before = fake.requests().len();
    let (_, second) = manager(&fake, Duration::from_secs(30))
        .bootstrap(Duration::from_secs(5))
        .await
        .unwrap();
    let after: Vec<_> = fake.requests()[before..].to_vec();
    assert!(
        after.iter().all(|r| r.method == "GET"),
        "only reads: {:?}",
        after.iter().map(|r| (&r.method, &r.path)).collect::<Vec<_>>()
    );
    assert_eq!(served(&first), served(&second));
}

#[tokio::test]
async fn a_lost_create_race_takes_the_winners_certificate() {
    let fake = FakeApi::start().await;
    install_webhook(&fake);
    // Another replica creates the Secret between this one's read and create.
    let now = OffsetDateTime::now_utc();
    let ca = new_ca(Duration::from_secs(36_000), now).unwrap();
    let winner = Material {
        serving: new_serving(&ca, &service_sans("sesame", NS), Duration::from_secs(3600), now).unwrap(),
        ca,
        previous_ca: None,
        changed_at: None,
    };
    fake.put_before_next("POST", SECRET_PATH, ("secrets", NS, SECRET), secret_json(&winner));
    let (material, resolver) = manager(&fake, Duration::from_secs(30))
        .bootstrap(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(fake.calls("POST", SECRET_PATH).len(), 1, "one create, refused");
    assert!(fake.calls("PATCH", SECRET_PATH).is_empty());
    assert_eq!(material.serving, winner.serving);
    assert_eq!(served(&resolver), der(&winner.serving.cert_pem));
    assert_eq!(bundles(&fake)[0], winner.trust_bundle());
}

#[tokio::test]
async fn renewal_uses_the_resource_version_read_and_a_lost_race_rereads() {
    let fake = FakeApi::start().await;
    install_webhook(&fake);
    // A serving certificate past two thirds of its life.
    let ca = new_ca(Duration::from_secs(36_000), ago(100)).unwrap();
    let sans = service_sans("sesame", NS);
    let due = Material {
        serving: new_serving(&ca, &sans, Duration::from_secs(600), ago(500)).unwrap(),
        ca: ca.clone(),
        previous_ca: None,
        changed_at: None,
    };
    let stored_secret = fake.put("secrets", NS, SECRET, secret_json(&due));
    let rv = stored_secret["metadata"]["resourceVersion"].clone();
    let m = manager(&fake, Duration::from_secs(30));

    // Not the leader: reads, serves the still-valid certificate, writes nothing.
    let synced = m.sync(false, true).await.unwrap();
    assert!(matches!(synced.decision, Decision::RenewServing { .. }));
    assert!(!synced.wrote);
    assert_eq!(synced.material.serving, due.serving);
    assert!(fake.calls("PATCH", SECRET_PATH).is_empty());

    // The leader renews with a merge patch that carries the resourceVersion.
    let synced = m.sync(true, true).await.unwrap();
    assert!(synced.wrote);
    let patches = fake.calls("PATCH", SECRET_PATH);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    assert_eq!(patches[0].body["metadata"]["resourceVersion"], rv);
    assert_eq!(stored_text(&fake, "ca.crt"), ca.cert_pem, "same CA");
    let renewed = stored_text(&fake, "tls.crt");
    assert_ne!(renewed, due.serving.cert_pem);
    assert!(patches[0].body["data"]["ca-previous.crt"].is_null());

    // Renewal due again, and another replica renews first: 409, re-read, keep theirs.
    fake.put("secrets", NS, SECRET, secret_json(&due));
    let theirs = Material {
        serving: new_serving(&ca, &sans, Duration::from_secs(3600), ago(0)).unwrap(),
        ..due.clone()
    };
    fake.put_before_next(
        "PATCH",
        "/secrets/sesame-certs",
        ("secrets", NS, SECRET),
        secret_json(&theirs),
    );
    let synced = m.sync(true, true).await.unwrap();
    assert!(!synced.wrote);
    assert_eq!(synced.decision, Decision::Keep);
    assert_eq!(synced.material.serving, theirs.serving);
    assert_eq!(stored_text(&fake, "tls.crt"), theirs.serving.cert_pem);
}

/// The CA is replaced by the leader's background passes. At every moment
/// the certificate served must chain to a CA in the caBundle the API server
/// has, and the bundle must hold the new CA before anything it signed is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_replacement_never_serves_an_untrusted_certificate() {
    let fake = FakeApi::start().await;
    install_webhook(&fake);
    // A CA two thirds through its life (made 30 000 s ago, 36 000 s long).
    let sans = service_sans("sesame", NS);
    let old = new_ca(Duration::from_secs(36_000), ago(30_000)).unwrap();
    let start = Material {
        serving: new_serving(&old, &sans, Duration::from_secs(3600), ago(10)).unwrap(),
        ca: old.clone(),
        previous_ca: None,
        changed_at: None,
    };
    fake.put("secrets", NS, SECRET, secret_json(&start));
    let overlap = Duration::from_millis(1500);
    let m = manager(&fake, overlap);
    let (material, resolver) = m.bootstrap(Duration::from_secs(5)).await.unwrap();
    // Start-up may already begin the replacement (step 1): the serving
    // certificate does not change in that step.
    assert_eq!(material.serving, start.serving);
    let resolver = Arc::new(resolver);
    let (_lead, leading) = watch::channel(true);
    // The upkeep, as `serve` runs it.
    let task = tokio::spawn(m.run(resolver.clone(), material, leading, Duration::from_millis(100)));

    let trusted = |bundle: &str, cert: &[u8]| {
        let served = CertInfo::parse(&pem_of(cert)).unwrap();
        split_pems(bundle)
            .iter()
            .any(|ca| served.signed_by(&CertInfo::parse(ca).unwrap()))
    };
    let mut saw_both = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let bundle = bundles(&fake)[0].clone();
        let cert = served(&resolver);
        assert!(!bundle.is_empty());
        assert!(
            trusted(&bundle, &cert),
            "served a certificate the caBundle does not trust"
        );
        let cas = split_pems(&bundle);
        saw_both |= cas.len() == 2;
        let done = cas.len() == 1 && cas[0].trim_end() != old.cert_pem.trim_end();
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CA was not replaced in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_both, "old and new CA were published together first");
    let new_ca_pem = stored_text(&fake, "ca.crt");
    assert_ne!(new_ca_pem.trim_end(), old.cert_pem.trim_end());
    assert!(stored(&fake)["data"]["ca-previous.crt"].is_null());
    let serving = CertInfo::parse(&pem_of(&served(&resolver))).unwrap();
    assert!(serving.signed_by(&CertInfo::parse(&new_ca_pem).unwrap()));

    // The steps were spaced by the overlap: the Secret was written three
    // times, each at least `overlap` after the one before.
    let writes: Vec<String> = fake
        .calls("PATCH", SECRET_PATH)
        .iter()
        .map(|r| {
            r.body["metadata"]["annotations"][CHANGED_AT]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(writes.len(), 3, "{writes:?}");
    let times: Vec<OffsetDateTime> = writes
        .iter()
        .map(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap())
        .collect();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= time::Duration::milliseconds(1500),
            "{writes:?}"
        );
    }
    task.abort();
}

fn pem_of(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

fn split_pems(bundle: &str) -> Vec<String> {
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|p| p.starts_with("-----BEGIN"))
        .map(|p| format!("{p}\n"))
        .collect()
}

#[test]
fn keyed_cert_debug_hides_the_key() {
    let now = OffsetDateTime::now_utc();
    let ca: KeyedCert = new_ca(Duration::from_secs(60), now).unwrap();
    assert!(!format!("{ca:?}").contains("PRIVATE"));
}
