//! Work per review is bounded: the real server over real TLS, with the
//! default `limits`, denies a Pod that asks for too much with 413 and a
//! sentence naming the limit and its value, before it asks a store
//! anything (or, for what only the answers tell, before it plans); two
//! spellings of one Vault version are one fetch; and what a message quotes
//! from the Pod is cut and escaped.
//!
//! The Vault stand-in follows the KV secrets engine version 2 document
//! ("Read Secret Version", `GET /v1/<mount>/data/<path>?version=<n>`,
//! answering `{"data": {"data": {...}, "metadata": {...}}}`) and the token
//! auth method's `GET /v1/auth/token/lookup-self`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/http.rs"]
mod http;

use std::sync::{Arc, Mutex};

use common::*;
use http::{serve, Request, Response};
use serde_json::{json, Value};

const BARE: &str = "real-pod-create-bare.json";

/// A Vault stand-in that answers every read with `{"password": "pw"}` and
/// records the path and query of each.
async fn counting_vault() -> (String, Arc<Mutex<Vec<String>>>) {
    let reads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = reads.clone();
    let (address, _) = serve(move |_, request: &Request| {
        let answer = |status, body: Value| Response {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        };
        if request.path.starts_with("/v1/auth/token/lookup-self") {
            return answer("200 OK", json!({"data": {"ttl": 0, "renewable": false}}));
        }
        if let Some(read) = request.path.strip_prefix("/v1/secret/data/") {
            seen.lock().unwrap().push(read.to_owned());
            return answer(
                "200 OK",
                json!({"data": {"data": {"password": "pw"}, "metadata": {"version": 1}}}),
            );
        }
        answer("404 Not Found", json!({"errors": []}))
    })
    .await;
    (address, reads)
}

/// The test configuration with a `vault` store on the stand-in, the file
/// store holding `extra` secrets too, and the server's default body limit
/// (3 MiB) so that big reviews arrive whole.
async fn server(vault: &str, extra: &str) -> TestServer {
    let store = format!(
        "stores:\n  - name: vault\n    vault: {{address: \"{vault}\", auth: {{token: {{file: vault-token}}}}}}\n"
    );
    let config = CONFIG
        .replacen("stores:\n", &store, 1)
        .replace("stores: [dev]", "stores: [dev, vault]")
        // Inline reviews here test the limits, not the caller check.
        .replace(
            "namespaces: [\"dev-*\"]",
            "namespaces: [\"dev-*\"]\n    allowWithoutClientAuth: true",
        );
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config, &format!("{SECRETS}{extra}"));
    std::fs::write(dir.path().join("vault-token"), "stand-in").unwrap();
    let ca = write_certs(&dir.path().join("certs"));
    TestServer::start_in(dir, Some(ca), |args| args.max_body_bytes = 3 * 1024 * 1024).await
}

/// The bare review with `annotations` and `containers` app containers.
fn review(annotations: &[(String, String)], containers: usize) -> Value {
    let pairs: Vec<(&str, &str)> = annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut review = with_annotations(BARE, &pairs);
    if containers > 1 {
        let list: Vec<Value> = (0..containers)
            .map(|i| json!({"name": format!("c{i}"), "image": "x"}))
            .collect();
        review["request"]["object"]["spec"]["containers"] = Value::Array(list);
    }
    review
}

fn env(n: usize, reference: impl Fn(usize) -> String) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("sesame.dev/env.V{i}"), reference(i)))
        .collect()
}

/// Asserts a 413 that names `limit` and its `value`.
fn assert_limit(r: &Value, limit: &str, value: usize) {
    assert_eq!(r["allowed"], false, "{}", short(r));
    assert_eq!(r["status"]["code"], 413, "{}", short(r));
    assert_eq!(r["status"]["reason"], "RequestEntityTooLarge");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("more than the {value} allowed (limits.{limit} ")),
        "{message}"
    );
    assert!(r.get("patch").is_none());
}

fn short(r: &Value) -> String {
    r.to_string().chars().take(600).collect()
}

#[tokio::test]
async fn pods_past_a_limit_are_denied_before_any_store_request() {
    let (vault, reads) = counting_vault().await;
    let s = server(&vault, "").await;

    // 3,000 optional references made 547 store requests in one budget.
    let r = s
        .review(&review(
            &env(3000, |i| format!("vault:apps/team-a/s{i}#password optional=true")),
            1,
        ))
        .await;
    assert_limit(&r, "maxReferences", 100);
    // Under the reference limit, but 60 distinct secrets.
    let r = s
        .review(&review(
            &env(60, |i| format!("vault:apps/team-a/s{i}#password optional=true")),
            1,
        ))
        .await;
    assert_limit(&r, "maxStoreRequests", 50);
    // 350 containers × 350 env annotations, a 24 KiB review, built a 15.6 MiB patch.
    let r = s
        .review(&review(
            &env(350, |_| "vault:apps/team-a/db#password".into()),
            350,
        ))
        .await;
    assert_limit(&r, "maxReferences", 100);
    // Within the reference limit: 60 references into 350 containers.
    let r = s
        .review(&review(&env(60, |_| "vault:apps/team-a/db#password".into()), 350))
        .await;
    assert_limit(&r, "maxAddedEntries", 2000);
    assert!(
        reads.lock().unwrap().is_empty(),
        "the store was asked: {:?}",
        reads.lock().unwrap()
    );

    // What is within every limit is served: 20 references into 100 containers.
    let r = s
        .review(&review(
            &env(20, |i| format!("vault:apps/team-a/s{}#password", i % 5)),
            100,
        ))
        .await;
    assert_eq!(r["allowed"], true, "{}", short(&r));
    assert_eq!(reads.lock().unwrap().len(), 5, "one read per distinct secret");
}

