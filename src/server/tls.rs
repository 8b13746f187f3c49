//! Serving certificates: loaded and checked before binding, then re-read
//! periodically so that a rotated Secret volume (Kubernetes swaps a `..data`
//! symlink, which path watches miss) takes effect without a restart. Each
//! TLS handshake reads the current key; open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// A certificate problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Where the serving certificate and key live.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    pub fn exist(&self) -> bool {
        self.cert.exists() && self.key.exists()
    }
}

pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses PEM certificate chain and key and checks that they belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], origin: &Path) -> Result<CertifiedKey, TlsError> {
    let invalid = |message: String| TlsError::Invalid {
        path: origin.to_path_buf(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate found".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid(format!("bad private key PEM: {e}")))?;
    let provider = crypto_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(certs, signing_key);
    ck.keys_match()
        .map_err(|e| invalid(format!("the key does not match the certificate: {e}")))?;
    Ok(ck)
}

/// Reads both files (following symlinks, as a Secret volume needs).
pub fn load(paths: &CertPaths) -> Result<(CertifiedKey, [u8; 32]), TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert = read(&paths.cert)?;
    let key = read(&paths.key)?;
    let digest = fingerprint(&cert, &key);
    Ok((certified_key(&cert, &key, &paths.cert)?, digest))
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

/// Hands the current certificate to every handshake.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(initial: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Re-reads the files every `interval` and swaps in a changed, valid pair;
    /// a half-written or broken pair is logged and the old one kept.
    pub fn spawn_reloader(self: &Arc<Self>, paths: CertPaths, mut digest: [u8; 32], interval: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let paths = paths.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    let read = |p: &Path| std::fs::read(p).ok();
                    let (cert, key) = (read(&paths.cert)?, read(&paths.key)?);
                    Some((fingerprint(&cert, &key), cert, key, paths))
                })
                .await
                .ok()
                .flatten();
                let Some((new_digest, cert, key, paths)) = loaded else {
                    continue;
                };
                if new_digest == digest {
                    continue;
                }
                match certified_key(&cert, &key, &paths.cert) {
                    Ok(ck) => {
                        this.set(ck);
                        digest = new_digest;
                        tracing::info!(cert = %paths.cert.display(), "serving certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "new certificate files are not usable yet; keeping the current ones")
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.2 and 1.3 only; ALPN h2 and http/1.1, as the API server may use either.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
