//! `telemed audit verify` on a trail written by the real server: intact, then broken at the
//! one record altered in the database behind the server's back.
//!
//! Runs on SQLite by default, on PostgreSQL when `TELEMED_TEST_DATABASE_URL` is set.

mod binary;
mod common;

use std::process::Command;

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
