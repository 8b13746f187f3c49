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
use sesame::stores::aws::{AwsService, AwsStore, AwsStoreConfig};
use sesame::stores::{
    PodIdentity, PodIdentityConfig, SecretData, SecretLocator, SecretValue, ServiceAccountTokens, Store,
    StoreError, WorkloadIdentity,
};
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
        ..Default::default()
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

/// Creates a role that `principal` may assume, with a policy of its own.
async fn iam_role(endpoint: &str, name: &str, policy: &str) -> String {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":["sts:AssumeRole","sts:AssumeRoleWithWebIdentity"]}]}"#;
    let created = iam(
        endpoint,
        &[
            ("Action", "CreateRole"),
            ("RoleName", name),
            ("AssumeRolePolicyDocument", trust),
        ],
    )
    .await;
    iam(
        endpoint,
        &[
            ("Action", "PutRolePolicy"),
            ("RoleName", name),
            ("PolicyName", "read"),
            ("PolicyDocument", policy),
        ],
    )
    .await;
    xml_field(&created, "Arn").to_owned()
}

fn read_policy(resource: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":["secretsmanager:GetSecretValue","ssm:GetParameter","ssm:GetParametersByPath"],"Resource":"{resource}"}}]}}"#
    )
}

/// `roleArn`: the store assumes the role with the default chain's keys
/// (moto's STS `AssumeRole`), and the role's policy, not the user's, is
/// what moto checks the reads against.
#[tokio::test]
async fn a_role_is_assumed_on_top_of_the_default_chain() {
    const SETUP_REQUESTS: usize = 6;
    let count = SETUP_REQUESTS.to_string();
    let Some(moto) = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", count.as_str())]).await else {
        return;
    };
    // A user who may only assume roles; a role that may read prod/*.
    let (key, secret) = iam_user(&moto.endpoint, "base").await;
    iam(
        &moto.endpoint,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", "base"),
            ("PolicyName", "assume"),
            (
                "PolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRole","Resource":"*"}]}"#,
            ),
        ],
    )
    .await;
    let role = iam_role(&moto.endpoint, "reader", &read_policy("*")).await;
    let admin = moto.admin();
    admin
        .create_secret()
        .name("prod/db")
        .secret_string("role-password")
        .send()
        .await
        .unwrap();

    env_credentials();
    std::env::set_var("AWS_ACCESS_KEY_ID", &key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &secret);
    let config = |role_arn: Option<&str>| AwsStoreConfig {
        region: Some(REGION.into()),
        endpoint: Some(moto.endpoint.clone()),
        sts_endpoint: Some(moto.endpoint.clone()),
        role_arn: role_arn.map(str::to_owned),
        external_id: Some("sesame-external-id".into()),
        session_name: Some("sesame-test".into()),
        ..Default::default()
    };
    let assumed = AwsStore::new(&config(Some(&role))).await.unwrap();
    assumed.check().await.unwrap();
    let r = assumed.read(&loc("prod/db", None)).await.unwrap();
    assert_eq!(text(&r), "role-password");

    // The user's own keys may not read the secret.
    let own = AwsStore::new(&config(None)).await.unwrap();
    let err = own.read(&loc("prod/db", None)).await.unwrap_err();
    assert_eq!(err.class(), "unauthorised", "{err:?}");
    assert!(!format!("{err} {err:?} {own:?} {assumed:?}").contains(&secret));
}

