//! The plan and the patch as pure functions: injections and resolved data in,
//! env vars, volumes, the managed Secret and JSON Patch operations out.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::inject::annotations::ContainerSelector;
use crate::inject::patch::build_patch;

const MARKER: &str = "sesame.dev/injected";

type Answer = Result<Arc<SecretData>, StoreError>;

/// `store:path[#property]`, with an optional version.
fn reference(text: &str, version: Option<&str>) -> SecretRef {
    let (store, rest) = text.split_once(':').unwrap();
    let (path, property) = match rest.split_once('#') {
        Some((p, prop)) => (p, Some(prop.to_owned())),
        None => (rest, None),
    };
    SecretRef {
        store: store.to_owned(),
        path: path.to_owned(),
        property,
        version: version.map(str::to_owned),
        refresh: None,
    }
}

fn injection(source: &str, target: Target, r: &str) -> Injection {
    Injection {
        source: format!("sesame.dev/{source}"),
        target,
        reference: reference(r, None),
        containers: ContainerSelector::default(),
        optional: false,
    }
}

fn env(name: &str, r: &str) -> Injection {
    injection(&format!("env.{name}"), Target::Env { name: name.into() }, r)
}

fn env_from(id: &str, r: &str, prefix: &str) -> Injection {
    injection(
        &format!("env-from.{id}"),
        Target::EnvFrom {
            prefix: prefix.into(),
        },
        r,
    )
}

fn file(id: &str, r: &str, path: &str, mode: Option<u32>) -> Injection {
    injection(
        &format!("file.{id}"),
        Target::File {
            path: path.into(),
            mode,
        },
        r,
    )
}

fn dir(id: &str, r: &str, path: &str) -> Injection {
    injection(
        &format!("dir.{id}"),
        Target::Dir {
            path: path.into(),
            mode: None,
        },
        r,
    )
}

fn props(pairs: &[(&str, &str)]) -> Answer {
    Ok(Arc::new(SecretData::Properties(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretValue::from(*v)))
            .collect(),
    )))
}

fn value(v: &str) -> Answer {
    Ok(Arc::new(SecretData::Value(SecretValue::from(v))))
}

/// A store that answers every path with the same database secret.
fn db() -> Answer {
    props(&[("host", "db.svc"), ("password", "pw"), ("user", "app")])
}

fn pod_json() -> Value {
    json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}, {"name": "sidecar", "image": "proxy"}]}
    })
}

fn view(pod: &Value) -> PodView {
    serde_json::from_value(pod.clone()).unwrap()
}

fn build(
    pod: &PodView,
    namespace: &str,
    mode: Mode,
    inline_allowed: bool,
    items: &[(Injection, Answer)],
) -> Result<InjectionPlan, PlanError> {
    let injections: Vec<Injection> = items.iter().map(|(i, _)| i.clone()).collect();
    let resolved: Vec<Answer> = items.iter().map(|(_, a)| a.clone()).collect();
    build_plan(&PlanInput {
        namespace,
        service_account: "default",
        pod,
        mode,
        inline_allowed,
        injections: &injections,
        resolved: &resolved,
        templates: &[],
        template_answers: &Fetched::new(),
        quote: Quote::DEFAULT,
    })
}

/// A secretRef plan in namespace team-a for the default two-container Pod.
fn plan(items: &[(Injection, Answer)]) -> Result<InjectionPlan, PlanError> {
    build(&view(&pod_json()), "team-a", Mode::SecretRef, false, items)
}

fn env_keys(plan: &InjectionPlan) -> BTreeMap<String, String> {
    plan.env
        .iter()
        .filter(|e| e.container.name == "app")
        .map(|e| match &e.source {
            EnvSource::SecretKey(k) => (e.name.clone(), k.clone()),
            EnvSource::Inline(_) => (e.name.clone(), "(inline)".to_owned()),
        })
        .collect()
}

/// The operations as JSON (`op`, `path`, `value`).
fn ops_json(ops: &[json_patch::PatchOperation]) -> Vec<Value> {
    ops.iter().map(|o| serde_json::to_value(o).unwrap()).collect()
}

