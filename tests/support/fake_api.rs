//! A small in-memory Kubernetes API server for the parts of the API Sesame
//! uses, speaking the real wire format as documented in:
//! - API concepts, https://kubernetes.io/docs/reference/using-api/api-concepts/
//!   (resourceVersion, `limit`/`continue` chunked lists, `watch=true` event
//!   streams of `{"type":..., "object":...}` lines, BOOKMARK events,
//!   `Status` error bodies, metadata-only responses requested with
//!   `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`);
//! - Server-side apply, https://kubernetes.io/docs/reference/using-api/server-side-apply/
//!   (`PATCH` with `Content-Type: application/apply-patch+yaml`, `fieldManager`
//!   required, `force`);
//! - Lease v1, https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/lease-v1/
//!   (optimistic concurrency: a PUT whose `metadata.resourceVersion` is stale
//!   gets 409 Conflict);
//! - DeleteOptions `preconditions` (uid, resourceVersion → 409 on mismatch);
//! - JSON merge patch carrying `metadata.resourceVersion`: a precondition
//!   (409 Conflict when stale), as the API server treats it;
//! - Event v1 (events.k8s.io), https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/
//!   (namespaced, created with POST in the namespace of the object it is about);
//! - MutatingWebhookConfiguration v1, https://kubernetes.io/docs/reference/kubernetes-api/extend-resources/mutating-webhook-configuration-v1/
//!   (cluster-scoped; `webhooks` is a list map keyed by `name`, so an apply
//!   that names a webhook merges into that entry).
//!
//! - Custom resources (here Argo Rollouts' `rollouts`) reject strategic
//!   merge patches with 415, https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#advanced-topics
//!   ("strategic merge patch is not supported" for custom resources).
//!
//! Simplifications, none of which Sesame's behaviour depends on: apply
//! merges labels and annotations key by key and replaces `ownerReferences`
//! and `data` whole (the real server tracks per-manager field ownership);
//! strategic merge patches are applied as JSON merge patches (the same for
//! the maps Sesame patches); label selectors support `key=value` only.
//!
//! Every request is recorded (method, path, query, content type, accept,
//! body) so that tests assert on what Sesame sent, not only on the answers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub accept: String,
    pub body: Value,
}

struct Fault {
    method: Method,
    path_contains: String,
    code: u16,
    times: usize,
}

/// (resource, namespace or "", name)
type Key = (String, String, String);

#[derive(Clone)]
struct Event {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

/// An object stored by "another client" just before a matching request.
struct Interleave {
    method: Method,
    path_contains: String,
    key: Key,
    object: Value,
}

struct St {
    objects: Mutex<BTreeMap<Key, Value>>,
    interleaves: Mutex<Vec<Interleave>>,
    rv: AtomicU64,
    uid: AtomicU64,
    requests: Mutex<Vec<Recorded>>,
    log: Mutex<Vec<Event>>,
    events: broadcast::Sender<Event>,
    faults: Mutex<Vec<Fault>>,
}

/// The running fake.
pub struct FakeApi {
    st: Arc<St>,
    pub url: String,
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "secrets" => ("Secret", "v1"),
        "configmaps" => ("ConfigMap", "v1"),
        "namespaces" => ("Namespace", "v1"),
        "pods" => ("Pod", "v1"),
        "leases" => ("Lease", "coordination.k8s.io/v1"),
        "replicasets" => ("ReplicaSet", "apps/v1"),
        "deployments" => ("Deployment", "apps/v1"),
        "statefulsets" => ("StatefulSet", "apps/v1"),
        "daemonsets" => ("DaemonSet", "apps/v1"),
        "rollouts" => ("Rollout", "argoproj.io/v1alpha1"),
        "events" => ("Event", "events.k8s.io/v1"),
        "mutatingwebhookconfigurations" => {
            ("MutatingWebhookConfiguration", "admissionregistration.k8s.io/v1")
        }
        "validatingwebhookconfigurations" => (
            "ValidatingWebhookConfiguration",
            "admissionregistration.k8s.io/v1",
        ),
        _ => ("Unknown", "v1"),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {},
        "code": code,
    });
    let mut r = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response();
    if code == 429 {
        r.headers_mut().insert("retry-after", "1".parse().unwrap());
    }
    r
}

fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        _ => "Unknown",
    }
}

fn json_response(code: StatusCode, v: Value) -> Response {
    (code, axum::Json(v)).into_response()
}

/// The parts of a request path.
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segs.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    let t = |r: &str, ns: Option<&str>, n: Option<&str>| Target {
        resource: r.to_owned(),
        namespace: ns.map(str::to_owned),
        name: n.map(str::to_owned),
    };
    Some(match rest {
        ["namespaces"] => t("namespaces", None, None),
        ["namespaces", n] => t("namespaces", None, Some(n)),
        ["namespaces", ns, r] => t(r, Some(ns), None),
        ["namespaces", ns, r, n] => t(r, Some(ns), Some(n)),
        [r] => t(r, None, None),
        [r, n] => t(r, None, Some(n)),
        _ => return None,
    })
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn matches_selector(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => {
            obj.pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                == Some(v)
        }
        None => false,
    })
}

/// A field selector; only `metadata.name=<name>` (what a watch of one
/// object sends) is supported.
fn matches_fields(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    match sel.strip_prefix("metadata.name=") {
        Some(name) => obj.pointer("/metadata/name").and_then(Value::as_str) == Some(name),
        None => panic!("unsupported field selector {sel}"),
    }
}

fn as_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
    })
}

impl St {
    fn next_rv(&self) -> u64 {
        self.rv.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn current_rv(&self) -> u64 {
        self.rv.load(Ordering::SeqCst)
    }

    /// Stores an object, filling in server-owned metadata, and emits the event.
    fn store(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        mut obj: Value,
        kind: &'static str,
    ) -> Value {
        let rv = self.next_rv();
        let (k, api_version) = kind_of(resource);
        obj["kind"] = json!(k);
        obj["apiVersion"] = json!(api_version);
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if !namespace.is_empty() {
            meta["namespace"] = json!(namespace);
        }
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{}", self.uid.fetch_add(1, Ordering::SeqCst)));
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!(now());
        }
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        self.objects.lock().unwrap().insert(key, obj.clone());
        let event = Event {
            rv,
            resource: resource.to_owned(),
            kind,
            object: obj.clone(),
        };
        self.log.lock().unwrap().push(event.clone());
        let _ = self.events.send(event);
        obj
    }

    fn remove(&self, key: &Key) -> Option<Value> {
        let mut obj = self.objects.lock().unwrap().remove(key)?;
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = Event {
            rv,
            resource: key.0.clone(),
            kind: "DELETED",
            object: obj.clone(),
        };
        self.log.lock().unwrap().push(event.clone());
        let _ = self.events.send(event);
        Some(obj)
    }
}

fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second())
        .unwrap()
        .to_string()
}

