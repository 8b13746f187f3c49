//! Sesame: a Kubernetes mutating admission webhook that injects secrets from
//! external stores into Pods.
//!
//! A Pod's journey: `server` (TLS, HTTP) → `admission` (AdmissionReview in
//! and out) → `pipeline` → `inject::annotations` (what the Pod asks for) →
//! `policy` (may it?) → `stores` (values, cached) → `inject::plan` and
//! `inject::patch` (what changes) → `kube` (the managed Secret). See
//! docs/architecture.md for what each module owns and the one-way arrows
//! between them. Public are the modules the binary, the benches and the
//! tests use; the rest is `pub(crate)`.

pub mod admission;
pub mod certs;
pub mod cli;
pub mod config;
pub(crate) mod denial;
pub mod explain;
pub mod inject;
pub mod kube;
pub mod mutate;
pub mod pipeline;
pub mod policy;
pub(crate) mod preflight;
pub mod run;
pub mod server;
pub mod stores;
pub(crate) mod tasks;
pub mod telemetry;
pub mod validate;