fn paths(ops: &[json_patch::PatchOperation]) -> Vec<String> {
    ops_json(ops)
        .iter()
        .map(|o| o["path"].as_str().unwrap().to_owned())
        .collect()
}

fn apply(doc: &mut Value, ops: Vec<json_patch::PatchOperation>) {
    json_patch::patch(doc, &json_patch::Patch(ops)).unwrap();
}

#[test]
fn secret_keys_do_not_depend_on_annotation_order_and_never_collide() {
    let mut pinned = env("D", "dev:apps/a/db#password");
    pinned.reference.version = Some("2".into());
    let items = vec![
        (env("A", "dev:apps/a/db#password"), db()),
        (env("B", "dev:apps/b/db#password"), db()),
        (env("C", "dev:apps/a/db#user"), db()),
        (pinned, db()),
        // The same value twice shares one key.
        (env("E", "dev:apps/a/db#user"), db()),
    ];
    let forward = plan(&items).unwrap();
    let reversed = plan(&items.iter().rev().cloned().collect::<Vec<_>>()).unwrap();
    let (f, r) = (forward.secret.clone().unwrap(), reversed.secret.clone().unwrap());
    assert_eq!(f.name, r.name);
    assert_eq!(f.sources, r.sources);
    assert_eq!(f.data, r.data);
    assert_eq!(env_keys(&forward), env_keys(&reversed));

    let keys = env_keys(&forward);
    assert_eq!(f.data.len(), 4, "{:?}", f.data.keys());
    assert_eq!(keys["C"], "db.user", "a key without a clash stays readable");
    assert_eq!(keys["E"], keys["C"]);
    let clashing = [&keys["A"], &keys["B"], &keys["D"]];
    for k in clashing {
        let suffix = k.strip_prefix("db.password-").unwrap_or_else(|| panic!("{k}"));
        assert!(
            suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
            "{k}"
        );
    }
    assert!(clashing[0] != clashing[1] && clashing[1] != clashing[2] && clashing[0] != clashing[2]);
    // Each key holds the reference it names.
    assert_eq!(
        f.sources[&keys["D"]].as_reference().unwrap().version.as_deref(),
        Some("2")
    );
    assert_eq!(f.sources[&keys["B"]].as_reference().unwrap().path, "apps/b/db");
}

