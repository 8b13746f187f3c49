//! A Vault stand-in whose secret reads wait until the test releases them (or
//! forever): a real Vault cannot be told to stall, and time budgets and the
//! graceful drain need a store that is slow on command.
//!
//! It follows Vault's HTTP API documents: the token auth method's
//! `GET /v1/auth/token/lookup-self` (any token is accepted; `data.ttl` 0
//! means a token that does not expire) and the KV secrets engine version 2's
//! "Read Secret Version", `GET /v1/<mount>/data/<path>`, answering
//! `{"data": {"data": {...}, "metadata": {...}}}`.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use super::http::{serve_async, Request, Response};

/// The token the configuration hands Sesame (the stand-in accepts any).
pub const TOKEN: &str = "stand-in-token";

pub struct SlowVault {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub address: String,
    reads: Arc<AtomicUsize>,
    /// Reads received and not yet answered, now and at most so far.
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl SlowVault {
    /// Starts the stand-in; every secret holds `data` (a JSON object).
    pub async fn start(data: Value) -> Self {
        let (release, released) = watch::channel(false);
        let reads = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most_in_flight = Arc::new(AtomicUsize::new(0));
        let seen = reads.clone();
        let (now, most) = (in_flight.clone(), most_in_flight.clone());
        let (address, _) = serve_async(move |_, request: Request| {
            let mut released = released.clone();
            let seen = seen.clone();
            let (now, most) = (now.clone(), most.clone());
            let data = data.clone();
            async move {
                if request.path.starts_with("/v1/auth/token/lookup-self") {
                    return ok(json!({"data": {"ttl": 0, "renewable": false, "policies": ["root"]}}));
                }
                if request.method == "GET" && request.path.starts_with("/v1/secret/data/") {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    // A dropped sender (test over) leaves the read hanging, as intended.
                    let _ = released.wait_for(|r| *r).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    return ok(json!({"data": {"data": data, "metadata": {"version": 1, "deletion_time": "", "destroyed": false}}}));
                }
                Response {
                    status: "404 Not Found",
                    headers: vec![("content-type", "application/json".into())],
                    body: json!({"errors": []}).to_string(),
                }
            }
        })
        .await;
        Self {
            address,
            reads,
            in_flight,
            most_in_flight,
            release,
        }
    }

    /// Reads being held right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most reads that were held at once.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }

    /// Lets every held read, and every later one, answer.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }

    /// Holds every later read again (until the next `release`): a store
    /// that answered and then stopped answering.
    pub fn hold(&self) {
        let _ = self.release.send(false);
    }

    /// Secret reads received so far (answered or held).
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` reads have arrived.
    pub async fn wait_for_reads(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.reads() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store never received read {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A directory with the common test configuration plus the store `slow`
    /// on this stand-in (same policy rule as `dev`), the given
    /// `resolveTimeout`, certificates and a token file; returns it and the CA.
    pub fn prepare(&self, resolve_timeout: &str) -> (tempfile::TempDir, String) {
        use crate::common::{write_certs, write_config, CONFIG, SECRETS};
        let store = format!(
            "stores:\n  - name: slow\n    vault: {{address: \"{}\", auth: {{token: {{file: vault-token}}}}}}\n    cacheTtl: 0s\n",
            self.address
        );
        let config = CONFIG
            .replace(
                "resolveTimeout: 2s",
                &format!("resolveTimeout: {resolve_timeout}"),
            )
            .replacen("stores:\n", &store, 1)
            .replace("stores: [dev]", "stores: [dev, slow]");
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &config, SECRETS);
        std::fs::write(dir.path().join("vault-token"), TOKEN).unwrap();
        let ca = write_certs(&dir.path().join("certs"));
        (dir, ca)
    }
}

fn ok(body: Value) -> Response {
    Response {
        status: "200 OK",
        headers: vec![("content-type", "application/json".into())],
        body: body.to_string(),
    }
}
