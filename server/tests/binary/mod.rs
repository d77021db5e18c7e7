//! What the tests of the real `telemed` binary share: a backend service registered with
//! `telemed client add`, and the server started on a free port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use smart_auth::assertion::{ClientAlgorithm, ClientKey, sign_client_assertion};

/// A `telemed serve` process.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// A client whose requests carry a `system/*.cruds` token.
    pub client: reqwest::Client,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Registers a backend service with `telemed client add`, as an operator would, and returns
/// its client_id and key.
pub fn register_backend(database_url: &str) -> (String, ClientKey) {
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a key");
    let jwks = std::env::temp_dir().join(format!(
        "telemed-durability-jwks-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&jwks, key.jwks().to_string()).expect("JWKS written");
    let output = Command::new(env!("CARGO_BIN_EXE_telemed"))
        .args(["client", "add", "--name", "durability", "--type"])
        .args(["confidential-asymmetric", "--scope", "system/*.cruds"])
        .arg("--jwks-file")
        .arg(&jwks)
        .env("DATABASE_URL", database_url)
        .env("TELEMED_LOG", "warn")
        .output()
        .expect("telemed client add runs");
    let _ = std::fs::remove_file(&jwks);
    assert!(
        output.status.success(),
        "telemed client add failed: {output:?}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let client_id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("client_id: "))
        .expect("the client_id is printed")
        .to_owned();
    (client_id, key)
}

/// A client carrying a token of the backend service, by client_credentials.
async fn authorized_client(base: &str, client_id: &str, key: &ClientKey) -> reqwest::Client {
    let token_url = format!("{}/auth/token", base.trim_end_matches("/fhir"));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs() as i64
        + 60;
    let jti = uuid::Uuid::new_v4().to_string();
    let assertion = sign_client_assertion(key, client_id, &token_url, &jti, exp).expect("signed");
    let response: Value = reqwest::Client::new()
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.cruds"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("a token response");
    let token = response["access_token"].as_str().expect("an access token");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("a header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a client")
}

pub async fn start(database_url: &str, backend: &(String, ClientKey)) -> Server {
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
            let client = authorized_client(&base, &backend.0, &backend.1).await;
            return Server {
                child,
                base,
                client,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("telemed did not start within 30 s");
}
