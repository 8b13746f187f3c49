//! The real server over real TLS (rustls, h1 and h2) with the AdmissionReview
//! fixtures: each grammar form, each denial, bad input that must not take
//! the server down, and what the metrics and logs show.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const BARE: &str = "real-pod-create-bare.json";
const OWNED: &str = "real-pod-create-generatename-owned.json";
const REPLICASET: &str = "pod-create-replicaset.json";

fn secret_ref(env: &Value) -> (&str, &str) {
    let r = &env["valueFrom"]["secretKeyRef"];
    (r["name"].as_str().unwrap(), r["key"].as_str().unwrap())
}

#[tokio::test]
async fn reviews_without_sesame_annotations_pass_untouched_over_h1_and_h2() {
    let s = TestServer::start().await;
    for name in [
        "pod-create-captured-gke.json",
        REPLICASET,
        "pod-create-replicaset-dryrun.json",
        "pod-create-bare-no-env.json",
    ] {
        for h2 in [false, true] {
            let review = fixture(name);
            let resp = s.client(h2).post(&s.url).json(&review).send().await.unwrap();
            assert_eq!(
                resp.version(),
                if h2 {
                    http::Version::HTTP_2
                } else {
                    http::Version::HTTP_11
                }
            );
            let body: Value = resp.json().await.unwrap();
            let r = &body["response"];
            assert_eq!(r["allowed"], true, "{name}");
            assert_eq!(r["uid"], review["request"]["uid"]);
            assert!(r.get("patch").is_none(), "{name} must not be patched");
        }
    }
}

#[tokio::test]
async fn real_capture_gets_a_secret_key_ref_and_the_marker() {
    let s = TestServer::start().await;
    let review = fixture(BARE);
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true);
    let pod = patched_pod(&review, &r);
    let env = env_var(&pod, "app", "DB_PASSWORD").expect("DB_PASSWORD injected");
    let (secret, key) = secret_ref(env);
    assert!(
        secret.starts_with("sesame-") && secret.len() == "sesame-".len() + 16,
        "{secret}"
    );
    assert_eq!(key, "db.password");
    assert!(env.get("value").is_none(), "no value enters the Pod spec");
    // What the Pod had stays as it was.
    assert_eq!(env_var(&pod, "app", "LOG_LEVEL").unwrap()["value"], "info");
    assert_eq!(pod["metadata"]["annotations"]["sesame.dev/injected"], secret);
    assert_eq!(r["auditAnnotations"]["secret"], secret);
    assert!(r["auditAnnotations"]["granted"]
        .as_str()
        .unwrap()
        .contains("dev:apps/team-a/db#password by rule own-subtree"));
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains("dry run") && warnings.contains(secret),
        "{warnings}"
    );
    assert_no_secret(&r.to_string());
}

#[tokio::test]
async fn generate_name_pod_of_a_replicaset_is_mutated() {
    let s = TestServer::start().await;
    let review = fixture(OWNED);
    assert!(
        review["request"].get("name").is_none(),
        "a generateName create has no request.name"
    );
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true);
    let pod = patched_pod(&review, &r);
    assert!(env_var(&pod, "app", "DB_PASSWORD").is_some());
}

#[tokio::test]
async fn dry_run_request_writes_nothing_and_says_so() {
    let s = TestServer::start().await;
    let review = fixture("real-pod-create-dryrun.json");
    assert_eq!(review["request"]["dryRun"], true);
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true);
    assert!(r["warnings"][0]
        .as_str()
        .unwrap()
        .starts_with("dry run: Sesame did not write Secret team-a/sesame-"));
}

