//! The one way from store answers to a managed Secret's data: each key of
//! the Secret holds what one reference (with its concrete property) names,
//! or what one template renders from its placeholders' values.
//! Admission (the plan) and rotation both call [`secret_data`], so an
//! option a reference gains is honoured by both or by neither. Pure.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::annotations::{RefTemplate, SecretRef};
use super::template::RenderError;
use crate::stores::{PropertyError, SecretData, SecretLocator, SecretValue, StoreError, StoreRequest};

/// Store answers by what was fetched: one answer serves every reference
/// that differs only in its property.
pub(crate) type Fetched = HashMap<StoreRequest, Result<Arc<SecretData>, StoreError>>;

/// A value for plans that only look at keys and shape (a dry plan, a Pod
/// admitted against its stored Secret): valid text and valid base64, so
/// that every template function takes it.
pub(crate) const STAND_IN: &str = "c2VzYW1l";

impl SecretRef {
    /// What has to be fetched for this reference: the secret at its version.
    pub fn request(&self) -> StoreRequest {
        StoreRequest {
            store: self.store.clone(),
            locator: SecretLocator::new(self.path.clone(), self.version.clone()),
        }
    }
}

/// What one key of a managed Secret holds, as its `sources` annotation
/// records it: a reference, or a template with its placeholders (each a
/// reference that rotation authorises and resolves again). A reference is
/// recorded as it always was, so Secrets written before templates read
/// the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeySource {
    Template { template: RefTemplate },
    Reference(SecretRef),
}

impl KeySource {
    /// Every reference the key's value is made from.
    pub fn references(&self) -> Box<dyn Iterator<Item = &SecretRef> + '_> {
        match self {
            Self::Reference(r) => Box::new(std::iter::once(r)),
            Self::Template { template } => Box::new(template.placeholders().map(|p| &p.reference)),
        }
    }
}