#[test]
fn the_secret_name_depends_on_the_namespace_the_service_account_and_the_set_of_references_only() {
    let items = vec![
        (env("A", "dev:apps/team-a/db#password"), db()),
        (env("B", "dev:apps/team-a/db#user"), db()),
    ];
    let name = plan(&items).unwrap().secret.unwrap().name;
    let hash = name.strip_prefix("sesame-").unwrap();
    assert!(
        hash.len() == 16
            && hash
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let refs = [
        reference("dev:apps/team-a/db#password", None),
        reference("dev:apps/team-a/db#user", None),
    ];
    assert_eq!(secret_name("team-a", "default", &refs), name);
    // Another service account in the same namespace: another Secret, so the
    // own-Secret rule keeps service accounts apart too.
    let injections: Vec<Injection> = items.iter().map(|(i, _)| i.clone()).collect();
    let resolved: Vec<Answer> = items.iter().map(|(_, a)| a.clone()).collect();
    let ci = build_plan(&PlanInput {
        namespace: "team-a",
        service_account: "ci",
        pod: &view(&pod_json()),
        mode: Mode::SecretRef,
        inline_allowed: false,
        injections: &injections,
        resolved: &resolved,
        templates: &[],
        template_answers: &Fetched::new(),
        quote: Quote::DEFAULT,
    })
    .unwrap()
    .secret
    .unwrap();
    assert_ne!(ci.name, name);
    assert_eq!(ci.name, secret_name("team-a", "ci", &refs));
    assert_eq!(ci.service_account, "ci");
    // The parts are length-prefixed: moving characters between namespace
    // and service account gives another name.
    assert_ne!(
        secret_name("team-ab", "c", &refs),
        secret_name("team-a", "bc", &refs)
    );

    // Other env names, same references: the same Secret.
    let renamed = vec![
        (env("PW", "dev:apps/team-a/db#password"), db()),
        (env("USER", "dev:apps/team-a/db#user"), db()),
    ];
    assert_eq!(plan(&renamed).unwrap().secret.unwrap().name, name);
    // Another namespace: another Secret.
    let pod = view(&pod_json());
    let other_ns = build(&pod, "team-b", Mode::SecretRef, false, &items).unwrap();
    assert_ne!(other_ns.secret.unwrap().name, name);
    // One reference more, or another property: another Secret.
    let mut more = items.clone();
    more.push((env("C", "dev:apps/team-a/db#host"), db()));
    assert_ne!(plan(&more).unwrap().secret.unwrap().name, name);
    let whole = vec![(env_from("db", "dev:apps/team-a/db", "DB_"), db())];
    assert_ne!(plan(&whole).unwrap().secret.unwrap().name, name);
}

#[test]
fn files_in_one_directory_share_one_volume() {
    let items = vec![
        (
            file("b", "dev:apps/team-a/tls#crt", "/etc/app/tls.crt", Some(0o444)),
            props(&[("crt", "C"), ("key", "K")]),
        ),
        (
            file("a", "dev:apps/team-a/tls#key", "/etc/app/tls.key", Some(0o400)),
            props(&[("crt", "C"), ("key", "K")]),
        ),
        (
            file("c", "dev:apps/team-a/token", "/var/run/token/value", None),
            value("T"),
        ),
    ];
    let p = plan(&items).unwrap();
    assert_eq!(p.volumes.len(), 2, "{:?}", p.volumes);
    let app = p.volumes.iter().find(|v| v.mount_path == "/etc/app").unwrap();
    let items: Vec<(&str, Option<u32>)> = app.items.iter().map(|i| (i.path.as_str(), i.mode)).collect();
    assert_eq!(items, [("tls.crt", Some(0o444)), ("tls.key", Some(0o400))]);
    let names: Vec<&str> = app.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "sidecar"]);
    let token = p
        .volumes
        .iter()
        .find(|v| v.mount_path == "/var/run/token")
        .unwrap();
    assert_eq!(token.items[0].path, "value");
    assert_ne!(app.name, token.name);
    assert!(app.name.starts_with(MANAGED_PREFIX) && token.name.starts_with(MANAGED_PREFIX));

    // One file from two annotations cannot be.
    let twice = vec![
        (file("a", "dev:apps/team-a/x", "/etc/app/key", None), value("1")),
        (file("b", "dev:apps/team-a/y", "/etc/app/key", None), value("2")),
    ];
    let e = plan(&twice).unwrap_err();
    assert_eq!(e.class().code(), 422);
    assert!(e.to_string().contains("sesame.dev/file.b"), "{e}");
}

#[test]
fn a_file_at_the_root_is_refused() {
    let e = plan(&[(file("x", "dev:apps/team-a/token", "/x", None), value("T"))]).unwrap_err();
    assert!(matches!(e, PlanError::Invalid { .. }), "{e:?}");
    assert_eq!((e.class().code(), e.class().label()), (422, "invalid"));
    let m = e.to_string();
    assert!(
        m.contains("sesame.dev/file.x") && m.contains("its own directory"),
        "{m}"
    );
}

#[test]
fn env_from_turns_property_keys_into_env_names() {
    assert_eq!(env_key("tls.crt"), "TLS_CRT");
    assert_eq!(env_key("ca-bundle.pem"), "CA_BUNDLE_PEM");
    assert_eq!(env_key("user_name"), "USER_NAME");

    let tls = props(&[("tls.crt", "C"), ("ca-bundle", "B"), ("user_name", "U")]);
    let p = plan(&[(env_from("tls", "dev:apps/team-a/tls", "TLS_"), tls)]).unwrap();
    let keys = env_keys(&p);
    let names: Vec<&String> = keys.keys().collect();
    assert_eq!(names, ["TLS_CA_BUNDLE", "TLS_TLS_CRT", "TLS_USER_NAME"]);
    // Keys of the Secret keep the property names.
    assert_eq!(keys["TLS_TLS_CRT"], "tls.tls.crt");

    // A property that cannot start an env var name needs a prefix.
    let digits = props(&[("1st", "x")]);
    let e = plan(&[(env_from("n", "dev:apps/team-a/n", ""), digits.clone())]).unwrap_err();
    assert!(
        e.to_string()
            .contains("\"1st\" does not make a valid env var name"),
        "{e}"
    );
    let p = plan(&[(env_from("n", "dev:apps/team-a/n", "N_"), digits)]).unwrap();
    assert!(env_keys(&p).contains_key("N_1ST"));
}

