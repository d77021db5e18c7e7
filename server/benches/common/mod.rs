//! What the benches share: the flags every bench takes, starting the server and the baseline
//! each on a runtime of its own, the benchmark databases, a small seeded PRNG, running clients for
//! a fixed time over a list of request generators, and printing the report table.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection as _;
use telemed_server::config::AuthMode;
use telemed_server::{Application, Config};

/// The database a bench runs the server on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The flags every bench takes: `--seconds N`, `--clients N`, `--backend sqlite|postgres`.
pub struct Options {
    pub seconds: u64,
    pub clients: usize,
    pub backends: Vec<Backend>,
}

impl Options {
    /// Reads the shared flags from the command line over `self` (the bench's defaults). Every
    /// other argument goes to `other` with the argument after it; `other` returns whether it
    /// took that value. Unknown arguments are ignored: `cargo bench` adds `--bench`.
    pub fn parse(mut self, mut other: impl FnMut(&str, Option<&str>) -> bool) -> Self {
        let args: Vec<String> = std::env::args().collect();
        let mut i = 1;
        while i < args.len() {
            let value = args.get(i + 1).map(String::as_str);
            let took_value = match (args[i].as_str(), value) {
                ("--seconds", Some(v)) => {
                    self.seconds = v.parse().unwrap_or(self.seconds);
                    true
                }
                ("--clients", Some(v)) => {
                    self.clients = v.parse().unwrap_or(self.clients);
                    true
                }
                ("--backend", Some(v)) => {
                    self.backends = match v {
                        "sqlite" => vec![Backend::Sqlite],
                        "postgres" => vec![Backend::Postgres],
                        _ => self.backends,
                    };
                    true
                }
                (flag, value) => other(flag, value),
            };
            i += if took_value { 2 } else { 1 };
        }
        self
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}

/// The runtime the clients run on: two worker threads, as many as the server's.
pub fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// splitmix64: a few lines, good enough statistically for picking test data, and the same
/// sequence for the same seed on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), without the bias of `%`.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// A server running on a runtime of its own; dropping it stops the server too.
pub struct Server {
    /// Base URL, without `/fhir`.
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Stops the server once its in-flight requests are done, and waits until it has closed its
    /// database.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Runs `serve` on a runtime of its own with two worker threads, as a separate server process
/// would, until the returned [`Server`] is stopped or dropped. `serve` sends its base URL once it
/// is listening, then serves until its second argument completes.
fn on_own_runtime<F>(
    serve: impl FnOnce(std::sync::mpsc::Sender<anyhow::Result<String>>, Stopped) -> F + Send + 'static,
) -> anyhow::Result<Server>
where
    F: Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(serve(tx, Stopped(stopped)));
    });
    let url = rx.recv()??;
    Ok(Server { url, stop, thread })
}

/// Completes when the [`Server`] is stopped or dropped.
struct Stopped(tokio::sync::oneshot::Receiver<()>);

impl Stopped {
    async fn wait(self) {
        let _ = self.0.await;
    }
}

/// The server's configuration for `database_url`: the server as an operator runs it, with the
/// default pool unless `TELEMED_BENCH_DB_CONNECTIONS` says otherwise, and without
/// authorization (and so without audit): the http bench turns it on for the runs that measure
/// its cost.
pub fn server_config(database_url: &str) -> Config {
    let mut config = Config::for_tests(database_url);
    config.auth = AuthMode::Disabled;
    if let Some(n) = std::env::var("TELEMED_BENCH_DB_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.max_db_connections = n;
    }
    config
}

/// Starts the server.
pub fn start_server(config: Config) -> anyhow::Result<Server> {
    on_own_runtime(move |tx, stopped| async move {
        match Application::build(config).await {
            Ok(app) => {
                let _ = tx.send(Ok(app.base_url().to_owned()));
                let _ = app.run_until(stopped.wait()).await;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })
}

/// Label of the baseline's rows.
pub const BASELINE: &str = "baseline (axum JSON)";

/// A trivial axum JSON endpoint, `GET /ping`: the baseline.
pub fn start_baseline() -> anyhow::Result<Server> {
    on_own_runtime(|tx, stopped| async move {
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
        let _ = tx.send(Ok(format!("http://{address}")));
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stopped.wait())
            .await;
    })
}

/// The baseline's one request.
pub fn ping(baseline: &Server) -> Generator {
    let url = format!("{}/ping", baseline.url);
    Arc::new(move |client, _| Call::new(client.get(&url)))
}

fn postgres_admin_url() -> String {
    std::env::var("TELEMED_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates the PostgreSQL database `name` on the server `TELEMED_BENCH_POSTGRES_URL` names
/// (default `postgres://postgres@127.0.0.1:5432/postgres`) and returns its URL. With `reuse`, a
/// database of that name that already exists is kept as it is.
pub async fn postgres_database(name: &str, reuse: bool) -> anyhow::Result<String> {
    let admin = postgres_admin_url();
    let mut connection = sqlx::PgConnection::connect(&admin).await?;
    let exists = reuse
        && sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_optional(&mut connection)
            .await?
            .is_some();
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut connection)
            .await?;
    }
    let (prefix, _) = admin
        .rsplit_once('/')
        .context("TELEMED_BENCH_POSTGRES_URL ends with /database")?;
    Ok(format!("{prefix}/{name}"))
}

/// Removes a database: the SQLite file, or the PostgreSQL database (FORCE, in case a server is
/// still connected to it).
pub async fn remove_database(url: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        telemed_server::store::remove_sqlite_database(std::path::Path::new(path));
    } else if let Some((_, name)) = url.rsplit_once('/')
        && let Ok(mut connection) = sqlx::PgConnection::connect(&postgres_admin_url()).await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut connection)
            .await;
    }
}

