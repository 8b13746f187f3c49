//! The AWS Secrets Manager store against a real `moto_server` (PyPI
//! `moto[server]`; scripts/deps/20-moto.sh installs it), started on a free
//! loopback port per test. Secrets are created with the SDK.
//!
//! moto does not simulate throttling, so the throttling tests use a small
//! local HTTP server that answers as Secrets Manager does when it throttles:
//! the AWS JSON 1.1 protocol's error shape (`X-Amzn-ErrorType` header and a
//! `{"__type": "ThrottlingException", "message": ...}` body, HTTP 400), as
//! documented in the Secrets Manager API reference ("Common Errors") and the
//! Smithy `awsJson1_1` protocol specification.
//!
//! The store takes credentials from the SDK's default chain; these tests give
//! it environment keys (and switch instance metadata off, so no test ever
//! reaches for 169.254.169.254).

#![cfg(feature = "aws")]
// A test crate: its helpers outside `#[test]` functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/http.rs"]
mod http;
#[path = "support/tools.rs"]
mod tools;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use aws_sdk_secretsmanager as sm;
use sesame::stores::aws::{AwsStore, AwsStoreConfig};
use sesame::stores::{SecretData, SecretLocator, Store, StoreError};
use sm::primitives::Blob;

const REGION: &str = "us-east-1";

/// Environment credentials for every store in this process, set once before
/// any store is built. Profiles, web identity, container credentials and
/// instance metadata are switched off so that only the environment counts.
fn env_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        ] {
            std::env::remove_var(var);
        }
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDTESTINGKEY");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing-secret-key");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/sesame-test/config");
        std::env::set_var(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/sesame-test/credentials",
        );
    });
}

/// A running `moto_server`, killed on drop.
struct Moto {
    _server: tools::Server,
    endpoint: String,
}

