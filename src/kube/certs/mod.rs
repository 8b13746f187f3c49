//! Self-managed webhook certificates. Sesame keeps a private CA and a serving
//! certificate in one Secret of its own namespace, serves the certificate
//! through the `CertResolver`, and writes the CA into the `caBundle` of its
//! own MutatingWebhookConfiguration.
//!
//! Agreement between replicas: every write carries the resourceVersion read
//! (create when absent: a 409 means another replica won, so re-read), so all
//! replicas end up serving the one certificate in the Secret. At start any
//! replica may create or repair the Secret; afterwards only the leader (the
//! Lease of garbage collection and rotation) renews, and the others re-read
//! the Secret every reload interval.
//!
//! No admission fails during a renewal: a serving certificate is renewed two
//! thirds into its life by the same CA, so the `caBundle` does not change and
//! the old certificate stays valid while replicas pick up the new one. The
//! CA itself is replaced in three steps, each at least an overlap period
//! after the previous one: (1) a new CA is added to the Secret and published
//! in the `caBundle` beside the old one; (2) the serving certificate is
//! re-issued by the new CA; (3) the old CA leaves the Secret and the bundle.
mod manager;
mod metrics;
mod state;

pub use manager::{CertManager, FIELD_MANAGER};
pub use state::{Decision, Material, Policy, CHANGED_AT};
