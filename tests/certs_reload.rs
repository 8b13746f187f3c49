//! Serving-certificate rotation as Kubernetes does it: the certificate
//! directory is a Secret volume, updated by writing a new timestamped
//! directory and renaming a `..data` symlink over the old one. New
//! connections must get the new certificate without a restart, connections
//! opened before keep working, and a broken pair must never be served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;

const REVIEW: &str = "real-pod-create-bare.json";

/// A CA that can sign several serving certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A serving certificate and its key, PEM.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

impl Pair {
    fn der(&self) -> Vec<u8> {
        CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A serving certificate for localhost and 127.0.0.1.
    fn serving(&self, cn: &str) -> Pair {
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A certificate directory laid out as the kubelet lays out a Secret volume:
/// `..data -> ..<timestamp>/`, `tls.crt -> ..data/tls.crt`, `tls.key -> ..data/tls.key`.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn create(dir: &Path, pair: &Pair) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut volume = Self {
            dir: dir.to_path_buf(),
            version: 0,
        };
        volume.publish(pair);
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), dir.join(file)).unwrap();
        }
        volume
    }

    /// Writes the pair into a new timestamped directory, swaps `..data` to it
    /// atomically (a temporary symlink renamed over the old one) and removes
    /// the previous directory, in the kubelet's order.
    fn publish(&mut self, pair: &Pair) {
        self.version += 1;
        let name = format!("..2026_11_23_v{}", self.version);
        let target = self.dir.join(&name);
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("tls.crt"), &pair.cert).unwrap();
        std::fs::write(target.join("tls.key"), &pair.key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if self.version > 1 {
            let old = self.dir.join(format!("..2026_11_23_v{}", self.version - 1));
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

/// Starts the server on a Secret-volume certificate directory holding `pair`.
async fn start(pair: &Pair, ca_pem: &str) -> (TestServer, SecretVolume) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let volume = SecretVolume::create(&dir.path().join("certs"), pair);
    let server = TestServer::start_in(dir, Some(ca_pem.to_owned()), |args| {
        args.reload_interval = Duration::from_millis(100);
    })
    .await;
    (server, volume)
}

/// The leaf certificate a new connection gets, trusting `cas`, or the
/// handshake error.
async fn peer_cert(server: &TestServer, cas: &[&str], name: &str) -> Result<Vec<u8>, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(cas)));
    let tcp = tokio::net::TcpStream::connect(server.handle.webhook_addr)
        .await
        .unwrap();
    let tls = connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

