//! AdmissionReview (admission.k8s.io/v1) wire types: only the request fields
//! Sesame reads, and the response it writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub(crate) const API_VERSION: &str = "admission.k8s.io/v1";
pub(crate) const KIND: &str = "AdmissionReview";

/// A review as received. `O` is how the request's object is read: the
/// Pod's own fields ([`crate::inject::PodView`]) in one pass over the body,
/// or its raw text (`&RawValue`) when that pass failed and the object is to
/// be told apart from the rest of the review.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReviewIn<O> {
    pub api_version: String,
    pub kind: String,
    pub request: Option<RequestIn<O>>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
pub(crate) struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RequestIn<O> {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub(crate) sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub dry_run: Option<bool>,
    #[serde(default = "none")]
    pub object: Option<O>,
    /// The object before an UPDATE, as sent (kept raw: only the workload
    /// path reads it, to tell a changed Pod template from an unchanged one).
    #[serde(default)]
    pub(crate) old_object: Option<Box<RawValue>>,
}

impl<O> RequestIn<O> {
    /// The request without its object, once that was taken out.
    pub(crate) fn without_object(self) -> RequestIn<()> {
        RequestIn {
            uid: self.uid,
            kind: self.kind,
            sub_resource: self.sub_resource,
            name: self.name,
            namespace: self.namespace,
            operation: self.operation,
            dry_run: self.dry_run,
            object: None,
            old_object: self.old_object,
        }
    }
}

/// No object (`Option<O>: Default` would ask `O: Default` of the derive).
fn none<O>() -> Option<O> {
    None
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReviewOut {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: ResponseOut,
}

#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResponseOut {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusOut>,
    /// Base64 of the JSON Patch, already quoted: base64 needs no JSON
    /// escaping, so it is written as is instead of scanned byte by byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) audit_annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A `metav1.Status` as admission responses carry it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusOut {
    pub status: &'static str,
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl StatusOut {
    pub fn failure(code: u16, message: String) -> Self {
        let reason = match code {
            400 => "BadRequest",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            413 => "RequestEntityTooLarge",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self {
            status: "Failure",
            code,
            reason,
            message,
        }
    }
}