#[tokio::test]
async fn env_from_gives_every_property_with_a_prefix() {
    let s = TestServer::start().await;
    let review = with_annotations(
        BARE,
        &[("sesame.dev/env-from.db", "dev:apps/team-a/db prefix=DB_")],
    );
    let r = s.review(&review).await;
    let pod = patched_pod(&review, &r);
    for (name, key) in [
        ("DB_HOST", "db.host"),
        ("DB_PORT", "db.port"),
        ("DB_USERNAME", "db.username"),
        ("DB_PASSWORD", "db.password"),
        ("DB_DATABASE", "db.database"),
    ] {
        let env = env_var(&pod, "app", name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(secret_ref(env).1, key);
    }
}

#[tokio::test]
async fn one_value_as_a_file_and_every_property_as_files_in_a_directory() {
    let s = TestServer::start().await;
    let review = with_annotations(
        "pod-create-bare-no-env.json",
        &[
            (
                "sesame.dev/file.token",
                "dev:apps/team-a/api-token path=/var/run/secrets/api/token mode=0400",
            ),
            (
                "sesame.dev/dir.tls",
                "dev:apps/team-a/tls path=/etc/tls mode=0440",
            ),
        ],
    );
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
    let pod = patched_pod(&review, &r);
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let mounts = pod["spec"]["containers"][0]["volumeMounts"].as_array().unwrap();
    let by_mount = |path: &str| {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no mount at {path}"));
        assert_eq!(m["readOnly"], true);
        volumes.iter().find(|v| v["name"] == m["name"]).unwrap().clone()
    };
    let token = by_mount("/var/run/secrets/api");
    assert_eq!(
        token["secret"]["items"],
        json!([{"key": "api-token", "path": "token", "mode": 256}])
    );
    let tls = by_mount("/etc/tls");
    let items = tls["secret"]["items"].as_array().unwrap();
    let paths: Vec<&str> = items.iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["ca.crt", "tls.crt", "tls.key"]);
    assert!(items.iter().all(|i| i["mode"] == 0o440));
    assert!(tls["secret"]["secretName"]
        .as_str()
        .unwrap()
        .starts_with("sesame-"));
}

#[tokio::test]
async fn containers_default_to_app_containers_and_init_on_request() {
    let base = fixture(REPLICASET);
    let ns = base["request"]["namespace"].as_str().unwrap().to_owned();
    let path = format!("dev:apps/{ns}/db#password");
    let secrets = format!("apps/{ns}/db:\n  password: x\n");
    let s2 = TestServer::start_with(CONFIG, &secrets).await;
    let containers: Vec<String> = base["request"]["object"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let init: Vec<String> = base["request"]["object"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(containers.len() >= 2 && !init.is_empty());

    let has = |pod: &Value, c: &str| env_var(pod, c, "PW").is_some();
    // Default: every app container, no init container.
    let review = with_annotations(REPLICASET, &[("sesame.dev/env.PW", &path)]);
    let pod = patched_pod(&review, &s2.review(&review).await);
    assert!(containers.iter().all(|c| has(&pod, c)) && !has(&pod, &init[0]));
    // One named container.
    let v = format!("{path} containers={}", containers[1]);
    let review = with_annotations(REPLICASET, &[("sesame.dev/env.PW", &v)]);
    let pod = patched_pod(&review, &s2.review(&review).await);
    assert!(!has(&pod, &containers[0]) && has(&pod, &containers[1]) && !has(&pod, &init[0]));
    // Init containers as well.
    let v = format!("{path} init=true");
    let review = with_annotations(REPLICASET, &[("sesame.dev/env.PW", &v)]);
    let pod = patched_pod(&review, &s2.review(&review).await);
    assert!(has(&pod, &init[0]) && has(&pod, &containers[0]));
    // A container that does not exist.
    let v = format!("{path} containers=nope");
    let r = s2
        .review(&with_annotations(REPLICASET, &[("sesame.dev/env.PW", &v)]))
        .await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 422);
    assert!(r["status"]["message"]
        .as_str()
        .unwrap()
        .contains("no container named \"nope\""));
}

#[tokio::test]
async fn optional_missing_reference_is_skipped_with_a_warning() {
    let s = TestServer::start().await;
    let review = with_annotations(
        BARE,
        &[
            ("sesame.dev/env.GONE", "dev:apps/team-a/not-there optional=true"),
            ("sesame.dev/env.NOPROP", "dev:apps/team-a/db#nope optional=true"),
            ("sesame.dev/env.TOKEN", "dev:apps/team-a/api-token"),
        ],
    );
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
    let pod = patched_pod(&review, &r);
    assert!(env_var(&pod, "app", "GONE").is_none() && env_var(&pod, "app", "NOPROP").is_none());
    assert!(env_var(&pod, "app", "TOKEN").is_some());
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains("sesame.dev/env.GONE") && warnings.contains("sesame.dev/env.NOPROP"),
        "{warnings}"
    );
}

