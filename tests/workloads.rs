//! The workload path (`POST /validate-workloads`) of the real server over
//! real TLS: a Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or
//! CronJob whose Pod template Sesame would deny gets one warning per
//! reason (what kubectl prints at `kubectl apply`), with nothing fetched
//! from a store and nothing written; with `workloads.deny` it is denied at
//! creation and at an update that changes the template, never at an
//! update that leaves the template as it was.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

/// A Pod template with these annotations and one container `app` that
/// already sets `PRESET`.
fn template(annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "metadata": {"labels": {"app": "web"}, "annotations": annotations},
        "spec": {"containers": [{
            "name": "app", "image": "busybox",
            "env": [{"name": "PRESET", "value": "mine"}],
        }]},
    })
}

/// The review the API server sends for `operation` of a workload of `kind`
/// (apps/v1 or batch/v1) in `namespace`, with `template` where that kind
/// keeps it.
fn review(kind: &str, operation: &str, namespace: &str, template: &Value, old: Option<&Value>) -> Value {
    let (group, resource) = match kind {
        "Deployment" => ("apps", "deployments"),
        "StatefulSet" => ("apps", "statefulsets"),
        "DaemonSet" => ("apps", "daemonsets"),
        "ReplicaSet" => ("apps", "replicasets"),
        "Job" => ("batch", "jobs"),
        "CronJob" => ("batch", "cronjobs"),
        other => panic!("{other}"),
    };
    let object = |template: &Value, replicas: u32| {
        let spec = if kind == "CronJob" {
            json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}})
        } else {
            json!({"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "template": template})
        };
        json!({
            "apiVersion": format!("{group}/v1"), "kind": kind,
            "metadata": {"name": "web", "namespace": namespace},
            "spec": spec,
        })
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "5a1f0a38-0d5c-4b8e-9a55-3c1b2f6f7d11",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "requestKind": {"group": group, "version": "v1", "kind": kind},
            "requestResource": {"group": group, "version": "v1", "resource": resource},
            "name": "web",
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": object(template, 3),
            "oldObject": old.map(|t| object(t, 2)),
            "dryRun": false,
        },
    })
}

async fn post(s: &TestServer, review: &Value) -> Value {
    let url = s.url.replace("/mutate", "/validate-workloads");
    let resp = s.client(false).post(&url).json(review).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert_no_secret(&text);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["response"]["uid"], review["request"]["uid"]);
    assert!(
        body["response"].get("patch").is_none(),
        "a validating answer has no patch"
    );
    body["response"].clone()
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

