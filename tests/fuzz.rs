//! Property-based fuzzing, on stable Rust, of what app teams and the API
//! server hand to Sesame: the compact annotation grammar and the structured
//! form, the AdmissionReview decoder and the Pod view, the secret path
//! checker and the policy's globs. Each harness asserts that nothing
//! panics, that what comes out is bounded by what went in (no timing), and
//! that what can be printed parses back to itself.
//!
//! The seeds are every review in tests/fixtures/admission/, the original
//! shared captures in tests/fixtures/fuzz/ and the annotation values listed
//! there; random edits and random structure grow from them.
//!
//! `cargo test --test fuzz` runs 256 cases per harness (seconds); a longer
//! run is `PROPTEST_CASES=100000 cargo test --release --lib --test fuzz`
//! (docs/security.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{json, Value};

use sesame::inject::annotations::{self, ContainerSelector};
use sesame::inject::{Injection, PodView, SecretRef, Target};
use sesame::policy::{glob_match, validate_secret_path, PathPattern};
use sesame::validate::{needs_escape, Quote};

const PREFIX: &str = "sesame.dev";

// ---------------------------------------------------------------- seeds

fn fuzz_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz")
}

/// Every AdmissionReview seed, as text.
fn review_seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut files: Vec<PathBuf> = [common::fixtures_dir(), fuzz_fixtures()]
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        assert!(files.len() >= 12, "the fixtures are missing: {files:?}");
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect()
    })
}

/// Annotation values from tests/fixtures/fuzz/annotations.txt (one
/// `key<TAB>value` a line, `\n` for a newline) and from every seed review.
fn annotation_seeds() -> &'static [(String, String)] {
    static SEEDS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let text = std::fs::read_to_string(fuzz_fixtures().join("annotations.txt")).unwrap();
        let mut out: Vec<(String, String)> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .map(|l| {
                let (k, v) = l.split_once('\t').expect("key<TAB>value");
                (k.to_owned(), v.replace("\\n", "\n"))
            })
            .collect();
        for review in review_seeds() {
            let review: Value = serde_json::from_str(review).unwrap();
            let annotations = review.pointer("/request/object/metadata/annotations");
            for (k, v) in annotations.and_then(Value::as_object).into_iter().flatten() {
                out.push((k.clone(), v.as_str().unwrap_or_default().to_owned()));
            }
        }
        out
    })
}

