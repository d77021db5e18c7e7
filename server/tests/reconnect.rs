//! A database that drops the server's connections — PostgreSQL restarted, a proxy in between
//! hung up — costs no failed request once they have sat idle: a read finds its idle connection
//! lost and opens another, and so does a write.
//!
//! Runs on PostgreSQL when `TELEMED_TEST_DATABASE_URL` is set; on SQLite, which has no
//! connection to lose, it does nothing.

mod common;
mod stores;

use std::time::Duration;

use fhir_models::ResourceType;
use serde_json::json;
use sqlx::Connection as _;
use stores::TestStore;
use telemed_server::store::{Cell, Kind};

/// Closes every connection to the database `name` but the caller's, as a restart of the
/// database server would.
async fn drop_connections(admin: &str, name: &str) -> u64 {
    let mut connection = sqlx::PgConnection::connect(admin)
        .await
        .expect("PostgreSQL reachable");
    let rows = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(&mut connection)
    .await
    .expect("the connections are terminated");
    rows.len() as u64
}

async fn count_patients(test: &TestStore) -> Result<i64, String> {
    let rows = test
        .store
        .query(
            "SELECT COUNT(*) FROM resources WHERE resource_type = $1",
            &[Cell::Text("Patient".to_owned())],
            &[Kind::Int],
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
    match rows.first().and_then(|row| row.first()) {
        Some(Cell::Int(n)) => Ok(*n),
        other => Err(format!("not a count: {other:?}")),
    }
}

#[tokio::test]
async fn reads_and_writes_after_the_database_dropped_every_connection_succeed() {
    let Ok(admin) = std::env::var("TELEMED_TEST_DATABASE_URL") else {
        return;
    };
    let test = TestStore::new().await;
    let name = test
        .url
        .rsplit_once('/')
        .map(|(_, name)| name.to_owned())
        .expect("the URL names its database");
    test.put(json!({"resourceType": "Patient", "id": "p1"}))
        .await;
    // Several reads at once, so that several read connections are open and left idle.
    let counts = futures::future::join_all((0..4).map(|_| count_patients(&test))).await;
    assert!(counts.iter().all(|n| n == &Ok(1)), "{counts:?}");
    assert!(
        drop_connections(&admin, &name).await >= 2,
        "the store had connections to lose"
    );
    // Past the time an idle connection is trusted without a check.
    tokio::time::sleep(Duration::from_millis(800)).await;

    for _ in 0..4 {
        assert_eq!(count_patients(&test).await, Ok(1));
    }
    let read = test.store.read(ResourceType::Patient, "p1").await;
    assert!(
        matches!(read, Ok(Some(_))),
        "a read by id after the connections were lost: {read:?}"
    );
    test.put(json!({"resourceType": "Patient", "id": "p2"}))
        .await;
    assert_eq!(count_patients(&test).await, Ok(2));
    test.drop_database().await;
}