async fn metrics(s: &TestServer) -> String {
    reqwest::get(s.admin("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A team-a Deployment that asks for another team's secret, for a container
/// it does not have, and for an env var its container already sets: three
/// warnings, each naming its annotation; allowed; no store read.
#[tokio::test]
async fn every_reason_a_template_would_be_denied_is_a_warning_and_nothing_is_fetched() {
    let s = TestServer::start().await;
    let t = template(&[
        ("sesame.dev/env.STOLEN", "dev:apps/team-b/db#password"),
        (
            "sesame.dev/env.TOKEN",
            "dev:apps/team-a/api-token containers=worker",
        ),
        ("sesame.dev/env.PRESET", "dev:apps/team-a/db#username"),
        ("sesame.dev/env.DB_HOST", "dev:apps/team-a/db#host"),
    ]);
    let r = post(&s, &review("Deployment", "CREATE", "team-a", &t, None)).await;
    assert_eq!(r["allowed"], true, "{r}");
    let w = warnings(&r);
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w.iter()
            .all(|x| x.starts_with("Sesame will deny the Pods of this Deployment: ")),
        "{w:#?}"
    );
    assert!(w.iter().all(|x| x.chars().count() <= 256), "{w:#?}");
    assert!(
        w[0].contains("sesame.dev/env.STOLEN") && w[0].contains("apps/team-b/db"),
        "{w:#?}"
    );
    assert!(
        w[1].contains("sesame.dev/env.TOKEN") && w[1].contains("\"worker\""),
        "{w:#?}"
    );
    assert!(w[2].contains("already defines env var PRESET"), "{w:#?}");
    // Nothing was read from a store for it.
    let m = metrics(&s).await;
    assert!(
        m.contains("sesame_workload_reviews_total{outcome=\"warned\"} 1"),
        "{m}"
    );
    assert!(!m.contains("sesame_cache_misses_total{store=\"dev\"}"), "{m}");
    assert!(!m.contains("sesame_cache_hits_total{store=\"dev\"}"), "{m}");

    // The same reference in a Pod is denied by the mutating path with the
    // sentence the warning gave.
    let pod = with_annotations(
        "real-pod-create-bare.json",
        &[("sesame.dev/env.STOLEN", "dev:apps/team-b/db#password")],
    );
    let denied = s.review(&pod).await;
    assert_eq!(denied["allowed"], false);
    assert!(
        w[0].ends_with(denied["status"]["message"].as_str().unwrap()),
        "{w:#?} vs {denied}"
    );
}

/// Every kind the path is registered for finds its template; a clean one
/// gets no warning; one that asks for nothing of Sesame is skipped.
#[tokio::test]
async fn each_workload_kind_is_read_at_its_template() {
    let s = TestServer::start().await;
    let bad = template(&[("sesame.dev/env.STOLEN", "dev:apps/team-b/db#password")]);
    let good = template(&[("sesame.dev/env.DB_HOST", "dev:apps/team-a/db#host")]);
    for kind in [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
    ] {
        let r = post(&s, &review(kind, "CREATE", "team-a", &bad, None)).await;
        let w = warnings(&r);
        assert_eq!(w.len(), 1, "{kind}: {w:#?}");
        assert!(w[0].contains(&format!("Pods of this {kind}:")), "{w:#?}");
        let r = post(&s, &review(kind, "CREATE", "team-a", &good, None)).await;
        assert_eq!(
            (r["allowed"].clone(), warnings(&r).len()),
            (json!(true), 0),
            "{kind}: {r}"
        );
    }
    let r = post(
        &s,
        &review("Deployment", "CREATE", "team-a", &template(&[]), None),
    )
    .await;
    assert_eq!(
        (r["allowed"].clone(), warnings(&r).len()),
        (json!(true), 0),
        "{r}"
    );
    let m = metrics(&s).await;
    for line in [
        "sesame_workload_reviews_total{outcome=\"warned\"} 6",
        "sesame_workload_reviews_total{outcome=\"clean\"} 6",
        "sesame_workload_reviews_total{outcome=\"skipped\"} 1",
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
}

/// A template that mounts a managed Secret it has no annotation for (one
/// written for other Pods) is warned of, as its Pods would be denied.
#[tokio::test]
async fn a_template_that_mounts_another_workloads_managed_secret_is_warned_of() {
    let s = TestServer::start().await;
    let mut t = template(&[]);
    t["spec"]["volumes"] = json!([{"name": "x", "secret": {"secretName": "sesame-0123456789abcdef"}}]);
    let r = post(&s, &review("Deployment", "CREATE", "team-a", &t, None)).await;
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("sesame-0123456789abcdef") && w[0].contains("other Pods"),
        "{w:#?}"
    );
}

/// Grammar and limits: a template that does not parse gets the parser's
/// sentence; more warnings than the API server keeps are summed up.
#[tokio::test]
async fn a_malformed_template_and_very_many_reasons_are_bounded() {
    let s = TestServer::start().await;
    let t = template(&[("sesame.dev/env.X", "dev:apps/team-a/db#host bogus=1")]);
    let w = warnings(&post(&s, &review("Deployment", "CREATE", "team-a", &t, None)).await);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("sesame.dev/env.X"), "{w:#?}");

    // A refresh below the platform's minimum is warned of too.
    let t = template(&[("sesame.dev/env.X", "dev:apps/team-a/db#host refresh=10s")]);
    let w = warnings(&post(&s, &review("Deployment", "CREATE", "team-a", &t, None)).await);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("refresh=10s") && w[0].contains("refresh=1m or longer"),
        "{w:#?}"
    );

    let names: Vec<(String, String)> = (0..30)
        .map(|i| (format!("sesame.dev/env.S{i}"), format!("dev:apps/team-b/s{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = names.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let w = warnings(
        &post(
            &s,
            &review("Deployment", "CREATE", "team-a", &template(&refs), None),
        )
        .await,
    );
    assert_eq!(w.len(), 20, "{w:#?}");
    assert!(w[19].contains("for 11 more reasons"), "{w:#?}");
}

/// Only the kinds and operations it is registered for: anything else is a
/// clear refusal, and a body that is no review a 400.
#[tokio::test]
async fn other_kinds_and_operations_are_refused_and_garbage_is_a_bad_request() {
    let s = TestServer::start().await;
    let mut r = review("Deployment", "CREATE", "team-a", &template(&[]), None);
    r["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let a = post(&s, &r).await;
    assert_eq!(a["allowed"], false);
    assert!(
        a["status"]["message"]
            .as_str()
            .unwrap()
            .contains("\"core/v1 ConfigMap\""),
        "{a}"
    );
    let mut r = review("Deployment", "DELETE", "team-a", &template(&[]), None);
    r["request"]["object"] = Value::Null;
    let a = post(&s, &r).await;
    assert_eq!(a["allowed"], false);
    assert!(
        a["status"]["message"].as_str().unwrap().contains("\"DELETE\""),
        "{a}"
    );

    let url = s.url.replace("/mutate", "/validate-workloads");
    let resp = s.client(true).post(&url).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // The server still answers.
    let r = post(&s, &review("Job", "CREATE", "team-a", &template(&[]), None)).await;
    assert_eq!(r["allowed"], true);
}

/// `workloads.deny`: a new workload whose Pods would be denied is itself
/// denied, and so is an update that changes its template; an update that
/// keeps the template (a scale, a label) goes through with the warnings.
#[tokio::test]
async fn deny_mode_blocks_creation_and_template_changes_but_never_other_updates() {
    let config = format!("{CONFIG}workloads:\n  deny: true\n");
    let s = TestServer::start_with(&config, SECRETS).await;
    let bad = template(&[("sesame.dev/env.STOLEN", "dev:apps/team-b/db#password")]);
    let good = template(&[("sesame.dev/env.DB_HOST", "dev:apps/team-a/db#host")]);

    let r = post(&s, &review("Deployment", "CREATE", "team-a", &bad, None)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 403, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("workloads.deny") && message.contains("apps/team-b/db"),
        "{message}"
    );
    assert_eq!(warnings(&r).len(), 1, "{r}");

    // Scaled, template as it was: allowed, still warned.
    let r = post(&s, &review("Deployment", "UPDATE", "team-a", &bad, Some(&bad))).await;
    assert_eq!(
        (r["allowed"].clone(), warnings(&r).len()),
        (json!(true), 1),
        "{r}"
    );
    // The template changed to one that is still refused: denied.
    let r = post(&s, &review("Deployment", "UPDATE", "team-a", &bad, Some(&good))).await;
    assert_eq!(r["allowed"], false, "{r}");
    // Fixed: allowed.
    let r = post(&s, &review("Deployment", "UPDATE", "team-a", &good, Some(&bad))).await;
    assert_eq!(
        (r["allowed"].clone(), warnings(&r).len()),
        (json!(true), 0),
        "{r}"
    );
    let m = metrics(&s).await;
    assert!(
        m.contains("sesame_workload_reviews_total{outcome=\"denied\"} 2"),
        "{m}"
    );
}

/// A clash only the secret's properties can cause is warned of when the
/// template names the property itself (env-from `DB_` of a secret whose
/// `password` another annotation sets as `DB_PASSWORD`), as the Pod's
/// review denies it; env-from alone, whose names only the store knows, is
/// not guessed at.
#[tokio::test]
async fn a_clash_the_template_itself_names_is_warned_of_and_no_other() {
    let s = TestServer::start().await;
    let clash = [
        ("sesame.dev/env-from.db", "dev:apps/team-a/db prefix=DB_"),
        ("sesame.dev/env.DB_PASSWORD", "dev:apps/team-a/db#password"),
    ];
    let w = warnings(
        &post(
            &s,
            &review("Deployment", "CREATE", "team-a", &template(&clash), None),
        )
        .await,
    );
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("both set env var DB_PASSWORD"), "{w:#?}");
    let denied = s
        .review(&with_annotations("real-pod-create-bare.json", &clash))
        .await;
    assert_eq!(denied["allowed"], false, "{denied}");
    assert!(denied["status"]["message"]
        .as_str()
        .unwrap()
        .contains("both set env var DB_PASSWORD"));

    let alone = [("sesame.dev/env-from.db", "dev:apps/team-a/db prefix=DB_")];
    let r = post(
        &s,
        &review("Deployment", "CREATE", "team-a", &template(&alone), None),
    )
    .await;
    assert_eq!(
        (r["allowed"].clone(), warnings(&r).len()),
        (json!(true), 0),
        "{r}"
    );
}
