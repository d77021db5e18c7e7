//! The frame of the Bundles the server answers with (`history`, `searchset`, `batch-response`,
//! `transaction-response`): id, time, type, total, links; each kind brings its own entries.
//!
//! A Bundle serialises with serde, or, when its entries can write themselves
//! ([`WriteEntry`]), as compact JSON by [`Bundle::to_json`], which copies each stored
//! resource into the body as it is rather than reading it again to check it.

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

/// An entry that writes itself as compact JSON, byte for byte as serde would write it.
pub trait WriteEntry: Serialize {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()>;
}

impl<E: WriteEntry> Bundle<E> {
    /// The Bundle as compact JSON, the same bytes as `serde_json::to_vec` gives, each entry
    /// written by its [`WriteEntry::write_json`].
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(br#"{"resourceType":"#);
        serde_json::to_writer(&mut out, self.resource_type)?;
        out.extend_from_slice(br#","id":"#);
        serde_json::to_writer(&mut out, &self.id)?;
        out.extend_from_slice(br#","meta":"#);
        serde_json::to_writer(&mut out, &self.meta)?;
        out.extend_from_slice(br#","type":"#);
        serde_json::to_writer(&mut out, self.kind)?;
        if let Some(total) = self.total {
            out.extend_from_slice(br#","total":"#);
            serde_json::to_writer(&mut out, &total)?;
        }
        if !self.link.is_empty() {
            out.extend_from_slice(br#","link":"#);
            serde_json::to_writer(&mut out, &self.link)?;
        }
        if !self.entry.is_empty() {
            out.extend_from_slice(br#","entry":["#);
            for (i, entry) in self.entry.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                entry.write_json(&mut out)?;
            }
            out.push(b']');
        }
        out.push(b'}');
        Ok(out)
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
