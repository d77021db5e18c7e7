//! `telemed`: loads configuration, opens and migrates the database, serves.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use smart_auth::store::AuthStore;
use telemed_server::admin::{self, NewClient, NewUser};
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
    /// Register, list or remove the SMART clients (apps, EHRs, backend services).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Add, list or remove the users who sign in.
    #[command(subcommand)]
    User(UserCommand),
    /// Check the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain of the audit trail and name the first record that does not
    /// fit (exit status 1), or say how many records are intact.
    Verify(ServeArgs),
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client; prints its client_id, and a confidential-symmetric client's secret
    /// (shown only this once).
    Add(ClientAddArgs),
    /// List the registered clients.
    List(ServeArgs),
    /// Remove a client and revoke every grant it holds.
    Remove {
        /// The client_id.
        client_id: String,
        #[command(flatten)]
        server: ServeArgs,
    },
}

#[derive(clap::Args)]
struct ClientAddArgs {
    /// What the consent page calls the app.
    #[arg(long)]
    name: String,
    /// public, confidential-symmetric or confidential-asymmetric.
    #[arg(long = "type", value_name = "TYPE")]
    kind: String,
    /// The client_id [default: a random one]
    #[arg(long)]
    client_id: Option<String>,
    /// A redirect URI (exact match); repeat for several.
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uris: Vec<String>,
    /// The most the client may be granted, e.g. 'launch/patient openid fhirUser
    /// offline_access patient/*.rs' or 'system/*.rs'.
    #[arg(long)]
    scope: String,
    /// A file holding the client's JWK Set (confidential-asymmetric).
    #[arg(long, value_name = "FILE")]
    jwks_file: Option<PathBuf>,
    /// Where the client's JWK Set is published (confidential-asymmetric).
    #[arg(long, value_name = "URL")]
    jwks_url: Option<String>,
    /// Where an EHR launch of this app goes.
    #[arg(long, value_name = "URL")]
    launch_url: Option<String>,
    /// A browser origin allowed to call the token endpoint and the FHIR API (CORS); repeat
    /// for several.
    #[arg(long = "origin", value_name = "ORIGIN")]
    origins: Vec<String>,
    #[command(flatten)]
    server: ServeArgs,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; prints a generated password and the TOTP enrolment URL (shown only this
    /// once).
    Add(UserAddArgs),
    /// List the users.
    List(ServeArgs),
    /// Remove a user and revoke every grant they made.
    Remove {
        username: String,
        #[command(flatten)]
        server: ServeArgs,
    },
}

#[derive(clap::Args)]
struct UserAddArgs {
    username: String,
    /// The FHIR resource this user is, e.g. Practitioner/123 or Patient/456.
    #[arg(long, value_name = "REFERENCE")]
    fhir_user: Option<String>,
    /// Give the user a TOTP second factor.
    #[arg(long)]
    totp: bool,
    /// Their subject (`sub`) at the upstream OpenID provider, to sign in there.
    #[arg(long, value_name = "SUB")]
    upstream_sub: Option<String>,
    /// Read the password from the first line of standard input [default: generate one]
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    server: ServeArgs,
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
        Command::Client(command) => client(command).await,
        Command::User(command) => user(command).await,
        Command::Audit(AuditCommand::Verify(args)) => verify_audit(args).await,
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

/// The authorization tables of the configured database.
async fn auth_store(args: ServeArgs) -> anyhow::Result<(Config, AuthStore)> {
    let config = config(args)?;
    let store = AuthStore::open(&config.database_url)
        .await
        .context("cannot open the database")?;
    Ok((config, store))
}

/// `telemed client …`: its output, on stdout, is the command's answer.
#[expect(clippy::print_stdout, reason = "the command's answer is its output")]
async fn client(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Add(args) => {
            let (_, store) = auth_store(args.server).await?;
            let jwks = match &args.jwks_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(serde_json::from_str(&text).context("the JWKS file is not JSON")?)
                }
                None => None,
            };
            let registered = admin::add_client(
                &store,
                NewClient {
                    client_id: args.client_id,
                    name: args.name,
                    kind: args.kind.parse()?,
                    redirect_uris: args.redirect_uris,
                    scope: args.scope,
                    jwks,
                    jwks_url: args.jwks_url,
                    launch_url: args.launch_url,
                    origins: args.origins,
                },
            )
            .await?;
            println!("client_id: {}", registered.client_id);
            if let Some(secret) = registered.secret {
                println!("client_secret: {secret}");
                println!("(the secret is shown only now; it is stored as a hash)");
            }
        }
        ClientCommand::List(args) => {
            let (_, store) = auth_store(args).await?;
            for client in store.clients().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    client.client_id,
                    client.kind.as_str(),
                    client.name,
                    client.scope
                );
            }
        }
        ClientCommand::Remove { client_id, server } => {
            let (_, store) = auth_store(server).await?;
            if !store
                .delete_client(&client_id, smart_auth::server::now())
                .await?
            {
                anyhow::bail!("no client {client_id:?}");
            }
            println!("removed {client_id}; its grants are revoked");
        }
    }
    Ok(())
}

