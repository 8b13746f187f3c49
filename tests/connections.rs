//! Hostile connections against the real server over real TLS: clients that
//! connect and say nothing, keep a connection open, trickle a body, open
//! more connections than the port takes, or exhaust the file descriptors;
//! and one review that computes for long on the only worker thread. Each
//! time the API server's reviews and the probes must still be answered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const BARE: &str = "real-pod-create-bare.json";

/// A TLS connection to `addr` offering `alpn` (none when empty).
async fn tls(addr: std::net::SocketAddr, ca: &str, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
    let mut config = tls_client_config(&[ca]);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// Whether the server closes the connection (end of stream, or an error)
/// within `limit`; any bytes it sends are returned too.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response (headers and a Content-Length body).
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .map_or(0, |v| v.parse().unwrap());
            let mut body = data[end + 4..].to_vec();
            while body.len() < length {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed in the middle of a response: {head}");
                body.extend_from_slice(&buf[..n]);
            }
            return (head, body);
        }
        let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    }
}

fn post_head(length: usize, extra: &str) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    )
}

/// An HTTP/2 client connection (hyper) over TLS with ALPN h2; the task ends
/// when the connection does.
async fn h2_client(
    s: &TestServer,
) -> (
    hyper::client::conn::http2::SendRequest<
        http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
    >,
    tokio::task::JoinHandle<()>,
) {
    let stream = tls(s.handle.webhook_addr, &s.ca_pem, &[b"h2"]).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

fn h2_post(
    body: http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
) -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>> {
    hyper::Request::post("https://localhost/mutate")
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

async fn metrics_text(admin_url: String) -> String {
    reqwest::get(admin_url).await.unwrap().text().await.unwrap()
}

/// The value of one sample line of the metrics text (`name{labels}` exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_tls_connection_that_sends_no_request_is_closed_after_the_client_timeout() {
    // The harness sets a 500 ms client timeout; the idle timeout stays at its default.
    let s = TestServer::start().await;
    for alpn in [&[b"h2".as_slice()][..], &[b"http/1.1".as_slice()], &[]] {
        let mut stream = tls(s.handle.webhook_addr, &s.ca_pem, alpn).await.unwrap();
        let (closed, _) = closed_within(&mut stream, Duration::from_secs(10)).await;
        assert!(
            closed,
            "a silent connection (ALPN {alpn:?}) must be closed by the server"
        );
    }
    let r = s.review(&fixture(BARE)).await;
    assert_eq!(r["allowed"], true);
}

#[tokio::test]
async fn kept_alive_connections_close_after_the_idle_timeout_over_h1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let ca = write_certs(&dir.path().join("certs"));
    let s = TestServer::start_in(dir, Some(ca), |a| {
        a.client_timeout = Duration::from_secs(30);
        a.connections.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let review = serde_json::to_vec(&fixture(BARE)).unwrap();

    // HTTP/1.1: one request, then silence.
    let mut h1 = tls(s.handle.webhook_addr, &s.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    h1.write_all(post_head(review.len(), "").as_bytes())
        .await
        .unwrap();
    h1.write_all(&review).await.unwrap();
    let (head, _) = read_response(&mut h1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (closed, _) = closed_within(&mut h1, Duration::from_secs(15)).await;
    assert!(closed, "an idle HTTP/1.1 connection must be closed");

    // HTTP/2: one request, then only the protocol's pings.
    let (mut send, conn) = h2_client(&s).await;
    let answer = send
        .send_request(h2_post(Full::new(Bytes::from(review)).boxed()))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), conn)
        .await
        .expect("an idle HTTP/2 connection must be closed (GOAWAY)")
        .unwrap();
}

#[tokio::test]
async fn a_trickling_body_is_cut_off_at_the_body_timeout_over_h1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let ca = write_certs(&dir.path().join("certs"));
    let s = TestServer::start_in(dir, Some(ca), |a| {
        a.client_timeout = Duration::from_secs(30);
        a.connections.body_timeout = Duration::from_secs(1);
    })
    .await;

    // One byte every 200 ms of a 60 000-byte body would take 3 hours and 20 minutes.
    let mut h1 = tls(s.handle.webhook_addr, &s.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    h1.write_all(post_head(60_000, "").as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still reading the trickle after 20 s"
        );
        if h1.write_all(b" ").await.is_err() {
            break;
        }
        let _ = h1.flush().await;
        match tokio::time::timeout(Duration::from_millis(200), h1.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "a trickling body is answered 408 or closed: {text}"
    );
    if !text.is_empty() {
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    }

    let (mut send, _conn) = h2_client(&s).await;
    let trickle = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b" "))),
            (),
        ))
    });
    let body = http_body_util::StreamBody::new(trickle).boxed();
    let answer = tokio::time::timeout(Duration::from_secs(20), send.send_request(h2_post(body)))
        .await
        .expect("the server answers a trickling HTTP/2 body");
    if let Ok(answer) = answer {
        assert_eq!(answer.status(), 408);
    }
    let r = s.review(&fixture(BARE)).await;
    assert_eq!(r["allowed"], true);
}

