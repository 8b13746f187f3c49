//! SSM Parameter Store (`service: parameterStore`): one parameter per
//! reference, decrypted (`WithDecryption`), or every parameter directly
//! below a path for `env-from` and `dir`.
//!
//! Names: a reference path with a `/` names the hierarchical parameter
//! `/<path>` (hierarchies start with `/`, which a reference path cannot);
//! one without is the plain name. A version is a number (`name:3`) or a
//! label (`name:prod`; labels cannot start with a digit). A path ending in
//! `@all` reads the parameters directly below it with
//! `GetParametersByPath` (`ssm:prod/db/@all`, `ssm:@all` for the root),
//! each under the last segment of its name.

use aws_sdk_ssm as ssm;

use super::imp::Reader;
use crate::stores::{SecretData, SecretLocator, SecretValue, StoreError};

/// The marker of a whole path (as for Infisical folders).
const ALL: &str = "@all";

/// Results per `GetParametersByPath` page (the API's most), and the most
/// pages one read follows.
const PAGE_SIZE: i32 = 10;
const MAX_PAGES: usize = 100;

/// The parameter name of a reference path.
pub(crate) fn parameter_name(path: &str) -> String {
    if path.contains('/') {
        format!("/{path}")
    } else {
        path.to_owned()
    }
}

/// What a reference asks for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// One parameter: `name`, `name:version` or `name:label`.
    One(String),
    /// Every parameter directly below the path.
    Below(String),
}

fn wanted(locator: &SecretLocator) -> Result<Wanted, StoreError> {
    let path = locator.path.as_str();
    let below = if path == ALL {
        Some("/".to_owned())
    } else {
        path.strip_suffix("/@all").map(|p| format!("/{p}"))
    };
    match (below, locator.version.as_deref()) {
        (Some(_), Some(_)) => Err(StoreError::InvalidRequest(
            "a whole path (@all) has no version".into(),
        )),
        (Some(path), None) => Ok(Wanted::Below(path)),
        (None, None) => Ok(Wanted::One(parameter_name(path))),
        (None, Some(v))
            if !v.is_empty()
                && v.len() <= 100
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
        {
            Ok(Wanted::One(format!("{}:{v}", parameter_name(path))))
        }
        (None, Some(_)) => Err(StoreError::InvalidRequest(
            "a Parameter Store version is a number or a label".into(),
        )),
    }
}

/// Reads one reference.
pub(super) async fn read(
    client: &ssm::Client,
    reader: &Reader,
    locator: &SecretLocator,
) -> Result<SecretData, StoreError> {
    let versioned = locator.version.is_some();
    match wanted(locator)? {
        Wanted::One(selector) => {
            let out = client
                .get_parameter()
                .name(selector)
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| reader.sdk_error(&e, versioned))?;
            let value = out
                .parameter()
                .and_then(|p| p.value())
                .ok_or_else(|| StoreError::InvalidResponse("the parameter has no value".into()))?;
            Ok(SecretData::from_text(value))
        }
        Wanted::Below(path) => {
            let mut properties = std::collections::BTreeMap::new();
            let mut next: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let out = client
                    .get_parameters_by_path()
                    .path(&path)
                    .recursive(false)
                    .with_decryption(true)
                    .max_results(PAGE_SIZE)
                    .set_next_token(next.take())
                    .send()
                    .await
                    .map_err(|e| reader.sdk_error(&e, false))?;
                for parameter in out.parameters() {
                    let (Some(name), Some(value)) = (parameter.name(), parameter.value()) else {
                        continue;
                    };
                    let key = name.rsplit('/').next().unwrap_or(name);
                    properties.insert(key.to_owned(), SecretValue::from(value));
                }
                match out.next_token() {
                    Some(token) if !token.is_empty() => next = Some(token.to_owned()),
                    _ => break,
                }
            }
            if properties.is_empty() {
                return Err(StoreError::NotFound);
            }
            Ok(SecretData::Properties(properties))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(path: &str, version: Option<&str>) -> SecretLocator {
        SecretLocator::new(path, version.map(str::to_owned))
    }

    #[test]
    fn names_versions_labels_and_paths() {
        assert_eq!(
            wanted(&loc("db-password", None)).unwrap(),
            Wanted::One("db-password".into())
        );
        assert_eq!(
            wanted(&loc("prod/db/password", Some("3"))).unwrap(),
            Wanted::One("/prod/db/password:3".into())
        );
        assert_eq!(
            wanted(&loc("prod/db/password", Some("blue"))).unwrap(),
            Wanted::One("/prod/db/password:blue".into())
        );
        assert_eq!(
            wanted(&loc("prod/db/@all", None)).unwrap(),
            Wanted::Below("/prod/db".into())
        );
        assert_eq!(wanted(&loc("@all", None)).unwrap(), Wanted::Below("/".into()));
        assert_eq!(
            wanted(&loc("prod/@all", None)).unwrap(),
            Wanted::Below("/prod".into())
        );
        assert!(wanted(&loc("prod/@all", Some("2"))).is_err());
        assert!(wanted(&loc("x", Some("a:b"))).is_err());
    }
}
