//! Writes of many resources in one transaction (`Store::write_all`, what a transaction Bundle
//! does): each answered in order with its version, all stored with their index rows, or none;
//! and the index rows rebuilt (`telemed reindex`) or migrated (0011) where they lead; the
//! current version's body kept beside its row by every write, and by migration 0014 for the
//! resources already stored.
//!
//! Runs on SQLite by default, on PostgreSQL when `TELEMED_TEST_DATABASE_URL` is set.

mod common;
mod stores;

use serde_json::{Value, json};
use stores::TestStore;
use telemed_server::search::index;
use telemed_server::store::{
    Cell, Change, Kind, Precondition, Store, WriteMethod, WriteOp, Written,
};

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

fn observation(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"text": "a measurement"},
           "subject": {"reference": format!("Patient/{patient}")}})
}

/// The ids of the live resources whose reference `param` points at `target`.
async fn referring(store: &Store, param: &str, target: &str) -> Vec<String> {
    let rows = store
        .query(
            "SELECT r.id FROM search_reference x JOIN resources r ON r.rid = x.rid \
             WHERE x.param = $1 AND x.target_id = $2 AND NOT r.deleted ORDER BY r.id",
            &[Cell::Text(param.to_owned()), Cell::Text(target.to_owned())],
            &[Kind::Text],
        )
        .await
        .expect("the query");
    rows.into_iter()
        .filter_map(|row| match row.into_iter().next() {
            Some(Cell::Text(id)) => Some(id),
            _ => None,
        })
        .collect()
}

/// Where each `subject` reference leads: its target id, and the id of the resource its
/// `target_rid` names (`-` for none), in target id order.
async fn subject_targets(store: &Store) -> Vec<(String, String)> {
    let rows = store
        .query(
            "SELECT x.target_id, COALESCE(t.id, '-') FROM search_reference x \
             LEFT JOIN resources t ON t.rid = x.target_rid \
             WHERE x.param = $1 ORDER BY x.target_id",
            &[Cell::Text("subject".to_owned())],
            &[Kind::Text, Kind::Text],
        )
        .await
        .expect("the query");
    rows.into_iter()
        .map(|row| match row.as_slice() {
            [Cell::Text(id), Cell::Text(target)] => (id.clone(), target.clone()),
            other => panic!("not two texts: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn many_creates_are_answered_in_order_and_stored_with_their_index_rows() {
    let store = TestStore::new().await;
    let ops = vec![
        TestStore::create(patient("p1", "Chalmers")),
        TestStore::create(observation("o1", "p1")),
        TestStore::create(observation("o2", "p1")),
        TestStore::create(patient("p2", "Windsor")),
    ];
    let written = store.store.write_all(ops).await.expect("the writes");
    let ids: Vec<(String, i64, bool)> = written
        .into_iter()
        .map(|w| match w {
            Written::Version { version, created } => {
                let body: Value =
                    serde_json::from_slice(version.body.as_deref().expect("a body")).expect("JSON");
                assert_eq!(body["id"], version.id.as_str());
                assert_eq!(body["meta"]["versionId"], "1");
                (version.id, version.version_id, created)
            }
            Written::NothingToDelete => panic!("a create deleted"),
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("p1".to_owned(), 1, true),
            ("o1".to_owned(), 1, true),
            ("o2".to_owned(), 1, true),
            ("p2".to_owned(), 1, true),
        ]
    );
    assert_eq!(referring(&store.store, "subject", "p1").await, ["o1", "o2"]);
    let read = store
        .store
        .read(fhir_models::ResourceType::Patient, "p2")
        .await
        .expect("the read")
        .expect("p2 is stored");
    assert_eq!(read.version_id, 1);
    store.drop_database().await;
}

#[tokio::test]
async fn a_create_of_an_id_in_use_fails_by_its_position_and_stores_nothing() {
    let store = TestStore::new().await;
    store.put(patient("p1", "Chalmers")).await;
    let ops = vec![
        TestStore::create(observation("o1", "p1")),
        TestStore::create(patient("p1", "Again")),
        TestStore::create(observation("o2", "p1")),
    ];
    let failed = store
        .store
        .write_all(ops)
        .await
        .expect_err("p1 exists already");
    assert_eq!(failed.op, Some(1));
    assert!(referring(&store.store, "subject", "p1").await.is_empty());
    store.drop_database().await;
}

#[tokio::test]
async fn creates_and_updates_in_one_transaction_are_stored_together() {
    let store = TestStore::new().await;
    store.put(patient("p1", "Chalmers")).await;
    let mut update = TestStore::create(patient("p1", "Windsor"));
    update.precondition = Precondition::IfMatch(1);
    let delete = WriteOp {
        rt: fhir_models::ResourceType::Patient,
        id: "p0".to_owned(),
        precondition: Precondition::None,
        change: Change::Delete,
    };
    let ops = vec![
        delete,
        TestStore::create(observation("o1", "p1")),
        TestStore::create(observation("o2", "p1")),
        update,
    ];
    let written = store.store.write_all(ops).await.expect("the writes");
    assert!(matches!(written[0], Written::NothingToDelete));
    match &written[3] {
        Written::Version { version, created } => {
            assert_eq!((version.version_id, *created), (2, false));
        }
        Written::NothingToDelete => panic!("the update deleted"),
    }
    assert_eq!(referring(&store.store, "subject", "p1").await, ["o1", "o2"]);
    store.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_stand_or_fall_alone() {
    let store = std::sync::Arc::new(TestStore::new().await);
    store.put(patient("taken", "Chalmers")).await;
    // Committed together when they queue together; each odd one fails on its second write.
    let mut tasks = Vec::new();
    for n in 0..24 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let second = if n % 2 == 1 {
                patient("taken", "Again")
            } else {
                observation(&format!("o{n}-b"), "taken")
            };
            let ops = vec![
                TestStore::create(observation(&format!("o{n}-a"), "taken")),
                TestStore::create(second),
            ];
            (
                n,
                store.store.write_all(ops).await.map_err(|failed| failed.op),
            )
        }));
    }
    for task in tasks {
        let (n, result) = task.await.expect("the task");
        if n % 2 == 1 {
            assert_eq!(result.err(), Some(Some(1)), "transaction {n}");
        } else {
            assert!(result.is_ok(), "transaction {n}");
        }
    }
    let mut expected: Vec<String> = (0..24)
        .step_by(2)
        .flat_map(|n| [format!("o{n}-a"), format!("o{n}-b")])
        .collect();
    expected.sort();
    assert_eq!(referring(&store.store, "subject", "taken").await, expected);
    if let Ok(store) = std::sync::Arc::try_unwrap(store) {
        store.drop_database().await;
    }
}