#[tokio::test]
async fn version_pinning_and_inline_mode_where_policy_allows_it() {
    // Inline values go only to a caller with a client certificate.
    let s = TestServer::start_with_client_auth(CONFIG, SECRETS).await;
    let mut review = with_annotations(
        BARE,
        &[
            ("sesame.dev/mode", "inline"),
            ("sesame.dev/env.KEY_V1", "dev:apps/dev-team/signing-key version=1"),
            ("sesame.dev/env.KEY", "dev:apps/dev-team/signing-key"),
            ("sesame.dev/env.USER", "dev:apps/dev-team/db#user"),
        ],
    );
    review["request"]["namespace"] = json!("dev-team");
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
    let pod = patched_pod(&review, &r);
    assert_eq!(env_var(&pod, "app", "KEY_V1").unwrap()["value"], "inline-v1");
    assert_eq!(env_var(&pod, "app", "KEY").unwrap()["value"], "inline-v2");
    assert_eq!(env_var(&pod, "app", "USER").unwrap()["value"], "inline-user");
    assert_eq!(pod["metadata"]["annotations"]["sesame.dev/injected"], "inline");

    // The same request in a namespace without the inline grant is denied.
    let mut review = with_annotations(
        BARE,
        &[
            ("sesame.dev/mode", "inline"),
            ("sesame.dev/env.DB", "dev:apps/team-a/db#password"),
        ],
    );
    review["request"]["namespace"] = json!("team-a");
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    assert!(r["status"]["message"]
        .as_str()
        .unwrap()
        .contains("inline mode is not allowed"));
}

#[tokio::test]
async fn reinvocation_adds_nothing_twice() {
    for name in [BARE, "pod-create-bare-no-env.json", REPLICASET] {
        let ns = fixture(name)["request"]["namespace"].as_str().unwrap().to_owned();
        let secrets = SECRETS.replace("apps/team-a/", &format!("apps/{ns}/"));
        let server = TestServer::start_with(CONFIG, &secrets).await;
        let annotations = [
            ("sesame.dev/env.TOKEN", format!("dev:apps/{ns}/api-token")),
            ("sesame.dev/env-from.db", format!("dev:apps/{ns}/db prefix=DB_")),
            ("sesame.dev/dir.tls", format!("dev:apps/{ns}/tls path=/etc/tls")),
            (
                "sesame.dev/file.key",
                format!("dev:apps/{ns}/signing-key path=/etc/sig/key mode=0400"),
            ),
        ];
        let pairs: Vec<(&str, &str)> = annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let review = with_annotations(name, &pairs);
        let first = server.review(&review).await;
        assert_eq!(first["allowed"], true, "{name}: {first}");
        let pod = patched_pod(&review, &first);
        let mut again = review.clone();
        again["request"]["object"] = pod.clone();
        let second = server.review(&again).await;
        assert_eq!(second["allowed"], true, "{name}: {second}");
        assert!(
            second.get("patch").is_none(),
            "{name}: reinvocation must not patch again: {second}"
        );
    }
}

fn inline_review() -> Value {
    let mut review = with_annotations(
        BARE,
        &[
            ("sesame.dev/mode", "inline"),
            ("sesame.dev/env.USER", "dev:apps/dev-team/db#user"),
        ],
    );
    review["request"]["namespace"] = json!("dev-team");
    review
}

/// Attack 4 (docs/security.md): without client authentication any Pod can
/// forge a review; inline mode would hand it the values in the patch.
#[tokio::test]
async fn inline_values_go_only_to_an_authenticated_caller_unless_the_policy_accepts_the_risk() {
    let s = TestServer::start().await;
    let r = s.review(&inline_review()).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(r.get("patch").is_none(), "{r}");
    assert_eq!(r["status"]["code"], 403);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("--client-ca-file") && message.contains("policy.inline.allowWithoutClientAuth"),
        "{message}"
    );
    assert!(!r.to_string().contains("inline-user"), "{r}");

    let accepting = CONFIG.replace(
        "namespaces: [\"dev-*\"]",
        "namespaces: [\"dev-*\"]\n    allowWithoutClientAuth: true",
    );
    assert_ne!(accepting, CONFIG);
    let s = TestServer::start_with(&accepting, SECRETS).await;
    let review = inline_review();
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
    let pod = patched_pod(&review, &r);
    assert_eq!(env_var(&pod, "app", "USER").unwrap()["value"], "inline-user");
}