/// `telemed user …`: its output, on stdout, is the command's answer.
#[expect(clippy::print_stdout, reason = "the command's answer is its output")]
async fn user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add(args) => {
            let (config, store) = auth_store(args.server).await?;
            let password = if args.password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the password from standard input")?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            // The name an authenticator app shows beside the code: this server's host.
            let issuer = config
                .base_url
                .as_deref()
                .and_then(|base| url::Url::parse(base).ok())
                .and_then(|base| base.host_str().map(|host| format!("telemed ({host})")))
                .unwrap_or_else(|| "telemed".to_owned());
            let added = admin::add_user(
                &store,
                NewUser {
                    username: args.username.clone(),
                    password,
                    fhir_user: args.fhir_user,
                    totp: args.totp,
                    upstream_sub: args.upstream_sub,
                },
                &issuer,
            )
            .await?;
            println!("added {}", args.username);
            if let Some(password) = added.generated_password {
                println!("password: {password}");
            }
            if let Some(url) = added.otpauth_url {
                println!("second factor (load into an authenticator app): {url}");
            }
        }
        UserCommand::List(args) => {
            let (_, store) = auth_store(args).await?;
            for user in store.users().await? {
                println!(
                    "{}\t{}\t{}",
                    user.username,
                    user.fhir_user.as_deref().unwrap_or("-"),
                    if user.totp_secret.is_some() {
                        "totp"
                    } else {
                        "-"
                    }
                );
            }
        }
        UserCommand::Remove { username, server } => {
            let (_, store) = auth_store(server).await?;
            if !store
                .delete_user(&username, smart_auth::server::now())
                .await?
            {
                anyhow::bail!("no user {username:?}");
            }
            println!("removed {username}; their grants are revoked");
        }
    }
    Ok(())
}

/// `telemed audit verify`: its verdict, on stdout, is the command's answer.
#[expect(clippy::print_stdout, reason = "the command's answer is its output")]
async fn verify_audit(args: ServeArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    let store = telemed_server::store::Store::open(&config.database_url, 2)
        .await
        .context("cannot open the database")?;
    let verdict = telemed_server::audit::verify(&store).await;
    store.close().await;
    match verdict? {
        telemed_server::audit::Verified::Intact { chained, waiting } => {
            println!(
                "the audit trail is intact: {chained} records, and {waiting} in the audit \
                 journal waiting to join them"
            );
            Ok(())
        }
        telemed_server::audit::Verified::JournalBroken {
            segment,
            entry,
            why,
        } => {
            println!(
                "the audit journal is broken at entry {entry} of its segment {segment}: {why}"
            );
            anyhow::bail!("the audit journal is broken")
        }
        telemed_server::audit::Verified::Broken(broken) => {
            println!(
                "the audit trail is broken at record {0} (AuditEvent/{0}): {1}",
                broken.chain_pos, broken.why
            );
            anyhow::bail!("the audit trail is broken")
        }
    }
}
