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
//! The server runs on its own runtime with two worker threads and the clients on another, so
//! both share this machine's cores as a separate load generator would. Figures are comparable
//! within one run: read them as ratios to the baseline measured in the same run.
#![expect(clippy::print_stdout, reason = "a benchmark prints its report")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sqlx::Connection as _;
use telemed_server::{Application, Config};

struct Options {
    seconds: u64,
    clients: usize,
    backends: Vec<&'static str>,
    /// Run only the workloads whose name starts with this (`--only read`).
    only: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        seconds: 10,
        clients: 32,
        backends: vec!["sqlite", "postgres"],
        only: None,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).map(String::as_str);
        match (args[i].as_str(), value) {
            ("--seconds", Some(v)) => {
                options.seconds = v.parse().unwrap_or(options.seconds);
                i += 1;
            }
            ("--clients", Some(v)) => {
                options.clients = v.parse().unwrap_or(options.clients);
                i += 1;
            }
            ("--only", Some(v)) => {
                options.only = Some(v.to_owned());
                i += 1;
            }
            ("--backend", Some(v)) => {
                options.backends = match v {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    _ => options.backends,
                };
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    options
}

/// What one client does in a loop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Baseline,
    Create,
    /// A create the schema refuses (`birthDate` is not a date): how fast bad input is turned away.
    CreateInvalid,
    Read,
    Update,
    /// 20% create, 60% read, 20% update.
    Mix,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline (axum JSON)",
            Self::Create => "create",
            Self::CreateInvalid => "create invalid (400)",
            Self::Read => "read by id",
            Self::Update => "update",
            Self::Mix => "mix 20c/60r/20u",
        }
    }
}

struct Report {
    errors: u64,
    per_second: f64,
    p50_us: u64,
    p99_us: u64,
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

async fn run(
    workload: Workload,
    base: &str,
    ids: Arc<Vec<String>>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let counter = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(clients);
    for worker in 0..clients {
        let client = client.clone();
        let base = base.to_owned();
        let ids = ids.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures is valid");
            let mut errors = 0u64;
            let mut n = worker;
            while Instant::now() < deadline {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let kind = match workload {
                    Workload::Mix => match n >> 59 & 0b1111 {
                        0..=2 => Workload::Create,
                        3..=12 => Workload::Read,
                        _ => Workload::Update,
                    },
                    other => other,
                };
                let id = &ids[(n >> 33) % ids.len()];
                let started = Instant::now();
                let request = match kind {
                    Workload::Baseline => client.get(format!("{base}/ping")),
                    Workload::Read => client.get(format!("{base}/fhir/Patient/{id}")),
                    Workload::Create => client
                        .post(format!("{base}/fhir/Patient"))
                        .header("content-type", "application/fhir+json")
                        .header("prefer", "return=minimal")
                        .body(patient(i).to_string()),
                    Workload::CreateInvalid => {
                        let mut body = patient(i);
                        body["birthDate"] = json!("25/12/1974");
                        client
                            .post(format!("{base}/fhir/Patient"))
                            .header("content-type", "application/fhir+json")
                            .body(body.to_string())
                    }
                    Workload::Update | Workload::Mix => {
                        let mut body = patient(i);
                        body["id"] = json!(id);
                        client
                            .put(format!("{base}/fhir/Patient/{id}"))
                            .header("content-type", "application/fhir+json")
                            .header("prefer", "return=minimal")
                            .body(body.to_string())
                    }
                };
                let expected = |status: reqwest::StatusCode| match kind {
                    Workload::CreateInvalid => status == reqwest::StatusCode::BAD_REQUEST,
                    _ => status.is_success(),
                };
                match request.send().await {
                    Ok(response) if expected(response.status()) => {
                        let _ = response.bytes().await;
                        let micros = started.elapsed().as_micros() as u64;
                        let _ = histogram.record(micros.max(1));
                    }
                    _ => errors += 1,
                }
            }
            (histogram, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        histogram.add(h)?;
        errors += e;
    }
    Ok(Report {
        errors,
        per_second: histogram.len() as f64 / duration.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
    })
}

/// Runs `serve` on a runtime of its own with two worker threads, as a separate server process
/// would, and returns what it sends back once it is listening.
fn on_own_runtime<T, F>(
    serve: impl FnOnce(std::sync::mpsc::Sender<T>) -> F + Send + 'static,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(serve(tx));
    });
    Ok(rx.recv()?)
}

