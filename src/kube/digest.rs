//! What the cache of managed Secrets keeps of each one: its metadata with
//! only Sesame's annotations, and for each key a keyed digest of the value,
//! never the value. Every managed Secret of every team would otherwise sit
//! in Sesame's heap, and a tenant could grow that heap with large Secrets
//! carrying Sesame's label. Comparing a wanted value with a stored one only
//! needs the digest; the key is random per process and never leaves it, so
//! a digest cannot be checked against guesses outside Sesame.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::stores::SecretValue;

/// The digest key, made on first use.
fn key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut material = [0u8; 32];
        if SystemRandom::new().fill(&mut material).is_err() {
            // Not seen in practice; std's hasher keys come from the OS too.
            for (i, chunk) in material.chunks_mut(8).enumerate() {
                chunk.copy_from_slice(&RandomState::new().hash_one(i).to_le_bytes());
            }
        }
        hmac::Key::new(hmac::HMAC_SHA256, &material)
    })
}

/// The digest of `value` stored under `name` (the name is covered, so equal
/// values under two keys do not share a digest).
pub fn digest(name: &str, value: &[u8]) -> Vec<u8> {
    let mut ctx = hmac::Context::with_key(key());
    ctx.update(&(name.len() as u64).to_be_bytes());
    ctx.update(name.as_bytes());
    ctx.update(value);
    ctx.sign().as_ref().to_vec()
}

/// Reduces a Secret, as the API server sent it, to what the cache keeps:
/// data values replaced by their digests, `stringData` (never sent by the
/// API server) dropped, annotations outside `prefix/` dropped.
pub(crate) fn digested(secret: &mut Secret, prefix: &str) {
    if let Some(data) = secret.data.as_mut() {
        for (name, value) in data.iter_mut() {
            *value = ByteString(digest(name, &value.0));
        }
    }
    secret.string_data = None;
    if let Some(annotations) = secret.metadata.annotations.as_mut() {
        annotations.retain(|k, _| k.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/')));
    }
}

/// Whether the cached `secret` holds exactly `data`.
pub(crate) fn holds_exactly(secret: &Secret, data: &BTreeMap<String, SecretValue>) -> bool {
    let stored = secret.data.as_ref();
    stored.map_or(0, BTreeMap::len) == data.len() && !data.iter().any(|(k, v)| differs(stored, k, v))
}

/// Whether any value in `data` differs from what the cached `secret`
/// holds. Keys that only leave the Secret are not a change of value.
pub(crate) fn any_value_differs(secret: &Secret, data: &BTreeMap<String, SecretValue>) -> bool {
    let stored = secret.data.as_ref();
    data.iter().any(|(k, v)| differs(stored, k, v))
}

fn differs(stored: Option<&BTreeMap<String, ByteString>>, name: &str, value: &SecretValue) -> bool {
    stored
        .and_then(|s| s.get(name))
        .is_none_or(|d| d.0 != digest(name, value.expose()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn wanted(pairs: &[(&str, &[u8])]) -> BTreeMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretValue::new(v.to_vec())))
            .collect()
    }

    #[test]
    fn the_cache_keeps_no_value_and_no_foreign_annotation() {
        let mut s = raw(&[("password", b"hunter2-team-b"), ("user", b"app")]);
        s.metadata.annotations = Some(
            [
                ("sesame.dev/sources", "{}"),
                ("sesame.devx/other", "x"),
                ("kubectl.kubernetes.io/last-applied-configuration", "a big blob"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        s.string_data = Some([("k".to_owned(), "hunter2-team-b".to_owned())].into());
        digested(&mut s, "sesame.dev");
        let text = format!("{s:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("[104, 117, 110, 116, 101, 114, 50"),
            "{text}"
        );
        let data = s.data.as_ref().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["password", "user"]);
        assert!(data.values().all(|d| d.0.len() == 32));
        assert_eq!(
            s.metadata.annotations.unwrap().keys().collect::<Vec<_>>(),
            ["sesame.dev/sources"]
        );
    }

    #[test]
    fn a_digested_secret_compares_with_wanted_values() {
        let mut s = raw(&[("a", b"one"), ("b", b"two")]);
        digested(&mut s, "sesame.dev");
        assert!(holds_exactly(&s, &wanted(&[("a", b"one"), ("b", b"two")])));
        assert!(!holds_exactly(&s, &wanted(&[("a", b"one"), ("b", b"TWO")])));
        assert!(!holds_exactly(&s, &wanted(&[("a", b"one")])));
        assert!(!holds_exactly(
            &s,
            &wanted(&[("a", b"one"), ("b", b"two"), ("c", b"")])
        ));
        // Equal values under swapped keys are not equal data.
        assert!(!holds_exactly(&s, &wanted(&[("a", b"two"), ("b", b"one")])));
        assert!(!any_value_differs(&s, &wanted(&[("a", b"one")])));
        assert!(any_value_differs(&s, &wanted(&[("a", b"uno")])));
        assert!(any_value_differs(&s, &wanted(&[("c", b"new")])));
        assert!(!holds_exactly(&Secret::default(), &wanted(&[("a", b"one")])));
        assert!(holds_exactly(&Secret::default(), &wanted(&[])));
    }

    #[test]
    fn a_raw_value_is_not_taken_for_its_digest() {
        // A Secret that skipped `digested` never compares equal by accident.
        let s = raw(&[("a", b"one")]);
        assert!(!holds_exactly(&s, &wanted(&[("a", b"one")])));
    }
}
