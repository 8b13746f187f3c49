//! The Kubernetes client code against a fake API server that follows the
//! real wire format (see tests/support/fake_api.rs for the documents it
//! follows). Each test asserts on the requests Sesame sends: paths, query
//! parameters, content types and bodies.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/fake_api.rs"]
mod fake_api;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fake_api::FakeApi;
use serde_json::{json, Value};
use sesame::admission::{NamespaceLabels, SecretWriter, Unlimited, WriteError, WriteOutcome};
use sesame::inject::annotations::SecretRef;
use sesame::inject::data::KeySource;
use sesame::inject::plan::secret_name;
use sesame::inject::pod::OwnerReference;
use sesame::inject::ManagedSecret;
use sesame::kube::digest::digest;
use sesame::kube::gc::GarbageCollector;
use sesame::kube::lease::LeaseElector;
use sesame::kube::metrics::KubeMetrics;
use sesame::kube::namespaces::NamespaceCache;
use sesame::kube::provenance::Provenance;
use sesame::kube::rotation::Rotator;
use sesame::kube::writer::KubeSecretWriter;
use sesame::stores::kubernetes::KubernetesStore;
use sesame::stores::{SecretLocator, SecretValue, Store, StoreError};
use tokio::sync::watch;

const SELECTOR: &str = "app.kubernetes.io/managed-by=sesame";

fn owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn managed(namespace: &str, value: &str, owners: Vec<OwnerReference>) -> ManagedSecret {
    let data: BTreeMap<String, SecretValue> = [("db.password".to_owned(), SecretValue::from(value))].into();
    let r = SecretRef {
        store: "vault".into(),
        path: "secret/app/db".into(),
        property: Some("password".into()),
        version: None,
        refresh: None,
    };
    ManagedSecret {
        name: "sesame-0123456789abcdef".into(),
        namespace: namespace.into(),
        service_account: "web".into(),
        data,
        references: vec![r.clone()],
        sources: [("db.password".to_owned(), r.into())].into(),
        restart_on_rotation: false,
        owners,
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// An engine over a file store: `secrets` is written to secrets.yaml beside
/// the configuration `yaml`.
async fn file_engine(
    secrets: &str,
    yaml: &str,
) -> (
    tempfile::TempDir,
    sesame::pipeline::SharedEngine,
    Arc<sesame::telemetry::Metrics>,
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secrets.yaml"), secrets).unwrap();
    let config = sesame::config::Config::from_yaml(yaml, "t").unwrap();
    let metrics = Arc::new(sesame::telemetry::Metrics::new());
    let stores = sesame::stores::Stores::from_config(&config.stores, dir.path(), &metrics, None)
        .await
        .unwrap();
    let engine = sesame::pipeline::Engine::new(&config, stores);
    (dir, Arc::new(arc_swap::ArcSwap::from_pointee(engine)), metrics)
}

/// The provenance key of these tests (`serve` keeps it in a Secret).
fn provenance() -> Provenance {
    Provenance::with_keys(vec![(1, vec![42; 32])]).unwrap()
}

/// The writer over its cache, the cache's watch running as `serve` runs it.
async fn ready_writer(api: &FakeApi) -> KubeSecretWriter {
    let (writer, watch) = KubeSecretWriter::watching(api.client(), "sesame.dev", provenance());
    tokio::spawn(watch);
    tokio::time::timeout(Duration::from_secs(5), writer.cache().wait_until_ready())
        .await
        .expect("cache synced")
        .unwrap();
    writer
}

/// Attack: a tenant fills Secrets in its own namespace with Sesame's label,
/// large values and large foreign annotations, to grow Sesame's heap (the
/// cache watches every Secret with that label) or to have its values held
/// there. The cache keeps a 32-byte digest per key and only Sesame's
/// annotations: neither the values nor the blob are in memory.
#[tokio::test]
async fn the_managed_secret_cache_holds_digests_not_a_tenants_values() {
    let api = FakeApi::start().await;
    let writer = ready_writer(&api).await;
    let value = "tenant-bulk-".repeat(80_000);
    let blob = "x".repeat(200_000);
    api.put(
        "secrets",
        "team-a",
        "bulk",
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "bulk", "namespace": "team-a",
                         "labels": {"app.kubernetes.io/managed-by": "sesame"},
                         "annotations": {"sesame.dev/sources": "{}", "team-a.example/blob": blob}},
            "data": {"big": b64(&value), "small": b64("s3cr3t")}
        }),
    );
    let key = kube::runtime::reflector::ObjectRef::new("bulk").within("team-a");
    eventually("the tenant's Secret in the cache", || {
        writer.cache().get(&key).is_some()
    })
    .await;
    let cached = writer.cache().get(&key).unwrap();
    let data = cached.data.as_ref().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["big", "small"]);
    assert!(data.values().all(|v| v.0.len() == 32), "digests only");
    assert_eq!(data["small"].0, digest("small", b"s3cr3t"));
    assert_ne!(data["small"].0, digest("big", b"s3cr3t"), "the key is covered");
    assert_eq!(
        cached
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["sesame.dev/sources"]
    );
    let text = format!("{cached:?}");
    assert!(
        text.len() < 4_000 && !text.contains("s3cr3t"),
        "{} bytes",
        text.len()
    );
}