#[test]
fn inline_values_only_where_allowed_and_only_as_text() {
    let pod = view(&pod_json());
    let items = vec![(env("PW", "dev:apps/dev/db#password"), db())];
    let e = build(&pod, "team-a", Mode::Inline, false, &items).unwrap_err();
    assert_eq!((e.class().code(), e.class().label()), (403, "policy"));
    assert!(e.to_string().contains("namespace \"team-a\""), "{e}");

    let p = build(&pod, "dev", Mode::Inline, true, &items).unwrap();
    assert!(p.secret.is_none(), "inline env needs no Secret");
    assert_eq!(p.marker, "inline");
    assert!(matches!(&p.env[0].source, EnvSource::Inline(v) if v.expose() == b"pw"));
    let ops = build_patch(&pod, &p, "", MARKER, None, Quote::DEFAULT).unwrap();
    let mut patched = pod_json();
    apply(&mut patched, ops);
    assert_eq!(
        patched["spec"]["containers"][0]["env"],
        json!([{"name": "PW", "value": "pw"}])
    );

    // Bytes that are not UTF-8 cannot be an env value in the Pod spec.
    let binary = Ok(Arc::new(SecretData::Value(SecretValue::new(vec![
        0xff, 0xfe, 0x00,
    ]))));
    let e = build(
        &pod,
        "dev",
        Mode::Inline,
        true,
        &[(env("BIN", "dev:apps/dev/bin"), binary.clone())],
    )
    .unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
    // The same bytes in secretRef mode are fine.
    build(
        &pod,
        "dev",
        Mode::SecretRef,
        true,
        &[(env("BIN", "dev:apps/dev/bin"), binary)],
    )
    .unwrap();

    // Files still go through a Secret in inline mode.
    let mixed = vec![
        (env("PW", "dev:apps/dev/db#password"), db()),
        (file("ca", "dev:apps/dev/ca", "/etc/ca/ca.crt", None), value("CA")),
    ];
    let p = build(&pod, "dev", Mode::Inline, true, &mixed).unwrap();
    let secret = p.secret.unwrap();
    assert_eq!(secret.data.keys().collect::<Vec<_>>(), ["ca"]);
    assert_eq!(p.marker, secret.name);
}

#[test]
fn one_env_name_from_two_annotations_is_a_conflict() {
    let items = vec![
        (env("DB_PASSWORD", "dev:apps/team-a/api-token"), value("t")),
        (env_from("db", "dev:apps/team-a/db", "DB_"), db()),
    ];
    let e = plan(&items).unwrap_err();
    assert_eq!((e.class().code(), e.class().label()), (422, "conflict"));
    let m = e.to_string();
    for part in [
        "sesame.dev/env.DB_PASSWORD",
        "sesame.dev/env-from.db",
        "DB_PASSWORD",
        "\"app\"",
    ] {
        assert!(m.contains(part), "{part} missing in {m}");
    }

    // The same name in different containers is no conflict.
    let mut only_app = env("X", "dev:apps/team-a/a");
    only_app.containers.names = vec!["app".into()];
    let mut only_sidecar = env("X", "dev:apps/team-a/b");
    only_sidecar.containers.names = vec!["sidecar".into()];
    plan(&[(only_app, value("1")), (only_sidecar, value("2"))]).unwrap();
}

