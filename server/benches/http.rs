//! HTTP benchmark: create, read, update and a mix of the three, over real HTTP with concurrent
//! clients, on SQLite and on PostgreSQL, next to a trivial axum JSON endpoint as the baseline.
//!
//! ```sh
//! cargo bench -p telemed-server --bench http                       # both backends, 10 s each
//! cargo bench -p telemed-server --bench http -- --seconds 5 --clients 32 --backend sqlite
//! cargo bench -p telemed-server --bench http -- --only read   # one workload
//! ```
//!
//! PostgreSQL is taken from `TELEMED_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); a fresh database is created for the run.
//! `TELEMED_BENCH_DB_CONNECTIONS` overrides the server's connection pool size (default 16).
//!
//! Each backend runs twice: without authorization, then as in production, every request with a
//! SMART access token checked and audited durably (`+auth` rows, with their ratio to the same
//! workload without). `--auth off|on` runs one of the two.
//!
//! The server runs on its own runtime with two worker threads and the clients on another, so
//! both share this machine's cores as a separate load generator would. Figures are comparable
//! within one run: read them as ratios to the baseline measured in the same run.
#![expect(clippy::print_stdout, reason = "a benchmark prints its report")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{Backend, Call, Generator, Options};
use smart_auth::assertion::{ClientAlgorithm, ClientKey, sign_client_assertion};
use smart_auth::scope::ScopeSet;
use smart_auth::store::{AuthStore, Client as AuthClient, ClientKind};
use telemed_server::config::AuthMode;

/// What one client does in a loop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Create,
    /// A create the schema refuses (`birthDate` is not a date): how fast bad input is turned away.
    CreateInvalid,
    Read,
    Update,
    /// `PUT /fhir/Patient?identifier=…` of one of 1,000 identifiers of its own, as an EHR keeps
    /// its patients in step: the first write of an identifier creates, the later ones update.
    ConditionalUpdate,
    /// 3 in 16 create, 10 in 16 read, 3 in 16 update.
    Mix,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::CreateInvalid => "create invalid (400)",
            Self::Read => "read by id",
            Self::Update => "update",
            Self::ConditionalUpdate => "conditional update",
            Self::Mix => "mix 19c/62r/19u",
        }
    }
}

fn patient(i: usize) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:oid:1.2.36.146.595.217.0.1", "value": format!("MRN{i:08}") }],
        "active": true,
        "name": [{ "use": "official", "family": "Chalmers", "given": ["Peter", "James"] }],
        "telecom": [{ "system": "phone", "value": "(03) 5555 6473", "use": "work" }],
        "gender": "male",
        "birthDate": "1974-12-25",
        "address": [{ "line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999" }]
    })
}

/// The requests of `workload` against the server at `base`: reads and updates of the Patients
/// `ids`, creates of new ones numbered across the run's clients; each with `token`, if given.
fn generator(
    workload: Workload,
    base: &str,
    ids: Arc<Vec<String>>,
    token: Option<String>,
) -> Generator {
    let base = base.to_owned();
    let counter = AtomicUsize::new(0);
    Arc::new(move |client, rng| {
        let authorized = |request: reqwest::RequestBuilder| match &token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let kind = match workload {
            Workload::Mix => match rng.below(16) {
                0..=2 => Workload::Create,
                3..=12 => Workload::Read,
                _ => Workload::Update,
            },
            other => other,
        };
        let id = &ids[rng.below(ids.len())];
        let i = counter.fetch_add(1, Ordering::Relaxed);
        match kind {
            Workload::Read => {
                Call::new(authorized(client.get(format!("{base}/fhir/Patient/{id}"))))
            }
            Workload::Create => Call::new(authorized(
                client
                    .post(format!("{base}/fhir/Patient"))
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(patient(i).to_string()),
            )),
            Workload::CreateInvalid => {
                let mut body = patient(i);
                body["birthDate"] = json!("25/12/1974");
                Call::expecting(
                    authorized(
                        client
                            .post(format!("{base}/fhir/Patient"))
                            .header("content-type", "application/fhir+json")
                            .body(body.to_string()),
                    ),
                    StatusCode::BAD_REQUEST,
                )
            }
            Workload::ConditionalUpdate => {
                let k = rng.below(1000);
                let mut body = patient(k);
                let identifier = format!("SYNC{k:05}");
                body["identifier"][0]["value"] = json!(identifier);
                Call::new(authorized(
                    client
                        .put(format!(
                            "{base}/fhir/Patient?identifier=urn:oid:1.2.36.146.595.217.0.1|{identifier}"
                        ))
                        .header("content-type", "application/fhir+json")
                        .header("prefer", "return=minimal")
                        .body(body.to_string()),
                ))
            }
            Workload::Update | Workload::Mix => {
                let mut body = patient(i);
                body["id"] = json!(id);
                Call::new(authorized(
                    client
                        .put(format!("{base}/fhir/Patient/{id}"))
                        .header("content-type", "application/fhir+json")
                        .header("prefer", "return=minimal")
                        .body(body.to_string()),
                ))
            }
        }
    })
}