/// `telemed reindex`: resources stored without index rows (as by a version that did not index a
/// parameter) get every row, and each reference row where it leads, whichever was written
/// first.
#[tokio::test]
async fn reindex_gives_every_live_resource_its_rows_and_each_reference_its_target() {
    let store = TestStore::new().await;
    let unindexed = |resource: Value| {
        let mut op = TestStore::create(resource);
        if let Change::Put { index, .. } = &mut op.change {
            **index = Default::default();
        }
        op
    };
    // The observation before the patient it refers to.
    store
        .store
        .write_all(vec![
            unindexed(observation("o1", "p1")),
            unindexed(patient("p1", "Chalmers")),
            unindexed(observation("o2", "p2")),
        ])
        .await
        .expect("the writes");
    assert!(referring(&store.store, "subject", "p1").await.is_empty());
    let count = store
        .store
        .reindex(
            2,
            |rt, value| index::extract(rt, value, stores::BASE),
            |_| {},
        )
        .await
        .expect("the reindex");
    assert_eq!(count, 3);
    assert_eq!(referring(&store.store, "subject", "p1").await, ["o1"]);
    // Where each reference leads: the patient that exists, and nothing for the one that does not.
    assert_eq!(
        subject_targets(&store.store).await,
        [("p1", "p1"), ("p2", "-")].map(|(id, target)| (id.to_owned(), target.to_owned()))
    );
    store.drop_database().await;
}

/// Runs `sql` (several statements) on the database at `url`, outside the store.
async fn execute(url: &str, sql: &str) {
    use sqlx::{Connection as _, Executor as _};
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url)
            .await
            .expect("the database");
        connection.execute(sql).await.expect("the statements");
        connection.close().await.expect("closed");
    } else {
        let mut connection = sqlx::PgConnection::connect(url)
            .await
            .expect("the database");
        connection.execute(sql).await.expect("the statements");
        connection.close().await.expect("closed");
    }
}

