//! The real `telemed` binary, killed with SIGKILL while clients write: every write that was
//! answered 2xx must be there after a restart. Also: SIGTERM stops the server cleanly.
//!
//! Runs on SQLite by default, on PostgreSQL when `TELEMED_TEST_DATABASE_URL` is set.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection as _;

struct Server {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start(database_url: &str) -> Server {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_telemed"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", database_url)
        .env("TELEMED_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("telemed starts");
    let base = format!("http://127.0.0.1:{port}/fhir");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/metadata")).send().await
            && response.status().is_success()
        {
            return Server { child, base };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("telemed did not start within 30 s");
}

/// Drops a PostgreSQL test database; SQLite files are left to the temp directory.
async fn drop_database(url: &str) {
    if let (Ok(admin), Some((_, name))) = (
        std::env::var("TELEMED_TEST_DATABASE_URL"),
        url.rsplit_once('/'),
    ) && let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut connection)
            .await;
    }
}

async fn database_url() -> String {
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
            "sqlite://{}/telemed-durability-{}.db",
            std::env::temp_dir().display(),
            uuid::Uuid::new_v4().simple()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let url = database_url().await;
    let mut server = start(&url).await;
    let client = reqwest::Client::new();

    // Writers run until the server dies under them; remember what was acknowledged.
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let base = server.base.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                let body =
                    json!({"resourceType": "Patient", "id": format!("w{w}-{i}"), "active": true});
                let sent = client
                    .put(format!("{base}/Patient/w{w}-{i}"))
                    .header("content-type", "application/fhir+json")
                    .body(body.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        acknowledged.push(format!("w{w}-{i}"));
                    }
                    Ok(response) => panic!("write refused: {}", response.status()),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer task"));
    }
    assert!(
        acknowledged.len() > 10,
        "too few writes before the kill to prove anything: {}",
        acknowledged.len()
    );

    let mut server = start(&url).await;
    let mut missing = Vec::new();
    for id in &acknowledged {
        let response = client
            .get(format!("{}/Patient/{id}", server.base))
            .send()
            .await
            .expect("read");
        if response.status() != 200 {
            missing.push(id.clone());
        }
    }
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    drop_database(&url).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes were lost: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let url = database_url().await;
    let mut server = start(&url).await;
    let created: Value = reqwest::Client::new()
        .post(format!("{}/Patient", server.base))
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("JSON");
    assert!(created["id"].is_string());

    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "telemed did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop_database(&url).await;
    assert!(exit.success(), "telemed exited with {exit} after SIGTERM");
}