#[tokio::test]
async fn expect_100_continue_with_a_body_over_the_limit_gets_413_at_once() {
    let s = TestServer::start().await;
    let mut h1 = tls(s.handle.webhook_addr, &s.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    // The harness limits bodies to 64 KiB.
    h1.write_all(post_head(64 * 1024 + 1, "Expect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut h1).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("larger than 65536 bytes"));

    // Within the limit, the client is asked to go on.
    let review = serde_json::to_vec(&fixture(BARE)).unwrap();
    let mut h1 = tls(s.handle.webhook_addr, &s.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    h1.write_all(post_head(review.len(), "Expect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut h1).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    h1.write_all(&review).await.unwrap();
    let (head, _) = read_response(&mut h1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn idle_connections_over_the_cap_make_room_for_reviews_and_probes() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let ca = write_certs(&dir.path().join("certs"));
    // Silent connections would otherwise be closed after 500 ms.
    let s = TestServer::start_in(dir, Some(ca), |a| {
        a.client_timeout = Duration::from_secs(60);
        a.connections.max_connections = 8;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            tls(s.handle.webhook_addr, &s.ca_pem, &[b"h2", b"http/1.1"])
                .await
                .unwrap(),
        );
    }
    let r = s.review(&fixture(BARE)).await;
    assert_eq!(r["allowed"], true);
    assert_eq!(reqwest::get(s.admin("/livez")).await.unwrap().status(), 200);

    let closed = futures::future::join_all(
        idle.iter_mut()
            .map(|c| async { closed_within(c, Duration::from_secs(5)).await.0 }),
    )
    .await;
    let closed = closed.into_iter().filter(|c| *c).count();
    // 20 idle connections and the review's, 8 places: at least 13 had to go.
    assert!(closed >= 13, "only {closed} of 20 idle connections were closed");
    let text = metrics_text(s.admin("/metrics")).await;
    let evicted = sample(
        &text,
        "sesame_connections_shed_total{port=\"webhook\",action=\"evicted\"}",
    )
    .unwrap();
    assert!(evicted >= 13.0, "{text}");
    let open = sample(&text, "sesame_connections{port=\"webhook\"}").unwrap();
    assert!(open <= 8.0, "{text}");
}

#[tokio::test]
async fn a_port_full_of_busy_connections_refuses_newcomers_and_the_admin_port_answers() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let ca = write_certs(&dir.path().join("certs"));
    let s = TestServer::start_in(dir, Some(ca), |a| {
        a.client_timeout = Duration::from_secs(60);
        a.connections.body_timeout = Duration::from_secs(60);
        a.connections.max_connections = 2;
    })
    .await;
    // Two requests in flight: their bodies are not complete.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut c = tls(s.handle.webhook_addr, &s.ca_pem, &[b"http/1.1"])
            .await
            .unwrap();
        c.write_all(post_head(10, "").as_bytes()).await.unwrap();
        c.write_all(b"{").await.unwrap();
        busy.push(c);
    }
    // Wait until the server has both requests in hand.
    let in_flight = || async {
        let text = metrics_text(s.admin("/metrics")).await;
        sample(&text, "sesame_http_requests_in_flight{port=\"webhook\"}") == Some(2.0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_flight().await {
        assert!(
            Instant::now() < deadline,
            "the two requests never showed in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        tls(s.handle.webhook_addr, &s.ca_pem, &[]),
    )
    .await
    .expect("a refused connection is closed at once, not left waiting");
    assert!(
        refused.is_err(),
        "a third connection must be refused while both are busy"
    );
    assert_eq!(reqwest::get(s.admin("/livez")).await.unwrap().status(), 200);
    let text = metrics_text(s.admin("/metrics")).await;
    assert!(
        sample(
            &text,
            "sesame_connections_shed_total{port=\"webhook\",action=\"refused\"}"
        )
        .unwrap()
            >= 1.0
    );

    // One request completes (nine more bytes: not JSON, 400); its connection
    // is idle again and gives way to a review.
    busy[0].write_all(b"         ").await.unwrap();
    let (head, _) = read_response(&mut busy[0]).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let r = s.review(&fixture(BARE)).await;
    assert_eq!(r["allowed"], true);
}

#[tokio::test]
async fn out_of_file_descriptors_the_probes_and_reviews_still_answer_and_the_log_does_not_flood() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let ca = write_certs(&dir.path().join("certs"));
    let server = ServeProcess::spawn_with(
        dir.path(),
        &["--client-timeout", "120s"],
        ProcessOptions {
            max_open_files: Some(256),
            ..ProcessOptions::default()
        },
    )
    .await;
    // 600 silent connections, each held: more than the process has descriptors for.
    let started = Instant::now();
    let mut idle = Vec::new();
    let (mut failed, mut in_a_row) = (0, 0);
    for _ in 0..600 {
        let connect = tls(server.webhook_addr, &ca, &[b"http/1.1"]);
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(c)) => {
                idle.push(c);
                in_a_row = 0;
            }
            _ => {
                failed += 1;
                in_a_row += 1;
                // The port stopped taking connections: no use waiting for more.
                if in_a_row == 5 {
                    break;
                }
            }
        }
    }
    println!("{} connections held, {failed} not completed", idle.len());
    let admin = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let live = admin.get(server.admin("/livez")).send().await;
    assert_eq!(
        live.map(|r| r.status().as_u16()).ok(),
        Some(200),
        "/livez must answer"
    );
    let ready = admin.get(server.admin("/readyz")).send().await;
    assert_eq!(
        ready.map(|r| r.status().as_u16()).ok(),
        Some(200),
        "/readyz must answer"
    );
    let review = fixture(BARE);
    let answer = client_for(&ca, false)
        .post(server.url())
        .json(&review)
        .send()
        .await
        .expect("a review is answered");
    assert_eq!(answer.status(), 200);
    let metrics = admin
        .get(server.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sample(&metrics, "process_max_fds"), Some(256.0), "{metrics}");
    let open_fds = sample(&metrics, "process_open_fds").unwrap();
    assert!(open_fds < 256.0, "{open_fds} descriptors open");
    let accept_failed = server
        .json_logs()
        .iter()
        .filter(|l| l["message"].as_str().unwrap_or("").starts_with("accept failed"))
        .count();
    assert!(accept_failed <= 2, "{accept_failed} accept-failure lines");
    let capped = server
        .json_logs()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("connection cap reached")
        })
        .count();
    let most = 1 + started.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=most).contains(&capped),
        "{capped} cap lines: one per 10 s at most"
    );
    drop(idle);
}

/// Limits per review that let [`heavy_review`] through.
const HEAVY_LIMITS: &str = "limits: {maxReferences: 200, maxAddedEntries: 40000, maxPatchBytes: 67108864}\n";

/// A review that computes for long: 200 containers × 200 references (40 000
/// env vars in the patch), padded past the offload threshold. It is past the
/// default limits per review, which [`HEAVY_LIMITS`] raise: the scheduling
/// must hold whatever limits the platform team sets.
fn heavy_review() -> Value {
    let mut annotations: Vec<(String, String)> = (0..200)
        .map(|i| {
            (
                format!("sesame.dev/env.V{i}"),
                "dev:apps/team-a/db#password".to_owned(),
            )
        })
        .collect();
    annotations.push(("example.com/padding".into(), "x".repeat(80 * 1024)));
    let pairs: Vec<(&str, &str)> = annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut review = with_annotations(BARE, &pairs);
    let containers: Vec<Value> = (0..200)
        .map(|i| json!({"name": format!("c{i}"), "image": "busybox"}))
        .collect();
    review["request"]["object"]["spec"]["containers"] = Value::Array(containers);
    review
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_worker_a_heavy_review_does_not_hold_up_others_or_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &format!("{CONFIG}{HEAVY_LIMITS}"), SECRETS);
    let ca = write_certs(&dir.path().join("certs"));
    let server = ServeProcess::spawn_with(
        dir.path(),
        &[],
        ProcessOptions {
            env: &[("TOKIO_WORKER_THREADS", "1")],
            ..ProcessOptions::default()
        },
    )
    .await;
    let client = client_for(&ca, false);
    let url = server.url();
    let heavy = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client.post(&url).json(&heavy_review()).send().await.unwrap();
            (resp.status().as_u16(), resp.bytes().await.unwrap().len())
        }
    });
    // The heavy review is being computed.
    let admin = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = admin
            .get(server.admin("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(&text, "sesame_admission_reviews_in_flight") == Some(1.0) {
            break;
        }
        assert!(
            !heavy.is_finished(),
            "the heavy review ended before it was seen in flight"
        );
        assert!(
            Instant::now() < deadline,
            "the heavy review never showed in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let live = admin.get(server.admin("/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let small = client.post(&url).json(&fixture(BARE)).send().await.unwrap();
    assert_eq!(small.status(), 200);
    small.bytes().await.unwrap();
    assert!(
        !heavy.is_finished(),
        "the small review and the probe must be answered while the heavy one computes"
    );
    let (status, len) = heavy.await.unwrap();
    assert_eq!(status, 200);
    assert!(len > 1_000_000, "the heavy review's patch is big: {len} bytes");
}
