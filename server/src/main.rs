//! `telemed`: loads configuration, opens and migrates the database, serves.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use telemed_server::{Application, Config};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "telemed", version, about = "FHIR R4 server for virtual care")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (FHIR base at /fhir).
    Serve(ServeArgs),
    /// Rebuild the search index of every stored resource (after an upgrade that adds or
    /// changes search parameters). Safe while the server runs.
    Reindex(ServeArgs),
    /// Load every Bundle file (*.json, batch or transaction, e.g. Synthea's output) under a
    /// folder, with the same validation as POST /fhir. Safe while the server runs.
    Import(ImportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The folder of Bundle files (searched recursively).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Files loaded at once [default: the number of cores]
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    #[command(flatten)]
    server: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; environment variables and flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [env: TELEMED_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// sqlite://PATH or postgres://… [env: DATABASE_URL] [default: sqlite://data/telemed.db]
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Public base URL, without /fhir [env: TELEMED_BASE_URL]
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_env("TELEMED_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Reindex(args) => reindex(args).await,
        Command::Import(args) => import(args).await,
    }
}

/// The configuration from defaults, the `--config` file, the environment and the flags.
fn config(args: ServeArgs) -> anyhow::Result<Config> {
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let mut config = config.apply_env(|name| std::env::var(name).ok())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = args.database_url {
        config.database_url = url;
    }
    if let Some(url) = args.base_url {
        config.base_url = Some(url);
    }
    Ok(config)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    let app = Application::build(config)
        .await
        .context("cannot start telemed")?;
    tracing::info!(
        base_url = app.base_url(),
        "telemed is serving FHIR at /fhir"
    );
    app.run_until_stopped().await?;
    Ok(())
}

async fn reindex(args: ServeArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    let started = std::time::Instant::now();
    let count = telemed_server::startup::reindex(&config, |done| {
        tracing::info!(resources = done, "reindexing");
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        resources = count,
        seconds,
        per_second = count as f64 / seconds.max(1e-9),
        "reindexed"
    );
    Ok(())
}

/// Prints the summary of an import: the command's output, on stdout.
#[allow(clippy::print_stdout)]
async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let config = config(args.server)?;
    let state = telemed_server::startup::offline_state(config)
        .await
        .context("cannot open the database")?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let bar = indicatif::ProgressBar::new(0);
    let report = telemed_server::import::import(&state, &args.dir, jobs, bar).await?;
    state.store.close().await;
    println!(
        "imported {} of {} files: {} resources in {:.1} s, {:.0} resources/s",
        report.loaded,
        report.files,
        report.resources,
        report.elapsed.as_secs_f64(),
        report.per_second()
    );
    for (path, why) in &report.failures {
        println!("failed: {}: {why}", path.display());
    }
    if report.failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} of {} files failed", report.failures.len(), report.files)
    }
}
