//! A store outage is not a cluster outage: a store that fails its check
//! leaves the replica ready (it shows in `sesame_store_up` and
//! `/readyz?verbose`), and a store that stops answering still lets the
//! cache serve a value within `maxStale`. The stores are Vault stand-ins
//! (tests/support/slow_vault.rs names the Vault API documents they follow;
//! the failing one answers every request with 503, as Vault does while
//! sealed, per its `sys/health` and API error documents).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/http.rs"]
mod http;
#[path = "support/slow_vault.rs"]
mod slow_vault;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{serve, Response};
use serde_json::{json, Value};
use slow_vault::SlowVault;

const BARE: &str = "real-pod-create-bare.json";

fn review_of_slow() -> Value {
    with_annotations(
        BARE,
        &[("sesame.dev/env.DB_PASSWORD", "slow:apps/team-a/db#password")],
    )
}

async fn text(url: String) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Waits until the metrics text has `line`; returns the text.
async fn wait_for_metric(s: &TestServer, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = text(s.admin("/metrics")).await;
        if metrics.contains(line) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never saw {line} in\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_its_check_is_reported_and_the_replica_stays_ready() {
    // Answers like Vault while the stand-in is up, 503 to everything once it is down.
    let down = Arc::new(AtomicBool::new(false));
    let is_down = down.clone();
    let (address, _) = serve(move |_, request| {
        if is_down.load(Ordering::SeqCst) {
            return Response {
                status: "503 Service Unavailable",
                headers: vec![("content-type", "application/json".into())],
                body: json!({"errors": ["Vault is sealed"]}).to_string(),
            };
        }
        let body = if request.path.starts_with("/v1/auth/token/lookup-self") {
            json!({"data": {"ttl": 0, "renewable": false, "policies": ["root"]}})
        } else {
            json!({"data": {"data": {"password": "from-vault"}, "metadata": {"version": 1}}})
        };
        Response {
            status: "200 OK",
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        }
    })
    .await;
    let store = format!(
        "stores:\n  - name: x\n    vault: {{address: \"{address}\", auth: {{token: {{file: vault-token}}}}}}\n"
    );
    let config = CONFIG.replacen("stores:\n", &store, 1);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config, SECRETS);
    std::fs::write(dir.path().join("vault-token"), "stand-in-token").unwrap();
    let ca = write_certs(&dir.path().join("certs"));
    let s = TestServer::start_in(dir, Some(ca), |_| {}).await;

    wait_for_metric(&s, "sesame_store_up{store=\"x\"} 1").await;
    let (code, verbose) = text(s.admin("/readyz?verbose")).await;
    assert_eq!(code, 200);
    assert!(verbose.contains("store x: up since "), "{verbose}");

    down.store(true, Ordering::SeqCst);
    let metrics = wait_for_metric(&s, "sesame_store_up{store=\"x\"} 0").await;
    assert!(metrics.contains("sesame_store_up{store=\"dev\"} 1"), "{metrics}");
    assert!(metrics.contains("sesame_ready 1"), "{metrics}");
    assert_eq!(text(s.admin("/readyz")).await, (200, "ready\n".into()));
    let (code, verbose) = text(s.admin("/readyz?verbose")).await;
    assert_eq!(code, 200, "{verbose}");
    let line = verbose
        .lines()
        .find(|l| l.starts_with("store x: "))
        .unwrap_or_else(|| panic!("no line for store x in {verbose}"));
    assert!(line.starts_with("store x: down since "), "{line}");
    assert!(line.ends_with(')'), "the error class is shown: {line}");
    assert!(
        !verbose.contains("sealed"),
        "no body of the store's answer: {verbose}"
    );
    assert!(verbose.contains("store dev: up since "), "{verbose}");

    // Pods that need another store are admitted meanwhile.
    let r = s
        .review(&with_annotations(
            BARE,
            &[("sesame.dev/env.DB", "dev:apps/team-a/db#password")],
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");

    down.store(false, Ordering::SeqCst);
    wait_for_metric(&s, "sesame_store_up{store=\"x\"} 1").await;
}

/// The stand-in with `maxStale` and a short budget; the store answers until held.
async fn stale_server(vault: &SlowVault) -> TestServer {
    let (dir, ca) = vault.prepare("1s");
    let path = dir.path().join("sesame.yaml");
    let config = std::fs::read_to_string(&path)
        .unwrap()
        .replace("    cacheTtl: 0s\n", "    cacheTtl: 0s\n    maxStale: 4s\n");
    std::fs::write(&path, config).unwrap();
    TestServer::start_in(dir, Some(ca), |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_serves_the_cached_value_until_max_stale() {
    let vault = SlowVault::start(json!({"password": "pw-from-vault"})).await;
    vault.release();
    let s = stale_server(&vault).await;

    let first = s.review(&review_of_slow()).await;
    assert_eq!(first["allowed"], true, "{first}");
    let fetched = Instant::now();

    // The store now accepts connections and never answers.
    vault.hold();
    let reads = vault.reads();
    let r = s.review(&review_of_slow()).await;
    assert!(vault.reads() > reads, "the TTL of 0 sent the read to the store");
    assert_eq!(r["allowed"], true, "served from the cache: {r}");
    assert!(
        fetched.elapsed() < Duration::from_secs(4),
        "the test itself took longer than maxStale; cannot judge"
    );
    let metrics = wait_for_metric(&s, "sesame_cache_stale_served_total{store=\"slow\"} 1").await;
    assert!(
        metrics.contains("sesame_store_errors_total{store=\"slow\",class=\"timeout\"} 1"),
        "{metrics}"
    );

    // Past maxStale the hanging store is a denial with the timeout class.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(fetched.elapsed())).await;
    let r = s.review(&review_of_slow()).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 503, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.contains("no answer within the time budget"), "{message}");
    assert!(!message.contains("pw-from-vault"));
    vault.release();
}