fn runner() -> TestRunner {
    // 256 cases unless PROPTEST_CASES says otherwise. A failure prints its
    // shrunk input; seeds worth keeping go into tests/fixtures/fuzz/.
    TestRunner::new(RunnerConfig {
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

// ---------------------------------------------------------- strategies

/// A string from `base` with up to four random edits: insert, delete or
/// replace a character.
fn edited(base: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    let edit = (any::<usize>(), 0u8..3, prop_oneof![any::<char>(), tricky_char()]);
    (base, prop::collection::vec(edit, 0..4)).prop_map(|(base, edits)| {
        let mut chars: Vec<char> = base.chars().collect();
        for (at, op, c) in edits {
            let at = at % (chars.len() + 1);
            match op {
                0 => chars.insert(at, c),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ if at < chars.len() => chars[at] = c,
                _ => chars.push(c),
            }
        }
        chars.into_iter().collect()
    })
}

/// Characters the grammar, the path checker and the globs treat specially.
fn tricky_char() -> impl Strategy<Value = char> {
    let chars = ":#/=, \t\n\r\0%\\*?[]{}.-_\"'&!|>\u{202e}\u{feff}é\u{10ffff}";
    prop::sample::select(chars.chars().collect::<Vec<_>>())
}

/// Whitespace-separated words, for the lists below.
fn words(text: &'static str) -> Vec<&'static str> {
    text.split_whitespace().collect()
}

/// The keys of a structured entry, and one it must refuse.
const FIELDS: &str =
    "env envFrom file dir ref store path property version containers initContainers optional address";

/// Text made of grammar fragments: near misses of real annotations.
fn token_soup() -> impl Strategy<Value = String> {
    let mut tokens = words(
        "dev vault aws : / apps team-a team-b db # password version= 3 01 containers= app , init= true \
         optional= false path= /etc/x mode= 0400 0o777 999 prefix= DB_ .. . %2e * ** ? {namespace} { } \\ é = [ ] - x",
    );
    tokens.extend([" ", "  ", "\n", "\t"]);
    let token = prop::sample::select(tokens);
    prop::collection::vec(token, 0..12).prop_map(|v| v.concat())
}

/// A JSON value of a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        token_soup().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        let key = prop_oneof![
            prop::sample::select(
                words(FIELDS)
                    .into_iter()
                    .chain(["prefix", "mode", "name"])
                    .collect::<Vec<_>>()
            )
            .prop_map(str::to_owned),
            any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An annotation key: Sesame's own shapes, near misses and random text.
fn annotation_key() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        prop::sample::select(words(
            "env.DB_PASSWORD env.X env.1BAD env-from.db env-from.DB file.tls dir.certs secrets mode \
             restart-on-rotation injected inject-X env. file. .x",
        ))
        .prop_map(str::to_owned),
        edited(Just("env.NAME".to_owned())),
        any::<String>(),
    ];
    let prefix = prop_oneof![
        8 => Just(format!("{PREFIX}/")),
        1 => Just(format!("{PREFIX}x/")),
        1 => Just(PREFIX.to_owned()),
        1 => Just(String::new()),
    ];
    (prefix, name).prop_map(|(p, n)| p + &n)
}

/// A structured-form value: a list of random entries, as JSON or as YAML.
fn structured_value() -> impl Strategy<Value = String> {
    let entry = prop::collection::btree_map(
        prop::sample::select(words(FIELDS)),
        prop_oneof![
            prop::sample::select(vec![
                json!("DB_PASSWORD"),
                json!("dev:apps/team-a/db#password"),
                json!("dev"),
                json!("apps/team-a/db"),
                json!({"prefix": "DB_"}),
                json!({"path": "/etc/app/key", "mode": "0400"}),
                json!({"path": "/etc/tls", "mode": 288}),
                json!(["app"]),
                json!(3),
                json!(true),
            ]),
            json_value(),
        ],
        0..6,
    );
    let list = prop::collection::vec(entry, 0..4).prop_map(|v| json!(v));
    prop_oneof![
        list.clone().prop_map(|v| v.to_string()),
        // Flow-style YAML: keys unquoted where they can be.
        list.prop_map(|v| v
            .to_string()
            .replace("\":", ": ")
            .replace(",\"", ", ")
            .replace("{\"", "{")),
    ]
}

/// Structured values that lean on YAML anchors and aliases: a list of
/// containers, or a whole entry, repeated by alias.
fn aliased_value() -> impl Strategy<Value = String> {
    (1usize..200, 0usize..50, any::<bool>()).prop_map(|(names, copies, whole)| {
        let list: Vec<String> = (0..names).map(|i| format!("c{i}")).collect();
        let mut yaml = format!(
            "- &e {{env: A, ref: \"dev:apps/team-a/db\", containers: &c [{}]}}\n",
            list.join(", ")
        );
        for i in 0..copies {
            yaml += &if whole {
                "- *e\n".to_owned()
            } else {
                format!("- {{env: B{i}, ref: \"dev:a\", containers: *c}}\n")
            };
        }
        yaml
    })
}

fn annotation_value() -> impl Strategy<Value = String> {
    let seeds: Vec<String> = annotation_seeds().iter().map(|(_, v)| v.clone()).collect();
    let seed = prop::sample::select(seeds);
    prop_oneof![
        2 => seed.clone(),
        3 => edited(seed),
        2 => token_soup(),
        2 => structured_value(),
        1 => aliased_value(),
        1 => any::<String>(),
    ]
}

fn annotation_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    let seeded = prop::sample::select(annotation_seeds().to_vec());
    let seed_key = seeded.clone().prop_map(|(k, _)| k);
    let structured = prop_oneof![structured_value(), aliased_value()];
    let pair = prop_oneof![
        2 => (annotation_key(), annotation_value()),
        1 => seeded,
        1 => (seed_key, annotation_value()),
        1 => (Just(format!("{PREFIX}/{}", annotations::SECRETS_SUFFIX)), structured),
    ];
    prop::collection::vec(pair, 0..5).prop_map(|v| v.into_iter().collect())
}

// ------------------------------------------------ valid injections, printed

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,9}[a-z0-9])?"
}