async fn seed(base: &str, n: usize, token: Option<&str>) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mut request = client.post(format!("{base}/fhir/Patient"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .header("content-type", "application/fhir+json")
            .body(patient(i).to_string())
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 201,
            "seeding failed: {}",
            response.status()
        );
        let body: Value = response.json().await?;
        ids.push(
            body["id"]
                .as_str()
                .context("created Patient has an id")?
                .to_owned(),
        );
    }
    Ok(ids)
}

/// A `system/*.cruds` access token of a backend service registered for the bench in the
/// database of the server at `base` (client_credentials with a signed assertion, as a real
/// backend service gets one).
async fn backend_token(database_url: &str, base: &str) -> anyhow::Result<String> {
    let key = ClientKey::generate(ClientAlgorithm::Es384)?;
    let client_id = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let store = AuthStore::open(database_url).await?;
    store
        .insert_client(&AuthClient {
            client_id: client_id.clone(),
            name: "benchmark".to_owned(),
            kind: ClientKind::ConfidentialAsymmetric,
            secret_hash: None,
            jwks: Some(key.jwks()),
            jwks_url: None,
            redirect_uris: Vec::new(),
            scope: ScopeSet::parse("system/*.cruds"),
            launch_url: None,
            origins: Vec::new(),
            created_at: 0,
        })
        .await?;
    store.close().await;
    let token_url = format!("{base}/auth/token");
    let exp = smart_auth::server::now() + 60;
    let jti = uuid::Uuid::new_v4().to_string();
    let assertion = sign_client_assertion(&key, &client_id, &token_url, &jti, exp)?;
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
        .await?
        .json()
        .await?;
    Ok(response["access_token"]
        .as_str()
        .context("the token endpoint gave no access_token")?
        .to_owned())
}

fn main() -> anyhow::Result<()> {
    // Run only the workloads whose name starts with this (`--only read`).
    let mut only = None;
    // Run without authorization, with it, or both (`--auth off|on`).
    let mut modes = vec![false, true];
    let options = Options {
        seconds: 10,
        clients: 32,
        backends: vec![Backend::Sqlite, Backend::Postgres],
    }
    .parse(|flag, value| match (flag, value) {
        ("--only", Some(v)) => {
            only = Some(v.to_owned());
            true
        }
        ("--auth", Some(v)) => {
            modes = match v {
                "on" => vec![true],
                "off" => vec![false],
                _ => modes.clone(),
            };
            true
        }
        _ => false,
    });
    let duration = options.duration();
    common::client_runtime()?.block_on(async {
        println!(
            "{} clients, {} s per workload, HTTP/1.1 keep-alive over loopback",
            options.clients, options.seconds
        );
        common::print_header("");
        let baseline_server = common::start_baseline()?;
        let baseline =
            common::run(&[common::ping(&baseline_server)], options.clients, duration).await?;
        common::print_row(common::BASELINE, &baseline, None, "");

        for backend in &options.backends {
            // Each workload's figure without authorization, for the ratio of the run with it.
            let mut open: std::collections::HashMap<&str, common::Report> =
                std::collections::HashMap::new();
            for &auth in &modes {
                let url = match backend {
                    Backend::Sqlite => format!(
                        "sqlite://{}/telemed-bench-{}.db",
                        std::env::temp_dir().display(),
                        uuid::Uuid::new_v4().simple()
                    ),
                    Backend::Postgres => {
                        let name = format!("telemed_bench_{}", uuid::Uuid::new_v4().simple());
                        match common::postgres_database(&name, false).await {
                            Ok(url) => url,
                            Err(error) => {
                                println!("postgres: skipped ({error:#})");
                                break;
                            }
                        }
                    }
                };
                let mut config = common::server_config(&url);
                if auth {
                    config.auth = AuthMode::Smart;
                }
                let server = common::start_server(config)?;
                let token = match auth {
                    true => Some(backend_token(&url, &server.url).await?),
                    false => None,
                };
                let ids = Arc::new(seed(&server.url, 1000, token.as_deref()).await?);
                for workload in [
                    Workload::Create,
                    Workload::CreateInvalid,
                    Workload::Read,
                    Workload::Update,
                    Workload::ConditionalUpdate,
                    Workload::Mix,
                ] {
                    if let Some(only) = &only
                        && !workload.name().starts_with(only.as_str())
                    {
                        continue;
                    }
                    // A backend token lives 5 minutes: a fresh one for each workload.
                    let token = match auth {
                        true => Some(backend_token(&url, &server.url).await?),
                        false => None,
                    };
                    let generator = generator(workload, &server.url, ids.clone(), token);
                    let report = common::run(&[generator], options.clients, duration).await?;
                    let (label, note) = if auth {
                        let note = open.get(workload.name()).map_or(
                            String::new(),
                            |without: &common::Report| {
                                let ratio: f64 = report.per_second / without.per_second.max(1e-9);
                                format!("{ratio:.2} of no auth")
                            },
                        );
                        (
                            format!("{}+auth: {}", backend.name(), workload.name()),
                            note,
                        )
                    } else {
                        (
                            format!("{}: {}", backend.name(), workload.name()),
                            String::new(),
                        )
                    };
                    common::print_row(&label, &report, Some(&baseline), &note);
                    if !auth {
                        open.insert(workload.name(), report);
                    }
                }
                server.stop().await;
                common::remove_database(&url).await;
            }
        }
        anyhow::Ok(())
    })
}
