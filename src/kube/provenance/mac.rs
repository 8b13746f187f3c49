//! The MAC of a managed Secret (HMAC-SHA256): the keys, the canonical
//! encoding of what Sesame recorded on the Secret, signing and checking.
//! Pure; no key ever reaches a `Debug`, a log line or an error message.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use ring::hmac;
use zeroize::Zeroizing;

use crate::inject::data::KeySource;
use crate::inject::SecretRef;

/// HMAC-SHA256 keys shorter than the hash are refused.
pub(crate) const MIN_KEY_BYTES: usize = 32;

/// Version tag of the annotation and of the encoding it signs.
const VERSION: &str = "v1";

/// Domain separation: this MAC means "a managed Secret as Sesame wrote it".
const DOMAIN: &[u8] = b"sesame.dev/managed-secret/v1";

/// One key: its id (a generation number; the highest signs) and the key.
struct MacKey {
    id: u32,
    /// The raw bytes, kept to write the key Secret again if it disappears.
    bytes: Zeroizing<Vec<u8>>,
    key: hmac::Key,
}

/// Why a set of keys cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("no key")]
    Empty,
    #[error("key {id} is {len} bytes; at least {MIN_KEY_BYTES} are needed")]
    TooShort { id: u32, len: usize },
    #[error("key id {0} appears twice")]
    Duplicate(u32),
}

/// The keys Sesame knows: it signs with the newest (the highest id) and
/// accepts a MAC made with any of them, so that a new key can be added
/// before the old one is removed. `Debug` shows ids only.
#[derive(Clone)]
pub struct KeyRing {
    /// Sorted by id, at least one.
    keys: Arc<Vec<MacKey>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("ids", &self.ids())
            .field("signing", &self.signing_id())
            .finish()
    }
}

/// What a MAC covers: every field Sesame recorded on the Secret that
/// rotation, garbage collection or a restart acts on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The subject the references were granted to.
    pub service_account: &'a str,
    pub references: &'a [SecretRef],
    pub sources: &'a BTreeMap<String, KeySource>,
    pub restart_on_rotation: bool,
    /// When the values were last written or confirmed: when rotation is due.
    pub refreshed_at: &'a str,
}

/// A MAC that checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The key that made it.
    pub key_id: u32,
    /// Whether that is the key Sesame signs with now (else the Secret is
    /// signed again with it, so that the old key can be removed).
    pub current: bool,
}

/// Why a MAC did not check out. No key material, no values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MacError {
    #[error("it carries no MAC")]
    Missing,
    #[error("its MAC annotation is not of the form v1:<key id>:<hex>")]
    Malformed,
    #[error("its MAC names key {0}, which is not (or no longer) among the keys")]
    UnknownKey(String),
    #[error("its MAC does not match what it records")]
    Mismatch,
}

impl MacError {
    /// Metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey(_) => "unknown_key",
            Self::Mismatch => "mismatch",
        }
    }
}

impl KeyRing {
    /// A ring over `(id, key bytes)` pairs.
    pub(crate) fn new(keys: Vec<(u32, Vec<u8>)>) -> Result<Self, KeyError> {
        let mut out: Vec<MacKey> = Vec::with_capacity(keys.len());
        for (id, bytes) in keys {
            let bytes = Zeroizing::new(bytes);
            if bytes.len() < MIN_KEY_BYTES {
                return Err(KeyError::TooShort { id, len: bytes.len() });
            }
            if out.iter().any(|k| k.id == id) {
                return Err(KeyError::Duplicate(id));
            }
            let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
            out.push(MacKey { id, bytes, key });
        }
        if out.is_empty() {
            return Err(KeyError::Empty);
        }
        out.sort_by_key(|k| k.id);
        Ok(Self { keys: Arc::new(out) })
    }

    /// The ids, lowest first.
    pub(crate) fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The id Sesame signs with: the highest.
    pub(crate) fn signing_id(&self) -> u32 {
        self.keys.last().map_or(0, |k| k.id)
    }

    /// Each key's id and bytes, to write the key Secret.
    pub(crate) fn material(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.keys.iter().map(|k| (k.id, k.bytes.as_slice()))
    }

