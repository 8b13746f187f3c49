//! The optional monitoring objects: the PrometheusRule (Helm
//! `prometheusRule.enabled`, kustomize `components/prometheusrule`) and the
//! Grafana dashboard (`grafanaDashboard.enabled`,
//! `components/grafana-dashboard`). Every query is parsed as PromQL, selects
//! one install's series, and names only metrics Sesame exports.

use std::collections::BTreeSet;

use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, VectorSelector};
use serde_json::Value;

use crate::lookup::{has_kind, named, one};
use crate::render::{all_components, helm, helm_non_default, root, tools};
use crate::schema::{strict, CustomObject, PrometheusRuleSpec};
use crate::NS;

/// Metrics the rules and the dashboard use before Sesame exports them: the
/// build and process metrics, and the last-known-good admissions of the
/// availability work. Each may be missing from a scrape.
pub(crate) const PENDING: &[&str] = &[
    "sesame_build_info",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "sesame_admission_last_known_good_total",
];

/// Registered by the self-managed certificate manager, which needs an API
/// server: the install test (tests/deploy/install.rs) scrapes them.
const CERTIFICATE_METRICS: &[&str] = &[
    "sesame_certificate_expiry_timestamp_seconds",
    "sesame_certificate_changes_total",
];

/// The sample names of a Prometheus text exposition, from its `# TYPE`
/// lines (a family without samples has those too): `_total` for counters,
/// `_bucket`, `_sum` and `_count` for histograms.
pub(crate) fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{}_total", name.trim_end_matches("_total")));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// What Sesame exports without an API server: the server's metrics and the
/// Kubernetes side's (rotation, GC, leadership). The exposition leaves out a
/// family until it has a sample, so each gets one.
fn exported_offline() -> BTreeSet<String> {
    use std::time::Duration;
    let m = sesame::telemetry::Metrics::new();
    m.review("mutated", Duration::ZERO);
    m.store_request("s", "file", Duration::ZERO);
    m.store_error("s", "unavailable");
    m.cache_hit("s");
    m.cache_miss("s");
    m.stale_served("s");
    m.secret_write("applied");
    m.config_reload("applied");
    m.set_ready(true);
    let k = sesame::kube::metrics::KubeMetrics::register(&m);
    k.rotation("updated");
    k.rotation_failure("store");
    k.set_oldest_unrefreshed(1);
    k.restart("Deployment");
    k.gc_deleted();
    k.set_leader(true);
    exported(&m.encode())
}

/// The vector selectors of a PromQL expression (those inside range
/// selectors too).
fn selectors(expr: &Expr, out: &mut Vec<VectorSelector>) {
    match expr {
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::VectorSelector(v) => out.push(v.clone()),
        Expr::MatrixSelector(m) => out.push(m.vs.clone()),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parses `query` as PromQL (Grafana's interval variables replaced by a
/// duration first); its vector selectors.
fn parse_query(what: &str, query: &str) -> Vec<VectorSelector> {
    let promql = query.replace("$__rate_interval", "5m").replace("$__range", "1h");
    let expr = promql_parser::parser::parse(&promql).unwrap_or_else(|e| panic!("{what}: {query}: {e}"));
    let mut out = Vec::new();
    selectors(&expr, &mut out);
    assert!(!out.is_empty(), "{what}: {query} selects no series");
    out
}

/// Every selector of `query` names a metric and carries each of `matchers`
/// (as equality matchers).
fn check_query(what: &str, query: &str, matchers: &[(&str, &str)]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for vs in parse_query(what, query) {
        let name = vs
            .name
            .clone()
            .unwrap_or_else(|| panic!("{what}: {query}: a selector without a metric name"));
        for (label, value) in matchers {
            assert!(
                vs.matchers
                    .matchers
                    .iter()
                    .any(|m| m.name == *label && m.value == *value && matches!(m.op, MatchOp::Equal)),
                "{what}: {name} in {query} must select {label}=\"{value}\""
            );
        }
        names.insert(name);
    }
    names
}

/// The PrometheusRule of a rendering, strictly typed.
fn rule_of(objects: &[Value]) -> PrometheusRuleSpec {
    let found = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    strict::<CustomObject<PrometheusRuleSpec>>(found).unwrap().spec
}

fn dashboard_text() -> String {
    std::fs::read_to_string(root().join("deploy/helm/sesame/dashboards/sesame.json")).unwrap()
}

/// Every query of the dashboard: panel targets and template variables.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap().to_owned();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            queries.push((title.clone(), t["expr"].as_str().unwrap().to_owned()));
        }
    }
    queries
}