#[tokio::test]
async fn writer_applies_with_server_side_apply_and_skips_current_secrets() {
    let api = FakeApi::start().await;
    let writer = ready_writer(&api).await;

    // The cache: a label-selected, paginated list, then a watch from its resourceVersion.
    let list = &api.calls("GET", "/api/v1/secrets")[0];
    assert_eq!(
        list.query.get("labelSelector").map(String::as_str),
        Some(SELECTOR)
    );
    assert_eq!(list.query.get("limit").map(String::as_str), Some("500"));
    eventually("the watch", || {
        api.requests()
            .iter()
            .any(|r| r.path == "/api/v1/secrets" && r.query.contains_key("watch"))
    })
    .await;
    let watch_req = api
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v1/secrets" && r.query.contains_key("watch"))
        .expect("a watch");
    assert_eq!(watch_req.query["labelSelector"], SELECTOR);
    assert_eq!(watch_req.query["allowWatchBookmarks"], "true");
    assert_eq!(watch_req.query["resourceVersion"], "100");

    let first = managed("team-a", "s3cr3t", vec![owner("web-1", "u1")]);
    assert_eq!(
        writer.apply(&first, &Unlimited).await.unwrap(),
        WriteOutcome::Applied
    );
    // Not cached yet: read first (404), then apply.
    let path = "/api/v1/namespaces/team-a/secrets/sesame-0123456789abcdef";
    assert_eq!(api.calls("GET", path).len(), 1);
    let patches = api.calls("PATCH", path);
    assert_eq!(patches.len(), 1);
    let p = &patches[0];
    assert_eq!(p.content_type, "application/apply-patch+yaml");
    assert_eq!(p.query["fieldManager"], "sesame");
    assert_eq!(p.query["force"], "true");
    assert_eq!(p.body["apiVersion"], "v1");
    assert_eq!(p.body["kind"], "Secret");
    assert_eq!(p.body["type"], "Opaque");
    assert_eq!(
        p.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sesame"
    );
    let annotations = &p.body["metadata"]["annotations"];
    assert_eq!(
        annotations["sesame.dev/references"],
        "vault:secret/app/db#password"
    );
    assert_eq!(annotations["sesame.dev/service-account"], "web");
    // Signed with the provenance key; no plain hash of the values.
    assert!(annotations["sesame.dev/provenance"]
        .as_str()
        .unwrap()
        .starts_with("v1:1:"));
    assert!(annotations.get("sesame.dev/content-hash").is_none());
    let sources: Value = serde_json::from_str(annotations["sesame.dev/sources"].as_str().unwrap()).unwrap();
    assert_eq!(
        sources,
        json!({"db.password": {"store": "vault", "path": "secret/app/db", "property": "password"}})
    );
    assert!(!annotations.to_string().contains("s3cr3t"));
    assert_eq!(p.body["data"]["db.password"], b64("s3cr3t"));
    assert_eq!(
        p.body["metadata"]["ownerReferences"],
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u1"}])
    );

    // Once the watch delivered it, the same Secret costs no request at all.
    eventually("the cache to see the Secret", || {
        writer.cache().state().len() == 1
    })
    .await;
    let before = api.requests().len();
    assert_eq!(
        writer.apply(&first, &Unlimited).await.unwrap(),
        WriteOutcome::Unchanged
    );
    assert_eq!(api.requests().len(), before);

    // The next ReplicaSet of a rollout is added; the first stays an owner.
    let second = managed("team-a", "s3cr3t", vec![owner("web-2", "u2")]);
    assert_eq!(
        writer.apply(&second, &Unlimited).await.unwrap(),
        WriteOutcome::Applied
    );
    let last = api.calls("PATCH", path).pop().unwrap();
    let uids: Vec<&str> = last.body["metadata"]["ownerReferences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids, ["u1", "u2"]);
    assert_eq!(api.calls("GET", path).len(), 1, "served from the cache");
    let stored = api.get("secrets", "team-a", "sesame-0123456789abcdef").unwrap();
    assert_eq!(stored["metadata"]["ownerReferences"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn write_failures_deny_with_the_api_status_and_throttling_is_retried_once() {
    let api = FakeApi::start().await;
    let writer = ready_writer(&api).await;
    let path = "/api/v1/namespaces/team-a/secrets/";
    let secret = managed("team-a", "s3cr3t", vec![]);

    api.fail_next("PATCH", path, 429, 1);
    assert_eq!(
        writer.apply(&secret, &Unlimited).await.unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(api.calls("PATCH", path).len(), 2, "one retry after 429");

    let other = managed("team-a", "changed", vec![]);
    api.fail_next("PATCH", path, 422, 1);
    let err = writer.apply(&other, &Unlimited).await.unwrap_err();
    assert!(matches!(err, WriteError::Refused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("422 Invalid"), "{msg}");
    assert!(msg.contains("sesame-0123456789abcdef"), "{msg}");
    assert!(!msg.contains("changed"), "{msg}");
    assert_eq!(api.calls("PATCH", path).len(), 3, "no retry for 422");

    api.fail_next("PATCH", path, 429, 2);
    let err = writer.apply(&other, &Unlimited).await.unwrap_err().to_string();
    assert!(err.contains("429 TooManyRequests"), "{err}");
    assert_eq!(api.calls("PATCH", path).len(), 5);
}

#[tokio::test]
async fn admission_denies_a_pod_whose_secret_cannot_be_written() {
    use sesame::admission::Admission;

    let api = FakeApi::start().await;
    let writer = Arc::new(ready_writer(&api).await);
    let (_dir, engine, metrics) = file_engine(
        "apps/team-a/db:\n  password: pw\n",
        "stores:\n  - {name: dev, file: {path: secrets.yaml}}\npolicy:\n  rules:\n    - {name: own, namespaces: ['*'], stores: [dev], paths: ['apps/{namespace}/**']}\n",
    )
    .await;
    let admission = Admission::new(engine, writer, metrics);
    let review = |dry_run: bool| {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a",
                "operation": "CREATE",
                "dryRun": dry_run,
                "userInfo": {"username": "x"},
                "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "p", "annotations": {"sesame.dev/env.PW": "dev:apps/team-a/db#password"}},
                    "spec": {"containers": [{"name": "app", "image": "x"}]}
                }
            }
        }))
        .unwrap()
    };

    // dryRun: nothing reaches the API.
    let out: Value = serde_json::from_slice(&admission.review(&review(true), None).await.unwrap()).unwrap();
    assert_eq!(out["response"]["allowed"], true);
    assert!(api.calls("PATCH", "/secrets/").is_empty());
    assert!(api.calls("GET", "/namespaces/team-a/secrets/").is_empty());

    api.fail_next("PATCH", "/secrets/", 403, 1);
    let out: Value = serde_json::from_slice(&admission.review(&review(false), None).await.unwrap()).unwrap();
    assert_eq!(out["response"]["allowed"], false);
    let message = out["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("403 Forbidden"), "{message}");
    assert!(message.contains("not admitted"), "{message}");
    assert!(!message.contains("pw\""), "{message}");

    let out: Value = serde_json::from_slice(&admission.review(&review(false), None).await.unwrap()).unwrap();
    assert_eq!(out["response"]["allowed"], true);
    assert_eq!(api.calls("PATCH", "/secrets/").len(), 2);
}

/// Attack 4 (docs/security.md) as a forger without a client certificate
/// makes it: a review for a namespace that does not exist writes nothing,
/// and new managed Secrets in one namespace are rate-limited (a Secret that
/// exists already is rewritten freely; another namespace has its own share).
#[tokio::test]
async fn forged_reviews_write_only_into_known_namespaces_and_new_secrets_are_rate_limited() {
    use sesame::admission::Admission;

    let api = FakeApi::start().await;
    for ns in ["team-a", "team-b"] {
        api.put("namespaces", "", ns, json!({"metadata": {}}));
    }
    let writer = Arc::new(ready_writer(&api).await);
    let (_dir, engine, metrics) = file_engine(
        "apps/team-a/db:\n  a: '1'\n  b: '2'\n  c: '3'\napps/team-b/db:\n  a: '1'\n",
        "stores:\n  - {name: dev, file: {path: secrets.yaml}}\npolicy:\n  rules:\n    - {name: own, namespaces: ['*'], stores: [dev], paths: ['apps/{namespace}/**']}\n  newSecretsPerNamespace: {burst: 2, perMinute: 0}\n",
    )
    .await;
    let admission =
        Admission::new(engine, writer, metrics.clone()).with_namespaces(namespace_cache(&api).await);
    let review = |namespace: &str, property: &str| {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": namespace,
                "operation": "CREATE",
                "object": {
                    "metadata": {"name": "p", "annotations": {"sesame.dev/env.V": format!("dev:apps/{namespace}/db#{property}")}},
                    "spec": {"containers": [{"name": "app", "image": "x"}]}
                }
            }
        }))
        .unwrap()
    };
    let answer = |body: Vec<u8>| {
        let admission = &admission;
        async move {
            let out: Value = serde_json::from_slice(&admission.review(&body, None).await.unwrap()).unwrap();
            out["response"].clone()
        }
    };

    let r = answer(review("ghost", "a")).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 400, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{r}"
    );
    assert!(api.calls("PATCH", "/secrets/").is_empty());
    assert!(api.calls("GET", "/namespaces/ghost/").is_empty());

    for property in ["a", "b"] {
        let r = answer(review("team-a", property)).await;
        assert_eq!(r["allowed"], true, "{property}: {r}");
    }
    let r = answer(review("team-a", "c")).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 429, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.contains("policy.newSecretsPerNamespace"), "{message}");
    assert_eq!(
        api.calls("PATCH", "/secrets/").len(),
        2,
        "the third was never sent"
    );

    // An existing Secret needs no token: the same Pod again is admitted.
    let r = answer(review("team-a", "a")).await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = answer(review("team-b", "a")).await;
    assert_eq!(r["allowed"], true, "another namespace has its own share: {r}");
    let text = metrics.encode();
    assert!(
        text.contains("sesame_secret_writes_total{outcome=\"rate_limited\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sesame_admission_reviews_total{outcome=\"denied_rate_limited\"} 1"),
        "{text}"
    );
    // Every Secret step is timed under the outcome it is counted under, so
    // the cold path (an API call) shows apart from the cached one.
    let value = |series: String| {
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    for outcome in ["applied", "unchanged", "rate_limited"] {
        let counted = value(format!("sesame_secret_writes_total{{outcome=\"{outcome}\"}}"));
        let timed = value(format!(
            "sesame_secret_write_duration_seconds_count{{outcome=\"{outcome}\"}}"
        ));
        assert_eq!(counted, timed, "{outcome}: {text}");
    }
    assert!(
        value("sesame_secret_write_duration_seconds_count{outcome=\"applied\"}".into()) >= 3.0,
        "{text}"
    );
}

#[tokio::test]
async fn kubernetes_store_reads_secret_keys_as_properties() {
    let api = FakeApi::start().await;
    api.put(
        "secrets",
        "team-a",
        "db-creds",
        json!({"metadata": {}, "data": {"password": b64("pw"), "user": b64("app")}}),
    );
    api.fail_next("GET", "/namespaces/team-b/", 403, 1);
    let store = KubernetesStore::new(Some(api.client()));
    let answers = store
        .fetch(
            &[
                SecretLocator::new("team-a/db-creds", None),
                SecretLocator::new("team-a/missing", None),
                SecretLocator::new("team-b/db-creds", None),
                SecretLocator::new("team-a/db-creds", Some("3".into())),
            ],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    let data = answers[0].as_ref().unwrap();
    assert_eq!(data.get(Some("password")).unwrap().expose(), b"pw");
    assert_eq!(data.get(Some("user")).unwrap().expose(), b"app");
    assert_eq!(answers[1], Err(StoreError::NotFound));
    assert!(
        matches!(answers[2], Err(StoreError::Unauthorized(_))),
        "{:?}",
        answers[2]
    );
    assert!(matches!(answers[3], Err(StoreError::InvalidRequest(_))));
    let gets = api.calls("GET", "/secrets/");
    let paths: Vec<&str> = gets.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/team-a/secrets/db-creds",
            "/api/v1/namespaces/team-a/secrets/missing",
            "/api/v1/namespaces/team-b/secrets/db-creds"
        ]
    );
}

#[tokio::test]
async fn namespace_labels_come_from_a_metadata_only_watch() {
    let api = FakeApi::start().await;
    api.put(
        "namespaces",
        "",
        "team-a",
        json!({"metadata": {"labels": {"team": "payments"}}}),
    );
    api.put("namespaces", "", "plain", json!({"metadata": {}}));
    let (cache, watch) = NamespaceCache::watching(api.client());
    tokio::spawn(watch);
    tokio::time::timeout(Duration::from_secs(5), cache.wait_until_ready())
        .await
        .unwrap();

    let list = &api.calls("GET", "/api/v1/namespaces")[0];
    assert!(
        list.accept.contains("as=PartialObjectMetadataList"),
        "{}",
        list.accept
    );
    assert_eq!(cache.labels("team-a").unwrap()["team"], "payments");
    assert_eq!(cache.labels("plain").unwrap(), BTreeMap::new());
    assert_eq!(cache.labels("unknown"), None);

    // A label change arrives through the watch, without a request per lookup.
    api.put(
        "namespaces",
        "",
        "team-a",
        json!({"metadata": {"labels": {"team": "web"}}}),
    );
    eventually("the relabelled namespace", || {
        cache.labels("team-a").is_some_and(|l| l["team"] == "web")
    })
    .await;
    let requests = api.requests().len();
    for _ in 0..10 {
        cache.labels("team-a");
    }
    assert_eq!(api.requests().len(), requests);
}

#[tokio::test]
async fn lease_acquire_renew_conflict_and_takeover() {
    let api = FakeApi::start().await;
    let lease = |id: &str| {
        LeaseElector::new(
            api.client(),
            "sesame-system",
            "sesame-leader",
            id,
            Duration::from_secs(15),
        )
    };
    let (a, b) = (lease("a"), lease("b"));
    let path = "/apis/coordination.k8s.io/v1/namespaces/sesame-system/leases";

    assert!(a.try_acquire_or_renew().await.unwrap());
    let created = &api.calls("POST", path)[0];
    assert_eq!(created.body["spec"]["holderIdentity"], "a");
    assert_eq!(created.body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(created.body["metadata"]["name"], "sesame-leader");

    assert!(!b.try_acquire_or_renew().await.unwrap(), "a holds a live Lease");
    assert!(api.calls("PUT", path).is_empty(), "b wrote nothing");

    let rv =
        api.get("leases", "sesame-system", "sesame-leader").unwrap()["metadata"]["resourceVersion"].clone();
    assert!(a.try_acquire_or_renew().await.unwrap());
    let renew = api.calls("PUT", path).pop().unwrap();
    assert_eq!(
        renew.body["metadata"]["resourceVersion"], rv,
        "renewal is conditional"
    );
    assert_eq!(renew.body["spec"]["holderIdentity"], "a");

    // Losing the race (someone wrote in between) is not leading, not an error.
    api.fail_next("PUT", path, 409, 1);
    assert!(!a.try_acquire_or_renew().await.unwrap());

    // A Lease is expired once its record has not changed for its duration
    // as b observes it, whatever its renewTime says (here years ago, as a
    // holder with a lagging clock would write): then b takes it over,
    // counting a transition.
    api.put(
        "leases",
        "sesame-system",
        "sesame-leader",
        json!({"metadata": {}, "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 15, "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 4}}),
    );
    let seen = tokio::time::Instant::now();
    assert!(
        !b.try_acquire_or_renew_at(seen).await.unwrap(),
        "just observed: live"
    );
    assert!(!b
        .try_acquire_or_renew_at(seen + Duration::from_secs(15))
        .await
        .unwrap());
    assert!(b
        .try_acquire_or_renew_at(seen + Duration::from_secs(16))
        .await
        .unwrap());
    let stored = api.get("leases", "sesame-system", "sesame-leader").unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "b");
    assert_eq!(stored["spec"]["leaseTransitions"], 5);

    // Release hands it over at once.
    b.release().await;
    let stored = api.get("leases", "sesame-system", "sesame-leader").unwrap();
    assert!(stored["spec"].get("holderIdentity").is_none_or(Value::is_null));
    assert!(a.try_acquire_or_renew().await.unwrap());

    // Errors other than a lost race are reported.
    api.fail_next("GET", path, 500, 1);
    assert!(a
        .try_acquire_or_renew()
        .await
        .unwrap_err()
        .to_string()
        .contains("500"));
}

