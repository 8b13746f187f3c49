//! The self-managed certificate Secret as a pure state machine: what the
//! Secret holds ([`Material`]), what to do with it ([`decide`]) and what it
//! holds afterwards ([`carry_out`]). No I/O; the manager runs it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::certs::{certified_key, CertError, CertInfo, KeyedCert, TlsError};

/// When the Secret last changed (RFC 3339); times the CA replacement steps.
pub const CHANGED_AT: &str = "sesame.dev/certificates-changed-at";
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const PREVIOUS_CA: &str = "ca-previous.crt";
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

/// The content of the certificate Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    pub ca: KeyedCert,
    pub serving: KeyedCert,
    /// The CA being replaced, still trusted until the replacement completes.
    pub previous_ca: Option<String>,
    pub changed_at: Option<OffsetDateTime>,
}

impl Material {
    /// Reads the Secret's data; `None` when a required key is missing or
    /// not text.
    pub(crate) fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
        let changed_at = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CHANGED_AT))
            .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
        Some(Self {
            ca: KeyedCert {
                cert_pem: text(CA_CRT)?,
                key_pem: text(CA_KEY)?,
            },
            serving: KeyedCert {
                cert_pem: text(TLS_CRT)?,
                key_pem: text(TLS_KEY)?,
            },
            previous_ca: text(PREVIOUS_CA),
            changed_at,
        })
    }

    /// The Secret's data; the previous CA maps to `None` when absent, so that
    /// a merge patch removes it.
    pub(super) fn data(&self) -> BTreeMap<&'static str, Option<ByteString>> {
        let b = |s: &str| Some(ByteString(s.as_bytes().to_vec()));
        BTreeMap::from([
            (CA_CRT, b(&self.ca.cert_pem)),
            (CA_KEY, b(&self.ca.key_pem)),
            (TLS_CRT, b(&self.serving.cert_pem)),
            (TLS_KEY, b(&self.serving.key_pem)),
            (PREVIOUS_CA, self.previous_ca.as_deref().and_then(b)),
        ])
    }

    /// What the API server must trust: the previous CA while a replacement
    /// is under way, then the current one.
    pub fn trust_bundle(&self) -> String {
        let mut pems: Vec<&str> = self.previous_ca.iter().map(String::as_str).collect();
        pems.push(&self.ca.cert_pem);
        pems.iter().map(|p| format!("{}\n", p.trim_end())).collect()
    }

    /// The serving pair as TLS uses it; `origin` names it in errors.
    pub(super) fn certified_key(&self, origin: &str) -> Result<rustls::sign::CertifiedKey, TlsError> {
        certified_key(
            self.serving.cert_pem.as_bytes(),
            self.serving.key_pem.as_bytes(),
            std::path::Path::new(origin),
        )
    }

    /// Identifies the serving pair, to notice a change.
    pub(super) fn serving_fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.serving.cert_pem.as_bytes());
        h.update(self.serving.key_pem.as_bytes());
        h.finalize().into()
    }
}

/// Lifetimes and names.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Names the serving certificate must carry.
    pub sans: Vec<String>,
    pub serving_validity: Duration,
    pub ca_validity: Duration,
    /// Minimum time between the steps of a CA replacement: long enough for
    /// the API server to see a new caBundle and for every replica to re-read
    /// the Secret.
    pub overlap: Duration,
}

/// What to do with the certificate Secret as read (see [`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Everything is usable and nothing is due.
    Keep,
    /// Nothing usable to build on: a new CA and serving certificate. This
    /// changes the caBundle at once (only on first start or after damage).
    Create { reason: String },
    /// A new serving certificate from the current CA; the caBundle stays.
    RenewServing { reason: String },
    /// Step 1 of a CA replacement: a new CA beside the old one.
    RotateCa,
    /// Step 2: the serving certificate is re-issued by the new CA.
    SwitchToNewCa,
    /// Step 3: the old CA leaves the Secret and the caBundle.
    DropPreviousCa,
    /// A CA replacement waits until its next step is safe.
    Wait { until: OffsetDateTime },
}