/// SSM Parameter Store on moto: String, SecureString (decrypted), versions
/// and labels, and `GetParametersByPath` for a whole path.
#[tokio::test]
async fn parameter_store_versions_labels_and_paths() {
    let Some(moto) = Moto::start(&[]).await else {
        return;
    };
    env_credentials();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let admin = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new(REGION))
            .endpoint_url(&moto.endpoint)
            .credentials_provider(aws_sdk_ssm::config::Credentials::new(
                "admin", "admin", None, None, "test",
            ))
            .http_client(http)
            .build(),
    );
    use aws_sdk_ssm::types::ParameterType;
    for (name, value, kind) in [
        ("/prod/db/user", "app", ParameterType::String),
        ("/prod/db/password", "pw-1", ParameterType::SecureString),
        ("/prod/db/nested/deep", "not-below", ParameterType::String),
        ("plain", r#"{"a":"1","b":"2"}"#, ParameterType::String),
    ] {
        admin
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(kind)
            .send()
            .await
            .unwrap();
    }
    admin
        .put_parameter()
        .name("/prod/db/password")
        .value("pw-2")
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    admin
        .label_parameter_version()
        .name("/prod/db/password")
        .parameter_version(1)
        .labels("blue")
        .send()
        .await
        .unwrap();

    let store = AwsStore::new(&AwsStoreConfig {
        service: AwsService::ParameterStore,
        region: Some(REGION.into()),
        endpoint: Some(moto.endpoint.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let r = store
        .fetch(
            &[
                loc("prod/db/password", None),
                loc("prod/db/password", Some("1")),
                loc("prod/db/password", Some("blue")),
                loc("plain", None),
                loc("prod/db/@all", None),
                loc("prod/db/missing", None),
                loc("prod/db/password", Some("9")),
                loc("prod/db/password", Some("green")),
                loc("nothing/here/@all", None),
            ],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    assert_eq!(text(r[0].as_ref().unwrap()), "pw-2", "decrypted, current");
    assert_eq!(text(r[1].as_ref().unwrap()), "pw-1", "by version");
    assert_eq!(text(r[2].as_ref().unwrap()), "pw-1", "by label");
    assert_eq!(r[3].as_ref().unwrap().get(Some("b")).unwrap().expose(), b"2");
    let all = r[4].as_ref().unwrap();
    assert_eq!(all.get(Some("user")).unwrap().expose(), b"app");
    assert_eq!(all.get(Some("password")).unwrap().expose(), b"pw-2");
    assert!(
        all.get(Some("deep")).is_err(),
        "only the parameters directly below"
    );
    assert_eq!(r[5].as_ref().unwrap_err(), &StoreError::NotFound);
    assert!(r[6].as_ref().unwrap_err().is_not_found(), "{:?}", r[6]);
    assert!(r[7].as_ref().unwrap_err().is_not_found(), "{:?}", r[7]);
    assert_eq!(r[8].as_ref().unwrap_err(), &StoreError::NotFound);
    assert!(!format!("{store:?} {r:?}").contains("pw-"));
}

/// A stand-in for the TokenRequest API: a token naming the account.
struct FakeTokens;

#[async_trait::async_trait]
impl ServiceAccountTokens for FakeTokens {
    async fn token(
        &self,
        identity: &WorkloadIdentity,
        audience: &str,
        _: std::time::Duration,
    ) -> Result<SecretValue, StoreError> {
        assert_eq!(audience, "sts.amazonaws.com");
        Ok(SecretValue::from(format!(
            "token-of-{}",
            identity.service_account
        )))
    }
}

/// `identity: pod`: each ServiceAccount assumes the role its template
/// names with its own token (moto's `AssumeRoleWithWebIdentity`), and
/// reads with that role's credentials only: `team-a` may read Secrets
/// Manager, `team-b` only Parameter Store. moto checks signatures and
/// policies (by action: it does not match secret ARNs) once its set-up
/// requests and the one unsigned STS call are done, and cannot check an
/// unsigned call itself, so each account gets a moto of its own.
#[tokio::test]
async fn each_service_account_assumes_its_own_role() {
    // Two roles, two policies, one secret; then the STS call.
    const FREE_REQUESTS: usize = 6;
    let count = FREE_REQUESTS.to_string();
    for (me, allowed) in [("a", true), ("b", false)] {
        let Some(moto) = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", count.as_str())]).await else {
            return;
        };
        for (app, action) in [("a", "secretsmanager:GetSecretValue"), ("b", "ssm:GetParameter")] {
            let policy = format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
            );
            iam_role(&moto.endpoint, &format!("team-{app}"), &policy).await;
        }
        moto.admin()
            .create_secret()
            .name("team/shared")
            .secret_string("shared-secret")
            .send()
            .await
            .unwrap();
        env_credentials();
        let pod = PodIdentity::new(PodIdentityConfig::default(), Arc::new(FakeTokens));
        let store = AwsStore::with_identity(
            &AwsStoreConfig {
                region: Some(REGION.into()),
                endpoint: Some(moto.endpoint.clone()),
                sts_endpoint: Some(moto.endpoint.clone()),
                role_arn: Some("arn:aws:iam::123456789012:role/team-{serviceAccount}".into()),
                ..Default::default()
            },
            Some(pod),
        )
        .await
        .unwrap();
        let identity = WorkloadIdentity::new("team", me).unwrap();
        let r = store
            .fetch_as(
                &identity,
                &[loc("team/shared", None)],
                &sesame::stores::RequestLimit::default(),
            )
            .await
            .remove(0);
        if allowed {
            assert_eq!(text(r.as_ref().unwrap()), "shared-secret");
        } else {
            assert_eq!(r.as_ref().unwrap_err().class(), "unauthorised", "{r:?}");
        }
        // Without an identity, the store has no credentials of its own.
        assert_eq!(
            store.read(&loc("team/shared", None)).await.unwrap_err().class(),
            "unauthorised"
        );
    }
}
