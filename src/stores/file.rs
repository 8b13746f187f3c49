//! The `file` store, for development and CI: secrets from one YAML/JSON file,
//! or from a directory of `.env` files (the file's path without `.env` is the
//! secret's path, its `KEY=value` lines are the properties).
//!
//! YAML/JSON layout: a map from secret path to either a string (one value) or
//! a map of properties. A secret with versions is a map with the single key
//! `versions`, from version id to value; the highest id is the current one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{RequestLimit, SecretData, SecretLocator, SecretValue, Store, StoreError};
use crate::validate::FieldError;

/// `stores[].file`: where the secrets are.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileStoreConfig {
    /// A YAML/JSON file or a directory of `.env` files, relative to the config file.
    pub path: PathBuf,
}

impl FileStoreConfig {
    /// Checks what serde cannot; fields are below `file`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.path.as_os_str().is_empty() {
            return Err(FieldError::new("path", "must not be empty"));
        }
        Ok(())
    }
}

/// Reads secrets from local files on every fetch (the cache sits in front),
/// so edits show up once the cache entry expires.
pub(crate) struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(config: &FileStoreConfig, base_dir: &Path) -> Self {
        Self {
            path: base_dir.join(&config.path),
        }
    }

    async fn load(&self) -> Result<Source, StoreError> {
        let meta = tokio::fs::metadata(&self.path).await.map_err(|e| {
            StoreError::Unreachable(format!("cannot read {}: {}", self.path.display(), e.kind()))
        })?;
        if meta.is_dir() {
            Ok(Source::Dir(self.path.clone()))
        } else {
            let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
                StoreError::Unreachable(format!("cannot read {}: {}", self.path.display(), e.kind()))
            })?;
            // serde_norway reads JSON too. Its errors quote no values, only positions.
            let doc: BTreeMap<String, serde_norway::Value> = serde_norway::from_str(&text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!(" at line {}", l.line()))
                    .unwrap_or_default();
                StoreError::InvalidResponse(format!("{} is not a map of secrets{at}", self.path.display()))
            })?;
            Ok(Source::Doc(doc))
        }
    }
}

enum Source {
    Doc(BTreeMap<String, serde_norway::Value>),
    Dir(PathBuf),
}

#[async_trait]
impl Store for FileStore {
    fn provider(&self) -> &'static str {
        "file"
    }

    async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
        match self.load().await? {
            Source::Doc(doc) => from_doc(&doc, locator),
            Source::Dir(dir) => from_dir(&dir, locator).await,
        }
    }

    /// The file is read once for the whole batch, as one request.
    async fn fetch(
        &self,
        locators: &[SecretLocator],
        limit: &RequestLimit,
    ) -> Vec<Result<SecretData, StoreError>> {
        limit
            .run(async {
                let source = match self.load().await {
                    Ok(s) => s,
                    Err(e) => return vec![Err(e); locators.len()],
                };
                let mut out = Vec::with_capacity(locators.len());
                for locator in locators {
                    out.push(match &source {
                        Source::Doc(doc) => from_doc(doc, locator),
                        Source::Dir(dir) => from_dir(dir, locator).await,
                    });
                }
                out
            })
            .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.load().await.map(|_| ())
    }
}

fn from_doc(
    doc: &BTreeMap<String, serde_norway::Value>,
    locator: &SecretLocator,
) -> Result<SecretData, StoreError> {
    let entry = doc.get(&locator.path).ok_or(StoreError::NotFound)?;
    let versions = match entry {
        serde_norway::Value::Mapping(m) if m.len() == 1 && m.contains_key("versions") => m.get("versions"),
        _ => None,
    };
    match (versions, &locator.version) {
        (None, None) => yaml_secret(entry),
        (None, Some(_)) => Err(StoreError::VersionNotFound),
        (Some(serde_norway::Value::Mapping(versions)), wanted) => {
            let mut ids: Vec<(String, &serde_norway::Value)> = versions
                .iter()
                .filter_map(|(k, v)| scalar_text(k).map(|k| (k, v)))
                .collect();
            ids.sort_by(|a, b| version_order(&a.0, &b.0));
            let chosen = match wanted {
                Some(w) => ids.iter().find(|(id, _)| id == w),
                None => ids.last(),
            };
            chosen
                .map(|(_, v)| yaml_secret(v))
                .unwrap_or(Err(StoreError::VersionNotFound))
        }
        (Some(_), _) => Err(StoreError::InvalidResponse(format!(
            "versions of \"{}\" must be a map",
            locator.path
        ))),
    }
}

/// Numeric ids sort as numbers, others as text.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

fn scalar_text(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn yaml_secret(v: &serde_norway::Value) -> Result<SecretData, StoreError> {
    match v {
        serde_norway::Value::Mapping(m) => {
            let mut props = BTreeMap::new();
            for (k, v) in m {
                let (Some(k), Some(v)) = (scalar_text(k), scalar_text(v)) else {
                    return Err(StoreError::InvalidResponse(
                        "properties must be scalar values".into(),
                    ));
                };
                props.insert(k, SecretValue::from(v));
            }
            Ok(SecretData::Properties(props))
        }
        other => scalar_text(other)
            .map(|s| SecretData::Value(SecretValue::from(s)))
            .ok_or_else(|| StoreError::InvalidResponse("a secret must be a string or a map".into())),
    }
}

async fn from_dir(dir: &Path, locator: &SecretLocator) -> Result<SecretData, StoreError> {
    if locator.version.is_some() {
        return Err(StoreError::VersionNotFound);
    }
    // The grammar and the policy refuse `..`, empty segments and absolute
    // paths before a path gets here; refused here too, so that no caller
    // that skipped them can leave `dir`.
    let escapes = locator.path.is_empty()
        || locator.path.starts_with('/')
        || locator.path.contains('\\')
        || locator
            .path
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..");
    if escapes {
        return Err(StoreError::InvalidRequest(
            "the path has an empty, \".\" or \"..\" segment, a backslash, or is absolute".into(),
        ));
    }
    let file = dir.join(format!("{}.env", locator.path));
    let text = match tokio::fs::read_to_string(&file).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
        Err(e) => {
            return Err(StoreError::Unreachable(format!(
                "cannot read {}: {}",
                file.display(),
                e.kind()
            )))
        }
    };
    parse_dotenv(&text).map(SecretData::Properties)
}