/// A managed Secret as Sesame writes it for Pods of `service_account` in
/// `namespace` whose annotations ask for `sources` (Secret key → reference
/// in the annotation grammar), holding `values`, refreshed at
/// `refreshed_at`, signed with `keys` (the genuine key, or an attacker's).
/// Its name is the one the plan gives those references. Returns the name
/// and the object to store.
fn signed(
    keys: &Provenance,
    namespace: &str,
    service_account: &str,
    sources: &[(&str, &str)],
    values: &[(&str, &str)],
    restart_on_rotation: bool,
    refreshed_at: &str,
) -> (String, Value) {
    let sources: BTreeMap<String, KeySource> = sources
        .iter()
        .map(|(k, r)| ((*k).to_owned(), r.parse::<SecretRef>().unwrap().into()))
        .collect();
    let references: Vec<SecretRef> = sources
        .values()
        .flat_map(KeySource::references)
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let name = secret_name(namespace, service_account, &references);
    let secret = ManagedSecret {
        name: name.clone(),
        namespace: namespace.into(),
        service_account: service_account.into(),
        data: values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretValue::from(*v)))
            .collect(),
        references,
        sources,
        restart_on_rotation,
        owners: Vec::new(),
    };
    let mut object = sesame::kube::secret::manifest(&secret, "sesame.dev", keys, refreshed_at);
    object["metadata"]["creationTimestamp"] = json!(refreshed_at);
    (name, object)
}