/// Starts the server; returns its base URL.
fn start_server(config: Config) -> anyhow::Result<String> {
    on_own_runtime(move |tx| async move {
        match Application::build(config).await {
            Ok(app) => {
                let _ = tx.send(Ok(app.base_url().to_owned()));
                let _ = app.run_until(std::future::pending()).await;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?
}

/// A trivial axum JSON endpoint: the baseline.
fn start_baseline() -> anyhow::Result<String> {
    on_own_runtime(|tx| async move {
        let app = axum::Router::new().route(
            "/ping",
            axum::routing::get(|| async {
                axum::Json(json!({ "resourceType": "Patient", "id": "example", "active": true }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let address = listener.local_addr().expect("an address");
        let _ = tx.send(format!("http://{address}"));
        let _ = axum::serve(listener, app).await;
    })
}

async fn seed(base: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let response = client
            .post(format!("{base}/fhir/Patient"))
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

async fn postgres_database() -> anyhow::Result<String> {
    let admin = std::env::var("TELEMED_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("telemed_bench_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut connection)
        .await?;
    let (prefix, _) = admin
        .rsplit_once('/')
        .context("TELEMED_BENCH_POSTGRES_URL ends with /database")?;
    Ok(format!("{prefix}/{name}"))
}

/// Removes the run's database: the SQLite file, or the PostgreSQL database (its server is still
/// connected, hence FORCE).
async fn remove_database(url: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    } else if let Some((_, name)) = url.rsplit_once('/') {
        let admin = std::env::var("TELEMED_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut connection)
                .await;
        }
    }
}

fn print(label: &str, report: &Report, baseline: Option<&Report>) {
    let ratio = baseline.map_or(String::new(), |b| {
        format!("{:>6.2}", report.per_second / b.per_second)
    });
    println!(
        "{label:<32} {:>10.0} {:>9.2} {:>9.2} {ratio:>8} {:>8}",
        report.per_second,
        report.p50_us as f64 / 1000.0,
        report.p99_us as f64 / 1000.0,
        report.errors,
    );
}

fn main() -> anyhow::Result<()> {
    let options = options();
    let duration = Duration::from_secs(options.seconds);
    let clients_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    clients_runtime.block_on(async {
        println!(
            "{} clients, {} s per workload, HTTP/1.1 keep-alive over loopback",
            options.clients, options.seconds
        );
        println!(
            "{:<32} {:>10} {:>9} {:>9} {:>8} {:>8}",
            "workload", "req/s", "p50 ms", "p99 ms", "× base", "errors"
        );
        let baseline_url = start_baseline()?;
        let baseline = run(
            Workload::Baseline,
            &baseline_url,
            Arc::new(vec![String::new()]),
            options.clients,
            duration,
        )
        .await?;
        print(Workload::Baseline.name(), &baseline, None);

        for backend in &options.backends {
            let url = match *backend {
                "sqlite" => format!(
                    "sqlite://{}/telemed-bench-{}.db",
                    std::env::temp_dir().display(),
                    uuid::Uuid::new_v4().simple()
                ),
                _ => match postgres_database().await {
                    Ok(url) => url,
                    Err(error) => {
                        println!("postgres: skipped ({error:#})");
                        continue;
                    }
                },
            };
            let mut config = Config::for_tests(url.clone());
            // The server as an operator runs it: the default pool, unless the run says otherwise.
            if let Some(n) = std::env::var("TELEMED_BENCH_DB_CONNECTIONS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                config.max_db_connections = n;
            }
            let base = start_server(config)?;
            let ids = Arc::new(seed(&base, 1000).await?);
            for workload in [
                Workload::Create,
                Workload::CreateInvalid,
                Workload::Read,
                Workload::Update,
                Workload::Mix,
            ] {
                if let Some(only) = &options.only
                    && !workload.name().starts_with(only.as_str())
                {
                    continue;
                }
                let report = run(workload, &base, ids.clone(), options.clients, duration).await?;
                print(
                    &format!("{backend}: {}", workload.name()),
                    &report,
                    Some(&baseline),
                );
            }
            remove_database(&url).await;
        }
        anyhow::Ok(())
    })
}
