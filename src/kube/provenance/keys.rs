//! The provenance key Secret as a pure state machine: which keys it holds
//! ([`read`]), what to do about it ([`decide`]) and the data to write. No
//! I/O; the manager runs it.
//!
//! Format: one data key per MAC key, `key-<n>` (n a positive integer
//! without leading zeros) holding at least 32 random bytes. The highest `n`
//! signs; every listed key verifies. Entries of another shape are ignored
//! and reported (by name, never by content).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::mac::{KeyRing, MIN_KEY_BYTES};

/// Prefix of each key's data key.
pub(crate) const KEY_PREFIX: &str = "key-";

/// Bytes of a key Sesame generates.
pub(crate) const NEW_KEY_BYTES: usize = 32;

/// What the key Secret holds.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `None` when no entry is a usable key.
    pub ring: Option<KeyRing>,
    /// Data keys that are not usable keys, with why (names only).
    pub ignored: Vec<String>,
    /// The highest id seen, usable or not: a new key gets the next one.
    pub highest_id: u32,
}

/// The id of data key `name`, if it has the shape `key-<n>`.
pub(crate) fn key_id(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(KEY_PREFIX)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The data key of id `id`.
pub(crate) fn data_key(id: u32) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// Reads the Secret's data.
pub(crate) fn read(secret: &Secret) -> Keys {
    let mut usable = Vec::new();
    let mut ignored = Vec::new();
    let mut highest_id = 0;
    for (name, value) in secret.data.iter().flatten() {
        let Some(id) = key_id(name) else {
            ignored.push(format!("{name} (not of the form {KEY_PREFIX}<n>)"));
            continue;
        };
        highest_id = highest_id.max(id);
        if value.0.len() < MIN_KEY_BYTES {
            ignored.push(format!("{name} (shorter than {MIN_KEY_BYTES} bytes)"));
            continue;
        }
        usable.push((id, value.0.clone()));
    }
    // Ids are unique (one spelling each) and short keys were left out
    // above, so the only failure left is "none".
    Keys {
        ring: KeyRing::new(usable).ok(),
        ignored,
        highest_id,
    }
}

/// What to do with the key Secret as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It holds usable keys: use them.
    Use,
    /// It does not exist: create it, with the keys this replica already
    /// uses (so that a deleted Secret comes back with the same keys and
    /// every managed Secret still verifies), else with a new key 1.
    Create,
    /// It exists without a usable key: add a new key with this id.
    AddKey { id: u32 },
}

/// Decides from what was read (pure).
pub(crate) fn decide(read: Option<&Keys>) -> Decision {
    match read {
        None => Decision::Create,
        Some(k) if k.ring.is_some() => Decision::Use,
        Some(k) => Decision::AddKey {
            id: k.highest_id.saturating_add(1).max(1),
        },
    }
}

/// The data of a key Secret holding `ring`.
pub(crate) fn data(ring: &KeyRing) -> BTreeMap<String, ByteString> {
    ring.material()
        .map(|(id, bytes)| (data_key(id), ByteString(bytes.to_vec())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(entries: &[(&str, Vec<u8>)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn ids_have_one_spelling() {
        assert_eq!(key_id("key-1"), Some(1));
        assert_eq!(key_id("key-42"), Some(42));
        for bad in [
            "key-",
            "key-0",
            "key-01",
            "key-1a",
            "key--1",
            "1",
            "KEY-1",
            "key-99999999999",
        ] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
        assert_eq!(data_key(7), "key-7");
    }

    #[test]
    fn usable_keys_are_read_and_the_rest_reported_by_name() {
        let keys = read(&secret(&[
            ("key-1", vec![1; 32]),
            ("key-3", vec![3; 40]),
            ("key-4", vec![4; 8]),
            ("notes", b"hello".to_vec()),
        ]));
        let ring = keys.ring.unwrap();
        assert_eq!(ring.ids(), [1, 3]);
        assert_eq!(ring.signing_id(), 3);
        assert_eq!(keys.highest_id, 4);
        assert_eq!(keys.ignored.len(), 2);
        assert!(keys.ignored.iter().all(|i| !i.contains("hello")));
        assert_eq!(
            decide(Some(&read(&secret(&[("key-1", vec![1; 32])])))),
            Decision::Use
        );
    }

    #[test]
    fn a_missing_or_unusable_secret_is_created_or_given_a_key() {
        assert_eq!(decide(None), Decision::Create);
        assert_eq!(
            decide(Some(&read(&Secret::default()))),
            Decision::AddKey { id: 1 }
        );
        // A short key 4 is not overwritten: the new key is 5.
        assert_eq!(
            decide(Some(&read(&secret(&[("key-4", vec![4; 8])])))),
            Decision::AddKey { id: 5 }
        );
    }

    #[test]
    fn the_data_round_trips() {
        let ring = KeyRing::new(vec![(2, vec![2; 32]), (1, vec![1; 32])]).unwrap();
        let written = Secret {
            data: Some(data(&ring)),
            ..Default::default()
        };
        assert_eq!(
            written.data.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["key-1", "key-2"]
        );
        assert_eq!(read(&written).ring.unwrap().ids(), [1, 2]);
    }
}
