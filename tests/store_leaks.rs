//! A store's answers are input, not fact: its error bodies may echo the
//! request (an AppRole login error that quotes the `secret_id`), and a
//! redirect may point anywhere. So no error body reaches a denial or a log
//! line, and no store client follows a redirect to another origin.
//!
//! The stand-in follows Vault's HTTP API documents: the AppRole auth
//! method's `POST /v1/auth/approle/login` (body `{"role_id","secret_id"}`),
//! the token auth method's `GET /v1/auth/token/lookup-self`, the KV secrets
//! engine version 2's `GET /v1/<mount>/data/<path>` answering
//! `{"data": {"data": {...}, "metadata": {...}}}`, and the API's error
//! answers, `{"errors": ["..."]}` with the HTTP status ("HTTP API: Error
//! Response"). Vault's standby nodes answer with a `307` and a `Location`
//! (the "HA" documentation); here the stand-in sends one to another host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/http.rs"]
mod http;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::{serve, Request, Response};
use serde_json::{json, Value};

const BARE: &str = "real-pod-create-bare.json";
const SECRET_ID: &str = "5e1f0c2a-77aa-4b1c-9d3e-0123456789ab";
const TOKEN: &str = "hvs.stand-in-token-4f9a";

fn answer(status: &'static str, body: Value) -> Response {
    Response {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.to_string(),
    }
}

/// Vault's error answer, quoting `what` the way a careless server (or a
/// proxy in front of one) might.
fn vault_error(status: &'static str, what: &str) -> Response {
    answer(
        status,
        json!({"errors": [format!("1 error occurred:\n\t* {what}\n\n")]}),
    )
}

/// A Vault stand-in whose AppRole login fails with an error that echoes the
/// request body, and whose reads of `apps/team-a/e400`, `e403` and `e500`
/// fail with bodies that echo the path, the token and a marker.
async fn leaky_vault() -> String {
    let (address, _) = serve(|_, request: &Request| {
        let path = request.path.as_str();
        if path == "/v1/auth/approle/login" {
            let echoed = String::from_utf8_lossy(&request.body).into_owned();
            return vault_error(
                "400 Bad Request",
                &format!("invalid secret id in request {echoed}"),
            );
        }
        if path.starts_with("/v1/auth/token/lookup-self") {
            return answer("200 OK", json!({"data": {"ttl": 0, "renewable": false}}));
        }
        let token = request.header("x-vault-token").unwrap_or("").to_owned();
        match path.strip_prefix("/v1/secret/data/apps/team-a/") {
            Some("e400") => vault_error("400 Bad Request", &format!("LEAK-400 cannot parse {path}")),
            Some("e403") => vault_error(
                "403 Forbidden",
                &format!("LEAK-403 permission denied for token {token}"),
            ),
            Some("e500") => vault_error(
                "500 Internal Server Error",
                &format!("LEAK-500 backend said {token}"),
            ),
            _ => vault_error("404 Not Found", ""),
        }
    })
    .await;
    address
}

fn config_with(stores: &str, store_names: &str) -> String {
    CONFIG
        .replacen("stores:\n", &format!("stores:\n{stores}"), 1)
        .replace("stores: [dev]", &format!("stores: [dev, {store_names}]"))
}

/// The lines of `sesame serve` that would carry a leak.
fn leaks_in(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains(SECRET_ID) || l.contains(TOKEN) || l.contains("LEAK-"))
        .collect()
}

