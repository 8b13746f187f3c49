//! The in-process pipeline, without sockets or TLS, on one real
//! AdmissionReview (the captured `generateName` Pod of a ReplicaSet):
//! (i) the Pod without Sesame annotations, (ii) the same Pod with five
//! references against the `file` store of benches/data/ with a warm cache,
//! (iii) `Engine::evaluate` alone on that second Pod, (iv) the second
//! review answered on the spot or handed to the blocking pool, as the
//! server does for reviews past `--offload-above-bytes`. Run with
//! `cargo bench --bench pipeline`; figures go into docs/performance.md.
//! No thresholds here: criterion reports, people judge.

// A benchmark is a test program: a broken setup should stop it loudly.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, Criterion, Throughput};
use serde_json::Value;

use sesame::admission::{Admission, DryRunWriter};
use sesame::config::Config;
use sesame::inject::PodView;
use sesame::pipeline::{Caller, Engine, PodInput, SharedEngine, Verdict};
use sesame::server::ReviewLane;
use sesame::telemetry::Metrics;

/// The allocator `sesame` runs with (src/main.rs), so that figures match.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIXTURE: &str = "real-pod-create-generatename-owned.json";
/// `request.namespace` of the fixture; the policy gives it `apps/team-a/**`.
const NAMESPACE: &str = "team-a";

/// The config, secrets and references shared with scripts/loadtest.sh.
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data");
/// The five references of case (ii): one of each compact form, five secrets.
const FIVE_REFERENCES: &str = include_str!("data/five-references.json");

/// `tests/fixtures/admission/` when the repository has its copy, else the
/// shared fixtures directory next to (or above) the checkout.
fn fixture_path() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let local = root.join("tests/fixtures/admission").join(FIXTURE);
    if local.is_file() {
        return local;
    }
    for dir in root.ancestors().skip(1) {
        let shared = dir.join("shared/fixtures/admission").join(FIXTURE);
        if shared.is_file() {
            return shared;
        }
    }
    local
}

/// The fixture with its annotations replaced by `annotations` (or removed).
fn review_with(annotations: Option<Value>) -> Vec<u8> {
    let path = fixture_path();
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut review: Value = serde_json::from_slice(&text).expect("fixture is JSON");
    let metadata = review
        .pointer_mut("/request/object/metadata")
        .and_then(Value::as_object_mut)
        .expect("fixture has request.object.metadata");
    match annotations {
        Some(a) => metadata.insert("annotations".into(), a),
        None => metadata.remove("annotations"),
    };
    serde_json::to_vec(&review).expect("serialises")
}

/// `review` with one more env var in its first container, numbered `i`.
fn new_pod(review: &[u8], i: usize) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(review).expect("JSON");
    let env = review
        .pointer_mut("/request/object/spec/containers/0/env")
        .and_then(Value::as_array_mut)
        .expect("the fixture's first container has env");
    env.push(serde_json::json!({"name": "BENCH_VARIANT", "value": i.to_string()}));
    serde_json::to_vec(&review).expect("serialises")
}

struct Setup {
    runtime: tokio::runtime::Runtime,
    admission: Arc<Admission>,
    engine: SharedEngine,
    plain: Vec<u8>,
    annotated: Vec<u8>,
}

fn setup() -> Setup {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Arc::new(Metrics::new());
    let loaded = Config::load(Some(&Path::new(DATA).join("sesame.yaml"))).expect("config");
    let engine = runtime
        .block_on(Engine::from_config(&loaded, &metrics, None))
        .expect("engine");
    let engine: SharedEngine = Arc::new(ArcSwap::from_pointee(engine));
    let admission = Arc::new(Admission::new(engine.clone(), Arc::new(DryRunWriter), metrics));
    let setup = Setup {
        runtime,
        admission,
        engine,
        plain: review_with(None),
        annotated: review_with(Some(
            serde_json::from_str(FIVE_REFERENCES).expect("references are JSON"),
        )),
    };
    // Warm the cache, and check that the cases do what their names say.
    let answer = setup
        .runtime
        .block_on(setup.admission.review(&setup.annotated, None))
        .expect("review");
    let answer: Value = serde_json::from_slice(&answer).expect("answer is JSON");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
    let answer = setup
        .runtime
        .block_on(setup.admission.review(&setup.plain, None))
        .expect("review");
    let answer: Value = serde_json::from_slice(&answer).expect("answer is JSON");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    setup
}

fn pipeline(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));

    group.bench_function("review/no-annotations", |b| {
        b.to_async(&s.runtime)
            .iter(|| async { s.admission.review(&s.plain, None).await.expect("review") })
    });
    // The same review again: a ReplicaSet's next Pod, answered from the memo.
    group.bench_function("review/5-references", |b| {
        b.to_async(&s.runtime)
            .iter(|| async { s.admission.review(&s.annotated, None).await.expect("review") })
    });
    // Each review a Pod whose spec differs (one env var), more of them than
    // the memo holds: every one is evaluated in full and kept.
    let variants: Vec<Vec<u8>> = (0..2048).map(|i| new_pod(&s.annotated, i)).collect();
    let next = std::cell::Cell::new(0usize);
    group.bench_function("review/5-references-new-pod", |b| {
        b.to_async(&s.runtime).iter(|| {
            let i = next.get();
            next.set((i + 1) % variants.len());
            let body = &variants[i];
            async { s.admission.review(body, None).await.expect("review") }
        })
    });

    let review: Value = serde_json::from_slice(&s.annotated).expect("JSON");
    let pod: PodView = serde_json::from_value(review["request"]["object"].clone()).expect("Pod");
    let engine = s.engine.load_full();
    group.bench_function("evaluate/5-references", |b| {
        b.to_async(&s.runtime).iter(|| async {
            let input = PodInput {
                namespace: NAMESPACE,
                pod: &pod,
                base: "",
                budget: None,
                namespace_labels: None,
                caller: Caller::Trusted,
                last_known_good: None,
            };
            match engine.evaluate(&input).await {
                Verdict::Mutated(m) => m,
                other => panic!("expected a mutation, got {other:?}"),
            }
        })
    });

    // A runtime like the server's with one worker; the difference between
    // the two is what the hand-off to the blocking pool costs.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let body = bytes::Bytes::from(s.annotated.clone());
    for (name, lane) in [
        ("lane/5-references-on-the-spot", ReviewLane::new(usize::MAX)),
        ("lane/5-references-offloaded", ReviewLane::new(0)),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&server).iter(|| async {
                lane.review(&s.admission, body.clone(), None, Instant::now())
                    .await
                    .expect("review")
            })
        });
    }
    group.finish();
}

/// `PIPELINE_PROFILE=<case> PIPELINE_ITERATIONS=<n>` runs one case n times
/// without criterion, for `perf stat -e instructions` or callgrind: counts
/// that do not move with the load of a shared machine.
fn profile(case: &str, iterations: u64) {
    let s = setup();
    let body = match case {
        "no-annotations" => &s.plain,
        "5-references" => &s.annotated,
        other => panic!("unknown case {other}; use no-annotations or 5-references"),
    };
    s.runtime.block_on(async {
        for _ in 0..iterations {
            std::hint::black_box(s.admission.review(body, None).await.expect("review"));
        }
    });
}

criterion_group!(benches, pipeline);

fn main() {
    if let Ok(case) = std::env::var("PIPELINE_PROFILE") {
        let iterations = std::env::var("PIPELINE_ITERATIONS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        profile(&case, iterations);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
