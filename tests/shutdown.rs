//! Graceful shutdown: once asked to stop (SIGTERM, or `ServerHandle::shutdown`
//! on the same path), the server accepts no new connection, finishes the
//! reviews in flight with proper answers, and then returns. Through the
//! drain the admin port answers: /readyz 503 (so that the Pod leaves the
//! Service's endpoints), /livez 200 (so that the kubelet does not kill it
//! before its reviews are answered); it closes last. The in-flight
//! review is held in a Vault store stand-in that answers only when released
//! (tests/support/slow_vault.rs names the Vault API documents it follows).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/fake_api.rs"]
mod fake_api;
#[path = "support/http.rs"]
mod http;
#[path = "support/slow_vault.rs"]
mod slow_vault;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use fake_api::FakeApi;
use serde_json::{json, Value};
use slow_vault::SlowVault;

const BARE: &str = "real-pod-create-bare.json";

/// A review whose Pod asks the slow store for `apps/team-a/<path>` as env var `env`.
fn slow_review(env: &str, path: &str) -> Value {
    let key = format!("sesame.dev/env.{env}");
    let value = format!("slow:apps/team-a/{path}");
    with_annotations(BARE, &[(&key, &value)])
}

/// Sends a review in the background; the task yields the HTTP status and body.
fn send(
    client: reqwest::Client,
    url: String,
    review: Value,
) -> tokio::task::JoinHandle<Result<(u16, Value), String>> {
    tokio::spawn(async move {
        let resp = client
            .post(&url)
            .json(&review)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.map_err(|e| e.to_string())?))
    })
}