/// A Secret a tenant made to look managed: the label and the annotations
/// Sesame writes (no MAC unless `extra` adds one), created long ago.
fn forged(sources: Value, extra: Value) -> Value {
    let mut annotations = json!({
        "sesame.dev/sources": sources.to_string(),
        "sesame.dev/references": "",
        "sesame.dev/service-account": "default",
        "sesame.dev/refreshed-at": "2020-01-01T00:00:00Z",
        "sesame.dev/restart-on-rotation": "true",
    });
    if let (Some(a), Some(e)) = (annotations.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    json!({
        "metadata": {
            "labels": {"app.kubernetes.io/managed-by": "sesame"},
            "annotations": annotations,
            "creationTimestamp": "2020-01-01T00:00:00Z",
        },
        "type": "Opaque",
        "data": {"k": b64("tenant's own")},
    })
}

fn gc(api: &FakeApi, writer: &KubeSecretWriter, metrics: &sesame::telemetry::Metrics) -> GarbageCollector {
    GarbageCollector::new(
        api.client(),
        writer.cache().clone(),
        provenance(),
        Duration::from_secs(600),
        2,
        Arc::new(KubeMetrics::register(metrics)),
    )
}

#[tokio::test]
async fn gc_lists_only_namespaces_with_old_secrets_page_by_page() {
    let api = FakeApi::start().await;
    let old = "2020-01-01T00:00:00Z";
    let keys = provenance();
    let (used, used_obj) = signed(
        &keys,
        "gc-a",
        "default",
        &[("k", "dev:apps/used")],
        &[("k", "v")],
        false,
        old,
    );
    let (unused, unused_obj) = signed(
        &keys,
        "gc-a",
        "default",
        &[("k", "dev:apps/unused")],
        &[("k", "v")],
        false,
        old,
    );
    api.put("secrets", "gc-a", &used, used_obj);
    api.put("secrets", "gc-a", &unused, unused_obj);
    let young = sesame::kube::secret::now_rfc3339();
    let (young_name, young_obj) = signed(
        &keys,
        "gc-b",
        "default",
        &[("k", "dev:apps/young")],
        &[("k", "v")],
        false,
        &young,
    );
    api.put("secrets", "gc-b", &young_name, young_obj);
    // An unmanaged Secret is never a candidate.
    api.put(
        "secrets",
        "gc-a",
        "sesame-lookalike",
        json!({"metadata": {"creationTimestamp": old}}),
    );
    for i in 0..5 {
        let annotations = if i == 3 {
            json!({"sesame.dev/injected": used})
        } else {
            json!({})
        };
        api.put(
            "pods",
            "gc-a",
            &format!("p{i}"),
            json!({"metadata": {"annotations": annotations}}),
        );
    }
    api.put("pods", "gc-c", "elsewhere", json!({"metadata": {}}));

    let writer = ready_writer(&api).await;
    let metrics = sesame::telemetry::Metrics::new();
    let gc = gc(&api, &writer, &metrics);
    let (_lead, leading) = watch::channel(true);
    let report = gc.run_once("sesame.dev", &leading).await.unwrap();
    assert_eq!(report.deleted, [format!("gc-a/{unused}")]);
    assert_eq!(report.namespaces, 1);
    assert_eq!(report.pods_seen, 5);

    // Pods of gc-a only, metadata only, three pages of two.
    let lists = api.calls("GET", "/pods");
    assert!(
        lists.iter().all(|r| r.path == "/api/v1/namespaces/gc-a/pods"),
        "{lists:?}"
    );
    assert_eq!(lists.len(), 3);
    assert!(lists
        .iter()
        .all(|r| r.accept.contains("as=PartialObjectMetadataList")));
    assert!(lists.iter().all(|r| r.query["limit"] == "2"));
    let tokens: Vec<Option<&str>> = lists
        .iter()
        .map(|r| r.query.get("continue").map(String::as_str))
        .collect();
    assert_eq!(tokens, [None, Some("idx-2"), Some("idx-4")]);

    // The delete carries preconditions, so a Secret re-applied meanwhile survives.
    let delete = &api.calls("DELETE", "/secrets/")[0];
    assert_eq!(delete.path, format!("/api/v1/namespaces/gc-a/secrets/{unused}"));
    assert!(delete.body["preconditions"]["uid"].is_string());
    assert!(delete.body["preconditions"]["resourceVersion"].is_string());
    assert!(api.get("secrets", "gc-a", &unused).is_none());
    assert!(api.get("secrets", "gc-a", &used).is_some());
    assert!(api.get("secrets", "gc-b", &young_name).is_some());
    assert!(metrics.encode().contains("sesame_secret_gc_deleted_total 1"));

    // Not leading: nothing is deleted.
    let (unused2, unused2_obj) = signed(
        &keys,
        "gc-a",
        "default",
        &[("k", "dev:apps/unused2")],
        &[("k", "v")],
        false,
        old,
    );
    api.put("secrets", "gc-a", &unused2, unused2_obj);
    eventually("the cache to see the new Secret", || {
        writer.cache().state().len() == 3
    })
    .await;
    let (_lead, not_leading) = watch::channel(false);
    let report = gc.run_once("sesame.dev", &not_leading).await.unwrap();
    assert!(report.deleted.is_empty());
    assert!(api.get("secrets", "gc-a", &unused2).is_some());
}

/// The attacker labels Secrets of its own namespace as managed, unsigned
/// or signed with a key of its own, and leaves them unreferenced past the
/// grace period: garbage collection deletes none of them (and says so once
/// per Secret), and without the provenance key it deletes nothing at all.
#[tokio::test]
async fn gc_never_deletes_a_secret_sesame_did_not_write() {
    let api = FakeApi::start().await;
    let old = "2020-01-01T00:00:00Z";
    api.put("secrets", "team-a", "sesame-forged", forged(json!({}), json!({})));
    let attacker = Provenance::with_keys(vec![(1, vec![7; 32])]).unwrap();
    let (theirs, theirs_obj) = signed(
        &attacker,
        "team-a",
        "default",
        &[("k", "dev:apps/x")],
        &[("k", "v")],
        false,
        old,
    );
    api.put("secrets", "team-a", &theirs, theirs_obj);
    let (ours, ours_obj) = signed(
        &provenance(),
        "team-a",
        "default",
        &[("k", "dev:apps/y")],
        &[("k", "v")],
        false,
        old,
    );
    api.put("secrets", "team-a", &ours, ours_obj);

    let writer = ready_writer(&api).await;
    eventually("the cache", || writer.cache().state().len() == 3).await;
    let metrics = sesame::telemetry::Metrics::new();
    let kube_metrics = Arc::new(KubeMetrics::register(&metrics));
    let (_lead, leading) = watch::channel(true);

    let without_keys = GarbageCollector::new(
        api.client(),
        writer.cache().clone(),
        Provenance::empty(),
        Duration::from_secs(600),
        500,
        kube_metrics.clone(),
    );
    let report = without_keys.run_once("sesame.dev", &leading).await.unwrap();
    assert!(report.waiting_for_keys);
    assert!(api.calls("GET", "/pods").is_empty() && api.calls("DELETE", "/secrets/").is_empty());

    let gc = GarbageCollector::new(
        api.client(),
        writer.cache().clone(),
        provenance(),
        Duration::from_secs(600),
        500,
        kube_metrics,
    );
    let mut expected = vec![format!("team-a/{theirs}"), "team-a/sesame-forged".to_owned()];
    expected.sort();
    for pass in 0..2 {
        let report = gc.run_once("sesame.dev", &leading).await.unwrap();
        let deleted = if pass == 0 {
            vec![format!("team-a/{ours}")]
        } else {
            vec![]
        };
        assert_eq!(report.deleted, deleted);
        let mut unverified = report.unverified.clone();
        unverified.sort();
        assert_eq!(unverified, expected);
        eventually("the cache", || writer.cache().state().len() == 2).await;
    }
    assert!(api.get("secrets", "team-a", "sesame-forged").is_some());
    assert!(api.get("secrets", "team-a", &theirs).is_some());
    let deletes = api.calls("DELETE", "/secrets/");
    assert!(deletes.iter().all(|d| d.path.ends_with(&ours)), "{deletes:?}");
    // Counted once per Secret, not once per pass.
    let text = metrics.encode();
    assert!(
        text.contains("sesame_managed_secret_unverified_total{action=\"gc\",reason=\"missing\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sesame_managed_secret_unverified_total{action=\"gc\",reason=\"mismatch\"} 1"),
        "{text}"
    );
}

/// A directory file store (`secrets/<path>.env`) with a secret outside it,
/// a `kubernetes` store, and the policy: each namespace its own subtree and
/// its own Kubernetes Secrets. Both stores refresh every minute.
async fn attack_engine(
    api: &FakeApi,
) -> (
    tempfile::TempDir,
    sesame::pipeline::SharedEngine,
    Arc<sesame::telemetry::Metrics>,
) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    for (path, text) in [
        ("apps/team-a/db", "password=new-value\n"),
        ("apps/team-b/db", "password=team-b-secret\n"),
        ("nobody/db", "password=nobody-secret\n"),
    ] {
        let file = secrets.join(format!("{path}.env"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    std::fs::write(dir.path().join("outside.env"), "x=outside-secret\n").unwrap();
    let yaml = "stores:\n  - {name: dev, file: {path: secrets}, cacheTtl: 0s, refreshInterval: 60s}\n  - {name: k8s, kubernetes: {}, cacheTtl: 0s, refreshInterval: 60s}\npolicy:\n  rules:\n    - {name: own, namespaces: ['*'], stores: [dev], paths: ['apps/{namespace}/**']}\n    - {name: own-k8s, namespaces: ['*'], stores: [k8s], paths: ['{namespace}/*']}\n";
    let config = sesame::config::Config::from_yaml(yaml, "t").unwrap();
    let metrics = Arc::new(sesame::telemetry::Metrics::new());
    let client = api.client();
    let stores = sesame::stores::Stores::from_config(&config.stores, dir.path(), &metrics, Some(&client))
        .await
        .unwrap();
    let engine = sesame::pipeline::Engine::new(&config, stores);
    (dir, Arc::new(arc_swap::ArcSwap::from_pointee(engine)), metrics)
}

/// A namespace created a moment ago (applied together with its workload)
/// can be reviewed before the watch delivers it: the cache reads a miss from
/// the API instead of denying the Pod. A made-up namespace (a forged review)
/// stays unknown, and so does one being deleted.
#[tokio::test]
async fn a_namespace_the_watch_has_not_delivered_is_read_from_the_api() {
    let api = FakeApi::start().await;
    api.put(
        "namespaces",
        "",
        "fresh",
        json!({"metadata": {"labels": {"team": "a"}}}),
    );
    api.put(
        "namespaces",
        "",
        "leaving",
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    // The watch never runs: the cache stays empty.
    let (cache, _watch) = NamespaceCache::watching(api.client());
    assert_eq!(cache.labels("fresh"), None);
    let labels = cache.labels_now("fresh").await.expect("read from the API");
    assert_eq!(labels["team"], "a");
    assert_eq!(cache.labels_now("made-up").await, None);
    assert_eq!(cache.labels_now("leaving").await, None);
    assert_eq!(api.calls("GET", "/api/v1/namespaces/fresh").len(), 1);
}

/// The Namespace cache over the fake, synced.
async fn namespace_cache(api: &FakeApi) -> Arc<NamespaceCache> {
    let (cache, watch) = NamespaceCache::watching(api.client());
    tokio::spawn(watch);
    tokio::time::timeout(Duration::from_secs(5), cache.wait_until_ready())
        .await
        .unwrap();
    Arc::new(cache)
}

/// A Deployment `name` whose Pod template carries `annotations` (and the
/// service account `default`), as the API server returns it.
fn deployment(annotations: Value) -> Value {
    json!({
        "metadata": {},
        "spec": {"template": {
            "metadata": {"annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "x"}]},
        }},
    })
}

fn owned_by(mut secret: Value, kind: &str, name: &str) -> Value {
    secret["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}")}]);
    secret
}

/// The confused deputy, played against the fake API server: a tenant of
/// team-a labels Secrets of its own as managed, naming another team's path,
/// kube-system's Secrets through the `kubernetes` store, a path no rule
/// grants and `../outside` of the file store, with owner references to a
/// Deployment it may not patch and `restart-on-rotation`; some unsigned,
/// one signed with a key of its own, one with a MAC copied from a genuine
/// Secret, one a genuine Secret whose sources it edited. None of them gets
/// a value or causes a restart. A genuine Secret rotates and its opted-in
/// Deployment restarts; a genuine Secret the tenant gave another owner
/// restarts nothing else; a genuine Secret whose reference the policy no
/// longer grants loses that key, with an Event.
#[tokio::test]
async fn rotation_refreshes_only_secrets_sesame_wrote_and_only_what_the_policy_grants() {
    let api = FakeApi::start().await;
    let (_dir, engine, metrics) = attack_engine(&api).await;
    api.put("namespaces", "", "team-a", json!({"metadata": {}}));
    api.put(
        "secrets",
        "kube-system",
        "admin-token",
        json!({"metadata": {}, "data": {"token": b64("cluster-admin-token")}}),
    );
    let old = "2020-01-01T00:00:00Z";
    let keys = provenance();
    let stolen = [
        "new-value",
        "team-b-secret",
        "cluster-admin-token",
        "nobody-secret",
        "outside-secret",
    ];

    // The genuine Secret of Deployment web (opted in), owned by its ReplicaSet.
    let web_annotations = json!({
        "sesame.dev/env.DB_PASSWORD": "dev:apps/team-a/db#password",
        "sesame.dev/restart-on-rotation": "true",
    });
    let (web, web_obj) = signed(
        &keys,
        "team-a",
        "default",
        &[("db.password", "dev:apps/team-a/db#password")],
        &[("db.password", "old-value")],
        true,
        old,
    );
    api.put(
        "secrets",
        "team-a",
        &web,
        owned_by(web_obj, "ReplicaSet", "web-5d4f"),
    );
    api.put(
        "replicasets",
        "team-a",
        "web-5d4f",
        json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "uid-web", "controller": true}]}}),
    );
    api.put("deployments", "team-a", "web", deployment(web_annotations));
    // The platform's Deployment in team-a: the tenant may not patch it. Its
    // template opts in, but for Secrets of its own.
    api.put(
        "deployments",
        "team-a",
        "platform",
        deployment(json!({
            "sesame.dev/env.TOKEN": "k8s:platform-token#token",
            "sesame.dev/restart-on-rotation": "true",
        })),
    );

    // Forged: no MAC at all, one per attack on the stores.
    let attacks = [
        (
            "other-team",
            json!({"k": {"store": "dev", "path": "apps/team-b/db", "property": "password"}}),
        ),
        (
            "kube-system",
            json!({"k": {"store": "k8s", "path": "kube-system/admin-token", "property": "token"}}),
        ),
        (
            "ungranted",
            json!({"k": {"store": "dev", "path": "nobody/db", "property": "password"}}),
        ),
        (
            "outside",
            json!({"k": {"store": "dev", "path": "../outside", "property": "x"}}),
        ),
        (
            "own-path",
            json!({"k": {"store": "dev", "path": "apps/team-a/db", "property": "password"}}),
        ),
    ];
    for (name, sources) in &attacks {
        let secret = owned_by(forged(sources.clone(), json!({})), "Deployment", "platform");
        api.put("secrets", "team-a", &format!("sesame-forged-{name}"), secret);
    }
    // Signed with the attacker's own key.
    let attacker = Provenance::with_keys(vec![(1, vec![7; 32])]).unwrap();
    let (theirs, theirs_obj) = signed(
        &attacker,
        "team-a",
        "default",
        &[("k", "k8s:kube-system/admin-token#token")],
        &[],
        true,
        old,
    );
    api.put(
        "secrets",
        "team-a",
        &theirs,
        owned_by(theirs_obj, "Deployment", "platform"),
    );
    // The genuine MAC of web's Secret, copied onto a Secret naming team-b.
    let genuine_mac = api.get("secrets", "team-a", &web).unwrap()["metadata"]["annotations"]
        ["sesame.dev/provenance"]
        .clone();
    let copied = forged(
        json!({"db.password": {"store": "dev", "path": "apps/team-b/db", "property": "password"}}),
        json!({"sesame.dev/provenance": genuine_mac, "sesame.dev/references": "dev:apps/team-b/db#password"}),
    );
    api.put(
        "secrets",
        "team-a",
        "sesame-forged-copied-mac",
        owned_by(copied, "Deployment", "platform"),
    );
    // A genuine Secret whose sources the tenant edited afterwards.
    let (edited, mut edited_obj) = signed(
        &keys,
        "team-a",
        "default",
        &[("k", "dev:apps/team-a/db#user")],
        &[("k", "old-value")],
        true,
        old,
    );
    edited_obj["metadata"]["annotations"]["sesame.dev/sources"] =
        json!(json!({"k": {"store": "dev", "path": "apps/team-b/db", "property": "password"}}).to_string());
    api.put(
        "secrets",
        "team-a",
        &edited,
        owned_by(edited_obj, "Deployment", "platform"),
    );
    // A genuine Secret of another service account, to which the tenant
    // added the platform Deployment as an owner (owners are not signed).
    let (reowned, reowned_obj) = signed(
        &keys,
        "team-a",
        "api",
        &[("db.password", "dev:apps/team-a/db#password")],
        &[("db.password", "old-value")],
        true,
        old,
    );
    api.put(
        "secrets",
        "team-a",
        &reowned,
        owned_by(reowned_obj, "Deployment", "platform"),
    );
    // A genuine Secret, written when the policy granted team-a a path of
    // team-b; the policy no longer does.
    let (revoked, revoked_obj) = signed(
        &keys,
        "team-a",
        "default",
        &[
            ("db.password", "dev:apps/team-a/db#password"),
            ("team-b.password", "dev:apps/team-b/db#password"),
        ],
        &[
            ("db.password", "new-value"),
            ("team-b.password", "what it was then"),
        ],
        false,
        old,
    );
    api.put("secrets", "team-a", &revoked, revoked_obj);
    let writer = ready_writer(&api).await;
    eventually("the cache", || writer.cache().state().len() == 11).await;
    let rotator = Rotator::new(
        api.client(),
        writer.cache().clone(),
        engine,
        namespace_cache(&api).await,
        provenance(),
        Arc::new(KubeMetrics::register(&metrics)),
    );
    let (_lead, leading) = watch::channel(true);
    let report = rotator.run_once(&leading).await;

    // Only Sesame's own Secrets were looked at.
    let mut unverified = report.unverified.clone();
    unverified.sort();
    let mut expected: Vec<String> = attacks
        .iter()
        .map(|(n, _)| format!("team-a/sesame-forged-{n}"))
        .chain([
            "team-a/sesame-forged-copied-mac".to_owned(),
            format!("team-a/{theirs}"),
            format!("team-a/{edited}"),
        ])
        .collect();
    expected.sort();
    assert_eq!(unverified, expected);
    assert_eq!(report.checked, 3);
    let mut updated = report.updated.clone();
    updated.sort();
    let mut expected = vec![
        format!("team-a/{web}"),
        format!("team-a/{reowned}"),
        format!("team-a/{revoked}"),
    ];
    expected.sort();
    assert_eq!(updated, expected);

    // No forged Secret was written, and none holds a value of a store.
    for (name, _) in &attacks {
        let path = format!("/secrets/sesame-forged-{name}");
        assert!(api.calls("PATCH", &path).is_empty(), "{name} was written");
    }
    for name in ["sesame-forged-copied-mac", theirs.as_str(), edited.as_str()] {
        assert!(
            api.calls("PATCH", &format!("/secrets/{name}")).is_empty(),
            "{name} was written"
        );
    }
    let all_forged = attacks.iter().map(|(n, _)| format!("sesame-forged-{n}")).chain([
        "sesame-forged-copied-mac".to_owned(),
        theirs.clone(),
        edited.clone(),
    ]);
    for name in all_forged {
        let stored = api.get("secrets", "team-a", &name).unwrap();
        let text = stored["data"].to_string();
        for value in stolen {
            assert!(!text.contains(&b64(value)), "{name} holds {value}");
        }
    }
    // No store was asked for what the forgeries name.
    assert!(api.calls("GET", "/namespaces/kube-system/").is_empty());

    // The genuine Secret rotated, and its own Deployment restarted; the
    // platform's Deployment was not touched, whatever the owners said.
    let stored = api.get("secrets", "team-a", &web).unwrap();
    assert_eq!(stored["data"]["db.password"], b64("new-value"));
    assert_eq!(report.restarted, ["Deployment/web"]);
    assert!(api.calls("PATCH", "/deployments/platform").is_empty());
    let restart = &api.calls("PATCH", "/apis/apps/v1/namespaces/team-a/deployments/web")[0];
    assert_eq!(restart.content_type, "application/strategic-merge-patch+json");
    assert!(
        restart.body["metadata"]["resourceVersion"].is_string(),
        "conditional"
    );
    assert!(
        restart.body["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );

    // The revoked reference's key is gone, the other refreshed; an Event
    // on the Secret says which, without a value.
    let stored = api.get("secrets", "team-a", &revoked).unwrap();
    let data = stored["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["db.password"]);
    assert!(!stored["metadata"]["annotations"]["sesame.dev/sources"]
        .as_str()
        .unwrap()
        .contains("team-b"));
    assert!(!stored["metadata"]["annotations"]["sesame.dev/references"]
        .as_str()
        .unwrap()
        .contains("team-b"));
    assert_eq!(report.revoked, [format!("team-a/{revoked}/team-b.password")]);
    let events = api.calls("POST", "/apis/events.k8s.io/v1/namespaces/team-a/events");
    let (not_granted, others): (Vec<_>, Vec<_>) = events
        .iter()
        .partition(|e| e.body["reason"] == "ReferenceNotGranted");
    assert_eq!(not_granted.len(), 1, "{events:?}");
    // The restarted Deployment has its own Event.
    let (restarts, others): (Vec<_>, Vec<_>) = others
        .into_iter()
        .partition(|e| e.body["regarding"]["kind"] == "Deployment");
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert_eq!(restarts[0].body["reason"], "RestartedAfterRotation");
    assert_eq!(restarts[0].body["regarding"]["name"], "web");
    // Rotated values are a Normal Event on their Secret, naming keys, not values.
    let rotated: Vec<&str> = others
        .iter()
        .map(|e| {
            assert_eq!(e.body["reason"], "ManagedSecretRotated", "{}", e.body);
            assert_eq!(e.body["type"], "Normal");
            assert!(
                !e.body.to_string().contains(&b64("new-value")) && !e.body.to_string().contains("new-value")
            );
            e.body["regarding"]["name"].as_str().unwrap()
        })
        .collect();
    assert!(rotated.contains(&web.as_str()), "{rotated:?}");
    assert!(
        rotated.iter().all(|n| updated.iter().any(|u| u.ends_with(n))),
        "only rotated Secrets: {rotated:?}"
    );
    let event = &not_granted[0].body;
    assert_eq!(event["reason"], "ReferenceNotGranted");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "Secret");
    assert_eq!(event["regarding"]["name"], revoked.as_str());
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("team-b.password") && note.contains("apps/team-b/db"),
        "{note}"
    );
    assert!(!event.to_string().contains("what it was then"));
    // The rewritten Secrets verify: the next pass finds them not due.
    let text = metrics.encode();
    assert!(text.contains("sesame_secret_keys_revoked_total 1"), "{text}");
    assert!(
        text.contains("sesame_managed_secret_unverified_total{action=\"rotation\",reason=\"missing\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("sesame_managed_secret_unverified_total{action=\"rotation\",reason=\"mismatch\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("sesame_workload_restarts_refused_total{reason=\"other_secret\"} 1"),
        "{text}"
    );

    // A second pass: nothing more is written, and nothing more is counted.
    eventually("the cache to see the rotations", || {
        writer.cache().state().iter().any(|s| {
            s.metadata.name.as_deref() == Some(web.as_str())
                && s.data.as_ref().is_some_and(|d| {
                    d.get("db.password")
                        .is_some_and(|v| v.0 == digest("db.password", b"new-value"))
                })
        })
    })
    .await;
    let patches = api.calls("PATCH", "/").len();
    let report = rotator.run_once(&leading).await;
    assert_eq!(report.checked, 0);
    assert_eq!(api.calls("PATCH", "/").len(), patches);
    assert!(metrics
        .encode()
        .contains("sesame_managed_secret_unverified_total{action=\"rotation\",reason=\"missing\"} 5"));
}

/// A workload (Deployment, or Rollout when `api_version` says so) whose
/// Pod template runs as `service_account`, asks for the password of team-a's
/// db and opts in to restarts, as the API server returns it.
fn opted_in(service_account: &str) -> Value {
    json!({
        "metadata": {},
        "spec": {"template": {
            "metadata": {"annotations": {
                "sesame.dev/env.DB_PASSWORD": "dev:apps/team-a/db#password",
                "sesame.dev/restart-on-rotation": "true",
            }},
            "spec": {"serviceAccountName": service_account, "containers": [{"name": "app", "image": "x"}]},
        }},
    })
}

/// The genuine, due Secret of `service_account`'s Pods asking for team-a's
/// db password, holding `value`, with `restart-on-rotation`.
fn due_secret(service_account: &str, value: &str) -> (String, Value) {
    signed(
        &provenance(),
        "team-a",
        service_account,
        &[("db.password", "dev:apps/team-a/db#password")],
        &[("db.password", value)],
        true,
        "2020-01-01T00:00:00Z",
    )
}

async fn rotator_with(
    api: &FakeApi,
    writer: &KubeSecretWriter,
    engine: sesame::pipeline::SharedEngine,
    metrics: &sesame::telemetry::Metrics,
    limits: sesame::kube::RestartLimits,
) -> Rotator {
    Rotator::new(
        api.client(),
        writer.cache().clone(),
        engine,
        namespace_cache(api).await,
        provenance(),
        Arc::new(KubeMetrics::register(metrics)),
    )
    .with_restart_limits(limits)
}

/// Rotation at scale: one pass reads each distinct store path once, however
/// many Secrets share it (`cacheTtl: 0s` here, so the store cache cannot be
/// what saves the reads), writes only the Secrets whose values changed, and
/// a Secret the stores confirmed unchanged keeps its `refreshed-at` (no
/// write) yet is not due again on the next pass.
#[tokio::test]
async fn a_rotation_pass_reads_each_path_once_and_writes_only_what_changed() {
    let api = FakeApi::start().await;
    let (_dir, engine, metrics) = attack_engine(&api).await;
    api.put("namespaces", "", "team-a", json!({"metadata": {}}));
    let old = "2020-01-01T00:00:00Z";
    let mut stale = Vec::new();
    let mut current = Vec::new();
    for (account, value) in [
        ("s1", "old-value"),
        ("s2", "old-value"),
        ("s3", "old-value"),
        ("c1", "new-value"),
        ("c2", "new-value"),
    ] {
        let (name, obj) = signed(
            &provenance(),
            "team-a",
            account,
            &[("db.password", "dev:apps/team-a/db#password")],
            &[("db.password", value)],
            false,
            old,
        );
        api.put("secrets", "team-a", &name, obj);
        if value == "old-value" {
            stale.push(name);
        } else {
            current.push(name);
        }
    }
    let writer = ready_writer(&api).await;
    eventually("the cache", || writer.cache().state().len() == 5).await;
    let rotator = rotator_with(
        &api,
        &writer,
        engine,
        &metrics,
        sesame::kube::RestartLimits::default(),
    )
    .await
    .with_write_rate(1000);
    let (_lead, leading) = watch::channel(true);

    let report = rotator.run_once(&leading).await;
    assert_eq!(report.checked, 5);
    assert_eq!(report.unchanged, 2);
    assert_eq!(report.updated.len(), 3, "{report:?}");
    assert_eq!((report.writes, report.reads), (3, 1), "{report:?}");
    assert!(metrics
        .encode()
        .contains("sesame_store_request_duration_seconds_count{store=\"dev\",provider=\"file\"} 1"));
    for name in &stale {
        assert_eq!(api.calls("PATCH", &format!("/secrets/{name}")).len(), 1, "{name}");
    }
    for name in &current {
        assert!(
            api.calls("PATCH", &format!("/secrets/{name}")).is_empty(),
            "{name}"
        );
        let stored = api.get("secrets", "team-a", name).unwrap();
        assert_eq!(stored["metadata"]["annotations"]["sesame.dev/refreshed-at"], old);
    }

    eventually("the cache to see the writes", || {
        writer.cache().state().iter().all(|s| {
            s.data.as_ref().is_some_and(|d| {
                d.get("db.password")
                    .is_some_and(|v| v.0 == digest("db.password", b"new-value"))
            })
        })
    })
    .await;
    let again = rotator.run_once(&leading).await;
    assert_eq!((again.checked, again.writes, again.reads), (0, 0, 0), "{again:?}");
    assert_eq!(api.calls("PATCH", "/secrets/").len(), 3);
}

/// An Argo Rollout (found through the ReplicaSet it controls) restarts
/// through `spec.restartAt` with a JSON merge patch (a custom resource takes
/// no strategic merge patch); a rotation that changed no value restarts
/// nothing; a workload restarted moments ago is not restarted again when
/// its Secret rotates once more, and the held-back restart is asked again on
/// the next pass (still within the cooldown: still not made).
#[tokio::test]
async fn rollouts_restart_through_restart_at_and_the_cooldown_defers_a_second_restart() {
    let api = FakeApi::start().await;
    let (_dir, engine, metrics) = attack_engine(&api).await;
    api.put("namespaces", "", "team-a", json!({"metadata": {}}));
    let (canary, canary_obj) = due_secret("canary", "old-value");
    api.put(
        "secrets",
        "team-a",
        &canary,
        owned_by(canary_obj.clone(), "ReplicaSet", "canary-7f"),
    );
    api.put(
        "replicasets",
        "team-a",
        "canary-7f",
        json!({"metadata": {"ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "canary", "uid": "uid-canary", "controller": true}]}}),
    );
    api.put("rollouts", "team-a", "canary", opted_in("canary"));
    // Its value is already the store's: rotation confirms, restarts nothing.
    let (same, same_obj) = due_secret("same", "new-value");
    api.put(
        "secrets",
        "team-a",
        &same,
        owned_by(same_obj, "Deployment", "same"),
    );
    api.put("deployments", "team-a", "same", opted_in("same"));
    let writer = ready_writer(&api).await;
    eventually("the cache", || writer.cache().state().len() == 2).await;
    let rotator = rotator_with(
        &api,
        &writer,
        engine,
        &metrics,
        sesame::kube::RestartLimits {
            cooldown: Duration::from_secs(600),
            per_minute: 10,
        },
    )
    .await;
    let (_lead, leading) = watch::channel(true);

    let report = rotator.run_once(&leading).await;
    assert_eq!(report.updated, [format!("team-a/{canary}")]);
    assert_eq!(report.unchanged, 1);
    assert_eq!(report.restarted, ["Rollout/canary"]);
    let path = "/apis/argoproj.io/v1alpha1/namespaces/team-a/rollouts/canary";
    let patches = api.calls("PATCH", path);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    let restart_at = patches[0].body["spec"]["restartAt"].as_str().unwrap();
    assert!(
        restart_at.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "{restart_at}"
    );
    assert!(
        patches[0].body["metadata"]["resourceVersion"].is_string(),
        "conditional"
    );
    assert!(
        patches[0].body["spec"].get("template").is_none(),
        "the Pod template is left alone"
    );
    assert_eq!(
        api.get("rollouts", "team-a", "canary").unwrap()["spec"]["restartAt"],
        restart_at
    );
    assert!(
        api.calls("PATCH", "/deployments/same").is_empty(),
        "nothing changed"
    );

    // The Secret rotates again at once (say its value changed back): the
    // Secret is written, the Rollout is not restarted a second time.
    let holds = |value: &'static [u8]| {
        let cache = writer.cache().clone();
        let canary = canary.clone();
        move || {
            cache.state().iter().any(|s| {
                s.metadata.name.as_deref() == Some(canary.as_str())
                    && s.data.as_ref().is_some_and(|d| {
                        d.get("db.password")
                            .is_some_and(|v| v.0 == digest("db.password", value))
                    })
            })
        }
    };
    eventually("the cache to see the rotation", holds(b"new-value")).await;
    let (_, again) = due_secret("canary", "old-value");
    api.put(
        "secrets",
        "team-a",
        &canary,
        owned_by(again, "ReplicaSet", "canary-7f"),
    );
    eventually("the cache to see the old value again", holds(b"old-value")).await;
    let report = rotator.run_once(&leading).await;
    assert_eq!(report.updated, [format!("team-a/{canary}")]);
    assert!(report.restarted.is_empty(), "{:?}", report.restarted);
    assert_eq!(api.calls("PATCH", path).len(), 1);
    assert!(
        metrics
            .encode()
            .contains("sesame_workload_restarts_refused_total{reason=\"cooldown\"} 1"),
        "{}",
        metrics.encode()
    );
    // The next pass (the Secret is not due) asks again for the held-back
    // restart: still within the cooldown, so still nothing.
    eventually("the cache to see the second rotation", holds(b"new-value")).await;
    let report = rotator.run_once(&leading).await;
    assert_eq!(report.checked, 0);
    assert!(report.restarted.is_empty());
    assert_eq!(api.calls("PATCH", path).len(), 1);
    assert!(metrics
        .encode()
        .contains("sesame_workload_restarts_refused_total{reason=\"cooldown\"} 2"));

    // Where the Rollout's team looks: one Event for the restart and one for
    // the deferral, on the Rollout, naming the Secret and never a value (the
    // recorder counts the repeated deferral into the same Event's series).
    let events = api.calls("POST", "/apis/events.k8s.io/v1/namespaces/team-a/events");
    let on_rollout: Vec<&Value> = events
        .iter()
        .map(|e| &e.body)
        .filter(|b| b["regarding"]["kind"] == "Rollout")
        .collect();
    let reasons: Vec<&str> = on_rollout.iter().map(|b| b["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        ["RestartedAfterRotation", "RestartDeferred"],
        "{on_rollout:?}"
    );
    for b in &on_rollout {
        assert_eq!(b["regarding"]["apiVersion"], "argoproj.io/v1alpha1", "{b}");
        assert_eq!(b["regarding"]["name"], "canary", "{b}");
        let note = b["note"].as_str().unwrap();
        assert!(note.contains(canary.as_str()), "{note}");
        assert!(
            !note.contains("new-value") && !note.contains("old-value"),
            "{note}"
        );
    }
    assert!(on_rollout[1]["note"]
        .as_str()
        .unwrap()
        .contains("less than 10m ago (--restart-cooldown)"));
}

/// However many workloads' Secrets rotate in one pass, no more restarts
/// are made than the cluster-wide cap allows; the rest are held back, and
/// asked again next pass.
#[tokio::test]
async fn the_cluster_wide_cap_holds_back_restarts_beyond_it() {
    let api = FakeApi::start().await;
    let (_dir, engine, metrics) = attack_engine(&api).await;
    api.put("namespaces", "", "team-a", json!({"metadata": {}}));
    for name in ["w1", "w2", "w3"] {
        let (secret, object) = due_secret(name, "old-value");
        api.put("secrets", "team-a", &secret, owned_by(object, "Deployment", name));
        api.put("deployments", "team-a", name, opted_in(name));
    }
    let writer = ready_writer(&api).await;
    eventually("the cache", || writer.cache().state().len() == 3).await;
    let rotator = rotator_with(
        &api,
        &writer,
        engine,
        &metrics,
        sesame::kube::RestartLimits {
            cooldown: Duration::from_secs(600),
            per_minute: 2,
        },
    )
    .await;
    let (_lead, leading) = watch::channel(true);
    let report = rotator.run_once(&leading).await;
    assert_eq!(report.updated.len(), 3);
    assert_eq!(report.restarted.len(), 2, "{:?}", report.restarted);
    assert_eq!(
        api.calls("PATCH", "/apis/apps/v1/namespaces/team-a/deployments/")
            .len(),
        2
    );
    assert!(metrics
        .encode()
        .contains("sesame_workload_restarts_refused_total{reason=\"cluster_cap\"} 1"));
    eventually("the cache to see the rotations", || {
        writer.cache().state().iter().all(|s| {
            s.data.as_ref().is_some_and(|d| {
                d.get("db.password")
                    .is_some_and(|v| v.0 == digest("db.password", b"new-value"))
            })
        })
    })
    .await;
    let report = rotator.run_once(&leading).await;
    assert_eq!(report.checked, 0);
    assert!(report.restarted.is_empty());
    assert_eq!(
        api.calls("PATCH", "/apis/apps/v1/namespaces/team-a/deployments/")
            .len(),
        2
    );
    let text = metrics.encode();
    assert!(
        text.contains("sesame_workload_restarts_refused_total{reason=\"cluster_cap\"} 2"),
        "{text}"
    );
}

/// Without the provenance key nothing is refreshed; with a newer key the
/// leader signs Secrets of the older one again, so that the old key can
/// go; a store failure keeps the values.
#[tokio::test]
async fn rotation_waits_for_the_keys_signs_again_after_a_new_key_and_keeps_values_on_failure() {
    let api = FakeApi::start().await;
    let (dir, engine, metrics) = attack_engine(&api).await;
    api.put("namespaces", "", "team-a", json!({"metadata": {}}));
    let old = "2020-01-01T00:00:00Z";
    let (due, due_obj) = signed(
        &provenance(),
        "team-a",
        "default",
        &[("db.password", "dev:apps/team-a/db#password")],
        &[("db.password", "old-value")],
        false,
        old,
    );
    api.put("secrets", "team-a", &due, due_obj);
    let fresh = sesame::kube::secret::now_rfc3339();
    let (current, current_obj) = signed(
        &provenance(),
        "team-a",
        "default",
        &[
            ("k", "dev:apps/team-a/db#password"),
            ("u", "dev:apps/team-a/db#user"),
        ],
        &[("k", "new-value")],
        false,
        &fresh,
    );
    api.put("secrets", "team-a", &current, current_obj);
    let writer = ready_writer(&api).await;
    eventually("the cache", || writer.cache().state().len() == 2).await;
    let namespaces = namespace_cache(&api).await;
    let kube_metrics = Arc::new(KubeMetrics::register(&metrics));
    let (_lead, leading) = watch::channel(true);

    let without_keys = Rotator::new(
        api.client(),
        writer.cache().clone(),
        engine.clone(),
        namespaces.clone(),
        Provenance::empty(),
        kube_metrics.clone(),
    );
    let report = without_keys.run_once(&leading).await;
    assert!(report.waiting_for_keys);
    assert!(api.calls("PATCH", "/").is_empty());

    // Key 2 added: the Secret that is not due is signed again with it
    // (its record unchanged); the due one is rotated and signed with it.
    let both = Provenance::with_keys(vec![(1, vec![42; 32]), (2, vec![43; 32])]).unwrap();
    let rotator = Rotator::new(
        api.client(),
        writer.cache().clone(),
        engine.clone(),
        namespaces,
        both,
        kube_metrics,
    );
    let report = rotator.run_once(&leading).await;
    assert_eq!(report.updated, [format!("team-a/{due}")]);
    assert_eq!(report.resigned, 1);
    let resign = &api.calls("PATCH", &format!("/secrets/{current}"))[0];
    assert!(resign.body["metadata"]["resourceVersion"].is_string());
    assert!(resign.body.get("data").is_none(), "only the MAC changes");
    for name in [&due, &current] {
        let stored = api.get("secrets", "team-a", name).unwrap();
        let mac = stored["metadata"]["annotations"]["sesame.dev/provenance"]
            .as_str()
            .unwrap();
        assert!(mac.starts_with("v1:2:"), "{name}: {mac}");
    }
    // Only key 2 left: both still verify (nothing reported unverified).
    eventually("the cache to see the new MACs", || {
        writer.cache().state().iter().all(|s| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("sesame.dev/provenance"))
                .is_some_and(|m| m.starts_with("v1:2:"))
        })
    })
    .await;
    assert!(metrics
        .encode()
        .contains("sesame_managed_secrets_on_older_keys 0"));

    // A store failure is counted, and the Secret keeps its values.
    std::fs::remove_file(dir.path().join("secrets/apps/team-a/db.env")).unwrap();
    let only_two = Provenance::with_keys(vec![(2, vec![43; 32])]).unwrap();
    let (due2, due2_obj) = signed(
        &only_two,
        "team-a",
        "default",
        &[("x", "dev:apps/team-a/gone#password")],
        &[("x", "kept")],
        false,
        old,
    );
    api.put("secrets", "team-a", &due2, due2_obj);
    eventually("the cache to see the stale Secret", || {
        writer.cache().state().len() == 3
    })
    .await;
    let rotator = Rotator::new(
        api.client(),
        writer.cache().clone(),
        engine,
        namespace_cache(&api).await,
        only_two,
        Arc::new(KubeMetrics::register(&sesame::telemetry::Metrics::new())),
    );
    let report = rotator.run_once(&leading).await;
    assert!(report.unverified.is_empty(), "{:?}", report.unverified);
    assert_eq!(report.failed, 1);
    assert_eq!(
        api.get("secrets", "team-a", &due2).unwrap()["data"]["x"],
        b64("kept")
    );
    assert!(metrics
        .encode()
        .contains("sesame_secret_rotations_total{outcome=\"updated\"} 1"));
}

/// The provenance key Secret, agreed between replicas the way the
/// certificate Secret is: created once (a replica that loses the race reads
/// the winner's), a key the operator adds is used, a deleted Secret comes
/// back with the keys in use, a Secret without a usable key gets one by a
/// conditional update; no key reaches an error or a `Debug`.
#[tokio::test]
async fn provenance_keys_are_created_once_agreed_and_kept() {
    use sesame::kube::provenance::ProvenanceManager;
    let api = FakeApi::start().await;
    let metrics = sesame::telemetry::Metrics::new();
    let kube_metrics = Arc::new(KubeMetrics::register(&metrics));
    let manager = |p: &Provenance| {
        ProvenanceManager::new(
            api.client(),
            "sesame-system",
            "sesame-provenance",
            p.clone(),
            kube_metrics.clone(),
        )
    };
    let path = "/api/v1/namespaces/sesame-system/secrets";
    // What a Secret signed with `keys` looks like: equal MACs mean equal keys.
    let signed_by = |keys: &Provenance| {
        sesame::kube::secret::manifest(&managed("team-a", "v", vec![]), "sesame.dev", keys, "t")
    };

    // The first replica creates it: key-1, 32 random bytes, not labelled managed.
    let first = Provenance::empty();
    manager(&first).sync().await.unwrap();
    let created = &api.calls("POST", path)[0];
    assert_eq!(created.body["metadata"]["name"], "sesame-provenance");
    assert_eq!(
        created.body["metadata"]["labels"]["app.kubernetes.io/component"],
        "provenance-key"
    );
    assert!(created.body["metadata"]["labels"]
        .get("app.kubernetes.io/managed-by")
        .is_none());
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(created.body["data"]["key-1"].as_str().unwrap())
        .unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(
        signed_by(&first),
        signed_by(&Provenance::with_keys(vec![(1, key.clone())]).unwrap())
    );
    assert!(!format!("{first:?}").contains(&format!("{:?}", &key[..8])));

    // A replica that loses the race (another wrote just before its create)
    // takes the winner's key.
    let racing = FakeApi::start().await;
    racing.put_before_next(
        "POST",
        "/secrets",
        ("secrets", "sesame-system", "sesame-provenance"),
        json!({"metadata": {}, "data": {"key-1": b64(&"5".repeat(32))}}),
    );
    let loser = Provenance::empty();
    ProvenanceManager::new(
        racing.client(),
        "sesame-system",
        "sesame-provenance",
        loser.clone(),
        kube_metrics.clone(),
    )
    .sync()
    .await
    .unwrap();
    assert_eq!(
        racing.calls("POST", path).len(),
        1,
        "one create, refused with 409"
    );
    assert_eq!(
        racing.calls("GET", path).len(),
        2,
        "read again after the conflict"
    );
    let winner = Provenance::with_keys(vec![(1, "5".repeat(32).into_bytes())]).unwrap();
    assert_eq!(signed_by(&loser), signed_by(&winner));

    // The operator adds key-2: it signs from the next check on.
    let mut stored = api.get("secrets", "sesame-system", "sesame-provenance").unwrap();
    stored["data"]["key-2"] = json!(b64(&"6".repeat(32)));
    api.put("secrets", "sesame-system", "sesame-provenance", stored);
    manager(&first).sync().await.unwrap();
    let both = Provenance::with_keys(vec![(1, key.clone()), (2, "6".repeat(32).into_bytes())]).unwrap();
    let now = signed_by(&first);
    assert_eq!(now, signed_by(&both));
    assert!(now["metadata"]["annotations"]["sesame.dev/provenance"]
        .as_str()
        .unwrap()
        .starts_with("v1:2:"));

    // Deleted: written again with the keys in use, so that every managed
    // Secret still verifies.
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(api.client(), "sesame-system")
        .delete("sesame-provenance", &Default::default())
        .await
        .unwrap();
    manager(&first).sync().await.unwrap();
    assert_eq!(api.calls("POST", path).len(), 2, "created again");
    let recreated = api.get("secrets", "sesame-system", "sesame-provenance").unwrap();
    let decode = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(recreated["data"][k].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(decode("key-1"), key);
    assert_eq!(decode("key-2"), "6".repeat(32).into_bytes());

    // No usable key (too short; not a key): a new key-2, by an update that
    // carries the resourceVersion read; the other entries stay.
    api.put(
        "secrets",
        "sesame-system",
        "sesame-provenance",
        json!({"metadata": {}, "data": {"key-1": b64("short"), "notes": b64("hello")}}),
    );
    let fresh = Provenance::empty();
    manager(&fresh).sync().await.unwrap();
    let patch = api.calls("PATCH", "/secrets/sesame-provenance").pop().unwrap();
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert!(patch.body["metadata"]["resourceVersion"].is_string());
    let stored = api.get("secrets", "sesame-system", "sesame-provenance").unwrap();
    let data = stored["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["key-1", "key-2", "notes"]);
    assert!(
        signed_by(&fresh)["metadata"]["annotations"]["sesame.dev/provenance"]
            .as_str()
            .unwrap()
            .starts_with("v1:2:")
    );

    // Unreadable: an error naming the Secret and the status, no key; a
    // replica that never had keys stays without, and says so in a metric.
    api.fail_next("GET", "/secrets/sesame-provenance", 403, 1);
    let error = manager(&first).sync().await.unwrap_err().to_string();
    assert!(
        error.contains("sesame-system/sesame-provenance") && error.contains("403"),
        "{error}"
    );
    api.fail_next("GET", "/secrets/sesame-provenance", 403, 1);
    let none = Provenance::empty();
    manager(&none).bootstrap(Duration::from_secs(5)).await;
    assert!(none.current().is_none());
    assert!(metrics.encode().contains("sesame_provenance_keys 0"));
}

/// An engine whose `vault` store is down (nothing listens at its address)
/// and whose `dev` file store answers "not found" for `apps/team-a/gone`.
async fn outage_engine() -> (
    tempfile::TempDir,
    sesame::pipeline::SharedEngine,
    Arc<sesame::telemetry::Metrics>,
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secrets.yaml"), "apps/team-a/other: x\n").unwrap();
    std::fs::write(dir.path().join("vault-token"), "t").unwrap();
    let yaml = "resolveTimeout: 1s\nstores:\n  - {name: vault, vault: {address: 'http://127.0.0.1:1', auth: {token: {file: vault-token}}}}\n  - {name: dev, file: {path: secrets.yaml}}\npolicy:\n  rules:\n    - {name: own, namespaces: ['*'], stores: [vault, dev], paths: ['apps/{namespace}/**']}\n  inline:\n    namespaces: [team-a]\n";
    let config = sesame::config::Config::from_yaml(yaml, "t").unwrap();
    let metrics = Arc::new(sesame::telemetry::Metrics::new());
    let stores = sesame::stores::Stores::from_config(&config.stores, dir.path(), &metrics, None)
        .await
        .unwrap();
    let engine = sesame::pipeline::Engine::new(&config, stores);
    (dir, Arc::new(arc_swap::ArcSwap::from_pointee(engine)), metrics)
}

fn pod_review(annotations: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-lkg",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "x"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "x"}]}
            }
        }
    }))
    .unwrap()
}