    fn signing_key(&self) -> Option<&MacKey> {
        self.keys.last()
    }

    /// The MAC annotation for `record`: `v1:<key id>:<hex>`.
    pub(crate) fn sign(&self, record: &Record<'_>) -> String {
        let Some(key) = self.signing_key() else {
            return String::new();
        };
        let tag = hmac::sign(&key.key, &canonical(record));
        format!("{VERSION}:{}:{}", key.id, hex::encode(tag.as_ref()))
    }

    /// Checks the MAC annotation `mac` against `record`, in constant time.
    pub(crate) fn verify(&self, record: &Record<'_>, mac: Option<&str>) -> Result<Verified, MacError> {
        let mac = mac.ok_or(MacError::Missing)?;
        let mut parts = mac.splitn(3, ':');
        let (Some(VERSION), Some(id), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(MacError::Malformed);
        };
        let tag = hex::decode(tag).map_err(|_| MacError::Malformed)?;
        let key = id
            .parse::<u32>()
            .ok()
            .and_then(|id| self.keys.iter().find(|k| k.id == id))
            // The id is text the Secret carries: quoted only if it is short.
            .ok_or_else(|| MacError::UnknownKey(id.chars().take(12).collect()))?;
        hmac::verify(&key.key, &canonical(record), &tag).map_err(|_| MacError::Mismatch)?;
        Ok(Verified {
            key_id: key.id,
            current: key.id == self.signing_id(),
        })
    }
}

/// The bytes the MAC is computed over: every field length-prefixed, in a
/// fixed order, optional fields with a presence byte, so that no two
/// different records encode alike.
fn canonical(r: &Record<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    field(&mut out, DOMAIN);
    field(&mut out, r.namespace.as_bytes());
    field(&mut out, r.name.as_bytes());
    field(&mut out, r.service_account.as_bytes());
    out.extend((r.references.len() as u64).to_be_bytes());
    for reference in r.references {
        encode_ref(&mut out, reference);
    }
    out.extend((r.sources.len() as u64).to_be_bytes());
    for (key, source) in r.sources {
        field(&mut out, key.as_bytes());
        match source {
            KeySource::Reference(reference) => encode_ref(&mut out, reference),
            // No field is u64::MAX bytes long, so this marker tells a
            // template from a reference; the template's JSON record holds
            // its text and every placeholder.
            KeySource::Template { template } => {
                out.extend(u64::MAX.to_be_bytes());
                field(
                    &mut out,
                    serde_json::to_string(template).unwrap_or_default().as_bytes(),
                );
            }
        }
    }
    out.push(u8::from(r.restart_on_rotation));
    field(&mut out, r.refreshed_at.as_bytes());
    out
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn optional(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            field(out, v.as_bytes());
        }
    }
}