/// Asserts a complete, positive AdmissionReview answer that injects `env`.
fn assert_mutated(review: &Value, answer: &(u16, Value), env: &str) {
    let (status, body) = answer;
    assert_eq!(*status, 200, "{body}");
    assert_eq!(body["kind"], "AdmissionReview");
    let response = &body["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true, "{response}");
    let pod = patched_pod(review, response);
    let var = env_var(&pod, "app", env).unwrap_or_else(|| panic!("{env} not injected: {response}"));
    assert!(var["valueFrom"]["secretKeyRef"]["name"]
        .as_str()
        .unwrap()
        .starts_with("sesame-"));
}

/// Waits until /readyz answers 503 (readiness drops as the drain starts),
/// then checks that /livez still answers 200.
async fn assert_draining_probes(readyz: String, livez: String) {
    let admin = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        let status = admin.get(&readyz).send().await.map(|r| r.status().as_u16());
        match status {
            Ok(503) => break,
            Ok(200) => {}
            other => panic!("/readyz during the drain: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "/readyz still 200 5 s into the drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let live = admin.get(&livez).send().await.map(|r| r.status().as_u16());
    assert_eq!(live.ok(), Some(200), "/livez during the drain");
}

/// Waits until connecting to `addr` is refused: the listener is gone.
async fn wait_until_refused(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return started.elapsed(),
            // Accepted into the backlog just before the listener closed, or reset then.
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "still accepting connections 3 s after shutdown"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_reviews_in_flight_over_h1_and_h2_and_refuses_new_connections() {
    let vault = SlowVault::start(json!({"password": "pw-from-vault", "token": "tok-from-vault"})).await;
    let (dir, ca) = vault.prepare("8s");
    let s = TestServer::start_in(dir, Some(ca), |a| a.drain_timeout = Duration::from_secs(10)).await;

    let over_h1 = slow_review("DB_PASSWORD", "db#password");
    let over_h2 = slow_review("API_TOKEN", "api#token");
    let h1 = send(s.client(false), s.url.clone(), over_h1.clone());
    let h2 = send(s.client(true), s.url.clone(), over_h2.clone());
    // Both reviews are inside the pipeline, waiting for the store.
    vault.wait_for_reads(2).await;

    let (readyz, livez) = (s.admin("/readyz"), s.admin("/livez"));
    let TestServer { handle, dir, .. } = s;
    let addr = handle.webhook_addr;
    let admin = handle.admin_addr;
    handle.shutdown();
    let refused_after = wait_until_refused(addr).await;
    println!("new connections refused {refused_after:?} after shutdown");
    assert_draining_probes(readyz.clone(), livez.clone()).await;
    assert!(!h1.is_finished() && !h2.is_finished());

    let waiting = tokio::spawn(handle.wait());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the server stopped before its reviews were answered"
    );
    vault.release();
    assert_mutated(&over_h1, &h1.await.unwrap().unwrap(), "DB_PASSWORD");
    assert_mutated(&over_h2, &h2.await.unwrap().unwrap(), "API_TOKEN");
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("wait() returns once the drained reviews are answered")
        .unwrap();
    // The admin port was the last to close.
    wait_until_refused(admin).await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_binary_and_it_exits_0() {
    let vault = SlowVault::start(json!({"password": "pw-from-vault"})).await;
    let (dir, ca) = vault.prepare("8s");
    let mut server = ServeProcess::spawn(dir.path(), &[]).await;
    let review = slow_review("DB_PASSWORD", "db#password");
    let in_flight = send(client_for(&ca, false), server.url(), review.clone());
    vault.wait_for_reads(1).await;

    server.sigterm();
    wait_until_refused(server.webhook_addr).await;
    assert_draining_probes(server.admin("/readyz"), server.admin("/livez")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the review must wait for its store, not be cut off"
    );
    assert_draining_probes(server.admin("/readyz"), server.admin("/livez")).await;
    vault.release();
    assert_mutated(&review, &in_flight.await.unwrap().unwrap(), "DB_PASSWORD");

    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{:#?}", server.lines());
    let logs = server.json_logs();
    assert!(
        logs.iter().any(|l| l["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("shutdown signal received")),
        "{:#?}",
        server.lines()
    );
    let all = server.lines().join("\n");
    assert!(!all.contains("pw-from-vault"), "a secret value was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_bounds_how_long_a_stuck_review_delays_the_exit() {
    let vault = SlowVault::start(json!({"password": "pw-from-vault"})).await;
    let (dir, ca) = vault.prepare("8s");
    let mut server = ServeProcess::spawn(dir.path(), &["--drain-timeout", "1s"]).await;
    let stuck = send(
        client_for(&ca, false),
        server.url(),
        slow_review("DB_PASSWORD", "db#password"),
    );
    vault.wait_for_reads(1).await;

    let started = Instant::now();
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(6)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{:#?}", server.lines());
    // Well before the 8 s store budget would have answered the review.
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    assert!(
        server.json_logs().iter().any(|l| l["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("drain timeout passed")),
        "{:#?}",
        server.lines()
    );
    // The review that outlived the drain has its connection closed: the API
    // server retries it or applies the webhook's failure policy.
    let result = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err(), "{result:?}");
}

/// A background task that ends on its own (a watch stream that closed, an
/// upkeep that returned) is not silently gone: the server drains, stops
/// listening, and `serve` exits with a failure so that the Pod restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_task_that_dies_stops_the_server_with_a_failure() {
    let s = TestServer::start().await;
    let TestServer { handle, dir, .. } = s;
    let (addr, admin) = (handle.webhook_addr, handle.admin_addr);
    handle.tasks().spawn("a task that ends at once", async {});
    // No signal ever comes: the dead task alone ends the server.
    let code = tokio::time::timeout(Duration::from_secs(30), handle.run_until(std::future::pending()))
        .await
        .expect("the server stops by itself");
    assert_eq!(code, std::process::ExitCode::FAILURE);
    wait_until_refused(addr).await;
    wait_until_refused(admin).await;
    drop(dir);
}

/// The body of a GET on the admin port, with its status.
async fn admin_get(url: String) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Start-up shows its progress on the admin port, and a SIGTERM during it
/// ends the process at once, cleanly: Sesame is PID 1 in its container,
/// where a signal without a handler is ignored, so the handler must exist
/// before the (up to a minute long) wait for the certificate. Here the API
/// server answers every read of the certificate Secret with 503, so
/// start-up stays at that step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_reports_its_step_and_sigterm_during_it_exits_0_at_once() {
    let api = FakeApi::start().await;
    api.fail_next("GET", "secrets/sesame-certs", 503, 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let kubeconfig = api.write_kubeconfig(dir.path());
    let options = ProcessOptions {
        kubeconfig: Some(&kubeconfig),
        until_admin_port: true,
        ..Default::default()
    };
    let mut server = ServeProcess::spawn_with(
        dir.path(),
        &["--cert-mode", "self-managed", "--namespace", "sesame-system"],
        options,
    )
    .await;

    let waiting = "starting: waiting for the serving certificate (Secret sesame-system/sesame-certs)";
    let started = Instant::now();
    loop {
        let (code, body) = admin_get(server.admin("/readyz")).await;
        assert_eq!(code, 503, "{body}");
        if body == format!("not ready: {waiting}\n") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/readyz never named the certificate step: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        admin_get(server.admin("/startupz")).await,
        (503, format!("{waiting}\n"))
    );
    assert_eq!(admin_get(server.admin("/livez")).await, (200, "ok\n".into()));
    assert!(
        !api.calls("GET", "secrets/sesame-certs").is_empty(),
        "Sesame is asking for its certificate"
    );

    server.sigterm();
    // Far sooner than the 60 s certificate deadline would end it.
    let status = server.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{:#?}", server.lines());
    assert!(
        server
            .json_logs()
            .iter()
            .any(|l| l["message"] == "shutdown signal received during start-up; stopping"),
        "{:#?}",
        server.lines()
    );
}
