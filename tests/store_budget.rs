//! A store that does not answer must cost a Pod a clear denial well before
//! the API server's own webhook timeout (10 s at most), and must not hold up
//! other reviews; and a store never gets more requests at once than its
//! `maxConcurrency`. The store is a Vault stand-in that accepts the token
//! and then holds every read until released (tests/support/slow_vault.rs
//! names the Vault API documents it follows): async, so the test cannot
//! hang on it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/http.rs"]
mod http;
#[path = "support/slow_vault.rs"]
mod slow_vault;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use slow_vault::SlowVault;

const BARE: &str = "real-pod-create-bare.json";

fn hanging_review() -> Value {
    with_annotations(
        BARE,
        &[("sesame.dev/env.DB_PASSWORD", "slow:apps/team-a/db#password")],
    )
}

/// Posts a review to `url` and returns the response and how long it took.
async fn timed(s: &TestServer, url: &str, review: &Value) -> (Value, Duration) {
    let started = Instant::now();
    let resp = s.client(false).post(url).json(review).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["response"]["uid"], review["request"]["uid"]);
    (body["response"].clone(), started.elapsed())
}

/// The denial a store timeout gives: 503, naming the annotation and the store.
fn assert_timeout_denial(r: &Value) {
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 503, "{r}");
    assert_eq!(r["status"]["reason"], "ServiceUnavailable");
    let m = r["status"]["message"].as_str().unwrap();
    for part in [
        "sesame.dev/env.DB_PASSWORD",
        "store \"slow\"",
        "apps/team-a/db",
        "no answer within the time budget",
    ] {
        assert!(m.contains(part), "{part} missing in: {m}");
    }
    assert!(r.get("patch").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_store_is_denied_within_its_budget_while_other_reviews_are_served() {
    let vault = SlowVault::start(json!({"password": "never-sent"})).await;
    let (dir, ca) = vault.prepare("4s");
    let s = std::sync::Arc::new(TestServer::start_in(dir, Some(ca), |_| {}).await);

    let hanging = {
        let s = s.clone();
        tokio::spawn(async move { timed(&s, &s.url, &hanging_review()).await })
    };
    vault.wait_for_reads(1).await;

    // Meanwhile the server answers reviews that use another store, and reviews without annotations.
    for name in [BARE, "pod-create-bare-no-env.json", BARE] {
        let (r, took) = timed(&s, &s.url, &fixture(name)).await;
        assert_eq!(r["allowed"], true, "{name}: {r}");
        assert!(took < Duration::from_secs(2), "{name} took {took:?}");
    }
    assert!(!hanging.is_finished(), "answered before its budget ran out");

    let (r, took) = hanging.await.unwrap();
    assert_timeout_denial(&r);
    println!("store timeout denied after {took:?} (resolveTimeout 4s)");
    // The cache gives up 1/20 of the budget (at most 200 ms) before its
    // end, to look for a stale value and answer within the budget.
    assert!(
        took >= Duration::from_millis(3800),
        "denied before the budget: {took:?}"
    );
    assert!(took < Duration::from_secs(9), "denied too late: {took:?}");

    let metrics = reqwest::get(s.admin("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = "sesame_admission_reviews_total{outcome=\"denied_timeout\"} 1";
    assert!(metrics.contains(line), "missing {line} in\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_timeout_parameter_shortens_the_budget() {
    let vault = SlowVault::start(json!({"password": "never-sent"})).await;
    // The configured budget alone would take 8 s.
    let (dir, ca) = vault.prepare("8s");
    let s = TestServer::start_in(dir, Some(ca), |_| {}).await;

    // The API server calls `/mutate?timeout=2s` when the webhook's timeoutSeconds is 2.
    let url = format!("{}?timeout=2s", s.url);
    let (r, short) = timed(&s, &url, &hanging_review()).await;
    assert_timeout_denial(&r);
    let took = short;
    println!("with ?timeout=2s denied after {took:?} (resolveTimeout 8s)");
    assert!(
        took < Duration::from_secs(2),
        "the answer must arrive before the API server gives up: {took:?}"
    );
    assert!(vault.reads() >= 1, "the store was asked");

    // A longer deadline from the API server gives the store more time, up to the configured budget.
    let url = format!("{}?timeout=4s", s.url);
    let (r, took) = timed(&s, &url, &hanging_review()).await;
    assert_timeout_denial(&r);
    assert!(
        took > short + Duration::from_millis(500) && took < Duration::from_secs(4),
        "{took:?} with ?timeout=4s, {short:?} with ?timeout=2s"
    );
}

/// `maxConcurrency: 2`: however many secrets one Pod asks for and however
/// many Pods ask at once, the store sees at most two requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_bounds_the_requests_a_store_receives() {
    use std::sync::Arc;

    use sesame::stores::{SecretLocator, StoreRequest, Stores};
    use sesame::telemetry::Metrics;

    let vault = SlowVault::start(json!({"password": "pw"})).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vault-token"), slow_vault::TOKEN).unwrap();
    let yaml = format!(
        "stores:\n  - name: slow\n    vault: {{address: \"{}\", auth: {{token: {{file: vault-token}}}}}}\n    cacheTtl: 0s\n    maxConcurrency: 2\n",
        vault.address
    );
    let config = sesame::config::Config::from_yaml(&yaml, "t.yaml").unwrap();
    let stores = Stores::from_config(&config.stores, dir.path(), &Arc::new(Metrics::new()), None)
        .await
        .unwrap();
    let batch = |pod: usize| -> Vec<StoreRequest> {
        (0..6)
            .map(|i| StoreRequest {
                store: "slow".into(),
                locator: SecretLocator::new(format!("apps/pod-{pod}/secret-{i}"), None),
            })
            .collect()
    };
    // Two Pods of six secrets each, at once.
    let resolving: Vec<_> = (0..2)
        .map(|pod| {
            let (stores, requests) = (stores.clone(), batch(pod));
            tokio::spawn(async move { stores.resolve(&requests, None, Duration::from_secs(60)).await })
        })
        .collect();
    vault.wait_for_reads(2).await;
    // Time for more requests to arrive, had nothing held them back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(vault.in_flight(), 2, "two reads held, the others waiting");
    vault.release();
    for r in resolving {
        assert!(r.await.unwrap().iter().all(Result::is_ok));
    }
    assert_eq!(vault.reads(), 12);
    assert_eq!(vault.most_in_flight(), 2);
}