#[test]
fn the_patch_creates_missing_arrays_and_escapes_the_marker_key() {
    let items = vec![
        (env("PW", "dev:apps/team-a/db#password"), db()),
        (
            dir("tls", "dev:apps/team-a/tls", "/etc/tls"),
            props(&[("tls.crt", "C")]),
        ),
    ];
    let bare = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}]}});
    let pod = view(&bare);
    let p = build(&pod, "team-a", Mode::SecretRef, false, &items).unwrap();
    let name = p.secret.as_ref().unwrap().name.clone();
    let ops = build_patch(&pod, &p, "", MARKER, Some(&name), Quote::DEFAULT).unwrap();
    assert_eq!(
        paths(&ops),
        [
            "/spec/volumes",
            "/spec/containers/0/env",
            "/spec/containers/0/volumeMounts",
            "/metadata/annotations",
            "/metadata/annotations/sesame.dev~1injected",
        ]
    );
    let json = ops_json(&ops);
    assert!(json.iter().all(|o| o["op"] == "add"));
    assert!(json[0]["value"].is_array() && json[1]["value"].is_array() && json[2]["value"].is_array());
    assert_eq!(json[3]["value"], json!({}));
    let mut patched = bare.clone();
    apply(&mut patched, ops);
    assert_eq!(patched["metadata"]["annotations"][MARKER], name.as_str());
    assert_eq!(
        patched["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"],
        json!({"name": name, "key": "db.password"})
    );

    // Where the arrays exist, the patch adds and keeps what is there; env
    // vars go first, so that the container's own can refer to them.
    let full = json!({
        "metadata": {"name": "web", "annotations": {"team": "a"}},
        "spec": {
            "containers": [{
                "name": "app",
                "env": [{"name": "LOG", "value": "info"}],
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]
            }],
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]
        }
    });
    let pod = view(&full);
    let p = build(&pod, "team-a", Mode::SecretRef, false, &items).unwrap();
    let ops = build_patch(&pod, &p, "", MARKER, Some(&name), Quote::DEFAULT).unwrap();
    assert_eq!(
        paths(&ops),
        [
            "/spec/volumes/-",
            "/spec/containers/0/env/0",
            "/spec/containers/0/volumeMounts/-",
            "/metadata/annotations/sesame.dev~1injected",
        ]
    );
    let mut patched = full.clone();
    apply(&mut patched, ops);
    assert_eq!(patched["spec"]["containers"][0]["env"][0]["name"], "PW");
    assert_eq!(patched["spec"]["containers"][0]["env"][1]["name"], "LOG");
    assert_eq!(patched["spec"]["volumes"].as_array().unwrap().len(), 2);
    assert_eq!(patched["metadata"]["annotations"]["team"], "a");
}

/// A Pod that uses every kind of injection, in an app and an init container.
fn rich_items() -> Vec<(Injection, Answer)> {
    let mut init = env("TOKEN", "dev:apps/team-a/token");
    init.containers.init = true;
    vec![
        (init, value("T")),
        (env_from("db", "dev:apps/team-a/db", "DB_"), db()),
        (
            file("key", "dev:apps/team-a/sig", "/etc/sig/key", Some(0o400)),
            value("S"),
        ),
        (
            dir("tls", "dev:apps/team-a/tls", "/etc/tls"),
            props(&[("tls.crt", "C"), ("tls.key", "K")]),
        ),
    ]
}