impl Decision {
    /// Label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Create { .. } => "create",
            Self::RenewServing { .. } => "renew-serving",
            Self::RotateCa => "rotate-ca",
            Self::SwitchToNewCa => "switch-to-new-ca",
            Self::DropPreviousCa => "drop-previous-ca",
            Self::Wait { .. } => "wait",
        }
    }

    pub(super) fn writes(&self) -> bool {
        !matches!(self, Self::Keep | Self::Wait { .. })
    }
}

fn overlap(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// Decides from the Secret's content alone (pure; `material` is `None` when
/// the Secret is missing or lacks a key).
pub(crate) fn decide(material: Option<&Material>, policy: &Policy, now: OffsetDateTime) -> Decision {
    let create = |reason: &str| Decision::Create {
        reason: reason.to_owned(),
    };
    let Some(m) = material else {
        return create("no certificate Secret with ca.crt, ca.key, tls.crt and tls.key");
    };
    let ca = match CertInfo::parse(&m.ca.cert_pem) {
        Ok(ca) if ca.is_ca => ca,
        Ok(_) => return create("ca.crt is not a CA certificate"),
        Err(e) => return create(&format!("ca.crt: {e}")),
    };
    if !ca.key_matches(&m.ca.key_pem) {
        return create("ca.key does not belong to ca.crt");
    }
    if !ca.valid_at(now) {
        return create("the CA is expired or not yet valid");
    }
    let previous = match m.previous_ca.as_deref().map(CertInfo::parse) {
        None => None,
        Some(Ok(p)) if p.is_ca && p.valid_at(now) => Some(p),
        // A broken or expired previous CA protects nothing: drop it.
        Some(_) => return Decision::DropPreviousCa,
    };

    let serving = match CertInfo::parse(&m.serving.cert_pem) {
        Ok(s) => s,
        Err(e) => {
            return Decision::RenewServing {
                reason: format!("tls.crt: {e}"),
            }
        }
    };
    let by_current = serving.signed_by(&ca);
    let by_previous = previous.as_ref().is_some_and(|p| serving.signed_by(p));
    let problem = if !serving.key_matches(&m.serving.key_pem) {
        Some("tls.key does not belong to tls.crt")
    } else if !by_current && !by_previous {
        Some("tls.crt is not signed by the CA")
    } else if !serving.covers(&policy.sans) {
        Some("tls.crt does not name the webhook Service")
    } else if !serving.valid_at(now) {
        Some("tls.crt is expired or not yet valid")
    } else if now >= serving.renew_at() {
        Some("tls.crt is two thirds through its life")
    } else {
        None
    };
    if let Some(reason) = problem {
        return Decision::RenewServing {
            reason: reason.to_owned(),
        };
    }

    if previous.is_some() {
        let ready = m
            .changed_at
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .saturating_add(overlap(policy.overlap));
        return if now < ready {
            Decision::Wait { until: ready }
        } else if by_current {
            Decision::DropPreviousCa
        } else {
            Decision::SwitchToNewCa
        };
    }
    if now >= ca.renew_at() {
        return Decision::RotateCa;
    }
    Decision::Keep
}

/// The Secret's content after `decision` (makes keys; `None` for decisions
/// that write nothing).
pub(crate) fn carry_out(
    decision: &Decision,
    material: Option<&Material>,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Option<Material>, CertError> {
    let serving_from =
        |ca: &KeyedCert| crate::certs::new_serving(ca, &policy.sans, policy.serving_validity, now);
    let next = match (decision, material) {
        (Decision::Keep | Decision::Wait { .. }, _) => return Ok(None),
        (Decision::Create { .. }, _) | (_, None) => {
            let ca = crate::certs::new_ca(policy.ca_validity, now)?;
            Material {
                serving: serving_from(&ca)?,
                ca,
                previous_ca: None,
                changed_at: Some(now),
            }
        }
        (Decision::RenewServing { .. } | Decision::SwitchToNewCa, Some(m)) => Material {
            serving: serving_from(&m.ca)?,
            changed_at: Some(now),
            ..m.clone()
        },
        (Decision::RotateCa, Some(m)) => Material {
            ca: crate::certs::new_ca(policy.ca_validity, now)?,
            previous_ca: Some(m.ca.cert_pem.clone()),
            changed_at: Some(now),
            ..m.clone()
        },
        (Decision::DropPreviousCa, Some(m)) => Material {
            previous_ca: None,
            changed_at: Some(now),
            ..m.clone()
        },
    };
    Ok(Some(next))
}

pub(super) fn rfc3339(material: &Material) -> String {
    material
        .changed_at
        .unwrap_or_else(OffsetDateTime::now_utc)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{new_ca, new_serving, service_sans};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            sans: service_sans("sesame", "sesame-system"),
            serving_validity: Duration::from_secs(900),
            ca_validity: Duration::from_secs(9000),
            overlap: Duration::from_secs(30),
        }
    }

    /// A fresh Secret made at `t`.
    fn made_at(t: i64) -> Material {
        carry_out(
            &Decision::Create {
                reason: "test".into(),
            },
            None,
            &policy(),
            at(t),
        )
        .unwrap()
        .unwrap()
    }

    fn step(m: &Material, t: i64) -> (Decision, Material) {
        let d = decide(Some(m), &policy(), at(t));
        let next = carry_out(&d, Some(m), &policy(), at(t)).unwrap();
        (d, next.unwrap_or_else(|| m.clone()))
    }

    #[test]
    fn nothing_or_a_broken_ca_means_a_new_pair() {
        assert!(matches!(decide(None, &policy(), at(0)), Decision::Create { .. }));
        let m = made_at(0);
        assert_eq!(decide(Some(&m), &policy(), at(10)), Decision::Keep);
        let wrong_key = Material {
            ca: KeyedCert {
                key_pem: m.serving.key_pem.clone(),
                ..m.ca.clone()
            },
            ..m.clone()
        };
        assert_eq!(
            decide(Some(&wrong_key), &policy(), at(10)),
            Decision::Create {
                reason: "ca.key does not belong to ca.crt".into()
            }
        );
        let not_a_ca = Material {
            ca: m.serving.clone(),
            ..m.clone()
        };
        assert!(matches!(
            decide(Some(&not_a_ca), &policy(), at(10)),
            Decision::Create { .. }
        ));
        assert!(matches!(
            decide(Some(&m), &policy(), at(9001)),
            Decision::Create { .. }
        ));
    }

    #[test]
    fn the_serving_certificate_is_renewed_by_the_same_ca() {
        let m = made_at(0);
        let serving = CertInfo::parse(&m.serving.cert_pem).unwrap();
        // 900 s of life plus 60 s backdated: due at 580 s.
        assert_eq!(serving.renew_at(), at(580));
        assert_eq!(decide(Some(&m), &policy(), at(579)), Decision::Keep);
        let (d, renewed) = step(&m, 580);
        assert!(matches!(d, Decision::RenewServing { .. }), "{d:?}");
        assert_eq!(renewed.ca, m.ca, "the CA stays, so the caBundle stays");
        assert_eq!(renewed.trust_bundle(), m.trust_bundle());
        assert_ne!(renewed.serving, m.serving);
        assert_eq!(decide(Some(&renewed), &policy(), at(581)), Decision::Keep);
    }

    #[test]
    fn unusable_serving_certificates_are_replaced() {
        let m = made_at(0);
        let other = made_at(0);
        let cases = [
            (
                Material {
                    serving: KeyedCert {
                        key_pem: other.serving.key_pem.clone(),
                        ..m.serving.clone()
                    },
                    ..m.clone()
                },
                "tls.key does not belong to tls.crt",
            ),
            (
                Material {
                    serving: other.serving.clone(),
                    ..m.clone()
                },
                "tls.crt is not signed by the CA",
            ),
            (
                Material {
                    serving: new_serving(
                        &m.ca,
                        &["sesame.elsewhere.svc".into()],
                        Duration::from_secs(900),
                        at(0),
                    )
                    .unwrap(),
                    ..m.clone()
                },
                "tls.crt does not name the webhook Service",
            ),
        ];
        for (material, reason) in cases {
            assert_eq!(
                decide(Some(&material), &policy(), at(10)),
                Decision::RenewServing {
                    reason: reason.into()
                }
            );
        }
        let garbage = Material {
            serving: KeyedCert {
                cert_pem: "garbage".into(),
                ..m.serving.clone()
            },
            ..m.clone()
        };
        assert!(matches!(
            decide(Some(&garbage), &policy(), at(10)),
            Decision::RenewServing { .. }
        ));
    }

    #[test]
    fn the_ca_is_replaced_in_three_published_steps() {
        let m = made_at(0);
        let ca = CertInfo::parse(&m.ca.cert_pem).unwrap();
        // Keep the serving certificate fresh so only the CA is due.
        let fresh = |m: &Material, t: i64| Material {
            serving: new_serving(&m.ca, &policy().sans, Duration::from_secs(900), at(t)).unwrap(),
            ..m.clone()
        };
        let due = (ca.renew_at() - at(0)).whole_seconds();
        let m = fresh(&m, due - 100);
        assert_eq!(decide(Some(&m), &policy(), at(due - 1)), Decision::Keep);

        // 1. A new CA beside the old one; the serving certificate stays.
        let (d, step1) = step(&m, due);
        assert_eq!(d, Decision::RotateCa);
        assert_ne!(step1.ca, m.ca);
        assert_eq!(step1.serving, m.serving);
        assert_eq!(step1.previous_ca.as_deref(), Some(m.ca.cert_pem.as_str()));
        let bundle = step1.trust_bundle();
        assert!(bundle.contains(m.ca.cert_pem.trim_end()) && bundle.contains(step1.ca.cert_pem.trim_end()));

        // Nothing happens until the overlap has passed.
        assert_eq!(
            decide(Some(&step1), &policy(), at(due + 29)),
            Decision::Wait { until: at(due + 30) }
        );

        // 2. The serving certificate moves to the new CA; both still trusted.
        let (d, step2) = step(&step1, due + 30);
        assert_eq!(d, Decision::SwitchToNewCa);
        assert_eq!(step2.ca, step1.ca);
        assert_eq!(step2.trust_bundle(), bundle);
        let serving = CertInfo::parse(&step2.serving.cert_pem).unwrap();
        assert!(serving.signed_by(&CertInfo::parse(&step2.ca.cert_pem).unwrap()));
        assert!(matches!(
            decide(Some(&step2), &policy(), at(due + 59)),
            Decision::Wait { .. }
        ));

        // 3. The old CA goes.
        let (d, step3) = step(&step2, due + 60);
        assert_eq!(d, Decision::DropPreviousCa);
        assert_eq!(step3.previous_ca, None);
        assert_eq!(step3.serving, step2.serving);
        assert_eq!(
            step3.trust_bundle(),
            format!("{}\n", step3.ca.cert_pem.trim_end())
        );
        assert_eq!(decide(Some(&step3), &policy(), at(due + 61)), Decision::Keep);
    }

    #[test]
    fn a_broken_serving_certificate_is_fixed_even_mid_rotation() {
        let m = made_at(0);
        let ca2 = new_ca(Duration::from_secs(9000), at(100)).unwrap();
        let mid = Material {
            previous_ca: Some(m.ca.cert_pem.clone()),
            ca: ca2,
            serving: KeyedCert {
                cert_pem: "garbage".into(),
                ..m.serving.clone()
            },
            changed_at: Some(at(100)),
        };
        assert!(matches!(
            decide(Some(&mid), &policy(), at(101)),
            Decision::RenewServing { .. }
        ));
        // An unreadable previous CA is dropped.
        let broken = Material {
            previous_ca: Some("garbage".into()),
            ..m.clone()
        };
        assert_eq!(decide(Some(&broken), &policy(), at(10)), Decision::DropPreviousCa);
    }

    #[test]
    fn secret_round_trip_and_no_key_in_debug() {
        let m = made_at(0);
        let data = m
            .data()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect();
        let secret = Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(CHANGED_AT.to_owned(), rfc3339(&m))])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        assert_eq!(Material::from_secret(&secret), Some(m.clone()));
        assert!(!format!("{m:?}").contains("PRIVATE KEY"));
        let partial = Secret {
            data: Some(BTreeMap::from([(CA_CRT.to_owned(), ByteString(b"x".to_vec()))])),
            ..Default::default()
        };
        assert_eq!(Material::from_secret(&partial), None);
    }
}