/// The metrics the shipped rules (kustomize component, the same as the
/// chart's: tests/deploy/parity.rs) and the dashboard name.
pub(crate) fn referenced_metrics() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(root().join("deploy/components/prometheusrule/prometheusrule.yaml")).unwrap();
    let rule: Value = serde_norway::from_str(&text).unwrap();
    let mut names = BTreeSet::new();
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        names.extend(check_query("rule", r["expr"].as_str().unwrap(), &[]));
    }
    let dashboard: Value = serde_json::from_str(&dashboard_text()).unwrap();
    for (title, q) in dashboard_queries(&dashboard) {
        names.extend(check_query(&title, &q, &[]));
    }
    names
}

#[test]
fn prometheus_rules_alert_on_what_sesame_exports() {
    let Some((_, helm_bin)) = tools() else { return };
    let known: BTreeSet<String> = exported_offline()
        .into_iter()
        .chain(CERTIFICATE_METRICS.iter().chain(PENDING).map(|s| s.to_string()))
        .collect();

    let spec = rule_of(&helm(&helm_bin, &["prometheusRule.enabled=true"]));
    assert_eq!(spec.groups.len(), 1);
    let rules = &spec.groups[0].rules;
    let alerts: BTreeSet<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(
        alerts,
        BTreeSet::from([
            "SesameNoReadyReplica",
            "SesameStoreErrors",
            "SesameStaleValuesServed",
            "SesameLastKnownGoodAdmissions",
            "SesameSecretsNotRefreshed",
            "SesameCertificateExpiresSoon",
            "SesameConfigurationInvalid",
        ])
    );
    assert_eq!(alerts.len(), rules.len(), "alert names are unique");
    for r in rules {
        let what = format!("alert {}", r.alert);
        // One install's series: what a ServiceMonitor scrape of the release labels.
        let names = check_query(&what, &r.expr, &[("namespace", NS), ("job", "sesame")]);
        for name in &names {
            assert!(known.contains(name), "{what}: Sesame exports no metric {name}");
        }
        assert!(
            matches!(
                r.labels.get("severity").map(String::as_str),
                Some("warning" | "critical")
            ),
            "{what}: severity"
        );
        for key in ["summary", "description"] {
            assert!(
                r.annotations.get(key).is_some_and(|v| !v.is_empty()),
                "{what}: {key}"
            );
        }
        if let Some(f) = &r.for_ {
            humantime::parse_duration(f).unwrap_or_else(|e| panic!("{what}: for {f}: {e}"));
        }
    }
    // Each of the issue's signals has its alert on its metric.
    for (alert, metric) in [
        ("SesameNoReadyReplica", "sesame_ready"),
        ("SesameStoreErrors", "sesame_store_errors_total"),
        ("SesameStaleValuesServed", "sesame_cache_stale_served_total"),
        (
            "SesameLastKnownGoodAdmissions",
            "sesame_admission_last_known_good_total",
        ),
        (
            "SesameSecretsNotRefreshed",
            "sesame_secret_oldest_unrefreshed_seconds",
        ),
        (
            "SesameCertificateExpiresSoon",
            "sesame_certificate_expiry_timestamp_seconds",
        ),
        ("SesameConfigurationInvalid", "sesame_config_reloads_total"),
    ] {
        let r = rules.iter().find(|r| r.alert == alert).unwrap();
        assert!(
            check_query(alert, &r.expr, &[]).contains(metric),
            "{alert} watches {metric}"
        );
    }

    // Another selector, thresholds and alert labels reach every rule.
    let custom = rule_of(&helm(
        &helm_bin,
        &[
            "prometheusRule.enabled=true",
            r#"prometheusRule.selector=cluster="eu-1"\, job="sesame-prod""#,
            "prometheusRule.unrefreshedSecretSeconds=7200",
            "prometheusRule.certificateExpiryDays=30",
            "prometheusRule.alertLabels.team=platform",
        ],
    ));
    for r in &custom.groups[0].rules {
        check_query(&r.alert, &r.expr, &[("cluster", "eu-1"), ("job", "sesame-prod")]);
        assert!(!r.expr.contains("namespace="), "{}: {}", r.alert, r.expr);
        assert_eq!(
            r.labels.get("team").map(String::as_str),
            Some("platform"),
            "{}",
            r.alert
        );
    }
    let expr = |alert: &str| {
        custom.groups[0]
            .rules
            .iter()
            .find(|r| r.alert == alert)
            .unwrap()
            .expr
            .clone()
    };
    assert!(expr("SesameSecretsNotRefreshed").ends_with("> 7200"));
    assert!(expr("SesameCertificateExpiresSoon").ends_with(&format!("< {}", 30 * 86400)));

    // The release's name and namespace pick its series, and the object's
    // labels carry what a Prometheus selects rules by.
    let objects = helm_non_default(&helm_bin);
    let o = objects.iter().find(|o| o["kind"] == "PrometheusRule").unwrap();
    assert_eq!(o["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(o["metadata"]["namespace"], NS);
}

#[test]
fn grafana_dashboard_queries_select_one_install_and_parse() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let text = dashboard_text();
    let copy =
        std::fs::read_to_string(root().join("deploy/components/grafana-dashboard/sesame.json")).unwrap();
    assert_eq!(
        text, copy,
        "deploy/components/grafana-dashboard/sesame.json must be the chart's dashboards/sesame.json"
    );
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "sesame");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "namespace", "job"]);
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel ids are unique");
    }

    let known: BTreeSet<String> = exported_offline()
        .into_iter()
        .chain(CERTIFICATE_METRICS.iter().chain(PENDING).map(|s| s.to_string()))
        .collect();
    let mut used = BTreeSet::new();
    for (title, query) in dashboard_queries(&dashboard) {
        let names = check_query(
            &format!("panel {title}"),
            &query,
            &[("namespace", "$namespace"), ("job", "$job")],
        );
        for name in &names {
            assert!(
                known.contains(name),
                "panel {title}: Sesame exports no metric {name}"
            );
        }
        used.extend(names);
    }
    // The overview the issue asks for: build, process and the signals of the alerts.
    for metric in [
        "sesame_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "sesame_admission_reviews_total",
        "sesame_store_errors_total",
        "sesame_cache_stale_served_total",
        "sesame_admission_last_known_good_total",
        "sesame_secret_oldest_unrefreshed_seconds",
        "sesame_certificate_expiry_timestamp_seconds",
        "sesame_ready",
    ] {
        assert!(used.contains(metric), "the dashboard shows {metric}");
    }
    for v in &dashboard["templating"]["list"].as_array().unwrap()[1..] {
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q.trim_start_matches("label_values(").rsplit_once(',').unwrap().0;
        let names = check_query("template variable", inner, &[]);
        assert!(names.iter().all(|n| known.contains(n)), "{q}");
    }

    // As shipped: the chart's ConfigMap and the kustomize component's.
    let charted = helm(
        &helm_bin,
        &[
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.namespace=monitoring",
        ],
    );
    let kustomized = all_components(&kubectl);
    for (what, objects, namespace) in [("helm", &charted, "monitoring"), ("kustomize", &kustomized, NS)] {
        let cm: k8s_openapi::api::core::v1::ConfigMap = named(objects, "ConfigMap", "sesame-dashboard");
        assert_eq!(cm.metadata.namespace.as_deref(), Some(namespace), "{what}");
        assert_eq!(
            cm.metadata
                .labels
                .unwrap_or_default()
                .get("grafana_dashboard")
                .map(String::as_str),
            Some("1"),
            "{what}: the sidecar's label"
        );
        assert_eq!(cm.data.unwrap_or_default()["sesame.json"], text, "{what}");
    }
    assert!(!has_kind(&helm(&helm_bin, &[]), "PrometheusRule"));
    let _: k8s_openapi::api::core::v1::ConfigMap = one(&helm(&helm_bin, &[]), "ConfigMap");
}

/// The certificate metrics the rules and the dashboard name are in `scrape`,
/// a self-managed Sesame's /metrics (the others are checked offline).
pub(crate) fn check_scrape(scrape: &str) {
    let have = exported(scrape);
    let used: Vec<String> = referenced_metrics()
        .into_iter()
        .filter(|m| CERTIFICATE_METRICS.contains(&m.as_str()))
        .collect();
    assert!(!used.is_empty(), "the certificate expiry is watched");
    for m in used {
        assert!(
            have.contains(&m),
            "a self-managed Sesame does not export {m}:\n{scrape}"
        );
    }
}