#[tokio::test]
async fn migration_0011_gives_the_references_already_stored_their_target() {
    let mut store = TestStore::new().await;
    store
        .store
        .write_all(vec![
            TestStore::create(patient("p1", "Chalmers")),
            TestStore::create(observation("o1", "p1")),
            TestStore::create(observation("o2", "p2")),
        ])
        .await
        .expect("the writes");
    // The database as a server before 0011 left it: no target_rid, the index it replaced, and
    // 0011 not applied.
    store.store.close().await;
    execute(
        &store.url,
        "DROP INDEX search_reference_target_rid;
         DROP INDEX search_reference_unresolved;
         DROP INDEX search_reference_rid;
         ALTER TABLE search_reference DROP COLUMN target_rid;
         CREATE INDEX search_reference_rid
             ON search_reference (rid, param, target_type, target_id);
         DELETE FROM _sqlx_migrations WHERE version = 11;",
    )
    .await;

    // Opening it migrates it: each stored reference now leads to its target, if it exists.
    store.store = Store::open(&store.url, 4).await.expect("the store opens");
    assert_eq!(
        subject_targets(&store.store).await,
        [("p1", "p1"), ("p2", "-")].map(|(id, target)| (id.to_owned(), target.to_owned()))
    );
    // And the reference still unresolved is resolved when its target is created.
    store.put(patient("p2", "Windsor")).await;
    assert_eq!(
        store
            .store
            .query(
                "SELECT COUNT(*) FROM search_reference WHERE param = $1 AND target_rid IS NULL",
                &[Cell::Text("subject".to_owned())],
                &[Kind::Int],
            )
            .await
            .expect("the query"),
        [vec![Cell::Int(0)]]
    );
    store.drop_database().await;
}

/// How many `resources` rows there are, and how many of them hold their current version's
/// request method and body (no body for a deleted resource, as its version has none).
async fn rows_holding_their_version(store: &Store) -> [Cell; 2] {
    let rows = store
        .query(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE r.method = v.method \
             AND (r.body = v.body OR (r.body IS NULL AND v.body IS NULL))) \
             FROM resources r JOIN resource_versions v ON v.seq = r.seq",
            &[],
            &[Kind::Int, Kind::Int],
        )
        .await
        .expect("the query");
    let [row] = <[Vec<Cell>; 1]>::try_from(rows).expect("one row");
    <[Cell; 2]>::try_from(row).expect("two counts")
}

/// Creates in one transaction, a create alone, an update and a delete.
async fn create_update_and_delete(store: &TestStore) {
    store
        .store
        .write_all(vec![
            TestStore::create(patient("p1", "Chalmers")),
            TestStore::create(patient("p2", "Windsor")),
        ])
        .await
        .expect("the creates");
    store.put(patient("p3", "Levin")).await;
    let updated = patient("p1", "Chalmers-Levin");
    let index = index::extract(fhir_models::ResourceType::Patient, &updated, stores::BASE);
    store
        .store
        .write(
            fhir_models::ResourceType::Patient,
            "p1",
            Precondition::IfMatch(1),
            Change::Put {
                body: updated,
                method: WriteMethod::Put,
                index: Box::new(index),
            },
        )
        .await
        .expect("the update");
    store
        .store
        .write(
            fhir_models::ResourceType::Patient,
            "p2",
            Precondition::None,
            Change::Delete,
        )
        .await
        .expect("the delete");
}

#[tokio::test]
async fn every_write_keeps_its_body_beside_the_current_row() {
    let store = TestStore::new().await;
    create_update_and_delete(&store).await;
    assert_eq!(
        rows_holding_their_version(&store.store).await,
        [Cell::Int(3), Cell::Int(3)]
    );
    let read = store
        .store
        .read(fhir_models::ResourceType::Patient, "p1")
        .await
        .expect("the read")
        .expect("p1");
    assert_eq!(read.version_id, 2);
    let body: Value = serde_json::from_slice(read.body.as_deref().expect("a body")).expect("JSON");
    assert_eq!(body["name"][0]["family"], "Chalmers-Levin");
    store.drop_database().await;
}

#[tokio::test]
async fn migration_0014_gives_the_resources_already_stored_their_current_body() {
    let mut store = TestStore::new().await;
    create_update_and_delete(&store).await;
    // The database as a server before 0014 left it: the bodies only in `resource_versions`,
    // and 0014 not applied.
    store.store.close().await;
    execute(
        &store.url,
        "ALTER TABLE resources DROP COLUMN method;
         ALTER TABLE resources DROP COLUMN body;
         DELETE FROM _sqlx_migrations WHERE version = 14;",
    )
    .await;

    // Opening it migrates it: each row holds its current version's method and body.
    store.store = Store::open(&store.url, 4).await.expect("the store opens");
    assert_eq!(
        rows_holding_their_version(&store.store).await,
        [Cell::Int(3), Cell::Int(3)]
    );
    store.drop_database().await;
}
