//! The real `telemed` binary, killed with SIGKILL while clients write: every write that was
//! answered 2xx must be there after a restart. Also: SIGTERM stops the server cleanly.
//!
//! Runs on SQLite by default, on PostgreSQL when `TELEMED_TEST_DATABASE_URL` is set.

mod binary;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use binary::{register_backend, start};
use common::{database_url, drop_database};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let url = database_url().await;
    let backend = register_backend(&url);
    let mut server = start(&url, &backend).await;
    let client = server.client.clone();

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

    let mut server = start(&url, &backend).await;
    let mut missing = Vec::new();
    for id in &acknowledged {
        let response = server
            .client
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
    let backend = register_backend(&url);
    let mut server = start(&url, &backend).await;
    let created: Value = server
        .client
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