#[test]
fn a_workload_template_is_patched_under_its_base_pointer_and_only_once() {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "annotations": {"owner": "team-a"}},
        "spec": {"template": {
            "metadata": {"annotations": {"sesame.dev/env.X": "..."}},
            "spec": {
                "initContainers": [{"name": "migrate"}],
                "containers": [{"name": "app", "env": []}]
            }
        }}
    });
    let template = view(&deployment["spec"]["template"]);
    let p = build(&template, "team-a", Mode::SecretRef, false, &rich_items()).unwrap();
    let name = p.secret.as_ref().unwrap().name.clone();
    let ops = build_patch(
        &template,
        &p,
        "/spec/template",
        MARKER,
        Some(&name),
        Quote::DEFAULT,
    )
    .unwrap();
    assert!(
        paths(&ops).iter().all(|p| p.starts_with("/spec/template/")),
        "{:?}",
        paths(&ops)
    );
    let mut patched = deployment.clone();
    apply(&mut patched, ops);
    assert_eq!(
        patched["metadata"], deployment["metadata"],
        "the workload's own metadata is untouched"
    );
    let t = &patched["spec"]["template"];
    assert_eq!(t["spec"]["initContainers"][0]["env"][0]["name"], "TOKEN");
    // TOKEN (init=true adds the init containers to the app containers) and DB_*.
    assert_eq!(t["spec"]["containers"][0]["env"].as_array().unwrap().len(), 4);
    assert_eq!(
        t["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(t["metadata"]["annotations"][MARKER], name.as_str());

    // Reinvoked on its own output, the same plan asks for nothing more.
    let again = view(&patched["spec"]["template"]);
    let p2 = build(&again, "team-a", Mode::SecretRef, false, &rich_items()).unwrap();
    assert_eq!(p2.secret.as_ref().unwrap().name, name);
    let ops = build_patch(&again, &p2, "/spec/template", MARKER, Some(&name), Quote::DEFAULT).unwrap();
    assert!(ops.is_empty(), "{:?}", ops_json(&ops));
}

#[test]
fn a_patched_pod_needs_no_second_patch() {
    let mut pod_value = json!({
        "metadata": {"name": "web"},
        "spec": {"initContainers": [{"name": "migrate"}], "containers": [{"name": "app"}, {"name": "sidecar"}]}
    });
    let pod = view(&pod_value);
    let p = build(&pod, "team-a", Mode::SecretRef, false, &rich_items()).unwrap();
    let name = p.secret.as_ref().unwrap().name.clone();
    apply(
        &mut pod_value,
        build_patch(&pod, &p, "", MARKER, Some(&name), Quote::DEFAULT).unwrap(),
    );

    let again = view(&pod_value);
    let p2 = build(&again, "team-a", Mode::SecretRef, false, &rich_items()).unwrap();
    assert_eq!(p2, p, "the plan does not depend on what the Pod already got");
    let ops = build_patch(&again, &p2, "", MARKER, Some(&name), Quote::DEFAULT).unwrap();
    assert!(ops.is_empty(), "{:?}", ops_json(&ops));
}

#[test]
fn the_secret_is_owned_by_the_pods_controller() {
    let mut owned = pod_json();
    owned["metadata"]["ownerReferences"] = json!([
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-the-controller", "uid": "u-1"},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f8b", "uid": "u-2",
         "controller": true, "blockOwnerDeletion": true}
    ]);
    let items = vec![(env("PW", "dev:apps/team-a/db#password"), db())];
    let p = build(&view(&owned), "team-a", Mode::SecretRef, false, &items).unwrap();
    let owners = p.secret.unwrap().owners;
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str()),
        ("ReplicaSet", "api-7d9f8b")
    );
    assert_eq!(owners[0].uid, "u-2");

    // A Pod without a controller leaves the Secret to the garbage collector.
    assert!(plan(&items).unwrap().secret.unwrap().owners.is_empty());
}

#[test]
fn a_base_that_is_no_json_pointer_is_an_error_not_the_root() {
    let items = vec![(env("PW", "dev:apps/team-a/db#password"), db())];
    let bare = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}]}});
    let pod = view(&bare);
    let p = build(&pod, "team-a", Mode::SecretRef, false, &items).unwrap();
    let e = build_patch(&pod, &p, "spec/template", MARKER, None, Quote::DEFAULT).unwrap_err();
    assert_eq!(
        e,
        crate::inject::patch::PatchError::BadBase("spec/template".into())
    );
    assert_eq!(e.class().code(), 500);
    // A good base prefixes every path.
    let ops = build_patch(&pod, &p, "/spec/template", MARKER, None, Quote::DEFAULT).unwrap();
    assert!(
        paths(&ops).iter().all(|p| p.starts_with("/spec/template/")),
        "{:?}",
        paths(&ops)
    );
}

/// The templates a Pod's annotations ask for, as the grammar reads them.
fn templates(pairs: &[(&str, &str)]) -> Vec<TemplateInjection> {
    let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    crate::inject::annotations::parse("sesame.dev", &map)
        .unwrap()
        .templates
}

