//! Reading a secret from a KV mount, version 1 or 2.

use reqwest::{Method, StatusCode};

use super::auth::authed;
use super::http::{parse, Http};
use crate::stores::token::TokenCache;
use crate::stores::{json_properties, SecretData, SecretLocator, StoreError};

/// The KV engine version of the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KvVersion {
    V1,
    V2,
}

/// Reads one secret: its data's fields become properties. A version is a
/// positive number (KV v2 only).
pub(super) async fn read(
    http: &Http,
    tokens: &TokenCache,
    mount: &str,
    kv: KvVersion,
    locator: &SecretLocator,
) -> Result<SecretData, StoreError> {
    let mut url = match kv {
        KvVersion::V1 => {
            if locator.version.is_some() {
                return Err(StoreError::InvalidRequest(format!(
                    "the KV v1 mount \"{mount}\" keeps no versions"
                )));
            }
            http.url(&[mount, &locator.path])?
        }
        KvVersion::V2 => http.url(&[mount, "data", &locator.path])?,
    };
    if let Some(version) = &locator.version {
        if version.parse::<u64>().map_or(true, |n| n == 0) {
            return Err(StoreError::InvalidRequest(
                "KV v2 versions are positive numbers".into(),
            ));
        }
        url.query_pairs_mut().append_pair("version", version);
    }
    let (status, body) = authed(http, tokens, Method::GET, &url).await?;
    let not_found = if locator.version.is_some() {
        StoreError::VersionNotFound
    } else {
        StoreError::NotFound
    };
    if status == StatusCode::NOT_FOUND {
        return Err(not_found);
    }
    let answer: serde_json::Value = parse(&body, "secret")?;
    let data = match kv {
        KvVersion::V1 => answer.get("data"),
        // A deleted or destroyed version answers with `data: null`.
        KvVersion::V2 => answer.get("data").and_then(|d| d.get("data")),
    };
    match data {
        Some(serde_json::Value::Object(map)) => Ok(SecretData::Properties(json_properties(map.clone()))),
        Some(serde_json::Value::Null) | None if kv == KvVersion::V2 => Err(not_found),
        _ => Err(StoreError::InvalidResponse(
            "the secret's data is not a JSON object".into(),
        )),
    }
}