/// One request and what a correct answer looks like.
pub struct Call {
    request: reqwest::RequestBuilder,
    expect: Expect,
}

enum Expect {
    Success,
    Status(StatusCode),
}

impl Call {
    /// A request whose answer must be a 2xx.
    pub fn new(request: reqwest::RequestBuilder) -> Self {
        Self {
            request,
            expect: Expect::Success,
        }
    }

    /// A request whose answer must have exactly this status.
    pub fn expecting(request: reqwest::RequestBuilder, status: StatusCode) -> Self {
        Self {
            request,
            expect: Expect::Status(status),
        }
    }
}

impl Expect {
    fn accepts(&self, status: StatusCode) -> bool {
        match *self {
            Self::Success => status.is_success(),
            Self::Status(expected) => status == expected,
        }
    }
}

/// Builds a client's next request, from the client and the client's own random numbers.
pub type Generator = Arc<dyn Fn(&reqwest::Client, &mut Rng) -> Call + Send + Sync>;

/// What one run measured. Only answers as expected count as requests and have their latency
/// recorded.
pub struct Report {
    pub(crate) per_second: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    /// How often each kind of error happened (by status), with the first answer of its kind.
    error_kinds: BTreeMap<String, (u64, String)>,
}

/// Runs `clients` clients for `duration`; each sends one request at a time, built by a generator
/// picked at random from `generators` (not empty).
pub async fn run(
    generators: &[Generator],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let generators: Arc<[Generator]> = generators.into();
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(clients);
    for worker in 0..clients {
        let client = client.clone();
        let generators = generators.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures is valid");
            let mut errors = BTreeMap::<String, (u64, String)>::new();
            let mut rng = Rng::new(worker as u64);
            while Instant::now() < deadline {
                let generator = match &*generators {
                    [only] => only,
                    all => &all[rng.below(all.len())],
                };
                let Call { request, expect } = generator(&client, &mut rng);
                let started = Instant::now();
                let (kind, answer) = match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        match response.bytes().await {
                            Ok(_) if expect.accepts(status) => {
                                let micros = started.elapsed().as_micros() as u64;
                                let _ = histogram.record(micros.max(1));
                                continue;
                            }
                            Ok(body) => (format!("HTTP {status}"), body),
                            Err(error) => (
                                format!("HTTP {status}, body lost"),
                                error.to_string().into(),
                            ),
                        }
                    }
                    Err(error) => ("no answer".to_owned(), error.to_string().into()),
                };
                // Only the first answer of each kind is kept, so a run of errors costs no more
                // than a run of answers.
                errors
                    .entry(kind)
                    .or_insert_with(|| (0, String::from_utf8_lossy(&answer).into_owned()))
                    .0 += 1;
            }
            (histogram, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut error_kinds = BTreeMap::<String, (u64, String)>::new();
    for task in tasks {
        let (h, errors) = task.await?;
        histogram.add(h)?;
        for (kind, (count, answer)) in errors {
            error_kinds.entry(kind).or_insert((0, answer)).0 += count;
        }
    }
    Ok(Report {
        per_second: histogram.len() as f64 / duration.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        errors: error_kinds.values().map(|(count, _)| count).sum(),
        error_kinds,
    })
}

/// Prints the table's header; `note` names a last, free-form column (empty: none).
pub fn print_header(note: &str) {
    println!(
        "{:<32} {:>10} {:>9} {:>9} {:>8} {:>8}{}",
        "workload",
        "req/s",
        "p50 ms",
        "p99 ms",
        "× base",
        "errors",
        padded(note)
    );
}

/// Prints one row, with its throughput as a ratio to `baseline`'s, then one line per kind of
/// error with the first such answer.
pub fn print_row(label: &str, report: &Report, baseline: Option<&Report>, note: &str) {
    let ratio = baseline.map_or(String::new(), |b| {
        format!("{:>6.2}", report.per_second / b.per_second)
    });
    println!(
        "{label:<32} {:>10.0} {:>9.2} {:>9.2} {ratio:>8} {:>8}{}",
        report.per_second,
        report.p50_us as f64 / 1000.0,
        report.p99_us as f64 / 1000.0,
        report.errors,
        padded(note),
    );
    for (kind, (count, answer)) in &report.error_kinds {
        let answer: String = answer
            .chars()
            .filter(|c| !c.is_control())
            .take(160)
            .collect();
        println!("    {count} × {kind}: {answer}");
    }
}

fn padded(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!("  {note}")
    }
}
