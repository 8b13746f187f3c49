//! Injection: the annotation grammar, the plan, the JSON Patch. Pure code;
//! the pipeline feeds it resolved secrets.

pub mod annotations;
pub mod data;
pub mod limits;
pub mod patch;
pub mod plan;
pub mod pod;
pub mod refresh;
pub mod template;

pub use annotations::{Injection, RefTemplate, SecretRef, Target, TemplateInjection};
pub(crate) use data::{secret_data, DataError, Fetched};
pub use limits::LimitsConfig;
pub(crate) use patch::build_patch;
pub use plan::ManagedSecret;
pub(crate) use plan::{build_plan, Grant, PlanInput};
pub use pod::PodView;