async fn handle(
    State(st): State<Arc<St>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: BTreeMap<String, String> = Query::try_from_uri(&uri).map(|Query(q)| q).unwrap_or_default();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let content_type = header("content-type");
    let accept = header("accept");
    let parsed_body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .or_else(|_| serde_norway::from_slice::<Value>(&body))
            .unwrap_or(Value::String("<unparsable>".into()))
    };
    st.requests.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: query.clone(),
        content_type: content_type.clone(),
        accept: accept.clone(),
        body: parsed_body.clone(),
    });
    let interleave = {
        let mut pending = st.interleaves.lock().unwrap();
        pending
            .iter()
            .position(|i| i.method == method && uri.path().contains(&i.path_contains))
            .map(|at| pending.remove(at))
    };
    if let Some(i) = interleave {
        let exists = st.objects.lock().unwrap().contains_key(&i.key);
        let (resource, namespace, name) = i.key;
        st.store(
            &resource,
            &namespace,
            &name,
            i.object,
            if exists { "MODIFIED" } else { "ADDED" },
        );
    }
    {
        let mut faults = st.faults.lock().unwrap();
        if let Some(f) = faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method && uri.path().contains(&f.path_contains))
        {
            f.times -= 1;
            let code = f.code;
            return status(
                code,
                reason_of(code),
                &format!("injected {code} for {}", uri.path()),
            );
        }
    }
    let Some(target) = parse_path(uri.path()) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    let ns = target.namespace.clone().unwrap_or_default();
    match (method.clone(), target.name.clone()) {
        (Method::GET, Some(name)) => {
            let key = (target.resource.clone(), ns, name.clone());
            match st.objects.lock().unwrap().get(&key) {
                Some(o) if metadata_only => json_response(StatusCode::OK, as_metadata(o)),
                Some(o) => json_response(StatusCode::OK, o.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("{} \"{name}\" not found", target.resource),
                ),
            }
        }
        (Method::GET, None) if query.get("watch").map(String::as_str) == Some("true") => {
            watch(&st, &target, &query, metadata_only)
        }
        (Method::GET, None) => list(&st, &target, &query, metadata_only),
        (Method::POST, None) => {
            let name = parsed_body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let key = (target.resource.clone(), ns.clone(), name.clone());
            if st.objects.lock().unwrap().contains_key(&key) {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", target.resource),
                );
            }
            let obj = st.store(&target.resource, &ns, &name, parsed_body, "ADDED");
            json_response(StatusCode::CREATED, obj)
        }
        (Method::PUT, Some(name)) => {
            let key = (target.resource.clone(), ns.clone(), name.clone());
            let current = st.objects.lock().unwrap().get(&key).cloned();
            let Some(current) = current else {
                return status(
                    404,
                    "NotFound",
                    &format!("{} \"{name}\" not found", target.resource),
                );
            };
            let sent_rv = parsed_body.pointer("/metadata/resourceVersion");
            if sent_rv != current.pointer("/metadata/resourceVersion") {
                return status(
                    409,
                    "Conflict",
                    &format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", target.resource),
                );
            }
            let mut obj = parsed_body;
            obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
            obj["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
            let obj = st.store(&target.resource, &ns, &name, obj, "MODIFIED");
            json_response(StatusCode::OK, obj)
        }
        (Method::PATCH, Some(name)) => patch(&st, &target, &ns, &name, &content_type, &query, parsed_body),
        (Method::DELETE, Some(name)) => {
            let key = (target.resource.clone(), ns, name.clone());
            let current = st.objects.lock().unwrap().get(&key).cloned();
            let Some(current) = current else {
                return status(
                    404,
                    "NotFound",
                    &format!("{} \"{name}\" not found", target.resource),
                );
            };
            if let Some(pre) = parsed_body.get("preconditions") {
                for (field, pointer) in [
                    ("uid", "/metadata/uid"),
                    ("resourceVersion", "/metadata/resourceVersion"),
                ] {
                    if let Some(want) = pre.get(field) {
                        if Some(want) != current.pointer(pointer) {
                            return status(
                                409,
                                "Conflict",
                                &format!("Precondition failed: {field} in precondition: {want}, {field} in object meta: {}", current.pointer(pointer).unwrap_or(&Value::Null)),
                            );
                        }
                    }
                }
            }
            let obj = st.remove(&key).unwrap_or(Value::Null);
            json_response(StatusCode::OK, obj)
        }
        _ => status(405, "MethodNotAllowed", "method not allowed"),
    }
}