impl Moto {
    async fn start(env: &[(&str, &str)]) -> Option<Self> {
        let bin = tools::find_tool("moto_server", "scripts/deps/20-moto.sh")?;
        let port = tools::free_port();
        let mut command = Command::new(bin);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        command.envs(env.iter().copied());
        let moto = Self {
            _server: tools::Server::spawn(command),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        tools::wait_healthy(&format!("{}/moto-api/", moto.endpoint)).await;
        Some(moto)
    }

    /// An SDK client for setting up secrets, with its own fixed keys.
    fn admin(&self) -> sm::Client {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = sm::Config::builder()
            .behavior_version(sm::config::BehaviorVersion::latest())
            .region(sm::config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(sm::config::Credentials::new("admin", "admin", None, None, "test"))
            .http_client(http)
            .build();
        sm::Client::from_conf(config)
    }

    async fn store(&self) -> AwsStore {
        store_at(&self.endpoint).await
    }
}

async fn store_at(endpoint: &str) -> AwsStore {
    env_credentials();
    AwsStore::new(&AwsStoreConfig {
        region: Some(REGION.into()),
        endpoint: Some(endpoint.into()),
    })
    .await
    .unwrap()
}

fn loc(path: &str, version: Option<&str>) -> SecretLocator {
    SecretLocator::new(path, version.map(str::to_owned))
}

fn text(data: &SecretData) -> &str {
    data.get(None).unwrap().expose_str().unwrap()
}

#[tokio::test]
async fn plain_json_binary_and_missing_secrets() {
    let Some(moto) = Moto::start(&[]).await else {
        return;
    };
    let admin = moto.admin();
    let plain = admin
        .create_secret()
        .name("apps/plain")
        .secret_string("plain-value")
        .send()
        .await
        .unwrap();
    admin
        .create_secret()
        .name("apps/json")
        .secret_string(r#"{"user":"app","password":"json-password","port":5432}"#)
        .send()
        .await
        .unwrap();
    let bytes = vec![0u8, 1, 2, 254, 255, b'x'];
    admin
        .create_secret()
        .name("apps/binary")
        .secret_binary(Blob::new(bytes.clone()))
        .send()
        .await
        .unwrap();

    let store = moto.store().await;
    store.check().await.unwrap();
    // Several current versions at once: one BatchGetSecretValue call.
    let batch = store
        .fetch(
            &[
                loc("apps/plain", None),
                loc("apps/json", None),
                loc("apps/binary", None),
                loc("apps/missing", None),
                loc(plain.arn().unwrap(), None),
            ],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    // One at a time: GetSecretValue.
    let mut single = Vec::new();
    for path in ["apps/plain", "apps/json", "apps/binary", "apps/missing"] {
        single.push(
            store
                .fetch(&[loc(path, None)], &sesame::stores::RequestLimit::default())
                .await
                .remove(0),
        );
    }
    for r in [&batch[..4], &single[..]] {
        assert_eq!(text(r[0].as_ref().unwrap()), "plain-value");
        let json = r[1].as_ref().unwrap();
        assert_eq!(json.get(Some("password")).unwrap().expose(), b"json-password");
        assert_eq!(json.get(Some("port")).unwrap().expose(), b"5432");
        assert_eq!(r[2].as_ref().unwrap().get(None).unwrap().expose(), &bytes[..]);
        assert_eq!(r[3].as_ref().unwrap_err(), &StoreError::NotFound);
    }
    assert_eq!(text(batch[4].as_ref().unwrap()), "plain-value", "by ARN");

    let shown = format!("{store:?} {batch:?} {single:?}");
    for secret in ["plain-value", "json-password", "testing-secret-key"] {
        assert!(!shown.contains(secret), "Debug output leaks {secret}: {shown}");
    }
    assert!(shown.contains("batch: true"), "{shown}");
}

#[tokio::test]
async fn versions_by_id_and_by_stage() {
    let Some(moto) = Moto::start(&[]).await else {
        return;
    };
    let admin = moto.admin();
    let first = admin
        .create_secret()
        .name("apps/rotated")
        .secret_string("one")
        .send()
        .await
        .unwrap();
    let first_id = first.version_id().unwrap().to_owned();
    admin
        .put_secret_value()
        .secret_id("apps/rotated")
        .secret_string("two")
        .send()
        .await
        .unwrap();
    let staged = admin
        .put_secret_value()
        .secret_id("apps/rotated")
        .secret_string("three")
        .version_stages("blue")
        .send()
        .await
        .unwrap();
    let staged_id = staged.version_id().unwrap().to_owned();

    let store = moto.store().await;
    let r = store
        .fetch(
            &[
                loc("apps/rotated", None),
                loc("apps/rotated", Some("AWSCURRENT")),
                loc("apps/rotated", Some("AWSPREVIOUS")),
                loc("apps/rotated", Some("blue")),
                loc("apps/rotated", Some(&first_id)),
                loc("apps/rotated", Some(&staged_id)),
                loc("apps/rotated", Some("green")),
                loc("apps/rotated", Some("00000000-0000-4000-8000-000000000000")),
                loc("apps/nothing", Some("AWSCURRENT")),
            ],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    let texts: Vec<&str> = r[..6].iter().map(|x| text(x.as_ref().unwrap())).collect();
    assert_eq!(texts, ["two", "two", "one", "three", "one", "three"]);
    assert_eq!(
        r[6].as_ref().unwrap_err(),
        &StoreError::VersionNotFound,
        "no such stage"
    );
    assert_eq!(
        r[7].as_ref().unwrap_err(),
        &StoreError::VersionNotFound,
        "no such id"
    );
    assert!(r[8].as_ref().unwrap_err().is_not_found(), "no such secret");
}

/// A stand-in Secrets Manager endpoint: the first `throttle` requests get the
/// documented ThrottlingException answer, the rest a GetSecretValue answer.
/// Returns the endpoint and the request counter.
async fn throttling_endpoint(throttle: usize) -> (String, Arc<AtomicUsize>) {
    http::serve(move |n, request| {
        assert_eq!(request.method, "POST");
        assert_eq!(request.header("x-amz-target"), Some("secretsmanager.GetSecretValue"));
        let json = ("content-type", "application/x-amz-json-1.1".to_owned());
        if n < throttle {
            http::Response {
                status: "400 Bad Request",
                headers: vec![json, ("x-amzn-errortype", "ThrottlingException".to_owned())],
                body: r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into(),
            }
        } else {
            http::Response {
                status: "200 OK",
                headers: vec![json],
                body: r#"{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:apps/x-AbCdEf","Name":"apps/x","SecretString":"after-throttling","VersionId":"EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE","VersionStages":["AWSCURRENT"],"CreatedDate":1.523477145713E9}"#.into(),
            }
        }
    })
    .await
}

#[tokio::test]
async fn throttling_is_retried_within_bounds_then_reported() {
    let (endpoint, count) = throttling_endpoint(usize::MAX).await;
    let store = store_at(&endpoint).await;
    let started = std::time::Instant::now();
    let err = store
        .fetch(&[loc("apps/x", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(err, StoreError::Throttled);
    assert_eq!(count.load(Ordering::SeqCst), 3, "three attempts, then give up");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let (endpoint, count) = throttling_endpoint(2).await;
    let store = store_at(&endpoint).await;
    let ok = store
        .fetch(&[loc("apps/x", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .unwrap();
    assert_eq!(text(&ok), "after-throttling");
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn unreachable_endpoint_is_unreachable() {
    let port = tools::free_port();
    let store = store_at(&format!("http://127.0.0.1:{port}")).await;
    let err = store
        .fetch(&[loc("apps/x", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(err.class(), "unreachable", "{err:?}");
}

/// Sends one IAM query-protocol request during moto's unauthenticated
/// set-up phase (moto picks the service from the credential scope).
async fn iam(endpoint: &str, form: &[(&str, &str)]) -> String {
    let mut body = vec![("Version", "2010-05-08")];
    body.extend_from_slice(form);
    let resp = reqwest::Client::new()
        .post(endpoint)
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=admin/20250101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
        )
        .form(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{form:?}: {}", resp.status());
    resp.text().await.unwrap()
}

fn xml_field<'a>(xml: &'a str, tag: &str) -> &'a str {
    let start = xml.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>")).unwrap() + start;
    &xml[start..end]
}

async fn iam_user(endpoint: &str, name: &str) -> (String, String) {
    iam(endpoint, &[("Action", "CreateUser"), ("UserName", name)]).await;
    let key = iam(endpoint, &[("Action", "CreateAccessKey"), ("UserName", name)]).await;
    (
        xml_field(&key, "AccessKeyId").to_owned(),
        xml_field(&key, "SecretAccessKey").to_owned(),
    )
}

/// moto checks signatures and IAM policies once its first
/// `INITIAL_NO_AUTH_ACTION_COUNT` requests (the set-up below) are done.
#[tokio::test]
async fn signed_with_environment_keys_and_checked_by_iam() {
    const SETUP_REQUESTS: usize = 7;
    let count = SETUP_REQUESTS.to_string();
    let Some(moto) = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", count.as_str())]).await else {
        return;
    };
    let (reader_key, reader_secret) = iam_user(&moto.endpoint, "sesame").await;
    // GetSecretValue only: BatchGetSecretValue is refused, and the store must
    // fall back to single calls.
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:GetSecretValue","Resource":"*"}]}"#;
    iam(
        &moto.endpoint,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", "sesame"),
            ("PolicyName", "read-secrets"),
            ("PolicyDocument", policy),
        ],
    )
    .await;
    let (nobody_key, nobody_secret) = iam_user(&moto.endpoint, "nobody").await;
    let admin = moto.admin();
    for (name, value) in [("prod/db", "db-password"), ("prod/api", "api-key")] {
        admin
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap();
    }
    // From here on moto enforces authentication.

    env_credentials();
    std::env::set_var("AWS_ACCESS_KEY_ID", &reader_key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &reader_secret);
    let store = moto.store().await;
    let r = store
        .fetch(
            &[loc("prod/db", None), loc("prod/api", None)],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    assert_eq!(text(r[0].as_ref().unwrap()), "db-password");
    assert_eq!(text(r[1].as_ref().unwrap()), "api-key");
    assert!(format!("{store:?}").contains("batch: false"), "{store:?}");

    std::env::set_var("AWS_SECRET_ACCESS_KEY", "not-the-secret-key");
    let wrong_key = moto.store().await;
    let err = wrong_key
        .fetch(&[loc("prod/db", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(err.class(), "unauthorised", "{err:?}");
    assert!(!format!("{err} {err:?} {wrong_key:?}").contains("not-the-secret-key"));

    std::env::set_var("AWS_ACCESS_KEY_ID", &nobody_key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &nobody_secret);
    let nobody = moto.store().await;
    let err = nobody
        .fetch(&[loc("prod/db", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(err.class(), "unauthorised", "{err:?}");
    assert!(!format!("{err} {err:?}").contains(&nobody_secret));
}
