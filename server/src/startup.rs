//! Building the server from its configuration and running it until it is told to stop.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use fhir_models::ResourceType;
use tokio::net::TcpListener;

use crate::app::{App, AppState, service};
use crate::audit::AuthTrail;
use crate::config::{AuthMode, Config};
use crate::directory::FhirDirectory;
use crate::fhir::capability::capability_statement;
use crate::search::execute::PlannerStats;
use crate::store::{Micros, Store};
use crate::validate::SchemaValidator;
use smart_auth::server::upstream::UpstreamConfig;
use smart_auth::server::{AuthConfig, AuthServer};

/// The resource types of a video visit, whose validators are built at start rather than on the
/// first request that needs one.
const WARM_TYPES: &[ResourceType] = &[
    ResourceType::Patient,
    ResourceType::Practitioner,
    ResourceType::Appointment,
    ResourceType::Encounter,
    ResourceType::Observation,
];

/// A server that is bound to its port and ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    port: u16,
    base_url: String,
}

impl Application {
    /// Opens and migrates the database, builds the state and binds the listener. Port 0 in
    /// `config.listen` picks a free port (what tests do).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        let fhir_base = fhir_base(&config, address);
        let base_url = fhir_base
            .strip_suffix("/fhir")
            .unwrap_or(&fhir_base)
            .to_owned();
        let state = app_state(config, fhir_base).await?;
        Ok(Self {
            listener,
            state,
            port: address.port(),
            base_url,
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base URL clients use, without `/fhir`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Serves until SIGINT or SIGTERM, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        // The client's address reaches the handlers, for the audit trail.
        let service =
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                std::net::SocketAddr,
            >(service(self.state));
        let result = axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown)
            .await;
        state.store.close().await;
        result
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Opens and migrates the database and builds what every request shares.
async fn app_state(config: Config, fhir_base: String) -> anyhow::Result<AppState> {
    let store = Store::open(&config.database_url, config.max_db_connections).await?;
    let directory = Arc::new(FhirDirectory::default());
    let (auth, auditor) = match config.auth {
        AuthMode::Smart => {
            let auditor = store.auditor();
            let base = fhir_base.strip_suffix("/fhir").unwrap_or(&fhir_base);
            let mut auth_config = AuthConfig::new(fhir_base.clone(), format!("{base}/auth"));
            auth_config.practitioners_need_totp = config.practitioners_need_totp;
            auth_config.upstream = config
                .upstream_oidc
                .as_ref()
                .map(|upstream| UpstreamConfig {
                    issuer: upstream.issuer.clone(),
                    client_id: upstream.client_id.clone(),
                    client_secret: upstream.client_secret.clone(),
                    name: upstream.name.clone(),
                });
            let server = AuthServer::open(
                auth_config,
                &config.database_url,
                directory.clone(),
                Arc::new(AuthTrail(auditor.clone())),
            )
            .await
            .context("cannot start the authorization server")?;
            (Some(Arc::new(server)), Some(auditor))
        }
        AuthMode::Disabled => {
            tracing::warn!(
                "authorization is disabled: every FHIR request is served without a token; \
                 run this only on a trusted network, with test data"
            );
            (None, None)
        }
    };
    let capability = capability_statement(
        &fhir_base,
        &Micros::now().to_instant(),
        auth.as_ref().map(|auth| &auth.config),
    );
    let capability_statement = serde_json::to_vec(&capability)?.into();
    let validator = SchemaValidator::new();
    let app = Arc::new(App {
        config,
        fhir_base,
        store,
        validator,
        capability_statement,
        planner_stats: PlannerStats::default(),
        auth,
        auditor,
    });
    directory.attach(&app);
    if let Some(auth) = &app.auth {
        tokio::spawn(purge_auth(Arc::downgrade(auth)));
    }
    let warm = app.clone();
    tokio::task::spawn_blocking(move || {
        warm.validator.warm(WARM_TYPES);
        crate::search::index::warm();
    });
    tokio::spawn(refresh_planner_stats(Arc::downgrade(&app)));
    Ok(AppState(app))
}

/// The server's state without a listener, for commands that work on the database the way the
/// API does (`telemed import`). Its base URL is the configured one, else the listen address.
pub async fn offline_state(config: Config) -> anyhow::Result<AppState> {
    let fhir_base = fhir_base(&config, config.listen);
    app_state(config, fhir_base).await
}

/// The public FHIR base URL: the configured base URL, else the address listened on, + `/fhir`.
fn fhir_base(config: &Config, address: std::net::SocketAddr) -> String {
    let base_url = config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    format!("{}/fhir", base_url.trim_end_matches('/'))
}

/// Rebuilds the search index of every live resource in the configured database (the
/// `telemed reindex` command); `progress` hears the running count. Returns how many.
pub async fn reindex(config: &Config, progress: impl FnMut(u64)) -> anyhow::Result<u64> {
    let store = Store::open(&config.database_url, config.max_db_connections).await?;
    let fhir_base = fhir_base(config, config.listen);
    let count = store
        .reindex(
            500,
            |rt, value| crate::search::index::extract(rt, value, &fhir_base),
            progress,
        )
        .await?;
    store.close().await;
    Ok(count)
}

/// Clears expired authorization state (codes, refresh tokens, revocations, …) every few
/// minutes, for as long as the authorization server lives.
async fn purge_auth(auth: std::sync::Weak<AuthServer>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(auth) = auth.upgrade() else { return };
        if let Err(error) = auth.purge_expired().await {
            tracing::warn!(%error, "cannot purge expired authorization state");
        }
    }
}

/// Keeps the search planner's counts of each type's resources fresh, and forgets its old
/// estimates, off the request path, for as long as the application lives.
async fn refresh_planner_stats(app: std::sync::Weak<App>) {
    let mut every = tokio::time::interval(crate::search::execute::RECOUNT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(app) = app.upgrade() else { return };
        if let Err(error) = app.planner_stats.recount(&app.store).await {
            tracing::warn!(?error, "cannot count resources for search planning");
        }
    }
}
