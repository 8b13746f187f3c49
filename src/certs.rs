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

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("not a usable PEM certificate: {0}")]
    Parse(String),
}

/// How far certificates are backdated, so that a clock a little behind on
/// the API server's node does not see them as not yet valid.
pub const BACKDATE: Duration = Duration::minutes(1);

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

/// What Sesame needs to know of a certificate: validity, names, and the
/// raw parts that signature and key checks compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    /// DNS names and IP addresses (as text) of the subjectAltName.
    pub names: Vec<String>,
    der: Vec<u8>,
    spki: Vec<u8>,
}

impl CertInfo {
    /// Parses the first certificate of a PEM text.
    pub fn parse(pem: &str) -> Result<Self, CertError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| CertError::Parse(format!("bad PEM: {e}")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| CertError::Parse(format!("bad X.509: {e}")))?;
        let time = |t: &x509_parser::time::ASN1Time| {
            OffsetDateTime::from_unix_timestamp(t.timestamp())
                .map_err(|e| CertError::Parse(format!("bad validity date: {e}")))
        };
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        let ip = match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                            _ => None,
                        };
                        names.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            not_before: time(&cert.validity().not_before)?,
            not_after: time(&cert.validity().not_after)?,
            is_ca: cert.is_ca(),
            names,
            spki: cert.public_key().raw.to_vec(),
            der: pem.contents.clone(),
        })
    }

    /// The moment renewal is due: two thirds into the certificate's life.
    pub fn renew_at(&self) -> OffsetDateTime {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }

    /// Whether `now` lies within the validity period.
    pub fn valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// Whether every name in `wanted` is in the subjectAltName (IP
    /// addresses compared in their canonical text form).
    pub fn covers(&self, wanted: &[String]) -> bool {
        let canonical = |n: &str| {
            n.parse::<std::net::IpAddr>()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|_| n.to_ascii_lowercase())
        };
        let have: Vec<String> = self.names.iter().map(|n| canonical(n)).collect();
        wanted.iter().all(|w| have.contains(&canonical(w)))
    }

    /// Whether `issuer`'s key signed this certificate and `issuer` is a CA
    /// named as this certificate's issuer.
    pub fn signed_by(&self, issuer: &CertInfo) -> bool {
        use x509_parser::prelude::FromDer;
        let (Ok((_, cert)), Ok((_, ca))) = (
            x509_parser::certificate::X509Certificate::from_der(&self.der),
            x509_parser::certificate::X509Certificate::from_der(&issuer.der),
        ) else {
            return false;
        };
        issuer.is_ca
            && cert.issuer().as_raw() == ca.subject().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// Whether `key_pem` is the private key of this certificate.
    pub fn key_matches(&self, key_pem: &str) -> bool {
        use rcgen::PublicKeyData as _;
        KeyPair::from_pem(key_pem).is_ok_and(|k| k.subject_public_key_info() == self.spki)
    }
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

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn serving_certificates_chain_to_their_ca_only() {
        let sans = service_sans("sesame", "sesame-system");
        let ca = new_ca(std::time::Duration::from_secs(3000), at(0)).unwrap();
        let other = new_ca(std::time::Duration::from_secs(3000), at(0)).unwrap();
        let serving = new_serving(&ca, &sans, std::time::Duration::from_secs(600), at(0)).unwrap();
        let (ca_i, other_i, serving_i) = (
            CertInfo::parse(&ca.cert_pem).unwrap(),
            CertInfo::parse(&other.cert_pem).unwrap(),
            CertInfo::parse(&serving.cert_pem).unwrap(),
        );
        assert!(ca_i.is_ca && !serving_i.is_ca);
        assert!(serving_i.signed_by(&ca_i));
        assert!(!serving_i.signed_by(&other_i), "same subject, other key");
        assert!(!ca_i.signed_by(&serving_i));
        assert!(serving_i.key_matches(&serving.key_pem));
        assert!(!serving_i.key_matches(&ca.key_pem));
        assert!(ca_i.key_matches(&ca.key_pem));
        assert!(serving_i.covers(&sans));
        assert!(serving_i.covers(&["SESAME.sesame-system.svc".into(), "0:0::1".into()]));
        assert!(!serving_i.covers(&["sesame.other.svc".into()]));
        // Backdated, 600 s of life from issue, renewed two thirds in.
        assert_eq!(serving_i.not_before, at(0) - BACKDATE);
        assert_eq!(serving_i.not_after, at(600));
        assert_eq!(serving_i.renew_at(), at(380));
        assert!(serving_i.valid_at(at(599)) && !serving_i.valid_at(at(600)));
        // Never beyond the CA.
        let long = new_serving(&ca, &sans, std::time::Duration::from_secs(10_000), at(0)).unwrap();
        assert_eq!(CertInfo::parse(&long.cert_pem).unwrap().not_after, at(3000));
        assert!(!format!("{serving:?}").contains("PRIVATE KEY"));
        assert!(CertInfo::parse("not a certificate").is_err());
    }
}