#[tokio::test]
async fn store_error_bodies_reach_no_denial_and_no_log_line() {
    let vault = leaky_vault().await;
    let stores = format!(
        "  - name: approle\n    vault: {{address: \"{vault}\", auth: {{appRole: {{roleId: sesame, secretId: {{file: secret-id}}}}}}}}\n    cacheTtl: 0s\n  - name: tokened\n    vault: {{address: \"{vault}\", auth: {{token: {{file: vault-token}}}}}}\n    cacheTtl: 0s\n"
    );
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config_with(&stores, "approle, tokened"), SECRETS);
    std::fs::write(dir.path().join("secret-id"), SECRET_ID).unwrap();
    std::fs::write(dir.path().join("vault-token"), TOKEN).unwrap();
    let ca = write_certs(&dir.path().join("certs"));
    let server = ServeProcess::spawn(dir.path(), &[]).await;
    let client = client_for(&ca, false);

    let review = |reference: &str| with_annotations(BARE, &[("sesame.dev/env.X", reference)]);
    let cases = [
        (
            "approle:apps/team-a/db#password",
            503,
            "HTTP 400 Bad Request (invalid credentials)",
        ),
        ("tokened:apps/team-a/e400#password", 503, "HTTP 400 Bad Request"),
        (
            "tokened:apps/team-a/e403#password",
            503,
            "HTTP 403 Forbidden (permission denied)",
        ),
        (
            "tokened:apps/team-a/e500#password",
            503,
            "HTTP 500 Internal Server Error",
        ),
    ];
    for (reference, code, says) in cases {
        let body: Value = client
            .post(server.url())
            .json(&review(reference))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r = &body["response"];
        assert_eq!(r["allowed"], false, "{reference}: {r}");
        assert_eq!(r["status"]["code"], code, "{reference}: {r}");
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            !message.contains(SECRET_ID) && !message.contains(TOKEN) && !message.contains("LEAK-"),
            "{reference}: the store's text reached the denial: {message}"
        );
        assert!(message.contains(says), "{reference}: {message}");
    }

    // The first login at start, the one on the request path, and the
    // background retries all failed and were logged: none with the body.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = server.lines();
        let warnings = lines
            .iter()
            .filter(|l| l.contains("\"WARN\"") && (l.contains("Vault login") || l.contains("token refresh")))
            .count();
        assert!(leaks_in(&lines).is_empty(), "{:#?}", leaks_in(&lines));
        if warnings >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "too few login warnings: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = server.lines();
    assert!(
        lines.iter().any(|l| l.contains("invalid credentials")),
        "the failures are classified: {lines:#?}"
    );
}

/// What a second host received: the paths and the token header of each request.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

#[tokio::test]
async fn no_store_client_follows_a_redirect_to_another_origin() {
    // The other host: it would answer with a value, and records every request.
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let (elsewhere, _) = serve(move |_, request: &Request| {
        record.lock().unwrap().push((
            request.path.clone(),
            request.header("x-vault-token").map(str::to_owned),
        ));
        answer(
            "200 OK",
            json!({"data": {"data": {"password": "from-the-other-host"}, "metadata": {"version": 1}}}),
        )
    })
    .await;
    let target = elsewhere.clone();
    let (vault, _) = serve(move |_, request: &Request| {
        let path = request.path.as_str();
        if path.starts_with("/v1/auth/token/lookup-self") {
            return answer("200 OK", json!({"data": {"ttl": 0, "renewable": false}}));
        }
        match path.strip_prefix("/v1/secret/data/apps/team-a/") {
            // To another host: a standby pointing at "its" active node.
            Some("moved") => Response {
                status: "307 Temporary Redirect",
                headers: vec![("location", format!("{target}{path}"))],
                body: String::new(),
            },
            // Within the same origin.
            Some("renamed") => Response {
                status: "307 Temporary Redirect",
                headers: vec![("location", "/v1/secret/data/apps/team-a/db".into())],
                body: String::new(),
            },
            Some("db") => answer(
                "200 OK",
                json!({"data": {"data": {"password": "same-origin-value"}, "metadata": {"version": 1}}}),
            ),
            _ => vault_error("404 Not Found", ""),
        }
    })
    .await;
    let stores = format!(
        "  - name: vault\n    vault: {{address: \"{vault}\", auth: {{token: {{file: vault-token}}}}}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config_with(&stores, "vault"), SECRETS);
    std::fs::write(dir.path().join("vault-token"), TOKEN).unwrap();
    let ca = write_certs(&dir.path().join("certs"));
    let s = TestServer::start_in(dir, Some(ca), |_| {}).await;

    let moved = with_annotations(BARE, &[("sesame.dev/env.X", "vault:apps/team-a/moved#password")]);
    let r = s.review(&moved).await;
    assert_eq!(r["allowed"], false, "the redirected answer is not used: {r}");
    assert_eq!(r["status"]["code"], 503, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("HTTP 307") && message.contains("redirect"),
        "{message}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the other host was asked: {:?}",
        seen.lock().unwrap()
    );

    // A redirect within the store's origin is followed.
    let renamed = with_annotations(
        BARE,
        &[("sesame.dev/env.X", "vault:apps/team-a/renamed#password")],
    );
    let r = s.review(&renamed).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r["patch"].is_string(), "{r}");
    assert!(seen.lock().unwrap().is_empty());
}
