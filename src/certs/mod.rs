//! Certificates, in one home: how one is made (`generate`, with rcgen),
//! what one says (`inspect`), certificates as files in a directory
//! (`files`: `gen-certs` output, the serving pair and the client CA file,
//! and their reload), and
//! serving TLS with them (`tls`: the resolver and the rustls config). The
//! self-managed mode, which keeps a CA and the serving pair in a Secret
//! through the Kubernetes API, is the Kubernetes adapter's
//! (`kube::certs`) and uses this module.

mod files;
mod generate;
mod inspect;
mod tls;

pub use files::write;
pub(crate) use files::{load, load_client_ca, reload, reload_client_ca, CertPaths};
pub use generate::{generate, new_ca, new_serving, service_sans, KeyedCert};
pub use inspect::CertInfo;
pub use tls::CertResolver;
pub(crate) use tls::{certified_key, server_config, TlsError};

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("not a usable PEM certificate: {0}")]
    Parse(String),
}