/// A store outage admits a Pod against its managed Secret only when that
/// Secret is Sesame's (its MAC verifies), is for exactly the Pod's
/// references and holds every key; a "not found" and inline mode still
/// deny. The store cache is empty, as after a restart during the outage:
/// only the Secret from the API's watch is known.
#[tokio::test]
async fn a_store_outage_admits_against_the_verified_managed_secret_only() {
    use sesame::admission::Admission;
    use sesame::kube::known_good::KnownGoodSecrets;
    use sesame::pipeline::Caller;

    let api = FakeApi::start().await;
    let writer = Arc::new(ready_writer(&api).await);
    let (_dir, engine, metrics) = outage_engine().await;
    let known = Arc::new(KnownGoodSecrets::new(
        api.client(),
        writer.cache().clone(),
        "sesame.dev",
        provenance(),
    ));
    let admission = Admission::new(engine, writer.clone(), metrics.clone())
        .with_callers(Caller::Trusted)
        .with_last_known_good(known);
    let review = |annotations: Value| {
        let admission = &admission;
        async move {
            let out = admission.review(&pod_review(annotations), None).await.unwrap();
            let out: Value = serde_json::from_slice(&out).unwrap();
            out["response"].clone()
        }
    };
    let put = |name: &str, object: Value| {
        api.put("secrets", "team-a", name, object);
        let cache = writer.cache().clone();
        let name = name.to_owned();
        async move {
            eventually("the Secret in the cache", || {
                cache
                    .get(&kube::runtime::reflector::ObjectRef::new(&name).within("team-a"))
                    .is_some()
            })
            .await;
        }
    };
    let pw = "vault:apps/team-a/db#password";
    let user = "vault:apps/team-a/db#username";

    // No Secret yet: the outage denies, with its class.
    let one = json!({"sesame.dev/env.PW": pw});
    let r = review(one.clone()).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 503, "{r}");

    // Sesame's own Secret for exactly this reference: admitted, nothing written.
    let (name, object) = signed(
        &provenance(),
        "team-a",
        "default",
        &[("db.password", pw)],
        &[("db.password", "last-good-pw")],
        false,
        "2026-01-01T00:00:00Z",
    );
    put(&name, object).await;
    let patches = api.calls("PATCH", "/secrets/").len();
    let r = review(one.clone()).await;
    assert_eq!(r["allowed"], true, "{r}");
    let patch = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            r["patch"].as_str().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(patch.contains(&name) && patch.contains("db.password"), "{patch}");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("store \\\"vault\\\" unavailable"), "{warnings}");
    assert!(
        warnings.contains("values written at 2026-01-01T00:00:00Z ("),
        "{warnings}"
    );
    assert!(warnings.contains(" ago)"), "the age of the data: {warnings}");
    assert!(!r.to_string().contains("last-good-pw"), "{r}");
    assert_eq!(api.calls("PATCH", "/secrets/").len(), patches, "nothing written");
    assert_eq!(r["auditAnnotations"]["lastKnownGood"], "vault", "{r}");
    // The app team sees it in `kubectl get events`: on the Secret, no value.
    let events = api.calls("POST", "/apis/events.k8s.io/v1/namespaces/team-a/events");
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0].body;
    assert_eq!(event["reason"], "AdmittedFromLastKnownGood");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "Secret");
    assert_eq!(event["regarding"]["name"], name.as_str());
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("store \"vault\" unavailable"),
        "{event}"
    );
    assert!(!event.to_string().contains("last-good-pw"), "{event}");
    let text = metrics.encode();
    assert!(
        text.contains("sesame_admission_last_known_good_total{store=\"vault\"} 1"),
        "{text}"
    );

    // A template made of the same reference is not admitted from that
    // Secret: its rendering cannot be rebuilt from stored values.
    let r = review(json!({"sesame.dev/template.URL": format!("db://{{{{ {pw} }}}}")})).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 503, "{r}");
    assert!(!r.to_string().contains("last-good-pw"), "{r}");

    // Attack: the tenant writes a Secret of that name in its own namespace,
    // with Sesame's label and annotations but a MAC of a key it made up.
    let theirs = Provenance::with_keys(vec![(1, vec![7; 32])]).unwrap();
    let (forged_name, forged_object) = signed(
        &theirs,
        "team-a",
        "default",
        &[("db.password", pw)],
        &[("db.password", "tenant-chosen")],
        false,
        "2026-01-01T00:00:00Z",
    );
    assert_eq!(forged_name, name);
    put(&name, forged_object.clone()).await;
    eventually("the forged Secret in the cache", || {
        writer
            .cache()
            .get(&kube::runtime::reflector::ObjectRef::new(&name).within("team-a"))
            .is_some_and(|s| {
                s.data.as_ref().is_some_and(|d| {
                    d.get("db.password")
                        .is_some_and(|v| v.0 == digest("db.password", b"tenant-chosen"))
                })
            })
    })
    .await;
    let r = review(one.clone()).await;
    assert_eq!(r["allowed"], false, "a forged Secret is never used: {r}");
    // ... nor one without any MAC.
    let mut unsigned = forged_object;
    unsigned["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("sesame.dev/provenance");
    put(&name, unsigned).await;
    eventually("the unsigned Secret in the cache", || {
        writer
            .cache()
            .get(&kube::runtime::reflector::ObjectRef::new(&name).within("team-a"))
            .is_some_and(|s| {
                s.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| !a.contains_key("sesame.dev/provenance"))
            })
    })
    .await;
    assert_eq!(review(one.clone()).await["allowed"], false);

    // Sesame's Secret for both references, but holding one key only: denied.
    let both = json!({"sesame.dev/env.PW": pw, "sesame.dev/env.USER": user});
    let (name, object) = signed(
        &provenance(),
        "team-a",
        "default",
        &[("db.password", pw), ("db.username", user)],
        &[("db.password", "last-good-pw")],
        false,
        "2026-01-01T00:00:00Z",
    );
    put(&name, object).await;
    let r = review(both).await;
    assert_eq!(r["allowed"], false, "a key is missing: {r}");
    assert_eq!(r["status"]["code"], 503, "{r}");

    // "Not found" is an answer about the secret, not an outage: denied even with its Secret.
    let gone = "dev:apps/team-a/gone#password";
    let (name, object) = signed(
        &provenance(),
        "team-a",
        "default",
        &[("gone.password", gone)],
        &[("gone.password", "old")],
        false,
        "2026-01-01T00:00:00Z",
    );
    put(&name, object).await;
    let r = review(json!({"sesame.dev/env.PW": gone})).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 404, "{r}");

    // Inline mode has no Secret to fall back on.
    let r = review(json!({"sesame.dev/env.PW": pw, "sesame.dev/mode": "inline"})).await;
    assert_eq!(r["allowed"], false, "{r}");

    let text = metrics.encode();
    assert!(
        text.contains("sesame_admission_last_known_good_total{store=\"vault\"} 1"),
        "only the verified Secret admitted a Pod: {text}"
    );
    let events = api.calls("POST", "/apis/events.k8s.io/v1/namespaces/team-a/events");
    assert_eq!(events.len(), 1, "denials record no such Event: {events:?}");
}

