//! A recording HTTP fake for the cloud store tests (GCP, Azure, Infisical):
//! a real HTTP/1.1 server on 127.0.0.1 whose answers come from a handler
//! that each test file writes after the provider's documented wire format,
//! and which keeps every request it saw so the tests can check what the
//! store sent (paths, headers, bodies), not only what it did with answers.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Request {
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The token of an `Authorization: Bearer` header.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")?.strip_prefix("Bearer ")
    }

    /// An `application/x-www-form-urlencoded` body field.
    pub fn form(&self, name: &str) -> Option<String> {
        form_urlencoded(&self.body)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn form_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    reqwest::Url::parse(&format!("http://x/?{text}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The fake's answer to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json; charset=utf-8".into())],
            body: value.to_string().into_bytes(),
        }
    }

    pub fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: text.as_bytes().to_vec(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running fake; stops when dropped.
pub struct Fake {
    pub url: String,
    log: Arc<Mutex<Vec<Request>>>,
    /// Answers served before the handler is asked, for scripted failures.
    queue: Arc<Mutex<VecDeque<(String, Reply)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    pub async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let queue: Arc<Mutex<VecDeque<(String, Reply)>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let (task_log, task_queue) = (log.clone(), queue.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, queue, handler) = (task_log.clone(), task_queue.clone(), handler.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (log, queue, handler) = (log.clone(), queue.clone(), handler.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let query = form_urlencoded(parts.uri.query().unwrap_or("").as_bytes());
                                let request = Request {
                                    method: parts.method.to_string(),
                                    path: parts.uri.path().to_owned(),
                                    query,
                                    headers: parts.headers,
                                    body,
                                };
                                log.lock().unwrap().push(request.clone());
                                let scripted = {
                                    let mut queue = queue.lock().unwrap();
                                    let at = queue
                                        .iter()
                                        .position(|(prefix, _)| request.path.starts_with(prefix.as_str()));
                                    at.and_then(|i| queue.remove(i)).map(|(_, reply)| reply)
                                };
                                let reply = scripted.unwrap_or_else(|| handler(&request));
                                let mut response = hyper::Response::builder().status(reply.status);
                                for (k, v) in &reply.headers {
                                    response = response.header(k, v);
                                }
                                Ok::<_, Infallible>(
                                    response.body(Full::new(Bytes::from(reply.body))).unwrap(),
                                )
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            log,
            queue,
            task,
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    /// Serves `reply` to the next request whose path starts with `prefix`,
    /// before the handler sees it.
    pub fn push_reply(&self, prefix: &str, reply: Reply) {
        self.queue.lock().unwrap().push_back((prefix.into(), reply));
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fetches one secret through the store's batch interface.
pub async fn fetch(
    store: &Arc<dyn sesame::stores::Store>,
    path: &str,
    version: Option<&str>,
) -> Result<sesame::stores::SecretData, sesame::stores::StoreError> {
    store
        .fetch(
            &[sesame::stores::SecretLocator::new(
                path,
                version.map(str::to_owned),
            )],
            &sesame::stores::RequestLimit::default(),
        )
        .await
        .remove(0)
}

/// Asserts that no rendering of `shown` contains any of `secrets`.
pub fn assert_hidden(shown: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!shown.contains(secret), "{secret:?} leaked into: {shown}");
    }
}
