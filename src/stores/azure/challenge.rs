//! The `WWW-Authenticate` challenge of a Key Vault 401 ("Azure Key Vault
//! authentication": `Bearer authorization="https://login.microsoftonline.com/<tenant>",
//! resource="https://vault.azure.net"`, or `scope="<resource>/.default"`).
//! A vault in another tenant or cloud names there the tenant that issues its
//! tokens and the resource they are for. The header is the store's input,
//! so it is checked: it chooses neither the sign-in host (that stays the
//! configured authority) nor a resource outside the vault's own domain,
//! and a tenant is a directory id, not a path.

use super::is_directory_id;
use crate::stores::StoreError;

/// What a vault asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Challenge {
    /// The tenant of the `authorization` URL, if the challenge names one.
    pub(super) tenant: Option<String>,
    /// The token audience, e.g. `https://vault.azure.cn`.
    pub(super) resource: String,
}

impl Challenge {
    /// The challenge of `header`, checked against the vault's host. `None`
    /// when it is no Bearer challenge naming a resource (the 401 then stands
    /// as it is); an error when it names what Sesame must not ask for.
    pub(super) fn read(header: &str, vault_host: &str) -> Result<Option<Self>, StoreError> {
        let Some(params) = bearer_params(header) else {
            return Ok(None);
        };
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let resource = match (get("resource"), get("scope")) {
            (Some(r), _) => r,
            (None, Some(scope)) => scope.strip_suffix("/.default").unwrap_or(scope),
            (None, None) => return Ok(None),
        };
        let refused =
            |what: &str| StoreError::Unauthorized(format!("the vault's authentication challenge {what}"));
        let resource = reqwest::Url::parse(resource).map_err(|_| refused("names no resource URL"))?;
        let host = resource.host_str().unwrap_or_default().to_ascii_lowercase();
        let vault_host = vault_host.to_ascii_lowercase();
        // The vault's own host or a parent domain of it, but not a bare
        // top-level domain, which would match every vault under it.
        let within = !host.is_empty()
            && (vault_host == host || (host.contains('.') && vault_host.ends_with(&format!(".{host}"))));
        if resource.scheme() != "https" || !within || !resource.path().trim_matches('/').is_empty() {
            return Err(refused("names a resource outside the vault's domain"));
        }
        let tenant = match get("authorization").or_else(|| get("authorization_uri")) {
            None => None,
            Some(uri) => {
                let uri = reqwest::Url::parse(uri).map_err(|_| refused("names no authority URL"))?;
                let tenant = uri
                    .path_segments()
                    .and_then(|mut s| s.next())
                    .filter(|t| is_directory_id(t))
                    .ok_or_else(|| refused("names no valid tenant"))?;
                Some(tenant.to_ascii_lowercase())
            }
        };
        Ok(Some(Self {
            tenant,
            resource: format!("https://{host}"),
        }))
    }
}

/// The `key="value"` (or `key=token`) parameters of a `Bearer` challenge.
fn bearer_params(header: &str) -> Option<Vec<(String, String)>> {
    let header = header.trim_start();
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = Vec::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_owned();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            },
        };
        params.push((key, value.trim().to_owned()));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(header: &str) -> Result<Option<Challenge>, StoreError> {
        Challenge::read(header, "my-vault.vault.azure.cn")
    }

    #[test]
    fn challenges_name_a_tenant_and_a_resource() {
        let c = read(r#"Bearer authorization="https://login.chinacloudapi.cn/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.cn""#)
            .unwrap()
            .unwrap();
        assert_eq!(c.tenant.as_deref(), Some("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert_eq!(c.resource, "https://vault.azure.cn");
        let c = read(r#"Bearer authorization_uri="https://login.microsoftonline.com/contoso.onmicrosoft.com", scope="https://vault.azure.cn/.default""#)
            .unwrap()
            .unwrap();
        assert_eq!(c.tenant.as_deref(), Some("contoso.onmicrosoft.com"));
        assert_eq!(c.resource, "https://vault.azure.cn");
        // Not a Bearer challenge, or one without a resource: the 401 stands.
        assert_eq!(read(r#"PoP nonce="abc""#).unwrap(), None);
        assert_eq!(read(r#"Bearer realm="x""#).unwrap(), None);
        assert_eq!(read("Bearer").unwrap(), None);
    }

    #[test]
    fn a_challenge_cannot_redirect_tokens_or_paths() {
        for header in [
            // Another domain, a lookalike suffix, a bare TLD, a path, plain HTTP.
            r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://evil.example""#,
            r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://zure.cn""#,
            r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://cn""#,
            r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.cn/other""#,
            r#"Bearer authorization="https://login.microsoftonline.com/t", resource="http://vault.azure.cn""#,
            // A tenant that is not a directory id.
            r#"Bearer authorization="https://login.microsoftonline.com/a%2F..", resource="https://vault.azure.cn""#,
            r#"Bearer authorization="https://login.microsoftonline.com/", resource="https://vault.azure.cn""#,
            r#"Bearer authorization="not a url", resource="https://vault.azure.cn""#,
        ] {
            assert_eq!(read(header).unwrap_err().class(), "unauthorised", "{header}");
        }
    }
}