#[tokio::test]
async fn what_only_the_answers_tell_is_denied_before_the_plan() {
    let (vault, _) = counting_vault().await;
    // A secret with 3,000 properties; a 600 KB value; a value that JSON
    // escapes to six times its size.
    let wide: String = (0..3000).map(|i| format!("  k{i}: v\n")).collect();
    let big = "x".repeat(600 * 1024);
    let escaped = "\\x01".repeat(100 * 1024);
    let extra =
        format!("apps/team-a/wide:\n{wide}apps/dev-team/big: {big}\napps/dev-team/controls: \"{escaped}\"\n");
    let s = server(&vault, &extra).await;

    let from = [(
        "sesame.dev/env-from.all".to_owned(),
        "dev:apps/team-a/wide".to_owned(),
    )];
    assert_limit(&s.review(&review(&from, 1)).await, "maxAddedEntries", 2000);
    let dir = [(
        "sesame.dev/dir.all".to_owned(),
        "dev:apps/team-a/wide path=/etc/wide".to_owned(),
    )];
    assert_limit(&s.review(&review(&dir, 1)).await, "maxAddedEntries", 2000);

    // Inline mode writes values into the Pod: 600 KB into two containers.
    let inline = |reference: &str| {
        let mut r = review(
            &[
                ("sesame.dev/mode".to_owned(), "inline".to_owned()),
                ("sesame.dev/env.BIG".to_owned(), reference.to_owned()),
            ],
            2,
        );
        r["request"]["namespace"] = json!("dev-team");
        r
    };
    assert_limit(
        &s.review(&inline("dev:apps/dev-team/big")).await,
        "maxPatchBytes",
        1024 * 1024,
    );
    // 100 KiB of control characters, each \u0001 in the patch's JSON: the
    // patch itself is measured before it is sent.
    let r = s.review(&inline("dev:apps/dev-team/controls")).await;
    assert_limit(&r, "maxPatchBytes", 1024 * 1024);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("the size of the patch"),
        "{}",
        short(&r)
    );
    // The same value as a file is fine: it goes into the managed Secret.
    let file = [(
        "sesame.dev/file.big".to_owned(),
        "dev:apps/team-a/wide#k1 path=/etc/big/value".to_owned(),
    )];
    assert_eq!(s.review(&review(&file, 2)).await["allowed"], true);
}

#[tokio::test]
async fn two_spellings_of_a_vault_version_are_one_fetch_and_one_key() {
    let (vault, reads) = counting_vault().await;
    let s = server(&vault, "").await;
    let r = s
        .review(&review(
            &[
                (
                    "sesame.dev/env.A".into(),
                    "vault:apps/team-a/db#password version=01".into(),
                ),
                (
                    "sesame.dev/env.B".into(),
                    "vault:apps/team-a/db#password version=1".into(),
                ),
                (
                    "sesame.dev/env.C".into(),
                    "vault:apps/team-a/db#password version=0001".into(),
                ),
            ],
            1,
        ))
        .await;
    assert_eq!(r["allowed"], true, "{}", short(&r));
    assert_eq!(*reads.lock().unwrap(), ["apps/team-a/db?version=1"]);
    let review_sent = review(&[("sesame.dev/env.A".into(), "x".into())], 1);
    let pod = patched_pod(&review_sent, &r);
    let key = |name: &str| {
        env_var(&pod, "app", name).unwrap()["valueFrom"]["secretKeyRef"]["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(key("A"), key("B"));
    assert_eq!(key("B"), key("C"));
    // A second review with yet another spelling is served from the cache.
    let again = s
        .review(&review(
            &[(
                "sesame.dev/env.A".into(),
                "vault:apps/team-a/db#password version=001".into(),
            )],
            1,
        ))
        .await;
    assert_eq!(again["allowed"], true);
    assert_eq!(reads.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn messages_quote_the_pod_cut_to_the_limit_and_escaped() {
    let (vault, _) = counting_vault().await;
    let s = server(&vault, "").await;
    let long = "y".repeat(200_000);
    for annotations in [
        vec![(
            "sesame.dev/env.A".to_owned(),
            format!("dev:apps/team-a/db {long}=1"),
        )],
        // A path of 1,000 characters that the policy refuses.
        vec![(
            "sesame.dev/env.A".to_owned(),
            format!("dev:apps/team-b/{}", &long[..1000]),
        )],
        vec![(format!("sesame.dev/env.{long}!"), "dev:apps/team-a/db".to_owned())],
    ] {
        let r = s.review(&review(&annotations, 1)).await;
        assert_eq!(r["allowed"], false);
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.len() < 1024,
            "{} bytes: {}…",
            message.len(),
            &message[..300]
        );
        assert!(message.contains('…'), "{message}");
    }
    // U+202E in a path the policy refuses, and in a container's name.
    let r = s
        .review(&review(
            &[(
                "sesame.dev/env.A".to_owned(),
                "dev:apps/team-b/\u{202e}db#password".to_owned(),
            )],
            1,
        ))
        .await;
    let message = r["status"]["message"].as_str().unwrap();
    assert_eq!(r["status"]["code"], 403, "{message}");
    assert!(
        !message.contains('\u{202e}') && message.contains("\\u{202e}"),
        "{message}"
    );
    let mut named = review(
        &[(
            "sesame.dev/env.LOG_LEVEL".to_owned(),
            "dev:apps/team-a/db#password".to_owned(),
        )],
        1,
    );
    named["request"]["object"]["spec"]["containers"][0]["name"] = json!("app\u{202e}\n");
    let r = s.review(&named).await;
    let message = r["status"]["message"].as_str().unwrap();
    assert_eq!(r["status"]["code"], 422, "{message}");
    assert!(
        !message.contains('\u{202e}') && !message.contains('\n'),
        "{message}"
    );
}
