//! The one way from store answers to a managed Secret's data: each key of
//! the Secret holds what one reference (with its concrete property) names.
//! Admission (the plan) and rotation both call [`secret_data`], so an
//! option a reference gains is honoured by both or by neither. Pure.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::annotations::SecretRef;
use crate::stores::{PropertyError, SecretData, SecretLocator, SecretValue, StoreError, StoreRequest};

/// Store answers by what was fetched: one answer serves every reference
/// that differs only in its property.
pub(crate) type Fetched = HashMap<StoreRequest, Result<Arc<SecretData>, StoreError>>;

impl SecretRef {
    /// What has to be fetched for this reference: the secret at its version.
    pub fn request(&self) -> StoreRequest {
        StoreRequest {
            store: self.store.clone(),
            locator: SecretLocator::new(self.path.clone(), self.version.clone()),
        }
    }
}

/// Why a key of the Secret has no value. Names keys, stores and paths,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DataError {
    #[error("store \"{}\" failed for \"{}\": {error}", reference.store, reference.path)]
    Store {
        key: String,
        reference: Box<SecretRef>,
        error: StoreError,
    },
    #[error("secret \"{}\" in store \"{}\" does not have what key {key} holds: {error}", reference.path, reference.store)]
    Property {
        key: String,
        reference: Box<SecretRef>,
        error: PropertyError,
    },
    #[error("nothing was fetched from store \"{}\" for key {key}", reference.store)]
    NotFetched { key: String, reference: Box<SecretRef> },
}

/// The data of a managed Secret: for each key, the value its reference
/// names in `fetched`.
pub(crate) fn secret_data(
    sources: &BTreeMap<String, SecretRef>,
    fetched: &Fetched,
) -> Result<BTreeMap<String, SecretValue>, DataError> {
    let mut data = BTreeMap::new();
    for (key, reference) in sources {
        let secret = match fetched.get(&reference.request()) {
            Some(Ok(d)) => d,
            Some(Err(error)) => {
                return Err(DataError::Store {
                    key: key.clone(),
                    reference: Box::new(reference.clone()),
                    error: error.clone(),
                })
            }
            None => {
                return Err(DataError::NotFetched {
                    key: key.clone(),
                    reference: Box::new(reference.clone()),
                })
            }
        };
        let value = secret
            .get(reference.property.as_deref())
            .map_err(|error| DataError::Property {
                key: key.clone(),
                reference: Box::new(reference.clone()),
                error,
            })?;
        data.insert(key.clone(), value.clone());
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(store: &str, path: &str, property: Option<&str>) -> SecretRef {
        SecretRef {
            store: store.into(),
            path: path.into(),
            property: property.map(str::to_owned),
            version: None,
        }
    }

    #[test]
    fn picks_properties_and_fails_without_values_in_the_message() {
        let sources: BTreeMap<String, SecretRef> = [
            ("db.password".to_owned(), rec("vault", "app/db", Some("password"))),
            ("db.user".to_owned(), rec("vault", "app/db", Some("user"))),
            ("token".to_owned(), rec("file", "token", None)),
        ]
        .into();
        let db = SecretData::Properties(
            [
                ("password".to_owned(), SecretValue::from("new-pw")),
                ("user".to_owned(), SecretValue::from("app")),
            ]
            .into(),
        );
        let mut fetched = Fetched::new();
        fetched.insert(rec("vault", "app/db", None).request(), Ok(Arc::new(db)));
        fetched.insert(
            rec("file", "token", None).request(),
            Ok(Arc::new(SecretData::Value("t0k".into()))),
        );
        let data = secret_data(&sources, &fetched).unwrap();
        assert_eq!(data["db.password"].expose(), b"new-pw");
        assert_eq!(data["db.user"].expose(), b"app");
        assert_eq!(data["token"].expose(), b"t0k");

        let gone = SecretData::Properties([("user".to_owned(), SecretValue::from("app"))].into());
        fetched.insert(rec("vault", "app/db", None).request(), Ok(Arc::new(gone)));
        let e = secret_data(&sources, &fetched).unwrap_err();
        assert!(
            matches!(&e, DataError::Property { key, .. } if key == "db.password"),
            "{e:?}"
        );
        assert!(!e.to_string().contains("app\""), "{e}");

        fetched.insert(rec("vault", "app/db", None).request(), Err(StoreError::Throttled));
        assert!(matches!(
            secret_data(&sources, &fetched),
            Err(DataError::Store {
                error: StoreError::Throttled,
                ..
            })
        ));
        fetched.clear();
        assert!(matches!(
            secret_data(&sources, &fetched),
            Err(DataError::NotFetched { .. })
        ));
    }

    #[test]
    fn a_version_is_part_of_what_is_fetched() {
        let mut pinned = rec("vault", "app/db", Some("password"));
        pinned.version = Some("3".into());
        let current = SecretData::Properties([("password".to_owned(), SecretValue::from("v4"))].into());
        let old = SecretData::Properties([("password".to_owned(), SecretValue::from("v3"))].into());
        let mut fetched = Fetched::new();
        fetched.insert(rec("vault", "app/db", None).request(), Ok(Arc::new(current)));
        fetched.insert(pinned.request(), Ok(Arc::new(old)));
        let sources: BTreeMap<String, SecretRef> = [("k".to_owned(), pinned)].into();
        assert_eq!(secret_data(&sources, &fetched).unwrap()["k"].expose(), b"v3");
    }
}