fn build_templates(
    mode: Mode,
    templates: &[TemplateInjection],
    answers: &[(&str, Answer)],
) -> Result<InjectionPlan, PlanError> {
    let fetched: Fetched = answers
        .iter()
        .map(|(r, a)| (reference(r, None).request(), a.clone()))
        .collect();
    build_plan(&PlanInput {
        namespace: "team-a",
        service_account: "default",
        pod: &view(&pod_json()),
        mode,
        inline_allowed: true,
        injections: &[],
        resolved: &[],
        templates,
        template_answers: &fetched,
        quote: Quote::DEFAULT,
    })
}

const URL: &str = "postgres://{{ dev:apps/team-a/db#user }}:{{ dev:apps/team-a/db#password | urlquery }}@{{ dev:apps/team-a/db#host }}:5432/orders";

#[test]
fn a_template_is_one_key_of_the_secret_and_records_its_placeholders() {
    let t = templates(&[("sesame.dev/template.DATABASE_URL", URL)]);
    let db = props(&[("host", "db.svc"), ("password", "p@ss:w/rd%"), ("user", "app")]);
    let p = build_templates(Mode::SecretRef, &t, &[("dev:apps/team-a/db", db)]).unwrap();
    let secret = p.secret.unwrap();
    assert_eq!(
        secret.data["template.DATABASE_URL"].expose_str(),
        Some("postgres://app:p%40ss%3Aw%2Frd%25@db.svc:5432/orders")
    );
    let KeySource::Template { template } = &secret.sources["template.DATABASE_URL"] else {
        panic!("not recorded as a template")
    };
    assert_eq!(template, &t[0].template);
    assert_eq!(
        secret.references.len(),
        3,
        "every placeholder is a reference of the Secret"
    );
    // The value is never in the Pod spec: a secretKeyRef to the key.
    assert!(p
        .env
        .iter()
        .all(|e| e.source == EnvSource::SecretKey("template.DATABASE_URL".into())));
    assert_eq!(p.env.len(), 2, "every app container");
    // A template changes the Secret's name; without one it is unchanged.
    assert_ne!(secret.name, secret_name("team-a", "default", &secret.references));
    assert_eq!(
        secret_name_with_templates("team-a", "default", &secret.references, &[]),
        secret_name("team-a", "default", &secret.references)
    );
}

#[test]
fn inline_env_templates_go_into_the_spec_and_file_templates_into_the_secret() {
    let yaml = "- template: \"{{ dev:apps/team-a/db#user }}\"\n  env: USER\n- template: \"user: {{ dev:apps/team-a/db#user | yaml }}\\n\"\n  file: {path: /etc/app/config.yaml}\n";
    let t = templates(&[("sesame.dev/secrets", yaml)]);
    let p = build_templates(Mode::Inline, &t, &[("dev:apps/team-a/db", db())]).unwrap();
    assert!(p
        .env
        .iter()
        .all(|e| e.source == EnvSource::Inline(SecretValue::from("app"))));
    let secret = p.secret.unwrap();
    assert_eq!(secret.data.len(), 1);
    assert_eq!(
        secret.data["template.config.yaml"].expose_str(),
        Some("user: \"app\"\n")
    );
    assert_eq!(p.volumes[0].mount_path, "/etc/app");
    assert_eq!(p.volumes[0].items[0].key, "template.config.yaml");
}

