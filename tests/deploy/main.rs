//! The install manifests in deploy/: the kustomize base, its overlays and
//! components, and the Helm chart. Each is rendered with the real tools
//! (`kubectl kustomize`, `helm template`), every rendered object is checked
//! against the Kubernetes schema (the typed `k8s-openapi` structs, with
//! unknown fields denied by a strict round trip), and the settings the install
//! promises (webhook scope and failure handling, hardening, probes, the guard
//! policy, the configuration) are asserted on the rendered output.
//!
//! Needs `kubectl` and `helm` (scripts/deps/30-kubectl-helm.sh). Without them
//! the tests skip with one line, or fail when `SESAME_REQUIRE_TOOLS=1`.
//! `SESAME_E2E_KUBECONFIG` pointing at a real API server adds a server-side
//! dry run of every rendered object and installs on it.
//!
//! One file per job: `render` (the tools and the renderings), `lookup`
//! (finding objects and settings in a rendering), `schema` (the strict
//! schema round trip, and the renders and value checks it judges),
//! `manifests` (what the manifests promise), `options` (each chart option
//! reaches the rendered objects), `monitoring` (the PrometheusRule and the
//! dashboard), `readme` (the chart's values table), `parity` (the chart renders what
//! the kustomize base does), `rbac`, `scratch` and `api_server` (a real API
//! server judges and runs the objects), `install` (the whole install, run as
//! its ServiceAccount), `client_auth` (the documented client-certificate
//! set-up matches what is installed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_server;
mod client_auth;
mod install;
mod lookup;
mod manifests;
mod monitoring;
mod options;
mod parity;
mod rbac;
mod readme;
mod render;
mod schema;
mod scratch;

/// The namespace the manifests install into.
pub(crate) const NS: &str = "sesame-system";
/// The annotation Sesame puts on every Pod it mutated.
pub(crate) const MARKER: &str = "sesame.dev/injected";
