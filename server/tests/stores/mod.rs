//! What the store tests share: a store on a database of its own.

use fhir_models::ResourceType;
use serde_json::Value;
use telemed_server::search::index;
use telemed_server::store::{Change, Precondition, Store, WriteMethod, WriteOp};

/// The FHIR base the index rows are extracted with.
pub const BASE: &str = "http://localhost/fhir";

/// A store on a database of its own (SQLite, or PostgreSQL when `TELEMED_TEST_DATABASE_URL` is
/// set), removed by [`TestStore::drop_database`].
pub struct TestStore {
    pub store: Store,
    pub url: String,
}

impl TestStore {
    pub async fn new() -> Self {
        let url = super::common::database_url().await;
        let store = Store::open(&url, 4).await.expect("the store opens");
        Self { store, url }
    }

    /// A create of `resource` (with its `id`) and its index rows.
    pub fn create(resource: Value) -> WriteOp {
        let rt: ResourceType = resource["resourceType"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("a resource type");
        let id = resource["id"].as_str().expect("an id").to_owned();
        let rows = index::extract(rt, &resource, BASE);
        WriteOp {
            rt,
            id,
            precondition: Precondition::Absent,
            change: Change::Put {
                body: resource,
                method: WriteMethod::Post,
                index: Box::new(rows),
            },
        }
    }

    pub async fn put(&self, resource: Value) {
        let op = Self::create(resource);
        self.store
            .write(op.rt, &op.id, op.precondition, op.change)
            .await
            .expect("the write");
    }

    pub async fn drop_database(self) {
        self.store.close().await;
        super::common::drop_database(&self.url).await;
    }
}
