//! What Sesame reads from a certificate: validity, names, whether it is a
//! CA, who signed it and whether a key belongs to it.

use rcgen::KeyPair;
use time::OffsetDateTime;

use super::CertError;

/// What Sesame needs to know of a certificate: validity, names, and the
/// raw parts that signature and key checks compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
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
    pub(crate) fn renew_at(&self) -> OffsetDateTime {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }

    /// Whether `now` lies within the validity period.
    pub(crate) fn valid_at(&self, now: OffsetDateTime) -> bool {
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
    pub(crate) fn key_matches(&self, key_pem: &str) -> bool {
        use rcgen::PublicKeyData as _;
        KeyPair::from_pem(key_pem).is_ok_and(|k| k.subject_public_key_info() == self.spki)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::generate::{new_ca, new_serving, service_sans, BACKDATE};

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
