//! What the tests of this crate share: a database of their own (SQLite, or PostgreSQL when
//! `TELEMED_TEST_DATABASE_URL` is set).

use sqlx::Connection as _;

/// Drops a test database: a PostgreSQL database, or a SQLite file with its log, shared memory
/// and audit journal. Whatever used it must have closed it.
pub async fn drop_database(url: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        telemed_server::store::remove_sqlite_database(std::path::Path::new(path));
    } else if let (Ok(admin), Some((_, name))) = (
        std::env::var("TELEMED_TEST_DATABASE_URL"),
        url.rsplit_once('/'),
    ) && let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut connection)
            .await;
    }
}

/// A new, empty database: its URL.
pub async fn database_url() -> String {
    match std::env::var("TELEMED_TEST_DATABASE_URL") {
        Ok(admin) => {
            let name = format!("telemed_test_{}", uuid::Uuid::new_v4().simple());
            let mut connection = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL reachable");
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut connection)
                .await
                .expect("CREATE DATABASE");
            let (prefix, _) = admin.rsplit_once('/').expect("URL ends with /database");
            format!("{prefix}/{name}")
        }
        Err(_) => format!(
            "sqlite://{}/telemed-test-{}.db",
            std::env::temp_dir().display(),
            uuid::Uuid::new_v4().simple()
        ),
    }
}