/// A Deployment scaled to 0 keeps its ReplicaSet, which owns the Secret:
/// GC keeps a Secret no Pod uses while an owner it names exists (same uid,
/// in the Secret's namespace), and deletes it once the owner is gone. An
/// ownerReference pointing at another namespace's object keeps nothing.
#[tokio::test]
async fn gc_keeps_an_unused_secret_while_its_owner_exists() {
    let api = FakeApi::start().await;
    let old = "2020-01-01T00:00:00Z";
    let with_owner = |mut object: Value, name: &str, uid: &str| {
        object["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": uid,
            "controller": true, "blockOwnerDeletion": true,
        }]);
        object
    };
    let rs = api.put(
        "replicasets",
        "team-a",
        "web-7d9c",
        json!({"metadata": {"name": "web-7d9c"}, "spec": {"replicas": 0}}),
    );
    let rs_uid = rs["metadata"]["uid"].as_str().unwrap().to_owned();
    let (owned, owned_obj) = signed(
        &provenance(),
        "team-a",
        "web",
        &[("k", "dev:apps/a")],
        &[("k", "v")],
        false,
        old,
    );
    api.put(
        "secrets",
        "team-a",
        &owned,
        with_owner(owned_obj, "web-7d9c", &rs_uid),
    );
    // Same name, stale uid: that ReplicaSet was deleted and a new one made.
    let (stale, stale_obj) = signed(
        &provenance(),
        "team-a",
        "web",
        &[("k", "dev:apps/b")],
        &[("k", "v")],
        false,
        old,
    );
    api.put(
        "secrets",
        "team-a",
        &stale,
        with_owner(stale_obj, "web-7d9c", "uid-of-a-deleted-one"),
    );
    // Attack: the tenant of team-a names team-b's ReplicaSet (its uid is
    // visible to anyone who can read it) as the owner of its Secret.
    let other = api.put(
        "replicasets",
        "team-b",
        "api-5f6b",
        json!({"metadata": {"name": "api-5f6b"}, "spec": {"replicas": 1}}),
    );
    let other_uid = other["metadata"]["uid"].as_str().unwrap().to_owned();
    let (foreign, foreign_obj) = signed(
        &provenance(),
        "team-a",
        "web",
        &[("k", "dev:apps/c")],
        &[("k", "v")],
        false,
        old,
    );
    api.put(
        "secrets",
        "team-a",
        &foreign,
        with_owner(foreign_obj, "api-5f6b", &other_uid),
    );

    let writer = ready_writer(&api).await;
    eventually("the cache", || writer.cache().state().len() == 3).await;
    let metrics = sesame::telemetry::Metrics::new();
    let (_lead, leading) = watch::channel(true);
    let gc = gc(&api, &writer, &metrics);

    let report = gc.run_once("sesame.dev", &leading).await.unwrap();
    assert_eq!(report.kept_for_owner, vec![format!("team-a/{owned}")]);
    let mut deleted = report.deleted.clone();
    deleted.sort();
    let mut expected = vec![format!("team-a/{stale}"), format!("team-a/{foreign}")];
    expected.sort();
    assert_eq!(deleted, expected);
    assert!(api.get("secrets", "team-a", &owned).is_some());
    let lookups = api.calls("GET", "/replicasets/");
    assert!(
        lookups.iter().all(|r| r.path.contains("/namespaces/team-a/")),
        "owners are looked up in the Secret's namespace only: {lookups:?}"
    );

    // The ReplicaSet goes: the next pass deletes its Secret.
    let replicasets: kube::Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        kube::Api::namespaced(api.client(), "team-a");
    replicasets.delete("web-7d9c", &Default::default()).await.unwrap();
    let report = gc.run_once("sesame.dev", &leading).await.unwrap();
    assert!(report.kept_for_owner.is_empty(), "{report:?}");
    assert_eq!(report.deleted, vec![format!("team-a/{owned}")]);

    // Each deletion is an Event on the Secret, for `kubectl get events`.
    let events = api.calls("POST", "/apis/events.k8s.io/v1/namespaces/team-a/events");
    let mut regarding: Vec<&str> = events
        .iter()
        .map(|e| {
            assert_eq!(e.body["reason"], "ManagedSecretDeleted", "{}", e.body);
            assert_eq!(e.body["type"], "Normal");
            assert_eq!(e.body["regarding"]["kind"], "Secret");
            assert_eq!(e.body["regarding"]["namespace"], "team-a");
            assert!(!e.body.to_string().contains("\"v\""), "no value: {}", e.body);
            e.body["regarding"]["name"].as_str().unwrap()
        })
        .collect();
    regarding.sort_unstable();
    let mut expected = vec![owned.as_str(), stale.as_str(), foreign.as_str()];
    expected.sort_unstable();
    assert_eq!(regarding, expected);
}
