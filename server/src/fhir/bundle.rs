//! The frame of the Bundles the server answers with (`history`, `searchset`, `batch-response`,
//! `transaction-response`): id, time, type, total, links; each kind brings its own entries.

use serde::Serialize;

use crate::store::Micros;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle<E> {
    resource_type: &'static str,
    id: String,
    meta: BundleMeta,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    link: Vec<BundleLink>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<E>,
}

impl<E> Bundle<E> {
    /// A new Bundle of type `kind` (`history`, `searchset`), stamped now.
    pub fn new(
        kind: &'static str,
        total: Option<i64>,
        link: Vec<BundleLink>,
        entry: Vec<E>,
    ) -> Self {
        Self {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: BundleMeta {
                last_updated: Micros::now().to_instant(),
            },
            kind,
            total,
            link,
            entry,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleMeta {
    last_updated: String,
}

/// `Bundle.link`: `self`, `next`, `previous`.
#[derive(Serialize)]
pub struct BundleLink {
    pub relation: &'static str,
    pub url: String,
}
