//! A minimal HTTP/1.1 server for stand-ins of APIs that no real server here
//! provides (throttling answers, the Kubernetes TokenReview API). Each test
//! file says which documented wire format its stand-in follows.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// One request as the handler sees it; header names are lower case.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status line text (`200 OK`), extra headers, body.
pub struct Response {
    pub status: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Serves `handler` on a loopback port; returns the base URL and a counter of
/// requests. `handler` gets the 0-based request number.
pub async fn serve<F>(handler: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(usize, &Request) -> Response + Send + Sync + 'static,
{
    serve_async(move |n, request| std::future::ready(handler(n, &request))).await
}

/// `serve` with a handler that may take its time (a stand-in that stalls).
/// Requests on one connection are answered in order; other connections are
/// served meanwhile.
pub async fn serve_async<F, Fut>(handler: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(usize, Request) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                // Requests one after another on a kept-alive connection.
                while let Some(request) = read_request(&mut stream).await {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let answer = handler(n, request).await;
                    let mut head = format!(
                        "HTTP/1.1 {}\r\ncontent-length: {}\r\n",
                        answer.status,
                        answer.body.len()
                    );
                    for (name, value) in &answer.headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str("\r\n");
                    let out = stream.get_mut();
                    if out.write_all(head.as_bytes()).await.is_err()
                        || out.write_all(answer.body.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (base, count)
}

async fn read_request(stream: &mut BufReader<tokio::net::TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}