fn secret_path() -> impl Strategy<Value = String> {
    let segment = "[A-Za-z0-9_+=@:é-][A-Za-z0-9_+=.@:é-]{0,5}";
    prop::collection::vec(segment, 1..4).prop_map(|v| v.join("/"))
}

fn mount_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9_-][a-z0-9._-]{0,5}", 1..4).prop_map(|v| format!("/{}", v.join("/")))
}

fn env_name() -> impl Strategy<Value = String> {
    "[A-Za-z_.-][A-Za-z0-9_.-]{0,10}"
}

/// A well-formed injection with the id of its annotation.
fn injection() -> impl Strategy<Value = (String, Injection)> {
    let target = prop_oneof![
        env_name().prop_map(|name| Target::Env { name }),
        prop_oneof![Just(String::new()), env_name()].prop_map(|prefix| Target::EnvFrom { prefix }),
        (mount_path(), prop::option::of(0u32..=0o777)).prop_map(|(path, mode)| Target::File { path, mode }),
        (mount_path(), prop::option::of(0u32..=0o777)).prop_map(|(path, mode)| Target::Dir { path, mode }),
    ];
    (
        dns_label(),
        target,
        dns_label(),
        secret_path(),
        prop::option::of("[A-Za-z0-9._=:-]{1,10}"),
        prop::option::of("[A-Za-z0-9._-]{1,8}"),
        prop::collection::vec(dns_label(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(id, target, store, path, property, version, names, init, optional)| {
                // env-from and dir take every property.
                let property = match target {
                    Target::EnvFrom { .. } | Target::Dir { .. } => None,
                    _ => property,
                };
                let injection = Injection {
                    source: String::new(),
                    target,
                    reference: SecretRef {
                        store,
                        path,
                        property,
                        version,
                        refresh: None,
                    },
                    containers: ContainerSelector { names, init },
                    optional,
                };
                (id, injection)
            },
        )
}

/// The compact annotation for `injection`, or `None` where the compact form
/// cannot say it (a mount path with a space).
fn compact(id: &str, injection: &Injection) -> Option<(String, String)> {
    let mut value = injection.reference.to_string();
    let kind = match &injection.target {
        Target::Env { name } => return compact_with(format!("{PREFIX}/env.{name}"), value, injection),
        Target::EnvFrom { prefix } => {
            if !prefix.is_empty() {
                value += &format!(" prefix={prefix}");
            }
            "env-from"
        }
        Target::File { path, mode } | Target::Dir { path, mode } => {
            if path.contains(char::is_whitespace) {
                return None;
            }
            value += &format!(" path={path}");
            if let Some(m) = mode {
                value += &format!(" mode={m:04o}");
            }
            if matches!(injection.target, Target::File { .. }) {
                "file"
            } else {
                "dir"
            }
        }
    };
    compact_with(format!("{PREFIX}/{kind}.{id}"), value, injection)
}

fn compact_with(key: String, mut value: String, injection: &Injection) -> Option<(String, String)> {
    if !injection.containers.names.is_empty() {
        value += &format!(" containers={}", injection.containers.names.join(","));
    }
    if injection.containers.init {
        value += " init=true";
    }
    if injection.optional {
        value += " optional=true";
    }
    Some((key, value))
}

/// The structured-form entry for `injection`, with `ref:` or with fields.
fn structured(injection: &Injection, with_ref: bool) -> Value {
    let mut entry = serde_json::Map::new();
    let mode = |m: &Option<u32>| m.map(|m| json!(format!("{m:04o}")));
    match &injection.target {
        Target::Env { name } => entry.insert("env".into(), json!(name)),
        Target::EnvFrom { prefix } => entry.insert("envFrom".into(), json!({ "prefix": prefix })),
        Target::File { path, mode: m } => entry.insert("file".into(), json!({"path": path, "mode": mode(m)})),
        Target::Dir { path, mode: m } => entry.insert("dir".into(), json!({"path": path, "mode": mode(m)})),
    };
    let r = &injection.reference;
    if with_ref {
        let mut text = format!("{}:{}", r.store, r.path);
        if let Some(p) = &r.property {
            text += &format!("#{p}");
        }
        entry.insert("ref".into(), json!(text));
    } else {
        entry.insert("store".into(), json!(r.store));
        entry.insert("path".into(), json!(r.path));
        if let Some(p) = &r.property {
            entry.insert("property".into(), json!(p));
        }
    }
    if let Some(v) = &r.version {
        entry.insert("version".into(), json!(v));
    }
    entry.insert("containers".into(), json!(injection.containers.names));
    entry.insert("initContainers".into(), json!(injection.containers.init));
    entry.insert("optional".into(), json!(injection.optional));
    Value::Object(entry)
}

/// What the grammar takes as an id (env-from, file, dir).
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn without_source(mut i: Injection) -> Injection {
    i.source.clear();
    i
}

// ---------------------------------------------------------- annotations

/// What every parse must satisfy, whatever the input.
fn check_parse(annotations: &BTreeMap<String, String>) -> Result<(), TestCaseError> {
    let input: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    match annotations::parse(PREFIX, annotations) {
        Err(e) => {
            // The message quotes at most the key and one token of the value.
            let message = e.to_string();
            prop_assert!(
                message.len() <= 512 + input,
                "{} bytes from {} in",
                message.len(),
                input
            );
            // It names one of the keys, as messages quote them (cut, escaped).
            prop_assert!(annotations
                .keys()
                .any(|k| e.annotation.starts_with(&Quote::DEFAULT.of(k).to_string())));
            // Nothing in it can break a line or reorder the text.
            prop_assert!(!message.contains(needs_escape), "{:?}", message);
        }
        Ok(request) => {
            // What was built, in bytes of text it holds.
            let out: usize = request
                .injections
                .iter()
                .map(|i| {
                    let names: usize = i.containers.names.iter().map(|n| n.len() + 1).sum();
                    i.reference.to_string().len() + names + 1
                })
                .sum();
            prop_assert!(out <= 2 * input, "{} bytes of references from {} in", out, input);
            // Whatever parsed, printed compactly, parses back to itself.
            for injection in request.injections {
                let id = injection.source.rsplit('.').next().unwrap_or("x");
                let id = if is_dns_label(id) { id } else { "x" };
                let Some((key, value)) = compact(id, &injection) else {
                    continue;
                };
                let again = annotations::parse(PREFIX, &BTreeMap::from([(key.clone(), value.clone())]));
                let again = again.map_err(|e| TestCaseError::fail(format!("{key}: {value}: {e}")))?;
                prop_assert_eq!(again.injections.len(), 1);
                prop_assert_eq!(
                    without_source(again.injections[0].clone()),
                    without_source(injection.clone()),
                    "{}: {}",
                    key,
                    value
                );
            }
        }
    }
    Ok(())
}

#[test]
fn annotations_never_panic_and_stay_bounded() {
    runner().run(&annotation_map(), |a| check_parse(&a)).unwrap();
}

#[test]
fn seed_annotations_parse_or_fail_cleanly() {
    for (k, v) in annotation_seeds() {
        check_parse(&BTreeMap::from([(k.clone(), v.clone())])).unwrap();
    }
}

#[test]
fn compact_form_round_trips() {
    runner()
        .run(&injection(), |(id, injection)| {
            let Some((key, value)) = compact(&id, &injection) else {
                return Ok(());
            };
            let parsed = annotations::parse(PREFIX, &BTreeMap::from([(key.clone(), value.clone())]))
                .map_err(|e| TestCaseError::fail(format!("{key}: {value}: {e}")))?;
            prop_assert_eq!(parsed.injections.len(), 1);
            prop_assert_eq!(&parsed.injections[0].source, &key);
            prop_assert_eq!(without_source(parsed.injections[0].clone()), injection);
            // The reference alone, as messages print it, parses back too.
            let shown = parsed.injections[0].reference.to_string();
            let env = annotations::parse(PREFIX, &BTreeMap::from([(format!("{PREFIX}/env.X"), shown)]));
            prop_assert_eq!(
                &env.unwrap().injections[0].reference,
                &parsed.injections[0].reference
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn structured_form_round_trips() {
    let strategy = (
        prop::collection::vec(injection(), 1..4),
        any::<bool>(),
        any::<bool>(),
    );
    runner()
        .run(&strategy, |(list, with_ref, yaml)| {
            let entries: Vec<Value> = list.iter().map(|(_, i)| structured(i, with_ref)).collect();
            let mut text = serde_json::to_string_pretty(&entries).unwrap();
            if yaml {
                // Block YAML: the same entries, one key a line.
                text = entries
                    .iter()
                    .map(|e| {
                        let fields: Vec<String> = e
                            .as_object()
                            .unwrap()
                            .iter()
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect();
                        format!("- {}", fields.join("\n  "))
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            let key = format!("{PREFIX}/secrets");
            let parsed = annotations::parse(PREFIX, &BTreeMap::from([(key.clone(), text.clone())]))
                .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(parsed.injections.len(), list.len());
            for (n, (parsed, (_, expected))) in parsed.injections.into_iter().zip(&list).enumerate() {
                prop_assert_eq!(&parsed.source, &format!("{key}[{n}]"));
                prop_assert_eq!(without_source(parsed), expected.clone());
            }
            Ok(())
        })
        .unwrap();
}

// ------------------------------------------------------------ the path checker

fn check_path(path: &str) -> Result<(), TestCaseError> {
    match validate_secret_path(path) {
        Err(message) => prop_assert!(message.len() <= 64, "{}", message),
        Ok(()) => {
            prop_assert!(!path.is_empty() && path.len() <= 1024);
            for segment in path.split('/') {
                prop_assert!(!matches!(segment, "" | "." | ".."), "{:?}", path);
            }
            let plain = !path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "%\\*?[]{}#".contains(c));
            prop_assert!(plain, "{:?}", path);
            // A valid path, used as a pattern, matches itself and nothing longer.
            let pattern = PathPattern::parse(path).map_err(TestCaseError::fail)?;
            prop_assert!(pattern.matches(path, "ns"));
            for longer in [format!("{path}/x"), format!("{path}x")] {
                prop_assert!(!pattern.matches(&longer, "ns"), "{:?}", longer);
            }
            prop_assert_eq!(pattern.first_literal(), path.split('/').next());
        }
    }
    Ok(())
}

#[test]
fn path_checker_never_panics_and_what_passes_is_plain() {
    let path = prop_oneof![
        2 => edited(secret_path()),
        1 => edited(Just("apps/team-a/db".to_owned())),
        1 => prop::collection::vec(prop_oneof![Just(".".to_owned()), Just("..".to_owned()), token_soup()], 0..5)
            .prop_map(|v| v.join("/")),
        1 => any::<String>(),
        1 => "[a/]{1000,1030}",
    ];
    runner().run(&path, |p| check_path(&p)).unwrap();
}

// ----------------------------------------------------------------- globs

#[test]
fn globs_never_panic_and_render_bounded() {
    let pattern = prop_oneof![
        edited(Just("apps/{namespace}/**".to_owned())),
        edited(Just("apps/**/a/**/a/**/a/**/b".to_owned())),
        token_soup(),
        any::<String>(),
    ];
    let subject = prop_oneof![edited(secret_path()), any::<String>(), "[a/*?]{0,64}"];
    let namespace = prop_oneof![
        Just("team-a".to_owned()),
        Just("*".to_owned()),
        "[a-z*?{}/-]{0,8}",
        any::<String>()
    ];
    runner()
        .run(&(pattern, subject, namespace), |(pattern, subject, namespace)| {
            let _ = glob_match(&pattern, &subject);
            let _ = glob_match(&namespace, &subject);
            match PathPattern::parse(&pattern) {
                Err(message) => prop_assert!(message.len() <= 160 + pattern.len()),
                Ok(p) => {
                    let _ = p.matches(&subject, &namespace);
                    let holes = pattern.matches("{namespace}").count();
                    prop_assert!(p.render(&namespace).len() <= pattern.len() + holes * namespace.len());
                    // Without wildcards a pattern is its text with the namespace
                    // filled in; a namespace spelled like a glob is no exception.
                    if !pattern.contains(['*', '?']) && !namespace.contains('/') {
                        let own = p.render(&namespace);
                        for path in [subject.clone(), own.clone(), p.render("team-b")] {
                            prop_assert_eq!(p.matches(&path, &namespace), path == own, "{}", path);
                        }
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

// ------------------------------------------------ the review decoder and the Pod

/// The real server (TLS, HTTP/1.1, the file store of tests/common) and
/// a client, driven from the synchronous proptest runner.
struct Reviewer {
    runtime: tokio::runtime::Runtime,
    server: common::TestServer,
    client: reqwest::Client,
}

fn reviewer() -> Reviewer {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(common::TestServer::start());
    let client = server.client(false);
    Reviewer {
        runtime,
        server,
        client,
    }
}

impl Reviewer {
    fn post(&self, body: &[u8]) -> (u16, String) {
        self.runtime.block_on(async {
            let resp = self
                .client
                .post(&self.server.url)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    }

    /// The server still answers: nothing a case sent took it down.
    fn still_serving(&self) {
        let review = common::fixture("pod-create-captured-gke.json");
        let (status, _) = self.post(review.to_string().as_bytes());
        assert_eq!(status, 200);
    }
}

/// Every JSON pointer in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let token = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{token}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

#[derive(Debug, Clone)]
enum Edit {
    Annotations(BTreeMap<String, String>),
    Namespace(String),
    Replace(usize, Value),
    Remove(usize),
}

#[derive(Debug, Clone)]
enum Bytes {
    Whole,
    Truncate(usize),
    Flip(usize, u8),
}

fn review_input() -> impl Strategy<Value = (usize, Vec<Edit>, Bytes)> {
    let edit = prop_oneof![
        3 => annotation_map().prop_map(Edit::Annotations),
        1 => prop_oneof![
            prop::sample::select(vec!["team-a", "team-b", "dev-team", "*", "team-?", "", "a/b"]).prop_map(str::to_owned),
            any::<String>(),
        ]
        .prop_map(Edit::Namespace),
        2 => (any::<usize>(), json_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        1 => any::<usize>().prop_map(Edit::Remove),
    ];
    let bytes = prop_oneof![
        6 => Just(Bytes::Whole),
        1 => any::<usize>().prop_map(Bytes::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Bytes::Flip(i, b)),
    ];
    (0..review_seeds().len(), prop::collection::vec(edit, 0..4), bytes)
}

fn build_review(seed: usize, edits: &[Edit], bytes: &Bytes) -> Vec<u8> {
    let mut review: Value = serde_json::from_str(&review_seeds()[seed]).unwrap();
    for edit in edits {
        let mut all = Vec::new();
        pointers(&review, String::new(), &mut all);
        match edit {
            Edit::Annotations(a) => {
                if let Some(meta) = review
                    .pointer_mut("/request/object/metadata")
                    .and_then(Value::as_object_mut)
                {
                    meta.insert("annotations".into(), json!(a));
                }
            }
            Edit::Namespace(ns) => {
                if let Some(r) = review.get_mut("request").and_then(Value::as_object_mut) {
                    r.insert("namespace".into(), json!(ns));
                }
            }
            Edit::Replace(i, v) => {
                if let Some(target) = review.pointer_mut(&all[i % all.len()]) {
                    *target = v.clone();
                }
            }
            Edit::Remove(i) => {
                let pointer = &all[i % all.len()];
                if let Some((parent, key)) = pointer.rsplit_once('/') {
                    let key = key.replace("~1", "/").replace("~0", "~");
                    match review.pointer_mut(parent) {
                        Some(Value::Object(m)) => {
                            m.remove(&key);
                        }
                        Some(Value::Array(a)) => {
                            if let Ok(i) = key.parse::<usize>() {
                                a.remove(i);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let mut out = serde_json::to_vec(&review).unwrap();
    match *bytes {
        Bytes::Whole => {}
        Bytes::Truncate(i) => out.truncate(i % (out.len() + 1)),
        Bytes::Flip(i, b) => {
            let i = i % out.len();
            out[i] ^= b;
        }
    }
    out
}

fn check_review(r: &Reviewer, body: &[u8]) -> Result<(), TestCaseError> {
    let (status, text) = r.post(body);
    let sent: Option<Value> = serde_json::from_slice(body).ok();
    // Values travel only inside the base64 patch, never as text.
    common::assert_no_secret(&text);
    match status {
        // Not an AdmissionReview: a sentence, bounded by what was sent.
        400 => prop_assert!(text.len() <= 512 + body.len(), "{}", text),
        200 => {
            prop_assert!(
                text.len() <= 16 * 1024 + 64 * body.len(),
                "{} bytes for {}",
                text.len(),
                body.len()
            );
            let answer: Value =
                serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&answer["apiVersion"], "admission.k8s.io/v1");
            prop_assert_eq!(&answer["kind"], "AdmissionReview");
            let response = &answer["response"];
            prop_assert!(response["allowed"].is_boolean());
            if let Some(sent) = sent {
                prop_assert_eq!(&response["uid"], &sent["request"]["uid"]);
            }
            if response["allowed"] == false {
                let message = response["status"]["message"].as_str().unwrap_or_default();
                prop_assert!(!message.is_empty());
                prop_assert!(message.len() <= 512 + body.len());
                prop_assert!(response.get("patch").is_none());
            }
        }
        other => prop_assert!(false, "HTTP {} for a review: {}", other, text),
    }
    Ok(())
}

#[test]
fn reviews_never_panic_leak_or_grow_unbounded() {
    let r = reviewer();
    runner()
        .run(&review_input(), |(seed, edits, bytes)| {
            check_review(&r, &build_review(seed, &edits, &bytes))
        })
        .unwrap();
    r.still_serving();
}

#[test]
fn seed_reviews_are_answered() {
    let r = reviewer();
    for seed in review_seeds() {
        check_review(&r, seed.as_bytes()).unwrap();
    }
}

fn check_pod(object: &str) -> Result<(), TestCaseError> {
    let Ok(pod) = serde_json::from_str::<PodView>(object) else {
        return Ok(());
    };
    prop_assert!(pod.display_name().len() <= object.len() + 16);
    let names = pod.secret_names_with_prefix("sesame-");
    prop_assert!(names.iter().map(String::len).sum::<usize>() <= object.len());
    prop_assert!(pod.annotations().count() <= object.len());
    let _ = pod.controller();
    let _ = pod.init_containers();
    Ok(())
}

#[test]
fn pod_view_never_panics() {
    let strategy = (review_input(), json_value());
    runner()
        .run(&strategy, |((seed, edits, _), extra)| {
            let review: Value = serde_json::from_slice(&build_review(seed, &edits, &Bytes::Whole)).unwrap();
            let object = review.pointer("/request/object").cloned().unwrap_or(Value::Null);
            check_pod(&object.to_string())?;
            check_pod(&extra.to_string())?;
            check_pod(&json!({"metadata": extra.clone(), "spec": extra}).to_string())
        })
        .unwrap();
}