fn patch(
    st: &St,
    target: &Target,
    ns: &str,
    name: &str,
    content_type: &str,
    query: &BTreeMap<String, String>,
    body: Value,
) -> Response {
    let key = (target.resource.clone(), ns.to_owned(), name.to_owned());
    let current = st.objects.lock().unwrap().get(&key).cloned();
    match content_type {
        "application/apply-patch+yaml" => {
            if query.get("fieldManager").is_none_or(String::is_empty) {
                return status(
                    400,
                    "BadRequest",
                    "PATCH, application/apply-patch+yaml requests require fieldManager",
                );
            }
            let created = current.is_none();
            let mut obj = current.unwrap_or_else(|| json!({"metadata": {}}));
            for field in ["labels", "annotations"] {
                if let Some(v) = body.pointer(&format!("/metadata/{field}")) {
                    merge(&mut obj["metadata"][field], v);
                }
            }
            if let Some(owners) = body.pointer("/metadata/ownerReferences") {
                obj["metadata"]["ownerReferences"] = owners.clone();
            }
            for field in ["data", "type", "spec"] {
                if let Some(v) = body.get(field) {
                    obj[field] = v.clone();
                }
            }
            // A list map keyed by name: each applied entry merges into the
            // entry of that name (a new name is appended).
            if let Some(entries) = body.get("webhooks").and_then(Value::as_array) {
                let mut list = obj["webhooks"].as_array().cloned().unwrap_or_default();
                for entry in entries {
                    match list.iter_mut().find(|w| w["name"] == entry["name"]) {
                        Some(existing) => merge(existing, entry),
                        None => list.push(entry.clone()),
                    }
                }
                obj["webhooks"] = Value::Array(list);
            }
            let obj = st.store(
                &target.resource,
                ns,
                name,
                obj,
                if created { "ADDED" } else { "MODIFIED" },
            );
            json_response(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                obj,
            )
        }
        // Custom resources take no strategic merge patch.
        "application/strategic-merge-patch+json" if kind_of(&target.resource).1.starts_with("argoproj.io/") => status(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ),
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let Some(mut obj) = current else {
                return status(
                    404,
                    "NotFound",
                    &format!("{} \"{name}\" not found", target.resource),
                );
            };
            if let Some(rv) = body.pointer("/metadata/resourceVersion").filter(|v| !v.is_null()) {
                if Some(rv) != obj.pointer("/metadata/resourceVersion") {
                    return status(
                        409,
                        "Conflict",
                        &format!(
                            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                            target.resource
                        ),
                    );
                }
            }
            merge(&mut obj, &body);
            let obj = st.store(&target.resource, ns, name, obj, "MODIFIED");
            json_response(StatusCode::OK, obj)
        }
        other => status(
            415,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format: {other}"),
        ),
    }
}

fn selected(st: &St, target: &Target, query: &BTreeMap<String, String>) -> Vec<Value> {
    st.objects
        .lock()
        .unwrap()
        .iter()
        .filter(|((r, ns, _), _)| {
            *r == target.resource && target.namespace.as_ref().is_none_or(|want| want == ns)
        })
        .filter(|(_, o)| matches_selector(o, query.get("labelSelector")))
        .filter(|(_, o)| matches_fields(o, query.get("fieldSelector")))
        .map(|(_, o)| o.clone())
        .collect()
}