/// Attack 4: with `--client-ca-file`, a client without a certificate (or
/// with one of another CA) is refused in the TLS handshake; the one with a
/// certificate of the CA is served.
#[tokio::test]
async fn with_a_client_ca_a_client_without_a_certificate_is_refused_at_the_tls_layer() {
    let s = TestServer::start_with_client_auth(CONFIG, SECRETS).await;
    let review = fixture(BARE);
    for h2 in [false, true] {
        let err = client_for(&s.ca_pem, h2)
            .post(&s.url)
            .json(&review)
            .send()
            .await
            .expect_err("no client certificate");
        assert!(err.is_connect() || err.is_request(), "{err:?}");
        let (_, stranger) = client_ca_and_identity("kube-apiserver");
        let err = client_with_identity(&s.ca_pem, &stranger, h2)
            .post(&s.url)
            .json(&review)
            .send()
            .await
            .expect_err("a certificate of another CA");
        assert!(err.is_connect() || err.is_request(), "{err:?}");
    }
    // Refused in the handshake itself: rustls reports the missing certificate.
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(s.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(s.handle.webhook_addr)
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let outcome = async {
        let mut tls = connector
            .connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        // TLS 1.3 finishes the client's side first; the refusal arrives as an alert.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    }
    .await;
    let err = outcome.expect_err("the handshake must fail");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "refused for want of a certificate: {err}"
    );
    // With its certificate the caller is served.
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
}

/// Attack 3 (docs/security.md): `request.namespace` is checked before it is
/// used; reviews the webhook is not registered for are refused with a 400.
#[tokio::test]
async fn reviews_for_no_real_namespace_or_of_the_wrong_shape_are_refused() {
    let s = TestServer::start().await;
    // Would be granted apps/team-b/... through apps/{namespace}/** if the
    // namespace were read as a glob; inline dev-* would return values.
    for namespace in [
        "*",
        "team-?",
        "dev-*",
        "team-[ab]",
        "Team-B",
        "team-b/x",
        "",
        "team\nb",
    ] {
        let mut review = with_annotations(BARE, &[("sesame.dev/env.DB", "dev:apps/team-b/db#password")]);
        review["request"]["namespace"] = json!(namespace);
        review["request"]["uid"] = json!("6f2a1f0e-0000-4000-8000-00000000000a");
        let r = s.review(&review).await;
        assert_eq!(r["allowed"], false, "{namespace:?}: {r}");
        assert_eq!(r["status"]["code"], 400, "{namespace:?}: {r}");
        assert!(r.get("patch").is_none(), "{r}");
        assert!(!r.to_string().contains("s3cr3t"), "{r}");
    }
    let mut review = inline_review();
    review["request"]["namespace"] = json!("dev-*");
    let r = s.review(&review).await;
    assert_eq!(r["status"]["code"], 400, "{r}");
    assert!(
        r["status"]["message"].as_str().unwrap().contains("DNS-1123"),
        "{r}"
    );

    // Not what the webhook is registered for: kind, operation, subresource.
    for (name, edit) in [
        ("configmap-create.json", json!({})),
        ("pod-update.json", json!({})),
        ("real-pod-update.json", json!({})),
        (BARE, json!({"operation": "DELETE"})),
        (BARE, json!({"subResource": "status"})),
        (
            BARE,
            json!({"kind": {"group": "apps", "version": "v1", "kind": "Pod"}}),
        ),
        (
            BARE,
            json!({"kind": {"group": "", "version": "v2", "kind": "Pod"}}),
        ),
    ] {
        let mut review = fixture(name);
        for (k, v) in edit.as_object().unwrap() {
            review["request"][k] = v.clone();
        }
        let r = s.review(&review).await;
        assert_eq!(r["allowed"], false, "{name} {edit}: {r}");
        assert_eq!(r["status"]["code"], 400, "{name} {edit}: {r}");
    }
    // A uid that cannot be echoed safely is not a review.
    for uid in [json!(""), json!("a\nb"), json!("x".repeat(200)), json!(7)] {
        let mut review = fixture(BARE);
        review["request"]["uid"] = uid.clone();
        let resp = s.client(false).post(&s.url).json(&review).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{uid}");
    }
    let mut review = fixture(BARE);
    review["request"]["dryRun"] = json!("yes");
    let resp = s.client(false).post(&s.url).json(&review).send().await.unwrap();
    assert_eq!(resp.status(), 400, "dryRun must be a boolean");
    still_serves(&s).await;
}

/// Attack 2 (docs/security.md): a Pod that asks for nothing but refers to a
/// managed Secret in any field that names a Secret is denied; so is an
/// ephemeral container that refers to one.
#[tokio::test]
async fn managed_secrets_are_guarded_in_every_field_and_in_ephemeral_containers() {
    let s = TestServer::start().await;
    let fields = [
        json!({"volumes": [{"name": "v", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "sesame-0123456789abcdef"}}}]}),
        json!({"volumes": [{"name": "v", "flexVolume": {"driver": "d", "secretRef": {"name": "sesame-0123456789abcdef"}}}]}),
        json!({"volumes": [{"name": "v", "azureFile": {"secretName": "sesame-0123456789abcdef", "shareName": "s"}}]}),
        json!({"volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "sesame-0123456789abcdef"}}]}}]}),
        json!({"imagePullSecrets": [{"name": "sesame-0123456789abcdef"}]}),
        json!({"ephemeralContainers": [{"name": "d", "image": "busybox", "envFrom": [{"secretRef": {"name": "sesame-0123456789abcdef"}}]}]}),
    ];
    for extra in fields {
        let mut review = fixture(BARE);
        let spec = review["request"]["object"]["spec"].as_object_mut().unwrap();
        spec.extend(extra.as_object().unwrap().clone());
        let r = s.review(&review).await;
        assert_eq!(r["allowed"], false, "{extra}: {r}");
        assert_eq!(r["status"]["code"], 403, "{extra}: {r}");
    }
    // Adding an ephemeral container (pods/ephemeralcontainers UPDATE).
    let mut review = fixture(BARE);
    review["request"]["operation"] = json!("UPDATE");
    review["request"]["subResource"] = json!("ephemeralcontainers");
    review["request"]["oldObject"] = review["request"]["object"].clone();
    review["request"]["object"]["spec"]["ephemeralContainers"] = json!([{
        "name": "debugger", "image": "busybox",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "sesame-0123456789abcdef", "key": "k"}}}]
    }]);
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 403, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("ephemeral container"),
        "{r}"
    );
    // One that uses no managed Secret is admitted, unpatched.
    review["request"]["object"]["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox", "envFrom": [{"secretRef": {"name": "debug-tools"}}]}]);
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("patch").is_none(), "{r}");
}

