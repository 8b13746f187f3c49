//! Injection: the annotation grammar, the plan, the JSON Patch. Pure code;
//! the pipeline feeds it resolved secrets.

pub mod annotations;
pub mod data;
pub mod patch;
pub mod plan;
pub mod pod;

pub use annotations::{Injection, Mode, PodRequest, SecretRef, Target};
pub use data::{secret_data, DataError, Fetched};
pub use patch::{build_patch, PatchError};
pub use plan::{build_plan, Grant, InjectionPlan, ManagedSecret, PlanError, PlanInput};
pub use pod::PodView;
