//! Making certificates with rcgen: a CA and a serving certificate for the
//! webhook Service, for `gen-certs`, for a self-signed start without
//! certificate files, and for self-managed installs.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::inspect::CertInfo;
use super::CertError;

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

/// A certificate and its private key, PEM-encoded. The key never shows in
/// `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// How far certificates are backdated, so that a clock a little behind on
/// the API server's node does not see them as not yet valid.
pub(crate) const BACKDATE: Duration = Duration::minutes(1);

fn lifetime(validity: std::time::Duration) -> Duration {
    Duration::seconds(i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2))
}

/// A new self-signed CA, valid from `now` (backdated) for `validity`.
pub fn new_ca(validity: std::time::Duration, now: OffsetDateTime) -> Result<KeyedCert, CertError> {
    let (params, key) = ca_params(now, now.saturating_add(lifetime(validity)))?;
    let cert = params.self_signed(&key)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ca_params(
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(CertificateParams, KeyPair), CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "sesame webhook CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    Ok((params, KeyPair::generate()?))
}

/// A serving certificate for `sans` signed by `ca`, valid from `now`
/// (backdated) for `validity` but never beyond the CA's own end.
pub fn new_serving(
    ca: &KeyedCert,
    sans: &[String],
    validity: std::time::Duration,
    now: OffsetDateTime,
) -> Result<KeyedCert, CertError> {
    let ca_info = CertInfo::parse(&ca.cert_pem)?;
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let not_after = now.saturating_add(lifetime(validity)).min(ca_info.not_after);
    serving_signed_by(&issuer, sans, now, not_after)
}

fn serving_signed_by<S: rcgen::SigningKey>(
    issuer: &Issuer<'_, S>,
    sans: &[String],
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<KeyedCert, CertError> {
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
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Creates a CA and a serving certificate signed by it, valid for `days`
/// (the CA twice as long).
pub fn generate(sans: &[String], days: i64) -> Result<GeneratedCerts, CertError> {
    let now = OffsetDateTime::now_utc();
    let (ca_params, ca_key) = ca_params(now, now + Duration::days(days.saturating_mul(2)))?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let serving = serving_signed_by(&issuer, sans, now, now + Duration::days(days))?;
    Ok(GeneratedCerts {
        ca_cert_pem: ca_cert.pem(),
        cert_pem: serving.cert_pem,
        key_pem: serving.key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_is_usable_for_tls() {
        let certs = generate(&service_sans("sesame", "sesame-system"), 30).unwrap();
        let ck = crate::certs::certified_key(
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