#[tokio::test]
async fn the_namespace_is_the_requests_not_the_pods() {
    let s = TestServer::start().await;
    let mut review = with_annotations(BARE, &[("sesame.dev/env.DB", "dev:apps/team-b/db#password")]);
    review["request"]["namespace"] = json!("team-a");
    review["request"]["object"]["metadata"]["namespace"] = json!("team-b");
    let r = s.review(&review).await;
    assert_eq!(
        r["allowed"], false,
        "a Pod cannot claim another namespace in its metadata"
    );
    assert_eq!(r["status"]["code"], 403);
}

async fn denied(s: &TestServer, annotations: &[(&str, &str)]) -> (u64, String) {
    let r = s.review(&with_annotations(BARE, annotations)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(r.get("patch").is_none());
    let message = r["status"]["message"].as_str().unwrap().to_owned();
    assert_no_secret(&message);
    (r["status"]["code"].as_u64().unwrap(), message)
}

#[tokio::test]
async fn denials_name_what_to_fix_and_never_a_value() {
    let s = TestServer::start().await;

    let (code, m) = denied(
        &s,
        &[("sesame.dev/env.X", "dev:apps/team-a/db#password colour=red")],
    )
    .await;
    assert_eq!(code, 400);
    assert!(m.contains("sesame.dev/env.X") && m.contains("colour"), "{m}");

    let (code, m) = denied(&s, &[("sesame.dev/env.X", "vault:secret/team-a/db#password")]).await;
    assert_eq!(code, 400);
    assert!(
        m.contains("no store is named \"vault\"") && m.contains("dev"),
        "{m}"
    );

    let (code, m) = denied(&s, &[("sesame.dev/env.X", "dev:apps/team-b/db#password")]).await;
    assert_eq!(code, 403);
    for part in [
        "sesame.dev/env.X",
        "\"dev\"",
        "apps/team-b/db",
        "own-subtree",
        "apps/team-a/**",
    ] {
        assert!(m.contains(part), "{part} missing in: {m}");
    }

    let (code, m) = denied(
        &s,
        &[("sesame.dev/env.X", "dev:apps/team-a/../team-b/db#password")],
    )
    .await;
    assert_eq!(code, 400, "{m}");

    let (code, m) = denied(&s, &[("sesame.dev/env.X", "dev:apps/team-a/missing#password")]).await;
    assert_eq!(code, 404);
    assert!(
        m.contains("secret not found") && m.contains("apps/team-a/missing"),
        "{m}"
    );

    let (code, m) = denied(&s, &[("sesame.dev/env.X", "dev:apps/team-a/db#nope")]).await;
    assert_eq!(code, 404);
    assert!(m.contains("no property \"nope\""), "{m}");

    let (code, m) = denied(&s, &[("sesame.dev/env.X", "dev:apps/team-a/db")]).await;
    assert_eq!(code, 404);
    assert!(m.contains("name one with #property"), "{m}");

    let (code, m) = denied(&s, &[("sesame.dev/env.9X", "dev:apps/team-a/api-token")]).await;
    assert_eq!(code, 400);
    assert!(m.contains("not a valid env var name"), "{m}");

    let (code, m) = denied(&s, &[("sesame.dev/env-from.bad", "dev:apps/team-a/bad-names")]).await;
    assert_eq!(code, 422);
    assert!(m.contains("\"1st\""), "{m}");

    // LOG_LEVEL is already set in the captured Pod.
    let (code, m) = denied(&s, &[("sesame.dev/env.LOG_LEVEL", "dev:apps/team-a/api-token")]).await;
    assert_eq!(code, 422);
    assert!(
        m.contains("already defines env var LOG_LEVEL") && m.contains("\"app\""),
        "{m}"
    );

    // The captured Pod mounts its ConfigMap at /etc/web.
    let (code, m) = denied(&s, &[("sesame.dev/dir.web", "dev:apps/team-a/tls path=/etc/web")]).await;
    assert_eq!(code, 422);
    assert!(m.contains("already mounts volume \"config\" at /etc/web"), "{m}");
}

async fn still_serves(s: &TestServer) {
    let r = s.review(&fixture(BARE)).await;
    assert_eq!(r["allowed"], true);
}

#[tokio::test]
async fn bad_http_requests_get_clear_errors_and_the_server_keeps_serving() {
    let s = TestServer::start().await;
    let c = s.client(false);
    let post = |body: Vec<u8>| {
        c.post(&s.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let r = post(b"this is not json".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not JSON"));

    let full = serde_json::to_vec(&fixture(BARE)).unwrap();
    assert_eq!(post(full[..full.len() / 2].to_vec()).await.unwrap().status(), 400);
    assert_eq!(post(vec![0xff, 0xfe, 0x7b, 0x22]).await.unwrap().status(), 400);
    assert_eq!(post(vec![b' '; 200 * 1024]).await.unwrap().status(), 413);

    let r = post(br#"{"apiVersion":"v1","kind":"Pod","metadata":{}}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("expected an AdmissionReview"));
    let mut old = fixture(BARE);
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    assert_eq!(c.post(&s.url).json(&old).send().await.unwrap().status(), 400);
    let r = post(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    assert_eq!(c.get(&s.url).send().await.unwrap().status(), 405);
    let other = s.url.replace("/mutate", "/validate");
    assert_eq!(
        c.post(&other).json(&fixture(BARE)).send().await.unwrap().status(),
        404
    );
    still_serves(&s).await;
}

#[tokio::test]
async fn plain_http_garbage_and_slow_clients_on_the_tls_port_do_no_harm() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start().await;
    let addr = s.handle.webhook_addr;

    // Plain HTTP on the TLS port: the handshake fails and the connection closes.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // Random bytes.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut Vec::new()))
        .await
        .unwrap();

    // A client that connects and never says anything is dropped after the client timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut Vec::new())).await;
    assert!(closed.is_ok(), "an idle connection must be closed by the server");

    // A client that completes TLS but sends its headers slowly is dropped too.
    let connector = tls_connector(&s.ca_pem);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "a slow-headers client must be cut off");
    still_serves(&s).await;
}

#[tokio::test]
async fn tls_offers_h2_and_http11_and_only_tls12_and_13() {
    let s = TestServer::start().await;
    for (alpn, versions) in [
        (b"h2".to_vec(), &[&rustls::version::TLS13][..]),
        (b"http/1.1".to_vec(), &[&rustls::version::TLS12][..]),
    ] {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(s.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.clone()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(s.handle.webhook_addr)
            .await
            .unwrap();
        let tls = connector
            .connect(rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn.as_slice()));
    }
}

#[tokio::test]
async fn admin_port_reports_readiness_and_metrics() {
    let s = TestServer::start().await;
    let c = reqwest::Client::new();
    assert_eq!(c.get(s.admin("/livez")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.admin("/healthz")).send().await.unwrap().status(), 200);
    let mut ready = false;
    for _ in 0..50 {
        if c.get(s.admin("/readyz")).send().await.unwrap().status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready once TLS serves and the file store is readable");
    s.review(&fixture(BARE)).await;
    s.review(&fixture(BARE)).await;
    s.review(&with_annotations(
        BARE,
        &[("sesame.dev/env.X", "dev:apps/team-b/db#password")],
    ))
    .await;
    s.review(&fixture("configmap-create.json")).await;
    let text = c
        .get(s.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sesame_admission_reviews_total{outcome=\"mutated\"} 2",
        "sesame_admission_reviews_total{outcome=\"denied_policy\"} 1",
        "sesame_admission_reviews_total{outcome=\"denied_request\"} 1",
        "sesame_cache_misses_total{store=\"dev\"} 1",
        "sesame_cache_hits_total{store=\"dev\"} 1",
        "sesame_store_request_duration_seconds_count{store=\"dev\",provider=\"file\"} 1",
        "sesame_admission_review_duration_seconds_count 4",
        "sesame_ready 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert_no_secret(&text);
}

/// A store that fails its check is reported, and the replica stays ready:
/// Pods that do not need that store are still admitted.
#[tokio::test]
async fn a_store_that_fails_its_check_leaves_the_replica_ready() {
    let config = CONFIG.replace("file: {path: secrets.yaml}", "file: {path: nowhere.yaml}");
    let s = TestServer::start_with(&config, SECRETS).await;
    let c = reqwest::Client::new();
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = c
            .get(s.admin("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("sesame_store_up{store=\"dev\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sample(&metrics, "sesame_store_up{store=\"dev\"}"),
        Some(0.0),
        "{metrics}"
    );
    let resp = c.get(s.admin("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sample(&metrics, "sesame_ready"), Some(1.0), "{metrics}");
    // A Pod that asks for no secret is still admitted.
    let r = s.review(&fixture("pod-create-bare-no-env.json")).await;
    assert_eq!(r["allowed"], true, "{r}");
}

/// The value of one sample line of the metrics text (`name{labels}` exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

async fn metrics_text(admin_url: String) -> String {
    reqwest::get(admin_url).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn metrics_carry_build_info_and_process_figures_and_parse() {
    let s = TestServer::start().await;
    let text = metrics_text(s.admin("/metrics")).await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    // Every sample line is `name{labels} value` with a number.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    let build = text
        .lines()
        .find(|l| l.starts_with("sesame_build_info{"))
        .unwrap_or_else(|| panic!("no build info in\n{text}"));
    assert!(build.contains(&format!("version=\"{version}\"")), "{build}");
    assert!(build.ends_with(" 1"), "{build}");
    let cpu = sample(&text, "process_cpu_seconds_total").unwrap();
    assert!(cpu >= 0.0, "{cpu}");
    let rss = sample(&text, "process_resident_memory_bytes").unwrap();
    assert!(rss > 1_000_000.0, "{rss}");
    let fds = sample(&text, "process_open_fds").unwrap();
    let max = sample(&text, "process_max_fds").unwrap();
    assert!(fds >= 3.0 && fds <= max, "{fds} of {max}");
    let start = sample(&text, "process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(start > now - 3600.0 && start <= now + 1.0, "{start} vs {now}");
    assert!(
        sample(&text, "sesame_admission_reviews_in_flight") == Some(0.0),
        "{text}"
    );
    assert!(sample(&text, "process_threads").unwrap() >= 2.0);
}

#[tokio::test]
async fn a_newline_in_an_annotation_key_cannot_forge_a_text_log_line() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let ca = write_certs(&dir.path().join("certs"));
    let mut server = ServeProcess::spawn_with(
        dir.path(),
        &[],
        ProcessOptions {
            text_logs: true,
            ..ProcessOptions::default()
        },
    )
    .await;
    let forged = "sesame.dev/env.X\n2030-01-01T00:00:00.000000Z  INFO review{uid=forged}: sesame::admission: admission decision allowed=true mutated=false\r\u{1b}[2K\u{202e}";
    let review = with_annotations(BARE, &[(forged, "dev:apps/team-b/db#password")]);
    let answer = client_for(&ca, false)
        .post(server.url())
        .json(&review)
        .send()
        .await
        .unwrap();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["response"]["allowed"], false, "{body}");
    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).await;
    let lines = server.lines();
    let decisions: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("admission decision"))
        .collect();
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert!(decisions[0].contains("allowed=false"), "{}", decisions[0]);
    assert!(!lines.iter().any(|l| l.starts_with("2030-")), "{lines:#?}");
    for l in &lines {
        assert!(
            !l.chars()
                .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
            "raw control character in {l:?}"
        );
    }
    assert!(
        decisions[0].contains("\\n2030-01-01"),
        "escaped, still readable: {}",
        decisions[0]
    );
}

/// `refresh=` below the platform's `rotation.minRefresh` is denied before
/// anything is fetched, with the minimum in the sentence; at or above it
/// the Pod is admitted, and its Secret is another one than the same
/// references' without `refresh=` (one cadence per Secret).
#[tokio::test]
async fn refresh_below_the_platform_minimum_is_denied_with_the_minimum() {
    let config = format!("{CONFIG}rotation:\n  minRefresh: 5m\n");
    let s = TestServer::start_with(&config, SECRETS).await;
    let (code, m) = denied(
        &s,
        &[("sesame.dev/env.X", "dev:apps/team-a/db#password refresh=1m")],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        m,
        "annotation \"sesame.dev/env.X\": refresh=1m is shorter than this cluster allows; ask for refresh=5m or longer (rotation.minRefresh in Sesame's configuration)"
    );
    let metrics = reqwest::get(s.admin("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("sesame_cache_misses_total{store=\"dev\"}"),
        "nothing fetched: {metrics}"
    );

    let secret_of = |r: &Value, review: &Value| {
        let pod = patched_pod(review, r);
        let env = env_var(&pod, "app", "X").expect("X injected").clone();
        env["valueFrom"]["secretKeyRef"]["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let with = with_annotations(
        BARE,
        &[("sesame.dev/env.X", "dev:apps/team-a/db#password refresh=15m")],
    );
    let r = s.review(&with).await;
    assert_eq!(r["allowed"], true, "{r}");
    let without = with_annotations(BARE, &[("sesame.dev/env.X", "dev:apps/team-a/db#password")]);
    let r2 = s.review(&without).await;
    assert_ne!(secret_of(&r, &with), secret_of(&r2, &without));
}

/// The Pods of one ReplicaSet, as the API server sends them, differ in
/// their uid and their token volume's random name: the second is answered
/// from the first one's verdict, with the same patch. A byte-for-byte copy
/// of that review for another namespace is evaluated, and refused.
#[tokio::test]
async fn the_pods_of_one_replica_set_share_one_verdict_and_no_other_namespace_does() {
    let s = TestServer::start().await;
    let first = fixture(OWNED);
    let mut second = first.clone();
    second["request"]["uid"] = json!("0f6c2d2e-1b8e-4f4e-9c0e-3a1f5d9b7c21");
    let volumes = second["request"]["object"]["spec"]["volumes"]
        .as_array_mut()
        .unwrap();
    let token = volumes.iter_mut().find(|v| v.get("projected").is_some()).unwrap();
    token["name"] = json!("kube-api-access-x9q7k");
    let mounts = second["request"]["object"]["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap();
    mounts.iter_mut().find(|m| m["name"] != "config").unwrap()["name"] = json!("kube-api-access-x9q7k");

    let a = s.review(&first).await;
    let b = s.review(&second).await;
    assert_eq!(
        (a["allowed"].clone(), b["allowed"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(
        b["uid"], second["request"]["uid"],
        "each answer carries its own review's uid"
    );
    assert_eq!(a["patch"], b["patch"]);
    let metrics = metrics_text(s.admin("/metrics")).await;
    assert_eq!(
        sample(&metrics, "sesame_plan_memo_total{result=\"miss\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "sesame_plan_memo_total{result=\"hit\"}"),
        Some(1.0)
    );

    let mut copy = first.clone();
    copy["request"]["namespace"] = json!("team-b");
    copy["request"]["object"]["metadata"]["namespace"] = json!("team-b");
    let r = s.review(&copy).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 403);
    let metrics = metrics_text(s.admin("/metrics")).await;
    assert_eq!(
        sample(&metrics, "sesame_plan_memo_total{result=\"hit\"}"),
        Some(1.0)
    );
}