#[test]
fn missing_placeholders_deny_or_skip_an_optional_template() {
    let t = templates(&[("sesame.dev/template.URL", URL)]);
    let no_password = props(&[("host", "db.svc"), ("user", "app")]);
    let e = build_templates(
        Mode::SecretRef,
        &t,
        &[("dev:apps/team-a/db", no_password.clone())],
    )
    .unwrap_err();
    assert_eq!(e.class(), DenialClass::MissingProperty);
    let text = e.to_string();
    assert!(text.contains("annotation \"sesame.dev/template.URL\""), "{text}");
    assert!(
        text.contains("placeholder {{ dev:apps/team-a/db#password | urlquery }}"),
        "{text}"
    );
    assert!(
        !text.contains("db.svc") && !text.contains("app:"),
        "no value: {text}"
    );
    let e = build_templates(
        Mode::SecretRef,
        &t,
        &[("dev:apps/team-a/db", Err(StoreError::NotFound))],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("placeholder {{ dev:apps/team-a/db#user }}"),
        "{e}"
    );

    // Optional: skipped as a whole when any placeholder is missing.
    let yaml = format!("- template: \"{URL}\"\n  env: URL\n  optional: true\n");
    let t = templates(&[("sesame.dev/secrets", &yaml)]);
    let p = build_templates(Mode::SecretRef, &t, &[("dev:apps/team-a/db", no_password)]).unwrap();
    assert!(p.secret.is_none() && p.env.is_empty());
    assert!(
        p.warnings[0].contains("sesame.dev/secrets[0]"),
        "{:?}",
        p.warnings
    );
    assert!(
        p.warnings[0].contains("dev:apps/team-a/db#password"),
        "{:?}",
        p.warnings
    );
    // A store that fails (not a missing secret) denies even an optional one.
    let e = build_templates(
        Mode::SecretRef,
        &t,
        &[("dev:apps/team-a/db", Err(StoreError::Throttled))],
    )
    .unwrap_err();
    assert!(e.to_string().contains("placeholder"), "{e}");
}

#[test]
fn a_value_unfit_for_its_function_is_named_by_placeholder_never_quoted() {
    let t = templates(&[(
        "sesame.dev/template.KEY",
        "{{ dev:apps/team-a/k | base64decode }}",
    )]);
    let e = build_templates(
        Mode::SecretRef,
        &t,
        &[("dev:apps/team-a/k", value("hunter2-is-not-base64!"))],
    )
    .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.class(), DenialClass::Invalid);
    assert!(
        text.contains("placeholder {{ dev:apps/team-a/k | base64decode }}: the value is not valid base64"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn templates_share_env_conflicts_and_keys_with_references() {
    let t = templates(&[("sesame.dev/template.PW", "{{ dev:apps/team-a/db#password }}")]);
    let fetched: Fetched = [(reference("dev:apps/team-a/db", None).request(), db())]
        .into_iter()
        .collect();
    let injections = vec![env("PW", "dev:apps/team-a/db#password")];
    let e = build_plan(&PlanInput {
        namespace: "team-a",
        service_account: "default",
        pod: &view(&pod_json()),
        mode: Mode::SecretRef,
        inline_allowed: false,
        injections: &injections,
        resolved: &[db()],
        templates: &t,
        template_answers: &fetched,
        quote: Quote::DEFAULT,
    })
    .unwrap_err();
    assert_eq!(e.class(), DenialClass::Conflict);
    assert!(e.to_string().contains("sesame.dev/template.PW"), "{e}");
}

/// A reinvoked webhook (`reinvocationPolicy: IfNeeded`) sees its env vars
/// already at the front of the container's list and adds nothing.
#[test]
fn env_vars_go_first_and_a_reinvocation_adds_nothing() {
    let t = templates(&[("sesame.dev/template.URL", URL)]);
    let items = [(env("PW", "dev:apps/team-a/db#password"), db())];
    let injections: Vec<Injection> = items.iter().map(|(i, _)| i.clone()).collect();
    let resolved: Vec<Answer> = items.iter().map(|(_, a)| a.clone()).collect();
    let fetched: Fetched = [(reference("dev:apps/team-a/db", None).request(), db())]
        .into_iter()
        .collect();
    let mut pod = json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "env": [{"name": "DSN", "value": "$(URL)?x=1"}]}]}
    });
    for round in 0..2 {
        let v = view(&pod);
        let p = build_plan(&PlanInput {
            namespace: "team-a",
            service_account: "default",
            pod: &v,
            mode: Mode::SecretRef,
            inline_allowed: false,
            injections: &injections,
            resolved: &resolved,
            templates: &t,
            template_answers: &fetched,
            quote: Quote::DEFAULT,
        })
        .unwrap();
        let name = p.secret.as_ref().unwrap().name.clone();
        let ops = build_patch(&v, &p, "", MARKER, Some(&name), Quote::DEFAULT).unwrap();
        if round == 1 {
            assert!(ops.is_empty(), "reinvocation added {:?}", paths(&ops));
        }
        apply(&mut pod, ops);
    }
    let names: Vec<&str> = pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["PW", "URL", "DSN"]);
}
