//! Graceful shutdown: a request in flight when the server is told to stop still completes.

use std::time::Duration;

use serde_json::Value;
use telemed_server::config::AuthMode;
use telemed_server::{Application, Config};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_shutdown_completes() {
    let path =
        std::env::temp_dir().join(format!("telemed-test-{}.db", uuid::Uuid::new_v4().simple()));
    let mut config = Config::for_tests(format!("sqlite://{}", path.display()));
    // What is shown here is how the server stops, not who may ask: the raw request below
    // carries no token.
    config.auth = AuthMode::Disabled;
    let app = Application::build(config).await.expect("the server starts");
    let port = app.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    // Send the headers and half the body, so the request is in flight.
    let body = br#"{"resourceType":"Patient","active":true}"#;
    let (first, second) = body.split_at(body.len() / 2);
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(first).await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !server.is_finished(),
        "the server stopped before its request finished"
    );
    // New connections are refused once shutdown has begun.
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());

    stream.write_all(second).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let json = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let created: Value = serde_json::from_str(json).expect("a JSON body");
    assert_eq!(created["active"], true);

    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops once its requests are done")
        .expect("server task")
        .expect("server result");
    telemed_server::store::remove_sqlite_database(&path);
}
