//! The chart's README lists every value: its table is generated from the
//! `# --` comments of values.yaml, the defaults in it and the types in
//! values.schema.json. This test fails when the README drifts from them;
//! `SESAME_BLESS=1 cargo test --test deploy readme` rewrites the table.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::render::root;

const BEGIN: &str =
    "<!-- values table: generated from values.yaml by tests/deploy/readme.rs; SESAME_BLESS=1 cargo test --test deploy readme rewrites it -->";
const END: &str = "<!-- end of values table -->";

/// The documented keys of values.yaml, in file order: dotted path and the
/// text of the `# --` comment block right above the key.
fn documented_keys(values_yaml: &str) -> Vec<(String, String)> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut doc: Option<Vec<String>> = None;
    let mut out = Vec::new();
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(text) = trimmed.strip_prefix("# --") {
            doc = Some(vec![text.trim().to_owned()]);
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            if let Some(d) = doc.as_mut() {
                d.push(text.trim().to_owned());
            }
            continue;
        }
        let key = trimmed
            .split_once(':')
            .map(|(k, _)| k)
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        match key {
            Some(key) if !trimmed.starts_with('-') => {
                stack.retain(|(i, _)| *i < indent);
                let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).chain([key]).collect();
                if let Some(d) = doc.take() {
                    out.push((path.join("."), d.join(" ").trim().to_owned()));
                }
                stack.push((indent, key.to_owned()));
            }
            _ => doc = None,
        }
    }
    out
}

fn lookup<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(values, |v, k| v.get(k))
}

/// The type a schema gives `path`: its `type`, or its `enum` values.
fn schema_type(schema: &Value, path: &str) -> String {
    let node = path
        .split('.')
        .try_fold(schema, |s, k| s.get("properties").and_then(|p| p.get(k)));
    let Some(node) = node else {
        return String::new();
    };
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    node.get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Leaves of the default values (scalars, lists, empty maps) by dotted path.
fn leaves(v: &Value, path: String, out: &mut Vec<String>) {
    match v.as_object() {
        Some(map) if !map.is_empty() => {
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(child, p, out);
            }
        }
        _ => out.push(path),
    }
}

fn generated_table() -> String {
    let dir = root().join("deploy/helm/sesame");
    let values_yaml = std::fs::read_to_string(dir.join("values.yaml")).unwrap();
    let values: Value = serde_norway::from_str(&values_yaml).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("values.schema.json")).unwrap()).unwrap();
    let keys = documented_keys(&values_yaml);

    // Every value is documented, itself or through a documented parent.
    let documented: BTreeMap<&str, &str> = keys.iter().map(|(p, d)| (p.as_str(), d.as_str())).collect();
    assert_eq!(documented.len(), keys.len(), "a key is documented twice");
    let mut all = Vec::new();
    leaves(&values, String::new(), &mut all);
    for leaf in &all {
        let covered = documented
            .keys()
            .any(|d| leaf == d || leaf.starts_with(&format!("{d}.")));
        assert!(
            covered,
            "values.yaml: {leaf} has no `# --` comment (nor has a parent)"
        );
    }
    let mut table = String::from("| Key | Type | Default | Description |\n|---|---|---|---|\n");
    for (path, doc) in &keys {
        assert!(!doc.is_empty(), "values.yaml: {path} has an empty `# --` comment");
        let default = lookup(&values, path).unwrap_or_else(|| panic!("{path} has no default"));
        let ty = schema_type(&schema, path);
        assert!(!ty.is_empty(), "values.schema.json has no type for {path}");
        let default = serde_json::to_string(default).unwrap().replace('|', "\\|");
        table.push_str(&format!(
            "| `{path}` | {ty} | `{default}` | {} |\n",
            doc.replace('|', "\\|")
        ));
    }
    table
}

#[test]
fn chart_readme_lists_every_value() {
    let path = root().join("deploy/helm/sesame/README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = readme
        .split_once(BEGIN)
        .unwrap_or_else(|| panic!("README.md lacks the line {BEGIN}"));
    let (current, tail) = rest
        .split_once(END)
        .unwrap_or_else(|| panic!("README.md lacks the line {END}"));
    let table = generated_table();
    let current = current.trim_start_matches('\n');
    if current == table {
        return;
    }
    if std::env::var("SESAME_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, format!("{head}{BEGIN}\n{table}{END}{tail}")).unwrap();
        return;
    }
    let first = current
        .lines()
        .zip(table.lines())
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("README: {a}\nvalues:  {b}"))
        .unwrap_or_else(|| "a row is missing or extra".to_owned());
    panic!(
        "deploy/helm/sesame/README.md's values table differs from values.yaml (run `SESAME_BLESS=1 cargo test --test deploy readme`):\n{first}"
    );
}

#[test]
fn documented_keys_follow_the_nesting() {
    let keys = documented_keys(
        "# intro\n\n# -- top\n# more\na: 1\nb:\n  # -- nested\n  c: x\n  #  - example: no\n  d: []\n# -- e\ne:\n  - f: g\n",
    );
    assert_eq!(
        keys,
        [
            ("a".to_string(), "top more".to_string()),
            ("b.c".to_string(), "nested".to_string()),
            ("e".to_string(), "e".to_string()),
        ]
    );
}