/// Parses `.env` text: `KEY=value`, optional `export `, `#` comments, single
/// or double quotes (double quotes understand `\n`, `\"` and `\\`).
pub(crate) fn parse_dotenv(text: &str) -> Result<BTreeMap<String, SecretValue>, StoreError> {
    let mut props = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, raw)) = line.split_once('=') else {
            return Err(StoreError::InvalidResponse(format!(
                "line {} is not KEY=value",
                n + 1
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(StoreError::InvalidResponse(format!(
                "line {} has an empty key",
                n + 1
            )));
        }
        let raw = raw.trim();
        let value = if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            unescape_double(inner)
        } else if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            inner.to_owned()
        } else {
            // An unquoted value ends at a ` #` comment.
            raw.split(" #").next().unwrap_or("").trim_end().to_owned()
        };
        props.insert(key.to_owned(), SecretValue::from(value));
    }
    Ok(props)
}

fn unescape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_at(path: &Path) -> FileStore {
        FileStore {
            path: path.to_path_buf(),
        }
    }

    #[tokio::test]
    async fn yaml_values_properties_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.yaml");
        std::fs::write(
            &file,
            "apps/a/token: abc\napps/a/db:\n  user: u\n  port: 5432\napps/a/key:\n  versions:\n    1: old\n    2: new\n    10: newest\n",
        )
        .unwrap();
        let s = store_at(&file);
        let r = s
            .fetch(
                &[
                    SecretLocator::new("apps/a/token", None),
                    SecretLocator::new("apps/a/db", None),
                    SecretLocator::new("apps/a/key", None),
                    SecretLocator::new("apps/a/key", Some("2".into())),
                    SecretLocator::new("apps/a/key", Some("3".into())),
                    SecretLocator::new("apps/a/nope", None),
                ],
                &RequestLimit::default(),
            )
            .await;
        assert_eq!(r[0].as_ref().unwrap().get(None).unwrap().expose(), b"abc");
        assert_eq!(
            r[1].as_ref().unwrap().get(Some("port")).unwrap().expose(),
            b"5432"
        );
        assert_eq!(r[2].as_ref().unwrap().get(None).unwrap().expose(), b"newest");
        assert_eq!(r[3].as_ref().unwrap().get(None).unwrap().expose(), b"new");
        assert_eq!(r[4].as_ref().unwrap_err(), &StoreError::VersionNotFound);
        assert_eq!(r[5].as_ref().unwrap_err(), &StoreError::NotFound);
    }

    #[tokio::test]
    async fn dotenv_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("team-a")).unwrap();
        std::fs::write(
            dir.path().join("team-a/db.env"),
            "# database\nexport HOST=db.internal\nPORT=5432\nPASSWORD=\"p\\\"w\"\nNOTE='a # b'\nX=y # trailing\n",
        )
        .unwrap();
        let s = store_at(dir.path());
        let r = s
            .fetch(
                &[
                    SecretLocator::new("team-a/db", None),
                    SecretLocator::new("team-a/x", None),
                ],
                &RequestLimit::default(),
            )
            .await;
        let db = r[0].as_ref().unwrap();
        assert_eq!(db.get(Some("HOST")).unwrap().expose(), b"db.internal");
        assert_eq!(db.get(Some("PASSWORD")).unwrap().expose(), b"p\"w");
        assert_eq!(db.get(Some("NOTE")).unwrap().expose(), b"a # b");
        assert_eq!(db.get(Some("X")).unwrap().expose(), b"y");
        assert_eq!(r[1].as_ref().unwrap_err(), &StoreError::NotFound);
    }

    /// Defence in depth: a path that would leave the directory is refused
    /// by the store itself, whoever asks.
    #[tokio::test]
    async fn a_directory_store_never_reads_outside_its_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets");
        std::fs::create_dir_all(dir.join("team-a")).unwrap();
        std::fs::write(root.path().join("outside.env"), "X=outside-secret\n").unwrap();
        std::fs::write(dir.join("team-a/db.env"), "X=inside\n").unwrap();
        let s = store_at(&dir);
        let paths = [
            "../outside",
            "team-a/../../outside",
            "/etc/passwd",
            "team-a//db",
            "./team-a/db",
            "",
        ];
        let locators: Vec<SecretLocator> = paths.iter().map(|p| SecretLocator::new(*p, None)).collect();
        let answers = s.fetch(&locators, &RequestLimit::default()).await;
        for (path, answer) in paths.iter().zip(&answers) {
            assert!(
                matches!(answer, Err(StoreError::InvalidRequest(_))),
                "{path}: {answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn unreadable_source_is_unreachable() {
        let s = store_at(Path::new("/nonexistent/sesame.yaml"));
        assert_eq!(s.check().await.unwrap_err().class(), "unreachable");
    }
}
