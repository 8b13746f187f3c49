//! The Kubernetes API side. For now: the `SecretWriter` seam and its dry-run
//! implementation, used for `dryRun: true` requests and whenever no API is
//! configured.

use async_trait::async_trait;

use crate::inject::ManagedSecret;

/// What became of a managed Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Created or updated.
    Applied,
    /// Already up to date; nothing was sent.
    Unchanged,
    /// Deliberately not written; the text becomes an AdmissionResponse warning.
    NotWritten(String),
}

/// Why a Secret could not be written. Messages carry API status codes and
/// reasons, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the API server refused the managed Secret {name}: {reason}")]
    Refused { name: String, reason: String },
    #[error("the API server could not be reached to write the managed Secret {name}: {reason}")]
    Unreachable { name: String, reason: String },
}

/// Writes the plan's Secret before the Pod is admitted.
#[async_trait]
pub trait SecretWriter: Send + Sync + 'static {
    async fn apply(&self, secret: &ManagedSecret) -> Result<WriteOutcome, WriteError>;

    /// `dry-run` or `kubernetes`, for the start-up log.
    fn kind(&self) -> &'static str;
}

/// Writes nothing and says so.
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRunWriter;

#[async_trait]
impl SecretWriter for DryRunWriter {
    async fn apply(&self, secret: &ManagedSecret) -> Result<WriteOutcome, WriteError> {
        Ok(WriteOutcome::NotWritten(dry_run_warning(secret)))
    }

    fn kind(&self) -> &'static str {
        "dry-run"
    }
}

/// The warning for a Secret that was not written: its name and keys, no values.
pub fn dry_run_warning(secret: &ManagedSecret) -> String {
    let keys: Vec<&str> = secret.data.keys().map(String::as_str).collect();
    format!(
        "dry run: Sesame did not write Secret {}/{} (keys: {})",
        secret.namespace,
        secret.name,
        keys.join(", ")
    )
}
