//! `telemed audit verify` on a trail written by the real server: intact, then broken at the
//! one record altered in the database behind the server's back; and the record of every
//! answered request kept through a SIGKILL.
//!
//! Runs on SQLite by default, on PostgreSQL when `TELEMED_TEST_DATABASE_URL` is set.

mod binary;
mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use binary::{register_backend, start};
use common::{database_url, drop_database};
use sqlx::Connection as _;

/// Runs `telemed audit verify` on the database; its exit status and what it printed.
fn verify(database_url: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_telemed"))
        .args(["audit", "verify"])
        .env("DATABASE_URL", database_url)
        .env("TELEMED_LOG", "warn")
        .output()
        .expect("telemed audit verify runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Runs one statement on the database directly.
async fn execute(database_url: &str, sql: &str) {
    if database_url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(database_url)
            .await
            .expect("SQLite");
        sqlx::query(sql).execute(&mut connection).await.expect(sql);
    } else {
        let mut connection = sqlx::PgConnection::connect(database_url)
            .await
            .expect("PostgreSQL");
        sqlx::query(sql).execute(&mut connection).await.expect(sql);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_record_that_was_altered() {
    let url = database_url().await;
    let backend = register_backend(&url);
    let mut server = start(&url, &backend).await;
    for i in 0..6 {
        let response = server
            .client
            .get(format!("{}/Patient?name=nobody{i}", server.base))
            .send()
            .await
            .expect("search");
        assert_eq!(response.status(), 200);
    }
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();

    let (intact, said) = verify(&url);
    assert!(intact, "the untouched trail fails verification: {said}");
    assert!(said.contains("intact"), "{said}");

    // Someone with database access turns a refusal into a success after the fact.
    execute(
        &url,
        "UPDATE audit_events SET outcome = '4' WHERE chain_pos = 4",
    )
    .await;
    let (intact, said) = verify(&url);
    drop_database(&url).await;
    assert!(!intact, "an altered trail passes verification: {said}");
    assert!(said.contains("broken at record 4"), "{said}");
}

/// The query strings of the searches the trail recorded.
async fn recorded_queries(database_url: &str) -> Vec<String> {
    let sql = "SELECT query FROM audit_events WHERE subtype = 'search-type' AND query IS NOT NULL";
    if database_url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(database_url)
            .await
            .expect("SQLite");
        sqlx::query_scalar(sql)
            .fetch_all(&mut connection)
            .await
            .expect(sql)
    } else {
        let mut connection = sqlx::PgConnection::connect(database_url)
            .await
            .expect("PostgreSQL");
        sqlx::query_scalar(sql)
            .fetch_all(&mut connection)
            .await
            .expect(sql)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_read_of_two_servers_keeps_its_record_through_sigkill() {
    let url = database_url().await;
    let backend = register_backend(&url);
    // Two servers on one database, appending one chain.
    let mut servers = vec![start(&url, &backend).await, start(&url, &backend).await];

    // Readers run until the servers die under them; each search is told apart by its query.
    let mut readers = Vec::new();
    for r in 0..4 {
        let server = &servers[r % 2];
        let client = server.client.clone();
        let base = server.base.clone();
        readers.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for i in 0.. {
                let query = format!("name=reader{r}x{i}");
                match client.get(format!("{base}/Patient?{query}")).send().await {
                    Ok(response) if response.status().is_success() => answered.push(query),
                    Ok(response) => panic!("search refused: {}", response.status()),
                    Err(_) => break,
                }
            }
            answered
        }));
    }
    // Long enough for hundreds of groups of records before the kill.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for server in &mut servers {
        server.child.kill().expect("SIGKILL");
        let _ = server.child.wait();
    }
    let mut answered = Vec::new();
    for reader in readers {
        answered.extend(reader.await.expect("reader task"));
    }
    assert!(
        answered.len() > 10,
        "too few searches before the kill to prove anything: {}",
        answered.len()
    );

    // No response left before its record was durable, and the chain holds.
    let (intact, said) = verify(&url);
    assert!(intact, "the trail fails verification after SIGKILL: {said}");
    let recorded = recorded_queries(&url).await;
    drop_database(&url).await;
    let distinct: HashSet<&String> = recorded.iter().collect();
    let missing: Vec<&String> = answered.iter().filter(|q| !distinct.contains(q)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered searches have no audit record: {missing:?}",
        missing.len(),
        answered.len()
    );
    assert_eq!(
        distinct.len(),
        recorded.len(),
        "a request was recorded twice"
    );
}
