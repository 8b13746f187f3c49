//! The `sesame` binary's commands as a user runs them: `mutate` on Pods,
//! workloads, several documents and stdin; `check-config` on good and broken
//! files; `gen-certs` and the certificates it writes; and the audit log of
//! `serve --log-format json`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde::Deserialize;
use serde_json::{json, Value};

/// Runs the binary in `dir` (so that no stray `sesame.yaml` is picked up).
fn sesame(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sesame"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8(out.stdout.clone()).unwrap(),
        String::from_utf8(out.stderr.clone()).unwrap(),
    )
}

/// A directory with the test configuration and file store.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    dir
}

/// `sesame mutate -c sesame.yaml` with `args`; asserts success and that no
/// value is printed; returns the printed documents.
fn mutate_ok(dir: &Path, args: &[&str], stdin: Option<&str>) -> Vec<Value> {
    let mut all = vec!["mutate", "-c", "sesame.yaml"];
    all.extend_from_slice(args);
    let out = sesame(dir, &all, stdin);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_no_secret(&stdout);
    assert_no_secret(&stderr);
    documents(&stdout)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: team-a
  annotations:
    sesame.dev/env.DB_PASSWORD: "dev:apps/team-a/db#password"
    sesame.dev/dir.tls: "dev:apps/team-a/tls path=/etc/tls mode=0400"
spec:
  containers:
    - name: app
      image: nginx
"#;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  annotations: {owner: team-a}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata:
      labels: {app: api}
      annotations:
        sesame.dev/env-from.db: "dev:apps/team-a/db prefix=DB_"
    spec:
      containers:
        - {name: api, image: api:1}
        - {name: sidecar, image: proxy:1}
"#;

const CRONJOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        metadata:
          annotations:
            sesame.dev/env.TOKEN: "dev:apps/team-a/api-token"
        spec:
          restartPolicy: Never
          containers: [{name: job, image: busybox}]
"#;

const CONFIGMAP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {level: info}
"#;

/// Asserts that `secret` is the managed Secret in `namespace` with values
/// hidden, and returns its name and keys.
fn hidden_secret(secret: &Value, namespace: &str) -> (String, Vec<String>) {
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["namespace"], namespace);
    let data = secret["data"].as_object().unwrap();
    for v in data.values() {
        let v = v.as_str().unwrap();
        assert!(v.contains("hidden") && v.contains("--show-values"), "{v}");
    }
    // No hash of the values (one of short values could be brute-forced),
    // and no MAC: without the API there is no provenance key.
    let annotations = secret["metadata"]["annotations"].as_object().unwrap();
    assert!(
        annotations
            .keys()
            .all(|k| !k.contains("content-hash") && !k.ends_with("/provenance")),
        "{annotations:?}"
    );
    assert_eq!(annotations["sesame.dev/service-account"], "default");
    (
        secret["metadata"]["name"].as_str().unwrap().to_owned(),
        data.keys().cloned().collect(),
    )
}

