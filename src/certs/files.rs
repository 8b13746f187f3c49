//! Certificates as files: the `gen-certs` output, and the serving pair in
//! the certificate directory, checked before binding and re-read
//! periodically so that a rotated Secret volume (Kubernetes swaps a
//! `..data` symlink, which path watches miss) takes effect without a
//! restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::generate::GeneratedCerts;
use super::tls::{certified_key, client_verifier, CertResolver, ClientCaResolver, TlsError};

/// Writes `ca.crt` and `tls.crt` (mode 0644) and `tls.key` (mode 0600) into
/// `dir`, each through [`replace_file`]: the key is never readable by
/// others, not even for a moment, and a file or symlink planted under one
/// of the names is replaced, never written through.
pub fn write(dir: &Path, certs: &GeneratedCerts) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    replace_file(&dir.join("ca.crt"), certs.ca_cert_pem.as_bytes(), 0o644)?;
    replace_file(&dir.join("tls.crt"), certs.cert_pem.as_bytes(), 0o644)?;
    replace_file(&dir.join("tls.key"), certs.key_pem.as_bytes(), 0o600)
}

/// Writes `content` to `path` by creating a new file beside it with its
/// final `mode` (`create_new`: an existing path there, symlink or not,
/// fails the creation instead of being opened) and renaming it over `path`
/// (a rename replaces a symlink at `path`; it does not follow it).
fn replace_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        ));
    };
    let temp = dir.join(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        fastrand::u64(..)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temp)?;
    let written = (|| {
        // The umask may have taken bits away; none are added (the file was
        // created with at most `mode`), so the key is never more open.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Where the serving certificate and key live.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    pub fn exist(&self) -> bool {
        self.cert.exists() && self.key.exists()
    }
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

/// Re-reads the files every `interval` and swaps a changed, valid pair into
/// `resolver`; a half-written or broken pair is logged and the old one
/// kept. `digest` identifies the pair being served. Runs until dropped.
pub async fn reload(resolver: Arc<CertResolver>, paths: CertPaths, mut digest: [u8; 32], interval: Duration) {
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
                resolver.set(ck);
                digest = new_digest;
                tracing::info!(cert = %paths.cert.display(), "serving certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "new certificate files are not usable yet; keeping the current ones")
            }
        }
    }
}

/// Reads the client CA file and builds the resolver that hands handshakes
/// its verifier; returns the digest of what was read.
pub(crate) fn load_client_ca(path: &Path) -> Result<(Arc<ClientCaResolver>, [u8; 32]), TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let verifier = client_verifier(&pem, path)?;
    Ok((Arc::new(ClientCaResolver::new(verifier)), fingerprint(&pem, &[])))
}

/// Re-reads the client CA file every `interval`, as [`reload`] does the
/// serving pair (a Secret or ConfigMap volume swaps a symlink), and swaps a
/// changed, usable bundle into `resolver`; a half-written or broken file is
/// logged and the CAs being used are kept. Runs until dropped.
pub(crate) async fn reload_client_ca(
    resolver: Arc<ClientCaResolver>,
    path: PathBuf,
    mut digest: [u8; 32],
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let file = path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(file).ok())
            .await
            .ok()
            .flatten();
        let Some(pem) = read else {
            continue;
        };
        let new_digest = fingerprint(&pem, &[]);
        if new_digest == digest {
            continue;
        }
        match client_verifier(&pem, &path) {
            Ok(verifier) => {
                resolver.set(verifier);
                digest = new_digest;
                tracing::info!(client_ca = %path.display(), "client CA file reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "new client CA file is not usable yet; keeping the current CAs")
            }
        }
    }
}
