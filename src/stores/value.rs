//! Secret material. Values are wrapped so that `Debug` never prints them and
//! the bytes are zeroed when dropped: the type system keeps them out of logs.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// One secret value. `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    /// The raw bytes. Callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, if it is UTF-8.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for SecretValue {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes().to_vec())
    }
}

impl From<String> for SecretValue {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue([redacted, {} bytes])", self.0.len())
    }
}

/// A whole secret as a store returns it: one opaque value, or named
/// properties (a JSON object in Vault/AWS/GCP/Azure, keys of a Kubernetes Secret).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretData {
    Value(SecretValue),
    Properties(BTreeMap<String, SecretValue>),
}

/// Why a property could not be read from a secret. Never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    #[error("the secret has no property \"{0}\"")]
    Missing(String),
    #[error("the secret is a single value, not an object with properties")]
    NotAnObject,
    #[error("the secret has properties ({0}); name one with #property")]
    NeedsProperty(String),
}

impl SecretData {
    /// Builds secret data from text: a JSON object becomes properties (strings
    /// as they are, other JSON values in their compact JSON form); anything else
    /// stays one value. This is how Vault, AWS, GCP and Azure secrets carry fields.
    #[cfg(any(
        feature = "aws",
        feature = "gcp",
        feature = "azure",
        feature = "infisical",
        test
    ))]
    pub(crate) fn from_text(text: &str) -> Self {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(trimmed) {
                return Self::Properties(json_properties(map));
            }
        }
        Self::Value(SecretValue::from(text))
    }

    /// The value of one property, or of the whole secret when `property` is `None`.
    pub fn get(&self, property: Option<&str>) -> Result<&SecretValue, PropertyError> {
        match (self, property) {
            (Self::Value(v), None) => Ok(v),
            (Self::Value(_), Some(_)) => Err(PropertyError::NotAnObject),
            (Self::Properties(map), Some(p)) => {
                map.get(p).ok_or_else(|| PropertyError::Missing(p.to_owned()))
            }
            (Self::Properties(map), None) => {
                let names: Vec<&str> = map.keys().map(String::as_str).collect();
                Err(PropertyError::NeedsProperty(names.join(", ")))
            }
        }
    }

    /// Every property, for `envFrom`-like and directory injections.
    pub fn properties(&self) -> Result<&BTreeMap<String, SecretValue>, PropertyError> {
        match self {
            Self::Properties(map) => Ok(map),
            Self::Value(_) => Err(PropertyError::NotAnObject),
        }
    }
}

/// Turns a JSON object into properties; strings are taken as they are.
pub(crate) fn json_properties(
    map: serde_json::Map<String, serde_json::Value>,
) -> BTreeMap<String, SecretValue> {
    map.into_iter()
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => SecretValue::from(s),
                other => SecretValue::from(other.to_string()),
            };
            (k, value)
        })
        .collect()
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(v) => f.debug_tuple("Value").field(v).finish(),
            Self::Properties(map) => {
                let keys: Vec<&String> = map.keys().collect();
                f.debug_struct("Properties").field("keys", &keys).finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let v = SecretValue::from("hunter2");
        assert!(!format!("{v:?}").contains("hunter2"));
        let d = SecretData::from_text(r#"{"password":"hunter2","port":5432}"#);
        let shown = format!("{d:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password"));
    }

    #[test]
    fn json_text_becomes_properties() {
        let d = SecretData::from_text(r#"{"password":"p","port":5432,"tls":true}"#);
        assert_eq!(d.get(Some("password")).unwrap().expose(), b"p");
        assert_eq!(d.get(Some("port")).unwrap().expose(), b"5432");
        assert_eq!(d.get(Some("tls")).unwrap().expose(), b"true");
        assert!(matches!(d.get(Some("nope")), Err(PropertyError::Missing(_))));
        assert!(matches!(d.get(None), Err(PropertyError::NeedsProperty(_))));
    }

    #[test]
    fn plain_text_is_one_value() {
        let d = SecretData::from_text("just-a-token");
        assert_eq!(d.get(None).unwrap().expose(), b"just-a-token");
        assert_eq!(d.get(Some("x")), Err(PropertyError::NotAnObject));
        let not_json = SecretData::from_text("{not json");
        assert!(matches!(not_json, SecretData::Value(_)));
    }
}
