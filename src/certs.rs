//! Certificate generation with rcgen: a CA and a serving certificate for the
//! webhook Service, for local development and for self-managed installs.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// PEM-encoded CA and serving pair.
pub struct GeneratedCerts {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for GeneratedCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCerts")
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl GeneratedCerts {
    /// The `caBundle` value for a webhook configuration (base64 of the CA PEM).
    pub fn ca_bundle(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.ca_cert_pem.as_bytes())
    }
}

/// The DNS names a Service is reached by, plus loopback for local use.
pub fn service_sans(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ]
}

/// Creates a CA and a serving certificate signed by it, valid for `days`.
pub fn generate(sans: &[String], days: i64) -> Result<GeneratedCerts, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sesame webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - Duration::minutes(5);
    ca_params.not_after = now + Duration::days(days.saturating_mul(2));
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().map(String::as_str).unwrap_or("sesame"),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(GeneratedCerts {
        ca_cert_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`.
pub fn write(dir: &std::path::Path, certs: &GeneratedCerts) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.crt"), &certs.ca_cert_pem)?;
    std::fs::write(dir.join("tls.crt"), &certs.cert_pem)?;
    let key_path = dir.join("tls.key");
    std::fs::write(&key_path, &certs.key_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_is_usable_for_tls() {
        let certs = generate(&service_sans("sesame", "sesame-system"), 30).unwrap();
        let ck = crate::server::tls::certified_key(
            certs.cert_pem.as_bytes(),
            certs.key_pem.as_bytes(),
            std::path::Path::new("mem"),
        )
        .unwrap();
        assert_eq!(ck.cert.len(), 1);
        assert!(certs.ca_bundle().len() > 100);
        assert!(!format!("{certs:?}").contains("PRIVATE KEY"));
    }
}