/// Polls new connections until they get `want`; returns how long it took.
async fn wait_for_cert(server: &TestServer, cas: &[&str], want: &Pair) -> Duration {
    let started = Instant::now();
    let want = want.der();
    loop {
        if peer_cert(server, cas, "localhost").await.as_deref() == Ok(want.as_slice()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "new connections still get the old certificate after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An h2 client that keeps its one connection open and reports the
/// certificate that connection was made with.
fn h2_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends one review; returns the certificate of the connection it went over.
async fn review_over(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let review = fixture(REVIEW);
    let resp = client.post(url).json(&review).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let cert = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["response"]["uid"], review["request"]["uid"]);
    assert_eq!(body["response"]["allowed"], true);
    cert
}

/// Sends reviews over `client` back to back until stopped; counts answers.
struct Traffic {
    answered: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(client: reqwest::Client, url: String) -> Self {
        let answered = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let count = answered.clone();
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                // Any failed request fails the test when the task is joined.
                review_over(&client, &url).await;
                count.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        Self { answered, stop, task }
    }

    async fn finish(self) -> usize {
        let _ = self.stop.send(true);
        self.task.await.expect("a request on the kept connection failed");
        self.answered.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_secret_volume_is_served_to_new_connections_without_dropping_open_ones() {
    let ca = Ca::new("rotation CA");
    let (v1, v2) = (ca.serving("v1"), ca.serving("v2"));
    let (server, mut volume) = start(&v1, &ca.pem).await;
    assert_eq!(
        peer_cert(&server, &[&ca.pem], "localhost").await.unwrap(),
        v1.der()
    );

    // An h2 connection opened before the swap, kept busy across it.
    let kept = h2_client(&ca.pem);
    assert_eq!(review_over(&kept, &server.url).await, v1.der());
    let traffic = Traffic::start(kept.clone(), server.url.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    volume.publish(&v2);
    let took = wait_for_cert(&server, &[&ca.pem], &v2).await;
    assert!(took < Duration::from_secs(2), "rotation took {took:?}");
    println!("new connections got the rotated certificate after {took:?} (reload interval 100ms)");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The connection from before the swap still answers, with its own certificate.
    let answered = traffic.finish().await;
    assert!(
        answered >= 5,
        "only {answered} reviews went over the kept connection"
    );
    assert_eq!(review_over(&kept, &server.url).await, v1.der());
    // A new client gets the new certificate and a proper answer.
    assert_eq!(review_over(&h2_client(&ca.pem), &server.url).await, v2.der());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_to_a_new_ca_needs_the_new_ca_in_the_bundle() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (v1, v2) = (old_ca.serving("v1"), new_ca.serving("v2"));
    let (server, mut volume) = start(&v1, &old_ca.pem).await;
    let kept = h2_client(&old_ca.pem);
    assert_eq!(review_over(&kept, &server.url).await, v1.der());

    volume.publish(&v2);
    // A client trusting both CAs (the caBundle during a CA rotation) follows.
    wait_for_cert(&server, &[&old_ca.pem, &new_ca.pem], &v2).await;
    // A client that trusts only the old CA can no longer make new connections...
    let refused = peer_cert(&server, &[&old_ca.pem], "localhost").await.unwrap_err();
    assert!(
        refused.contains("UnknownIssuer") || refused.contains("unknown issuer"),
        "{refused}"
    );
    // ...while its connection from before the rotation keeps working.
    assert_eq!(review_over(&kept, &server.url).await, v1.der());
    assert_eq!(review_over(&h2_client(&new_ca.pem), &server.url).await, v2.der());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_its_certificate_is_never_served() {
    let ca = Ca::new("rotation CA");
    let (v1, v2, v3) = (ca.serving("v1"), ca.serving("v2"), ca.serving("v3"));
    let (server, mut volume) = start(&v1, &ca.pem).await;

    // The certificate of v2 with the key of v3: a mismatched pair.
    volume.publish(&Pair {
        cert: v2.cert.clone(),
        key: v3.key.clone(),
    });
    // Ten reload intervals: the reloader has read the broken pair many times.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        peer_cert(&server, &[&ca.pem], "localhost").await.unwrap(),
        v1.der()
    );
    assert_eq!(review_over(&h2_client(&ca.pem), &server.url).await, v1.der());

    // A good pair afterwards is picked up: the reloader kept going.
    volume.publish(&v3);
    wait_for_cert(&server, &[&ca.pem], &v3).await;
    assert_eq!(review_over(&h2_client(&ca.pem), &server.url).await, v3.der());
}

#[tokio::test]
async fn serve_with_an_empty_cert_dir_generates_a_pair_that_its_ca_verifies() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    let server = TestServer::start_in(dir, None, |_| {}).await;
    let ca = server
        .handle
        .generated_ca_pem
        .clone()
        .expect("a generated CA bundle");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    for name in ["localhost", "127.0.0.1", "sesame.sesame-system.svc"] {
        peer_cert(&server, &[&ca], name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The client the tests use, trusting only that CA, gets proper answers.
    let r = server.review(&fixture(REVIEW)).await;
    assert_eq!(r["allowed"], true);
    // Another CA does not vouch for it.
    let other = Ca::new("unrelated CA");
    assert!(peer_cert(&server, &[&other.pem], "localhost").await.is_err());
    // The pair lives in memory only: the directory stays as it was.
    assert_eq!(std::fs::read_dir(server.path().join("certs")).unwrap().count(), 0);
}

/// A TLS client presenting `identity` (certificate, then key, PEM) and
/// trusting `ca_pem`. It keeps the default session cache: connections made
/// with the same config try to resume the sessions of earlier ones.
fn client_auth_config(ca_pem: &str, identity: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::PrivateKeyDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(identity.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(identity.as_bytes()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    Arc::new(config)
}

/// Opens a new connection with `config` and sends one review over HTTP/1.1;
/// the status line of the answer, or why there was none.
async fn answer_over_new_connection(
    server: &TestServer,
    config: &Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(server.handle.webhook_addr)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&fixture(REVIEW)).unwrap();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    // In TLS 1.3 the server judges the client's certificate after the
    // client considers the handshake done: a refusal shows here.
    tls.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    tls.write_all(&body).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.lines().next() {
        Some(status) if !status.is_empty() => Ok(status.to_owned()),
        _ => Err("the connection closed without an answer".into()),
    }
}

/// The status of `review` sent with `client` (over its open connection, if any).
async fn status_over(client: &reqwest::Client, url: &str, review: &Value) -> u16 {
    client
        .post(url)
        .json(review)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A new connection with `config` gets its review answered.
async fn assert_served(server: &TestServer, config: &Arc<rustls::ClientConfig>) {
    let status = answer_over_new_connection(server, config).await;
    assert_eq!(status.as_deref(), Ok("HTTP/1.1 200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_client_ca_file_decides_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let ca_pem = write_certs(&dir.path().join("certs"));
    let (ca_a, identity_a) = client_ca_and_identity("kube-apiserver A");
    let (ca_b, identity_b) = client_ca_and_identity("kube-apiserver B");
    // The CA file as a ConfigMap volume holds it: a symlink into `..data`.
    let volume = dir.path().join("client-ca");
    let mut versions = SecretVolume::create(
        &volume,
        &Pair {
            cert: ca_a.clone(),
            key: String::new(),
        },
    );
    let ca_file = volume.join("tls.crt");
    let server = TestServer::start_in(dir, Some(ca_pem.clone()), |args| {
        args.reload_interval = Duration::from_millis(100);
        args.client_ca_file = Some(ca_file);
    })
    .await;
    let (client_a, client_b) = (
        client_auth_config(&ca_pem, &identity_a),
        client_auth_config(&ca_pem, &identity_b),
    );
    assert_served(&server, &client_a).await;
    assert!(
        answer_over_new_connection(&server, &client_b).await.is_err(),
        "B is not trusted yet"
    );
    // A connection of A opened before the swap.
    let kept = client_with_identity(&ca_pem, &identity_a, true);
    let review = fixture(REVIEW);
    assert_eq!(status_over(&kept, &server.url, &review).await, 200);

    versions.publish(&Pair {
        cert: ca_b.clone(),
        key: String::new(),
    });
    let started = Instant::now();
    while answer_over_new_connection(&server, &client_b).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B's client is still refused 5 s after the swap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "the replaced client CA applied after {:?} (reload interval 100ms)",
        started.elapsed()
    );
    // A's client is refused now, even with the session cache of its earlier
    // connections (a resumed session would skip the certificate check).
    let refused = answer_over_new_connection(&server, &client_a).await.unwrap_err();
    println!("A's client after the swap: {refused}");
    let fresh_a = client_with_identity(&ca_pem, &identity_a, false);
    assert!(fresh_a.post(&server.url).json(&review).send().await.is_err());
    // The connection A opened before keeps the identity it proved.
    assert_eq!(status_over(&kept, &server.url, &review).await, 200);
    assert_served(&server, &client_b).await;

    // A broken file is not applied: B stays the one trusted.
    versions.publish(&Pair {
        cert: "-----BEGIN CERTIFICATE-----\nnot base64\n".into(),
        key: String::new(),
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_served(&server, &client_b).await;
    assert!(answer_over_new_connection(&server, &client_a).await.is_err());
}
