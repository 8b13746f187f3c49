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
use sesame::admission::{NamespaceLabels, SecretWriter, WriteError, WriteOutcome};
use sesame::inject::annotations::SecretRef;
use sesame::inject::plan::content_hash;
use sesame::inject::pod::OwnerReference;
use sesame::inject::ManagedSecret;
use sesame::kube::gc::GarbageCollector;
use sesame::kube::lease::LeaseElector;
use sesame::kube::metrics::KubeMetrics;
use sesame::kube::namespaces::NamespaceCache;
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
    };
    ManagedSecret {
        name: "sesame-0123456789abcdef".into(),
        namespace: namespace.into(),
        data,
        references: vec![r.clone()],
        sources: [("db.password".to_owned(), r)].into(),
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

/// The writer over its cache, the cache's watch running as `serve` runs it.
async fn ready_writer(api: &FakeApi) -> KubeSecretWriter {
    let (writer, watch) = KubeSecretWriter::watching(api.client(), "sesame.dev");
    tokio::spawn(watch);
    tokio::time::timeout(Duration::from_secs(5), writer.cache().wait_until_ready())
        .await
        .expect("cache synced")
        .unwrap();
    writer
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
    assert_eq!(writer.apply(&first).await.unwrap(), WriteOutcome::Applied);
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
    assert_eq!(
        annotations["sesame.dev/content-hash"],
        content_hash(&first.data).as_str()
    );
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
    assert_eq!(writer.apply(&first).await.unwrap(), WriteOutcome::Unchanged);
    assert_eq!(api.requests().len(), before);

    // The next ReplicaSet of a rollout is added; the first stays an owner.
    let second = managed("team-a", "s3cr3t", vec![owner("web-2", "u2")]);
    assert_eq!(writer.apply(&second).await.unwrap(), WriteOutcome::Applied);
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
    assert_eq!(writer.apply(&secret).await.unwrap(), WriteOutcome::Applied);
    assert_eq!(api.calls("PATCH", path).len(), 2, "one retry after 429");

    let other = managed("team-a", "changed", vec![]);
    api.fail_next("PATCH", path, 422, 1);
    let err = writer.apply(&other).await.unwrap_err();
    assert!(matches!(err, WriteError::Refused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("422 Invalid"), "{msg}");
    assert!(msg.contains("sesame-0123456789abcdef"), "{msg}");
    assert!(!msg.contains("changed"), "{msg}");
    assert_eq!(api.calls("PATCH", path).len(), 3, "no retry for 422");

    api.fail_next("PATCH", path, 429, 2);
    let err = writer.apply(&other).await.unwrap_err().to_string();
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

    // An expired Lease is taken over, counting a transition.
    api.put(
        "leases",
        "sesame-system",
        "sesame-leader",
        json!({"metadata": {}, "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 15, "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 4}}),
    );
    assert!(b.try_acquire_or_renew().await.unwrap());
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

fn managed_secret_object(extra_annotations: Value, created: &str) -> Value {
    let mut annotations = json!({"sesame.dev/content-hash": "x"});
    if let (Some(a), Some(e)) = (annotations.as_object_mut(), extra_annotations.as_object()) {
        a.extend(e.clone());
    }
    json!({
        "metadata": {
            "labels": {"app.kubernetes.io/managed-by": "sesame"},
            "annotations": annotations,
            "creationTimestamp": created,
        },
        "type": "Opaque",
        "data": {"k": b64("v")},
    })
}

#[tokio::test]
async fn gc_lists_only_namespaces_with_old_secrets_page_by_page() {
    let api = FakeApi::start().await;
    let old = "2020-01-01T00:00:00Z";
    for name in ["sesame-used", "sesame-unused"] {
        api.put("secrets", "gc-a", name, managed_secret_object(json!({}), old));
    }
    let young = sesame::kube::secret::now_rfc3339();
    api.put(
        "secrets",
        "gc-b",
        "sesame-young",
        managed_secret_object(json!({}), &young),
    );
    // An unmanaged Secret is never a candidate.
    api.put(
        "secrets",
        "gc-a",
        "sesame-lookalike",
        json!({"metadata": {"creationTimestamp": old}}),
    );
    for i in 0..5 {
        let annotations = if i == 3 {
            json!({"sesame.dev/injected": "sesame-used"})
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
    let gc = GarbageCollector {
        client: api.client(),
        cache: writer.cache().clone(),
        grace: Duration::from_secs(600),
        page_size: 2,
        metrics: Arc::new(KubeMetrics::register(&metrics)),
    };
    let (_lead, leading) = watch::channel(true);
    let report = gc.run_once("sesame.dev/injected", &leading).await.unwrap();
    assert_eq!(report.deleted, ["gc-a/sesame-unused"]);
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
    assert_eq!(delete.path, "/api/v1/namespaces/gc-a/secrets/sesame-unused");
    assert!(delete.body["preconditions"]["uid"].is_string());
    assert!(delete.body["preconditions"]["resourceVersion"].is_string());
    assert!(api.get("secrets", "gc-a", "sesame-unused").is_none());
    assert!(api.get("secrets", "gc-a", "sesame-used").is_some());
    assert!(api.get("secrets", "gc-b", "sesame-young").is_some());
    assert!(metrics.encode().contains("sesame_secret_gc_deleted_total 1"));

    // Not leading: nothing is deleted.
    api.put(
        "secrets",
        "gc-a",
        "sesame-unused2",
        managed_secret_object(json!({}), old),
    );
    eventually("the cache to see the new Secret", || {
        writer.cache().state().len() == 3
    })
    .await;
    let (_lead, not_leading) = watch::channel(false);
    let report = gc.run_once("sesame.dev/injected", &not_leading).await.unwrap();
    assert!(report.deleted.is_empty());
    assert!(api.get("secrets", "gc-a", "sesame-unused2").is_some());
}

#[tokio::test]
async fn rotation_updates_changed_values_and_restarts_the_deployment() {
    let api = FakeApi::start().await;
    let (dir, engine, metrics) = file_engine(
        "apps/web/db:\n  password: new-value\n",
        "stores:\n  - {name: dev, file: {path: secrets.yaml}, cacheTtl: 0s, refreshInterval: 60s}\n  - {name: frozen, file: {path: secrets.yaml}}\n",
    )
    .await;
    let file = dir.path().join("secrets.yaml");

    let sources = |store: &str| {
        json!({"db.password": {"store": store, "path": "apps/web/db", "property": "password"}}).to_string()
    };
    let mut rotating = managed_secret_object(
        json!({
            "sesame.dev/sources": sources("dev"),
            "sesame.dev/refreshed-at": "2020-01-01T00:00:00Z",
            "sesame.dev/restart-on-rotation": "true",
        }),
        "2020-01-01T00:00:00Z",
    );
    rotating["data"] = json!({"db.password": b64("old-value")});
    rotating["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f", "uid": "rs-uid"}]);
    api.put("secrets", "web", "sesame-rot", rotating);
    // A store without refreshInterval is never re-resolved.
    api.put(
        "secrets",
        "web",
        "sesame-frozen",
        managed_secret_object(
            json!({"sesame.dev/sources": sources("frozen")}),
            "2020-01-01T00:00:00Z",
        ),
    );
    api.put(
        "replicasets",
        "web",
        "web-5d4f",
        json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid", "controller": true}]}}),
    );
    api.put(
        "deployments",
        "web",
        "web",
        json!({"metadata": {}, "spec": {"template": {"metadata": {}}}}),
    );

    let writer = ready_writer(&api).await;
    let rotator = Rotator {
        client: api.client(),
        cache: writer.cache().clone(),
        engine,
        metrics: Arc::new(KubeMetrics::register(&metrics)),
    };
    let (_lead, leading) = watch::channel(true);
    let report = rotator.run_once(&leading).await;
    assert_eq!(report.checked, 1);
    assert_eq!(report.updated, ["web/sesame-rot"]);
    assert_eq!(report.restarted, ["Deployment/web"]);

    let patch = &api.calls("PATCH", "/api/v1/namespaces/web/secrets/sesame-rot")[0];
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(patch.query["fieldManager"], "sesame");
    assert_eq!(patch.body["data"]["db.password"], b64("new-value"));
    assert!(
        patch.body["metadata"]["resourceVersion"].is_string(),
        "conditional update"
    );
    let stored = api.get("secrets", "web", "sesame-rot").unwrap();
    assert_eq!(stored["data"]["db.password"], b64("new-value"));
    assert_ne!(
        stored["metadata"]["annotations"]["sesame.dev/refreshed-at"],
        "2020-01-01T00:00:00Z"
    );

    // ReplicaSet → Deployment, patched the way `kubectl rollout restart` does.
    let rs = &api.calls("GET", "/apis/apps/v1/namespaces/web/replicasets/web-5d4f")[0];
    assert!(rs.accept.contains("as=PartialObjectMetadata"));
    let restart = &api.calls("PATCH", "/apis/apps/v1/namespaces/web/deployments/web")[0];
    assert_eq!(restart.content_type, "application/strategic-merge-patch+json");
    assert!(
        restart.body["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    assert!(api.calls("PATCH", "/secrets/sesame-frozen").is_empty());

    let text = metrics.encode();
    assert!(
        text.contains("sesame_secret_rotations_total{outcome=\"updated\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sesame_workload_restarts_total{kind=\"Deployment\"} 1"),
        "{text}"
    );

    // Refreshed just now: not due again.
    eventually("the cache to see the rotation", || {
        writer.cache().state().iter().any(|s| {
            s.data
                .as_ref()
                .is_some_and(|d| d.get("db.password").is_some_and(|v| v.0 == b"new-value"))
        })
    })
    .await;
    assert_eq!(rotator.run_once(&leading).await.checked, 0);

    // A store failure is counted, and the Secret keeps its values.
    std::fs::write(&file, "apps/web/other: x\n").unwrap();
    api.put(
        "secrets",
        "web",
        "sesame-rot",
        managed_secret_object(
            json!({"sesame.dev/sources": sources("dev"), "sesame.dev/refreshed-at": "2020-01-01T00:00:00Z"}),
            "2020-01-01T00:00:00Z",
        ),
    );
    eventually("the cache to see the stale Secret", || {
        writer.cache().state().iter().any(|s| {
            s.metadata.annotations.as_ref().is_some_and(|a| {
                a.get("sesame.dev/refreshed-at").map(String::as_str) == Some("2020-01-01T00:00:00Z")
            })
        })
    })
    .await;
    let report = rotator.run_once(&leading).await;
    assert_eq!(report.failed, 1);
    assert!(metrics
        .encode()
        .contains("sesame_secret_rotation_failures_total{class=\"not_found\"} 1"));
    let age_line = metrics
        .encode()
        .lines()
        .find(|l| l.starts_with("sesame_secret_oldest_unrefreshed_seconds "))
        .unwrap()
        .to_owned();
    let age: i64 = age_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(age > 86400 * 365, "{age_line}");
}