fn list(st: &St, target: &Target, query: &BTreeMap<String, String>, metadata_only: bool) -> Response {
    let items = selected(st, target, query);
    let start = match query.get("continue") {
        Some(token) => match token.strip_prefix("idx-").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => i,
            None => return status(400, "BadRequest", "invalid continue token"),
        },
        None => 0,
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let end = limit.map_or(items.len(), |l| (start + l).min(items.len()));
    let page: Vec<Value> = items[start.min(items.len())..end]
        .iter()
        .map(|o| {
            if metadata_only {
                as_metadata(o)
            } else {
                let mut o = o.clone();
                if let Some(m) = o.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                o
            }
        })
        .collect();
    let mut metadata = json!({"resourceVersion": st.current_rv().to_string()});
    if end < items.len() {
        metadata["continue"] = json!(format!("idx-{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    let (kind, api_version) = kind_of(&target.resource);
    let (kind, api_version) = if metadata_only {
        ("PartialObjectMetadataList".to_owned(), "meta.k8s.io/v1")
    } else {
        (format!("{kind}List"), api_version)
    };
    json_response(
        StatusCode::OK,
        json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": page}),
    )
}

fn watch(st: &Arc<St>, target: &Target, query: &BTreeMap<String, String>, metadata_only: bool) -> Response {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rx = st.events.subscribe();
    let replay: Vec<Event> = st
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.rv > from)
        .cloned()
        .collect();
    let resource = target.resource.clone();
    let namespace = target.namespace.clone();
    let selector = query.get("labelSelector").cloned();
    let fields = query.get("fieldSelector").cloned();
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (kind, api_version) = kind_of(&resource);
    let bookmark = json!({
        "type": "BOOKMARK",
        "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": st.current_rv().to_string()}},
    });
    let wanted = move |e: &Event| {
        e.resource == resource
            && namespace
                .as_ref()
                .is_none_or(|ns| e.object.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
            && matches_selector(&e.object, selector.as_ref())
            && matches_fields(&e.object, fields.as_ref())
    };
    let line = move |e: &Event| {
        let object = if metadata_only {
            as_metadata(&e.object)
        } else {
            e.object.clone()
        };
        Bytes::from(format!("{}\n", json!({"type": e.kind, "object": object})))
    };
    let mut first: Vec<Bytes> = replay.iter().filter(|e| wanted(e)).map(&line).collect();
    let mut last = replay.last().map_or(from, |e| e.rv);
    if bookmarks {
        first.push(Bytes::from(format!("{bookmark}\n")));
    }
    let stream = futures::stream::unfold(
        (std::collections::VecDeque::from(first), rx),
        move |(mut queue, mut rx)| {
            let wanted = wanted.clone();
            let line = line;
            async move {
                loop {
                    if let Some(b) = queue.pop_front() {
                        return Some((Ok::<Bytes, Infallible>(b), (queue, rx)));
                    }
                    match rx.recv().await {
                        Ok(e) if e.rv > last && wanted(&e) => {
                            last = e.rv;
                            queue.push_back(line(&e));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

impl FakeApi {
    pub async fn start() -> Self {
        let (events, _) = broadcast::channel(1024);
        let st = Arc::new(St {
            objects: Mutex::new(BTreeMap::new()),
            interleaves: Mutex::new(Vec::new()),
            rv: AtomicU64::new(100),
            uid: AtomicU64::new(1),
            requests: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            events,
            faults: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                });
            }
        });
        Self { st, url }
    }

    /// A client for this server, built the way Sesame builds its own.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        sesame::kube::client::build(config).unwrap()
    }

    /// Writes a kubeconfig for this server into `dir` (for `sesame serve
    /// --kubeconfig`, the binary or in-process) and returns its path.
    pub fn write_kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("fake-api.kubeconfig");
        let config = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        });
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }

    /// Creates or replaces an object as if another client had written it.
    pub fn put(&self, resource: &str, namespace: &str, name: &str, obj: Value) -> Value {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        let exists = self.st.objects.lock().unwrap().contains_key(&key);
        self.st.store(
            resource,
            namespace,
            name,
            obj,
            if exists { "MODIFIED" } else { "ADDED" },
        )
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        self.st.objects.lock().unwrap().get(&key).cloned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.st.requests.lock().unwrap().clone()
    }

    /// Requests other than the long-running watches.
    pub fn calls(&self, method: &str, path_contains: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method == method && r.path.contains(path_contains) && !r.query.contains_key("watch")
            })
            .collect()
    }

    /// Stores `obj` as another client would, right before the server handles
    /// the next request of `method` whose path contains `path_contains`: a
    /// deterministic lost race.
    pub fn put_before_next(
        &self,
        method: &str,
        path_contains: &str,
        (resource, namespace, name): (&str, &str, &str),
        obj: Value,
    ) {
        self.st.interleaves.lock().unwrap().push(Interleave {
            method: method.parse().unwrap(),
            path_contains: path_contains.to_owned(),
            key: (resource.to_owned(), namespace.to_owned(), name.to_owned()),
            object: obj,
        });
    }

    /// The next `times` requests of `method` whose path contains `path_contains`
    /// get a `Status` with `code`.
    pub fn fail_next(&self, method: &str, path_contains: &str, code: u16, times: usize) {
        self.st.faults.lock().unwrap().push(Fault {
            method: method.parse().unwrap(),
            path_contains: path_contains.to_owned(),
            code,
            times,
        });
    }
}