fn encode_ref(out: &mut Vec<u8>, r: &SecretRef) {
    field(out, r.store.as_bytes());
    field(out, r.path.as_bytes());
    optional(out, r.property.as_deref());
    optional(out, r.version.as_deref());
    // Added later: absent, it adds no byte, so a record signed before it
    // encodes as it did. Nothing that can follow a reference starts with
    // the byte 2 (a length, a count, or the 0/1 of the restart flag).
    if let Some(d) = r.refresh {
        out.push(2);
        out.extend(d.as_secs().to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(store: &str, path: &str, property: Option<&str>, version: Option<&str>) -> SecretRef {
        SecretRef {
            store: store.into(),
            path: path.into(),
            property: property.map(str::to_owned),
            version: version.map(str::to_owned),
            refresh: None,
        }
    }

    struct Owned {
        namespace: String,
        name: String,
        service_account: String,
        references: Vec<SecretRef>,
        sources: BTreeMap<String, KeySource>,
        restart_on_rotation: bool,
        refreshed_at: String,
    }

    impl Owned {
        fn record(&self) -> Record<'_> {
            Record {
                namespace: &self.namespace,
                name: &self.name,
                service_account: &self.service_account,
                references: &self.references,
                sources: &self.sources,
                restart_on_rotation: self.restart_on_rotation,
                refreshed_at: &self.refreshed_at,
            }
        }
    }

    fn genuine() -> Owned {
        let db = reference("vault", "apps/team-a/db", Some("password"), None);
        Owned {
            namespace: "team-a".into(),
            name: "sesame-0123456789abcdef".into(),
            service_account: "web".into(),
            references: vec![db.clone()],
            sources: [("db.password".to_owned(), db.into())].into(),
            restart_on_rotation: true,
            refreshed_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn ring(keys: &[(u32, u8)]) -> KeyRing {
        KeyRing::new(keys.iter().map(|(id, b)| (*id, vec![*b; 32])).collect()).unwrap()
    }

    #[test]
    fn a_genuine_record_verifies_with_the_key_that_signed_it() {
        let keys = ring(&[(1, 7)]);
        let g = genuine();
        let mac = keys.sign(&g.record());
        assert!(mac.starts_with("v1:1:"), "{mac}");
        assert_eq!(
            keys.verify(&g.record(), Some(&mac)),
            Ok(Verified {
                key_id: 1,
                current: true
            })
        );
    }

    /// A recorded `refresh` is covered: a tenant who slows (or speeds) a
    /// Secret's refresh by editing its annotations breaks the MAC, and a
    /// reference without one encodes as before it existed.
    #[test]
    fn a_recorded_refresh_is_covered() {
        let keys = ring(&[(1, 7)]);
        let mut g = genuine();
        g.references[0].refresh = Some(std::time::Duration::from_secs(900));
        g.sources = [("db.password".to_owned(), g.references[0].clone().into())].into();
        let mac = keys.sign(&g.record());
        assert!(keys.verify(&g.record(), Some(&mac)).is_ok());
        assert_ne!(mac, keys.sign(&genuine().record()));
        for secs in [None, Some(3600), Some(901)] {
            let mut edited = genuine();
            edited.references[0].refresh = secs.map(std::time::Duration::from_secs);
            edited.sources = [("db.password".to_owned(), edited.references[0].clone().into())].into();
            assert!(keys.verify(&edited.record(), Some(&mac)).is_err(), "{secs:?}");
        }
    }

    /// The attacker edits one recorded field of a signed Secret (or copies
    /// the MAC onto a Secret of their own): each edit fails.
    #[test]
    fn tampering_with_any_field_fails() {
        let keys = ring(&[(1, 7)]);
        let g = genuine();
        let mac = keys.sign(&g.record());
        let other_team = reference("vault", "apps/team-b/db", Some("password"), None);
        type Edit = (&'static str, Box<dyn Fn(&mut Owned)>);
        let edits: Vec<Edit> = vec![
            ("namespace", Box::new(|o| o.namespace = "team-b".into())),
            ("name", Box::new(|o| o.name = "sesame-ffffffffffffffff".into())),
            ("service account", Box::new(|o| o.service_account = "ci".into())),
            ("references", {
                let r = other_team.clone();
                Box::new(move |o| o.references = vec![r.clone()])
            }),
            ("a reference more", {
                let r = other_team.clone();
                Box::new(move |o| o.references.push(r.clone()))
            }),
            (
                "source store",
                Box::new(|o| {
                    o.sources
                        .get_mut("db.password")
                        .unwrap()
                        .as_reference_mut()
                        .unwrap()
                        .store = "k8s".into()
                }),
            ),
            ("source path", {
                Box::new(|o| {
                    o.sources
                        .get_mut("db.password")
                        .unwrap()
                        .as_reference_mut()
                        .unwrap()
                        .path = "../outside".into()
                })
            }),
            ("source property", {
                Box::new(|o| {
                    o.sources
                        .get_mut("db.password")
                        .unwrap()
                        .as_reference_mut()
                        .unwrap()
                        .property = Some("user".into())
                })
            }),
            ("source property removed", {
                Box::new(|o| {
                    o.sources
                        .get_mut("db.password")
                        .unwrap()
                        .as_reference_mut()
                        .unwrap()
                        .property = None
                })
            }),
            ("source version", {
                Box::new(|o| {
                    o.sources
                        .get_mut("db.password")
                        .unwrap()
                        .as_reference_mut()
                        .unwrap()
                        .version = Some("1".into())
                })
            }),
            ("source key", {
                Box::new(|o| {
                    let r = o.sources.remove("db.password").unwrap();
                    o.sources.insert("stolen".into(), r);
                })
            }),
            ("a source more", {
                let r = other_team.clone();
                Box::new(move |o| {
                    o.sources.insert("extra".into(), r.clone().into());
                })
            }),
            ("restart flag", Box::new(|o| o.restart_on_rotation = false)),
            (
                "refreshed-at",
                Box::new(|o| o.refreshed_at = "2099-01-01T00:00:00Z".into()),
            ),
        ];
        for (what, edit) in edits {
            let mut forged = genuine();
            edit(&mut forged);
            assert_eq!(
                keys.verify(&forged.record(), Some(&mac)),
                Err(MacError::Mismatch),
                "{what}"
            );
        }
        // Moving characters between fields changes the encoding too.
        let mut shifted = genuine();
        shifted.namespace = "team-as".into();
        shifted.name = "esame-0123456789abcdef".into();
        assert_eq!(
            keys.verify(&shifted.record(), Some(&mac)),
            Err(MacError::Mismatch)
        );
    }

    /// A template key is covered whole: its text, each placeholder and
    /// each function. Swapping a placeholder for another team's path, or
    /// dropping `urlquery`, breaks the MAC; a reference key whose record
    /// looks like nothing a template encodes to stays apart.
    #[test]
    fn a_recorded_template_is_covered_whole() {
        let keys = ring(&[(1, 7)]);
        let template = |text: &str| {
            let a: BTreeMap<String, String> =
                [("sesame.dev/template.URL".to_owned(), text.to_owned())].into();
            KeySource::Template {
                template: crate::inject::annotations::parse("sesame.dev", &a)
                    .unwrap()
                    .templates
                    .remove(0)
                    .template,
            }
        };
        let mut g = genuine();
        g.sources.insert(
            "template.URL".into(),
            template("db://{{ vault:apps/team-a/db#password | urlquery }}"),
        );
        let mac = keys.sign(&g.record());
        assert!(keys.verify(&g.record(), Some(&mac)).is_ok());
        for edited in [
            "db://{{ vault:apps/team-b/db#password | urlquery }}",
            "db://{{ vault:apps/team-a/db#password }}",
            "db:/{{ vault:apps/team-a/db#password | urlquery }}",
            "db://{{ vault:apps/team-a/db#password | urlquery }}{{ vault:apps/team-a/db#user }}",
        ] {
            let mut forged = genuine();
            forged.sources.insert("template.URL".into(), template(edited));
            assert_eq!(
                keys.verify(&forged.record(), Some(&mac)),
                Err(MacError::Mismatch),
                "{edited}"
            );
        }
        // A reference under the template's key is another record.
        let mut forged = genuine();
        forged.sources.insert(
            "template.URL".into(),
            reference("vault", "apps/team-a/db", Some("password"), None).into(),
        );
        assert_eq!(keys.verify(&forged.record(), Some(&mac)), Err(MacError::Mismatch));
    }

    #[test]
    fn forged_or_missing_macs_fail_without_a_key_in_the_message() {
        let keys = ring(&[(1, 7)]);
        let g = genuine();
        let r = g.record();
        assert_eq!(keys.verify(&r, None), Err(MacError::Missing));
        for bad in ["", "v1", "v1:1", "v2:1:00", "v1:1:zz", "1:00"] {
            assert_eq!(keys.verify(&r, Some(bad)), Err(MacError::Malformed), "{bad}");
        }
        // A MAC made with a key the attacker chose.
        let theirs = ring(&[(1, 9)]).sign(&r);
        assert_eq!(keys.verify(&r, Some(&theirs)), Err(MacError::Mismatch));
        let unknown = keys.verify(&r, Some(&ring(&[(5, 7)]).sign(&r))).unwrap_err();
        assert_eq!(unknown, MacError::UnknownKey("5".into()));
        assert_eq!(unknown.label(), "unknown_key");
        // A truncated tag is refused, not compared as a prefix.
        let mac = keys.sign(&r);
        assert_eq!(
            keys.verify(&r, Some(&mac[..mac.len() - 2])),
            Err(MacError::Mismatch)
        );
    }

    /// Rotation of the key: a ring with a new key signs with it and still
    /// accepts what the old one signed (reported as not current, to be
    /// signed again); once the old key is gone, its MACs fail.
    #[test]
    fn a_new_key_signs_and_the_old_one_still_verifies() {
        let g = genuine();
        let r = g.record();
        let old = ring(&[(1, 7)]);
        let old_mac = old.sign(&r);
        let both = ring(&[(2, 8), (1, 7)]);
        assert_eq!(both.ids(), [1, 2]);
        assert_eq!(both.signing_id(), 2);
        assert_eq!(
            both.verify(&r, Some(&old_mac)),
            Ok(Verified {
                key_id: 1,
                current: false
            })
        );
        let new_mac = both.sign(&r);
        assert!(new_mac.starts_with("v1:2:"), "{new_mac}");
        assert_eq!(
            both.verify(&r, Some(&new_mac)),
            Ok(Verified {
                key_id: 2,
                current: true
            })
        );
        let only_new = ring(&[(2, 8)]);
        assert_eq!(only_new.verify(&r, Some(&new_mac)).map(|v| v.key_id), Ok(2));
        assert!(matches!(
            only_new.verify(&r, Some(&old_mac)),
            Err(MacError::UnknownKey(_))
        ));
    }

    /// MACs that Sesame signed before references could carry `refresh`
    /// (computed with that code, key 1 = 32 × 0x07): the same records,
    /// read back with no refresh, still verify.
    #[test]
    fn secrets_signed_before_refresh_still_verify() {
        let keys = ring(&[(1, 7)]);
        let g = genuine();
        let before = "v1:1:5164f1f0c54fd004068e802d6a5564378eb64671aa93bb8731c975d2a1430fae";
        assert_eq!(keys.sign(&g.record()), before);
        assert!(keys.verify(&g.record(), Some(before)).is_ok());

        let mut pinned = genuine();
        let aws = reference("aws", "prod/db", None, Some("AWSPREVIOUS"));
        pinned.references.push(aws.clone());
        pinned.sources.insert("db".into(), aws.into());
        let a: BTreeMap<String, String> = [(
            "sesame.dev/template.URL".to_owned(),
            "db://{{ vault:apps/team-a/db#password | urlquery }}@{{ aws:prod/db#host version=3 }}".to_owned(),
        )]
        .into();
        let template = crate::inject::annotations::parse("sesame.dev", &a)
            .unwrap()
            .templates
            .remove(0)
            .template;
        pinned
            .sources
            .insert("template.URL".into(), KeySource::Template { template });
        pinned.restart_on_rotation = false;
        let before = "v1:1:899cbb0812396b579c7029f4573873d3d4abc8e934f18581b80b111214eed354";
        assert_eq!(keys.sign(&pinned.record()), before);
        assert!(keys.verify(&pinned.record(), Some(before)).is_ok());
    }

    #[test]
    fn keys_are_checked_and_never_shown() {
        assert_eq!(KeyRing::new(vec![]).unwrap_err(), KeyError::Empty);
        assert_eq!(
            KeyRing::new(vec![(1, vec![1; 16])]).unwrap_err(),
            KeyError::TooShort { id: 1, len: 16 }
        );
        assert_eq!(
            KeyRing::new(vec![(1, vec![1; 32]), (1, vec![2; 32])]).unwrap_err(),
            KeyError::Duplicate(1)
        );
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let keys = KeyRing::new(vec![(3, secret.clone())]).unwrap();
        let shown = format!("{keys:?}");
        assert_eq!(shown, "KeyRing { ids: [3], signing: 3 }");
        for error in [
            KeyError::TooShort { id: 1, len: 3 }.to_string(),
            MacError::Mismatch.to_string(),
            MacError::UnknownKey("x".into()).to_string(),
        ] {
            assert!(!error.contains("0123456789abcdef"), "{error}");
        }
        let material: Vec<(u32, Vec<u8>)> = keys.material().map(|(id, b)| (id, b.to_vec())).collect();
        assert_eq!(material, [(3, secret)]);
    }
}