impl KeySource {
    /// The reference, for a key that holds one.
    pub fn as_reference(&self) -> Option<&SecretRef> {
        match self {
            Self::Reference(r) => Some(r),
            Self::Template { .. } => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn as_reference_mut(&mut self) -> Option<&mut SecretRef> {
        match self {
            Self::Reference(r) => Some(r),
            Self::Template { .. } => None,
        }
    }
}

impl From<SecretRef> for KeySource {
    fn from(r: SecretRef) -> Self {
        Self::Reference(r)
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
    /// A placeholder's value did not suit its function (not base64, not
    /// UTF-8 text): names the placeholder, never the value.
    #[error("key {key}: placeholder {placeholder}: {problem}")]
    Render {
        key: String,
        placeholder: String,
        problem: &'static str,
    },
}

impl DataError {
    /// The reference at fault, if one is.
    pub(crate) fn reference(&self) -> Option<&SecretRef> {
        match self {
            Self::Store { reference, .. }
            | Self::Property { reference, .. }
            | Self::NotFetched { reference, .. } => Some(reference),
            Self::Render { .. } => None,
        }
    }

    /// The key whose value could not be made.
    pub(crate) fn key(&self) -> &str {
        match self {
            Self::Store { key, .. }
            | Self::Property { key, .. }
            | Self::NotFetched { key, .. }
            | Self::Render { key, .. } => key,
        }
    }
}

/// The data of a managed Secret: for each key, the value its reference
/// names in `fetched`.
pub(crate) fn secret_data(
    sources: &BTreeMap<String, KeySource>,
    fetched: &Fetched,
) -> Result<BTreeMap<String, SecretValue>, DataError> {
    let mut data = BTreeMap::new();
    for (key, source) in sources {
        data.insert(key.clone(), key_value(key, source, fetched)?);
    }
    Ok(data)
}

/// The value of one key: what its reference names, or its template
/// rendered. The plan asks this for a template's inline env value too.
pub(crate) fn key_value(key: &str, source: &KeySource, fetched: &Fetched) -> Result<SecretValue, DataError> {
    match source {
        KeySource::Reference(reference) => value_of(key, reference, fetched).cloned(),
        KeySource::Template { template } => render(key, template, fetched),
    }
}

/// A template rendered from the values its placeholders name.
pub(crate) fn render(key: &str, template: &RefTemplate, fetched: &Fetched) -> Result<SecretValue, DataError> {
    let rendered = template
        .render(|r| value_of(key, r, fetched).map(|v| v.expose().to_vec()))
        .map_err(|e| match e {
            RenderError::Value { error, .. } => error,
            RenderError::Function { index, problem, .. } => DataError::Render {
                key: key.to_owned(),
                placeholder: template
                    .placeholders()
                    .nth(index)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                problem,
            },
        })?;
    Ok(SecretValue::new(rendered))
}

fn value_of<'f>(
    key: &str,
    reference: &SecretRef,
    fetched: &'f Fetched,
) -> Result<&'f SecretValue, DataError> {
    let secret = match fetched.get(&reference.request()) {
        Some(Ok(d)) => d,
        Some(Err(error)) => {
            return Err(DataError::Store {
                key: key.to_owned(),
                reference: Box::new(reference.clone()),
                error: error.clone(),
            })
        }
        None => {
            return Err(DataError::NotFetched {
                key: key.to_owned(),
                reference: Box::new(reference.clone()),
            })
        }
    };
    secret
        .get(reference.property.as_deref())
        .map_err(|error| DataError::Property {
            key: key.to_owned(),
            reference: Box::new(reference.clone()),
            error,
        })
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
            refresh: None,
        }
    }

    #[test]
    fn picks_properties_and_fails_without_values_in_the_message() {
        let sources: BTreeMap<String, KeySource> = [
            (
                "db.password".to_owned(),
                rec("vault", "app/db", Some("password")).into(),
            ),
            ("db.user".to_owned(), rec("vault", "app/db", Some("user")).into()),
            ("token".to_owned(), rec("file", "token", None).into()),
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

    /// References are recorded as before templates existed (Secrets
    /// written then read the same); a template records its parts, and a
    /// template key renders through the same function.
    #[test]
    fn key_sources_read_old_records_and_render_templates() {
        let old = r#"{"k":{"store":"vault","path":"app/db","property":"password"}}"#;
        let sources: BTreeMap<String, KeySource> = serde_json::from_str(old).unwrap();
        assert_eq!(
            sources["k"],
            KeySource::Reference(rec("vault", "app/db", Some("password")))
        );
        assert_eq!(serde_json::to_string(&sources).unwrap(), old);

        let template: RefTemplate = crate::inject::template::Template::parse(
            "{{ vault:app/db#user }}:{{ vault:app/db#password | urlquery }}",
            |r| r.parse::<SecretRef>().map_err(|e| e.message),
        )
        .unwrap();
        let source = KeySource::Template { template };
        let json = serde_json::to_string(&source).unwrap();
        assert!(
            json.starts_with(r#"{"template":[{"value":{"ref":{"store":"vault""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<KeySource>(&json).unwrap(), source);
        assert_eq!(source.references().count(), 2);

        let db = SecretData::Properties(
            [
                ("password".to_owned(), SecretValue::from("a@b")),
                ("user".to_owned(), SecretValue::from("app")),
            ]
            .into(),
        );
        let mut fetched = Fetched::new();
        fetched.insert(rec("vault", "app/db", None).request(), Ok(Arc::new(db)));
        let sources: BTreeMap<String, KeySource> = [("t".to_owned(), source)].into();
        assert_eq!(
            secret_data(&sources, &fetched).unwrap()["t"].expose(),
            b"app:a%40b"
        );
        fetched.insert(rec("vault", "app/db", None).request(), Err(StoreError::Throttled));
        let e = secret_data(&sources, &fetched).unwrap_err();
        assert_eq!(e.key(), "t");
        assert!(matches!(e, DataError::Store { .. }), "{e:?}");
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
        let sources: BTreeMap<String, KeySource> = [("k".to_owned(), pinned.into())].into();
        assert_eq!(secret_data(&sources, &fetched).unwrap()["k"].expose(), b"v3");
    }
}