fn secret_key_ref(env: &Value) -> (String, String) {
    let r = &env["valueFrom"]["secretKeyRef"];
    (
        r["name"].as_str().unwrap().to_owned(),
        r["key"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn mutate_prints_the_pod_and_the_secret_with_keys_only() {
    let dir = workdir();
    std::fs::write(dir.path().join("pod.yaml"), POD).unwrap();
    let docs = mutate_ok(dir.path(), &["-f", "pod.yaml", "--namespace", "team-a"], None);
    assert_eq!(docs.len(), 2, "{docs:?}");
    let (pod, secret) = (&docs[0], &docs[1]);
    let (name, keys) = hidden_secret(secret, "team-a");
    assert!(name.starts_with("sesame-"));

    let env = env_var(pod, "app", "DB_PASSWORD").unwrap();
    assert_eq!(secret_key_ref(env), (name.clone(), "db.password".to_owned()));
    let volume = &pod["spec"]["volumes"][0];
    assert_eq!(volume["secret"]["secretName"], name.as_str());
    let items = volume["secret"]["items"].as_array().unwrap();
    let files: Vec<&str> = items.iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert_eq!(files, ["ca.crt", "tls.crt", "tls.key"]);
    for item in items {
        assert_eq!(item["mode"], 0o400);
        assert!(keys.contains(&item["key"].as_str().unwrap().to_owned()));
    }
    assert!(keys.contains(&"db.password".to_owned()));
    let mount = &pod["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/etc/tls");
    assert_eq!(
        pod["metadata"]["annotations"]["sesame.dev/injected"],
        name.as_str()
    );
    assert_eq!(
        secret["metadata"]["annotations"]["sesame.dev/references"],
        "dev:apps/team-a/db#password\ndev:apps/team-a/tls"
    );
}

#[test]
fn show_values_prints_the_values_base64() {
    let dir = workdir();
    std::fs::write(dir.path().join("pod.yaml"), POD).unwrap();
    let out = sesame(
        dir.path(),
        &["mutate", "-c", "sesame.yaml", "-f", "pod.yaml", "--show-values"],
        None,
    );
    assert!(out.status.success());
    let docs = documents(&text(&out).0);
    let data = docs[1]["data"].as_object().unwrap();
    let decoded = |k: &str| {
        let b = base64::engine::general_purpose::STANDARD
            .decode(data[k].as_str().unwrap())
            .unwrap();
        String::from_utf8(b).unwrap()
    };
    assert_eq!(decoded("db.password"), "s3cr3t-team-a-password");
    assert_eq!(decoded("tls.tls.key"), "KEY-PEM-TEAM-A");
    assert_eq!(decoded("tls.ca.crt"), "CA-PEM-TEAM-A");
}

#[test]
fn mutate_patches_the_pod_template_of_a_deployment_and_a_cronjob() {
    let dir = workdir();
    std::fs::write(dir.path().join("deploy.yaml"), DEPLOYMENT).unwrap();
    let docs = mutate_ok(dir.path(), &["-f", "deploy.yaml", "-n", "team-a"], None);
    let (deployment, secret) = (&docs[0], &docs[1]);
    let (name, _) = hidden_secret(secret, "team-a");
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    // The workload's own metadata is left alone; the template gets the marker.
    assert_eq!(deployment["metadata"]["annotations"], json!({"owner": "team-a"}));
    let template = &deployment["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["sesame.dev/injected"],
        name.as_str()
    );
    for container in ["api", "sidecar"] {
        for var in ["DB_HOST", "DB_PORT", "DB_USERNAME", "DB_PASSWORD", "DB_DATABASE"] {
            let env = env_var(template, container, var).unwrap_or_else(|| panic!("{container}: {var}"));
            assert_eq!(secret_key_ref(env).0, name);
        }
    }

    std::fs::write(dir.path().join("cron.yaml"), CRONJOB).unwrap();
    let docs = mutate_ok(dir.path(), &["-f", "cron.yaml", "-n", "team-a"], None);
    let (name, keys) = hidden_secret(&docs[1], "team-a");
    let template = &docs[0]["spec"]["jobTemplate"]["spec"]["template"];
    let env = env_var(template, "job", "TOKEN").unwrap();
    assert_eq!(secret_key_ref(env), (name, "api-token".to_owned()));
    assert_eq!(keys, ["api-token"]);
    assert_eq!(docs[0]["spec"]["schedule"], "0 3 * * *");
}

#[test]
fn mutate_reads_several_documents_from_a_file_or_stdin() {
    let dir = workdir();
    let manifest = format!("{CONFIGMAP}---{POD}---{DEPLOYMENT}");
    std::fs::write(dir.path().join("all.yaml"), &manifest).unwrap();
    let docs = mutate_ok(dir.path(), &["-f", "all.yaml", "-n", "team-a"], None);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "Pod", "Secret", "Deployment", "Secret"]);
    assert_eq!(docs[0], serde_norway::from_str::<Value>(CONFIGMAP).unwrap());
    // Different references, different Secrets.
    assert_ne!(docs[2]["metadata"]["name"], docs[4]["metadata"]["name"]);

    let from_stdin = sesame(
        dir.path(),
        &["mutate", "-c", "sesame.yaml", "-f", "-", "-n", "team-a"],
        Some(&manifest),
    );
    assert!(from_stdin.status.success());
    // The same output, but for the time each Secret was made.
    let undated = |docs: Vec<Value>| -> Vec<Value> {
        docs.into_iter()
            .map(|mut d| {
                if let Some(a) = d
                    .pointer_mut("/metadata/annotations")
                    .and_then(Value::as_object_mut)
                {
                    a.remove("sesame.dev/refreshed-at");
                }
                d
            })
            .collect()
    };
    assert_eq!(
        undated(documents(&text(&from_stdin).0)),
        undated(docs),
        "stdin and file differ"
    );
}

#[test]
fn the_namespace_flag_decides_what_the_policy_allows() {
    let dir = workdir();
    std::fs::write(dir.path().join("pod.yaml"), POD).unwrap();
    // Without the flag, the object's own namespace (team-a) is used.
    let docs = mutate_ok(dir.path(), &["-f", "pod.yaml"], None);
    assert_eq!(docs[1]["metadata"]["namespace"], "team-a");

    // In team-b, team-a's secrets are out of reach: denied, with the reason on stderr.
    let out = sesame(
        dir.path(),
        &[
            "mutate",
            "-c",
            "sesame.yaml",
            "-f",
            "pod.yaml",
            "--namespace",
            "team-b",
        ],
        None,
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(2));
    for part in [
        "denied (document 1)",
        "\"team-b\"",
        "own-subtree",
        "apps/team-b/**",
    ] {
        assert!(stderr.contains(part), "{part} missing in: {stderr}");
    }
    assert!(
        !stdout.contains("kind: Pod"),
        "a denied Pod is not printed: {stdout}"
    );
    assert_no_secret(&stdout);
    assert_no_secret(&stderr);

    // One denied document among good ones: the others are printed, the exit code still fails.
    let manifest = format!("{CONFIGMAP}---{POD}");
    let out = sesame(
        dir.path(),
        &["mutate", "-c", "sesame.yaml", "-f", "-", "-n", "team-b"],
        Some(&manifest),
    );
    assert_eq!(out.status.code(), Some(2));
    let (stdout, stderr) = text(&out);
    assert!(stderr.contains("denied (document 2)"), "{stderr}");
    let kinds: Vec<Value> = documents(&stdout).iter().map(|d| d["kind"].clone()).collect();
    assert_eq!(kinds, [json!("ConfigMap")]);
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = workdir();
    let out = sesame(dir.path(), &["check-config", "-c", "sesame.yaml"], None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "sesame.yaml: valid (1 stores, 1 policy rules)");
}

#[test]
fn check_config_names_the_field_and_line_of_what_is_broken() {
    let dir = workdir();
    let base = "annotationPrefix: sesame.dev\nstores:\n  - name: dev\n    file: {path: secrets.yaml}\n";
    // (file, what the message must name)
    let cases: &[(String, &[&str])] = &[
        (
            format!("{base}    cacheTTL: 5s\n"),
            &["stores[0]", "unknown field `cacheTTL`", "line 5"],
        ),
        (
            format!("{base}resolveTimeout: soon\n"),
            &["resolveTimeout", "line 5"],
        ),
        (
            format!("{base}policy:\n  rules:\n    - name: r\n      namespaces: team-a\n"),
            &["policy.rules[0].namespaces", "line 8"],
        ),
        (
            "stores:\n  - name: dev\n   file: {path: x}\n".to_owned(),
            &["line 3"],
        ),
        // Checked after parsing: the file and the field, without a line.
        (
            format!(
                "{base}policy:\n  rules:\n    - {{name: r, namespaces: ['*'], stores: [vault], paths: ['**']}}\n"
            ),
            &["broken.yaml: policy.rules[0].stores[0]", "no store is named \"vault\""],
        ),
        (
            format!("{base}resolveTimeout: 30s\n"),
            &["broken.yaml: resolveTimeout", "10 s"],
        ),
    ];
    for (yaml, parts) in cases {
        std::fs::write(dir.path().join("broken.yaml"), yaml).unwrap();
        let out = sesame(dir.path(), &["check-config", "-c", "broken.yaml"], None);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{yaml} was accepted");
        assert!(!stdout.contains("valid"), "{stdout}");
        for part in *parts {
            assert!(stderr.contains(part), "{part} missing for\n{yaml}\nin: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_certs_writes_a_pair_that_serve_uses_for_the_service_names() {
    let dir = workdir();
    let out = sesame(
        dir.path(),
        &[
            "gen-certs",
            "--out",
            "certs",
            "--service",
            "svc",
            "--namespace",
            "ns",
        ],
        None,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let certs = dir.path().join("certs");
    let ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(std::fs::read_to_string(certs.join("tls.key"))
        .unwrap()
        .contains("PRIVATE KEY"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "tls.key mode {:o}", mode & 0o777);
    // stdout is the caBundle alone: base64 of the CA PEM.
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(stdout.trim())
        .unwrap();
    assert_eq!(String::from_utf8(bundle).unwrap(), ca);
    assert!(stderr.contains("svc.ns.svc"), "{stderr}");

    // `serve` takes the directory as it is; handshakes trusting only that CA
    // succeed for the Service's names and loopback, and fail for others.
    let server = ServeProcess::spawn(dir.path(), &[]).await;
    let connector = tls_connector(&ca);
    for (name, valid) in [
        ("svc.ns.svc", true),
        ("svc.ns.svc.cluster.local", true),
        ("localhost", true),
        ("127.0.0.1", true),
        ("svc.other.svc", false),
        ("sesame.sesame-system.svc", false),
    ] {
        let tcp = tokio::net::TcpStream::connect(server.webhook_addr).await.unwrap();
        let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let result = connector.connect(server_name, tcp).await;
        match (result, valid) {
            (Ok(_), true) => {}
            (Err(e), false) => assert!(e.to_string().contains("not valid for name"), "{name}: {e}"),
            (Ok(_), false) => panic!("{name} must not be accepted"),
            (Err(e), true) => panic!("{name}: {e}"),
        }
    }
    let review = fixture("real-pod-create-bare.json");
    let resp = client_for(&ca, true)
        .post(server.url())
        .json(&review)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The captured bare Pod review with other annotations and its own uid
/// (the audit lines are told apart by uid).
fn bare_review(uid: &str, annotations: &[(&str, &str)]) -> Value {
    let mut review = with_annotations("real-pod-create-bare.json", annotations);
    review["request"]["uid"] = json!(uid);
    review
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_one_json_audit_line_per_decision_and_no_value() {
    let dir = workdir();
    let ca = write_certs(&dir.path().join("certs"));
    let mut server = ServeProcess::spawn(dir.path(), &[]).await;
    let client = client_for(&ca, false);

    let mutated = fixture("real-pod-create-bare.json");
    let every_property = bare_review(
        "0b7e0c1e-0000-4000-8000-000000000001",
        &[("sesame.dev/env-from.db", "dev:apps/team-a/db prefix=DB_")],
    );
    let generate_name = fixture("real-pod-create-generatename-owned.json");
    let policy_denied = fixture("real-pod-create-ns-labels.json");
    let malformed = bare_review(
        "0b7e0c1e-0000-4000-8000-000000000002",
        &[("sesame.dev/env.X", "dev:apps/team-a/db#password colour=red")],
    );
    let untouched = [fixture("pod-create-bare-no-env.json")];
    let decided = [
        &mutated,
        &every_property,
        &generate_name,
        &policy_denied,
        &malformed,
    ];
    for review in decided.iter().copied().chain(&untouched) {
        let resp = client.post(server.url()).json(review).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).await.success());

    let all = server.lines().join("\n");
    assert_no_secret(&all);
    let decisions: Vec<Value> = server
        .json_logs()
        .into_iter()
        .filter(|l| l["message"] == "admission decision")
        .collect();
    // The review span's fields (uid, namespace, pod) ride along as `span`.
    let uid_of = |line: &Value| -> String { line["span"]["uid"].as_str().unwrap().to_owned() };
    assert_eq!(decisions.len(), decided.len(), "{decisions:#?}");
    for review in decided {
        let uid = review["request"]["uid"].as_str().unwrap();
        let lines: Vec<&Value> = decisions.iter().filter(|l| uid_of(l) == uid).collect();
        assert_eq!(lines.len(), 1, "{uid}: {decisions:#?}");
    }
    let line = |review: &Value| -> (Value, Value) {
        let uid = review["request"]["uid"].as_str().unwrap();
        let line = decisions.iter().find(|l| uid_of(l) == uid).unwrap();
        assert_eq!(line["span"]["name"], "review");
        (line.clone(), line["span"].clone())
    };

    let (l, span) = line(&mutated);
    assert_eq!(l["allowed"], true);
    assert_eq!(span["namespace"], "team-a");
    assert_eq!(span["pod"], "web");
    assert!(l["references"]
        .as_str()
        .unwrap()
        .contains("dev:apps/team-a/db#password by rule own-subtree"));
    assert!(l["secret"].as_str().unwrap().starts_with("sesame-"));

    let (l, _) = line(&every_property);
    let refs = l["references"].as_str().unwrap();
    assert!(refs.contains("dev:apps/team-a/db by rule own-subtree"), "{refs}");

    let (l, span) = line(&generate_name);
    assert_eq!(l["allowed"], true);
    assert_eq!(span["pod"], "api-7d9f8b-*");

    let (l, span) = line(&policy_denied);
    assert_eq!(l["allowed"], false);
    assert_eq!(l["code"], 403);
    assert_eq!(span["namespace"], "team-b");
    assert_eq!(span["pod"], "worker");
    assert!(l["references"]
        .as_str()
        .unwrap()
        .contains("dev:apps/team-a/db#password"));
    let reason = l["reason"].as_str().unwrap();
    assert!(
        reason.contains("own-subtree") && reason.contains("apps/team-b/**"),
        "{reason}"
    );

    let (l, _) = line(&malformed);
    assert_eq!(l["allowed"], false);
    assert_eq!(l["code"], 400);
    assert!(l["reason"].as_str().unwrap().contains("colour"));
}

/// Inline mode writes env values into the Pod itself: without
/// `--show-values` the printed Pod carries their sizes, never the values.
#[test]
fn mutate_hides_inline_values_unless_asked() {
    let dir = workdir();
    let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: tool
  namespace: dev-team
  annotations:
    sesame.dev/mode: inline
    sesame.dev/env.DB_USER: "dev:apps/dev-team/db#user"
    sesame.dev/env.SIGNING_KEY: "dev:apps/dev-team/signing-key"
spec:
  containers:
    - name: app
      image: busybox
      env: [{name: LOG_LEVEL, value: debug}]
    - name: sidecar
      image: busybox
"#;
    std::fs::write(dir.path().join("pod.yaml"), pod).unwrap();
    let out = sesame(
        dir.path(),
        &["mutate", "-c", "sesame.yaml", "-f", "pod.yaml"],
        None,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for value in ["inline-user", "inline-v2"] {
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "{value} printed:\n{stdout}"
        );
    }
    let docs = documents(&stdout);
    // Added one by one to the env list `app` has, and as a new list to `sidecar`.
    for container in [0, 1] {
        let env = docs[0]["spec"]["containers"][container]["env"]
            .as_array()
            .unwrap();
        let value_of = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .unwrap_or_else(|| panic!("{name} missing: {env:?}"))["value"]
                .clone()
        };
        assert_eq!(value_of("DB_USER"), "<11 bytes, hidden; --show-values to print>");
        assert_eq!(
            value_of("SIGNING_KEY"),
            "<9 bytes, hidden; --show-values to print>"
        );
        if container == 0 {
            assert_eq!(value_of("LOG_LEVEL"), "debug", "the Pod's own values stay");
        }
    }

    let out = sesame(
        dir.path(),
        &["mutate", "-c", "sesame.yaml", "-f", "pod.yaml", "--show-values"],
        None,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("inline-user"), "{stdout}");
}

/// A credential written inline where the configuration wants a file or an
/// env var: `check-config` names the field and the line, not the value.
#[test]
fn check_config_quotes_no_credential() {
    let dir = workdir();
    for (yaml, field) in [
        (
            "stores:\n  - name: v\n    vault:\n      address: https://vault:8200\n      auth:\n        token: hvs.CAESIinline-token-value\n",
            "stores[0].vault.auth.token",
        ),
        (
            "stores:\n  - name: v\n    vault:\n      address: https://vault:8200\n      auth:\n        appRole: {roleId: sesame, secretId: 3f0c77aa-inline-token-value}\n",
            "stores[0].vault.auth.appRole.secretId",
        ),
        (
            "stores:\n  - name: v\n    vault:\n      address: https://sesame:inline-token-value@vault:8200\n      auth: {token: {env: T}}\n",
            "stores[0].vault.address",
        ),
    ] {
        std::fs::write(dir.path().join("broken.yaml"), yaml).unwrap();
        let out = sesame(dir.path(), &["check-config", "-c", "broken.yaml"], None);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{yaml} was accepted");
        assert!(stderr.contains(field), "{field} missing in: {stderr}");
        assert!(
            !stdout.contains("inline-token-value") && !stderr.contains("inline-token-value"),
            "the value was printed: {stderr}"
        );
    }
}

/// The reload warning, which repeats at every reload interval for as long
/// as the file stays broken, quotes no credential either: it printed an
/// inline token in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_warning_quotes_no_credential() {
    let dir = workdir();
    write_certs(&dir.path().join("certs"));
    let server = ServeProcess::spawn(dir.path(), &["--reload-interval", "100ms"]).await;
    std::fs::write(
        dir.path().join("sesame.yaml"),
        "stores:\n  - name: v\n    vault:\n      address: https://vault:8200\n      auth:\n        token: hvs.CAESIinline-token-value\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let warnings = loop {
        let warnings: Vec<String> = server
            .lines()
            .into_iter()
            .filter(|l| l.contains("not valid; keeping the running configuration"))
            .collect();
        if warnings.len() >= 2 {
            break warnings;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload warning: {:#?}",
            server.lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        warnings.iter().all(|w| w.contains("stores[0].vault.auth.token")),
        "{warnings:#?}"
    );
    let all = server.lines().join("\n");
    assert!(!all.contains("inline-token-value"), "the value was logged: {all}");
}

/// `gen-certs` into a directory where someone planted symlinks under the
/// names it writes, and an old key readable by all: every file is replaced
/// (the symlinks' targets stay as they were) and the key is 0600.
#[cfg(unix)]
#[test]
fn gen_certs_replaces_planted_symlinks_and_files_instead_of_writing_through_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = workdir();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "do not touch").unwrap();
    std::os::unix::fs::symlink(&victim, certs.join("tls.key")).unwrap();
    std::os::unix::fs::symlink(&victim, certs.join("ca.crt")).unwrap();
    // A dangling one: following it would create the file it names.
    std::os::unix::fs::symlink(dir.path().join("created"), certs.join("tls.crt")).unwrap();

    let out = sesame(dir.path(), &["gen-certs", "--out", "certs"], None);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "do not touch");
    assert!(!dir.path().join("created").exists());
    for (name, mode, begins) in [
        ("tls.key", 0o600, "-----BEGIN PRIVATE KEY-----"),
        ("tls.crt", 0o644, "-----BEGIN CERTIFICATE-----"),
        ("ca.crt", 0o644, "-----BEGIN CERTIFICATE-----"),
    ] {
        let meta = std::fs::symlink_metadata(certs.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is still a symlink");
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        assert!(std::fs::read_to_string(certs.join(name))
            .unwrap()
            .starts_with(begins));
    }

    // An old key that anyone may read is replaced by a new file, not rewritten.
    std::fs::set_permissions(certs.join("tls.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let old = std::fs::File::open(certs.join("tls.key")).unwrap();
    let out = sesame(dir.path(), &["gen-certs", "--out", "certs"], None);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(
        old.metadata().unwrap().permissions().mode() & 0o777,
        0o644,
        "the old file is left alone"
    );
    let key = std::fs::metadata(certs.join("tls.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let left: Vec<_> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// A template's rendered value is one key of the printed Secret: without
/// `--show-values` only the key, with it the rendered text; in inline mode
/// the printed Pod carries the rendered value's size only.
#[test]
fn mutate_prints_a_rendered_template_only_when_asked() {
    let dir = workdir();
    let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: team-a
  annotations:
    sesame.dev/template.DATABASE_URL: "postgres://{{ dev:apps/team-a/db#username }}:{{ dev:apps/team-a/db#password | urlquery }}@{{ dev:apps/team-a/db#host }}:{{ dev:apps/team-a/db#port }}/{{ dev:apps/team-a/db#database }}"
spec:
  containers:
    - name: app
      image: busybox
      env: [{name: DSN, value: "$(DATABASE_URL)?sslmode=require"}]
"#;
    std::fs::write(dir.path().join("pod.yaml"), pod).unwrap();
    let docs = mutate_ok(dir.path(), &["-f", "pod.yaml"], None);
    let (name, keys) = hidden_secret(&docs[1], "team-a");
    assert_eq!(keys, ["template.DATABASE_URL"]);
    let env = docs[0]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert_eq!(
        env[0]["name"], "DATABASE_URL",
        "before the Pod's own, which refers to it"
    );
    assert_eq!(
        secret_key_ref(&env[0]),
        (name, "template.DATABASE_URL".to_owned())
    );
    assert_eq!(env[1]["name"], "DSN");

    let out = sesame(
        dir.path(),
        &["mutate", "-c", "sesame.yaml", "-f", "pod.yaml", "--show-values"],
        None,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let docs = documents(&stdout);
    let b = base64::engine::general_purpose::STANDARD
        .decode(docs[1]["data"]["template.DATABASE_URL"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(b).unwrap(),
        "postgres://team_a:s3cr3t-team-a-password@db.team-a.svc:5432/orders"
    );

    // Inline: the rendered value is in the Pod, hidden unless asked.
    let inline = r#"
apiVersion: v1
kind: Pod
metadata:
  name: tool
  namespace: dev-team
  annotations:
    sesame.dev/mode: inline
    sesame.dev/template.GREETING: "user={{ dev:apps/dev-team/db#user | json }}"
spec:
  containers: [{name: app, image: busybox}]
"#;
    std::fs::write(dir.path().join("inline.yaml"), inline).unwrap();
    let out = sesame(
        dir.path(),
        &["mutate", "-c", "sesame.yaml", "-f", "inline.yaml"],
        None,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("inline-user"), "{stdout}");
    let docs = documents(&stdout);
    assert_eq!(
        docs[0]["spec"]["containers"][0]["env"][0]["value"],
        "<18 bytes, hidden; --show-values to print>"
    );
    let out = sesame(
        dir.path(),
        &[
            "mutate",
            "-c",
            "sesame.yaml",
            "-f",
            "inline.yaml",
            "--show-values",
        ],
        None,
    );
    assert!(
        text(&out).0.contains("user=\\\"inline-user\\\"") || text(&out).0.contains("user=\"inline-user\""),
        "{}",
        text(&out).0
    );
}

/// A configuration for `policy explain`: each namespace its own subtree, a
/// rule for namespaces labelled `tier: shared`, and one only for the `ci`
/// service account.
const EXPLAIN_CONFIG: &str = "stores:\n  - {name: dev, file: {path: secrets.yaml}}\npolicy:\n  rules:\n    - {name: own-subtree, namespaces: ['*'], stores: [dev], paths: ['apps/{namespace}/**']}\n    - name: tier-shared\n      namespaceSelector: {matchLabels: {tier: shared}}\n      stores: [dev]\n      paths: ['shared/*']\n    - {name: ci-only, namespaces: ['team-a'], serviceAccounts: [ci], stores: [dev], paths: ['ci/*']}\n";

fn explain(args: &[&str]) -> (Output, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sesame.yaml"), EXPLAIN_CONFIG).unwrap();
    std::fs::write(dir.path().join("secrets.yaml"), "{}\n").unwrap();
    let mut all = vec!["policy", "explain", "--config", "sesame.yaml"];
    all.extend_from_slice(args);
    let out = sesame(dir.path(), &all, None);
    let (stdout, stderr) = text(&out);
    (out, stdout, stderr)
}

#[test]
fn policy_explain_names_the_granting_rule() {
    let (out, stdout, stderr) = explain(&["-n", "team-a", "dev:apps/team-a/db#password"]);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "dev:apps/team-a/db#password: granted by rule \"own-subtree\"\n"
    );
    // The service account decides too.
    let (out, stdout, _) = explain(&["-n", "team-a", "--service-account", "ci", "dev:ci/token"]);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("granted by rule \"ci-only\""), "{stdout}");
}

#[test]
fn policy_explain_says_why_a_reference_is_denied() {
    let (out, stdout, _) = explain(&[
        "-n",
        "team-a",
        "dev:apps/team-a/db#password",
        "dev:apps/team-b/db#password",
        "dev:ci/token",
        "vault:apps/team-a/db",
    ]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].contains("granted"), "{stdout}");
    // Another team's path: denied, with the policy's sentence naming the
    // rules that apply to the namespace.
    assert!(
        lines[1].starts_with("dev:apps/team-b/db#password: denied: "),
        "{stdout}"
    );
    assert!(lines[1].contains("own-subtree"), "{stdout}");
    // A rule for another service account does not grant it to `default`.
    assert!(lines[2].starts_with("dev:ci/token: denied: "), "{stdout}");
    assert!(lines[3].contains("no store is named \"vault\""), "{stdout}");
}

#[test]
fn policy_explain_applies_namespace_selector_rules_to_the_labels_given() {
    let (out, stdout, _) = explain(&["-n", "team-a", "dev:shared/ca"]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("dev:shared/ca: denied: "), "{stdout}");
    let (out, stdout, stderr) = explain(&[
        "-n",
        "team-a",
        "--namespace-label",
        "tier=shared",
        "--namespace-label",
        "team=a",
        "dev:shared/ca",
    ]);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "dev:shared/ca: granted by rule \"tier-shared\"\n");
    let (out, _, stderr) = explain(&["-n", "team-a", "--namespace-label", "tier", "dev:shared/ca"]);
    assert!(!out.status.success());
    assert!(stderr.contains("is not key=value"), "{stderr}");
}

#[test]
fn policy_explain_rejects_a_malformed_reference_clearly() {
    let (out, stdout, stderr) = explain(&["-n", "team-a", "no-store-here", "dev:apps/team-a/db#password"]);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("no-store-here: not a reference: "),
        "{stdout}"
    );
    assert!(
        lines[0].len() > "no-store-here: not a reference: ".len(),
        "{stdout}"
    );
    assert!(!lines[0].contains("env.REFERENCE"), "{stdout}");
    // The others are still explained.
    assert!(lines[1].contains("granted by rule \"own-subtree\""), "{stdout}");
}
