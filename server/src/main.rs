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
