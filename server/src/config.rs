//! Typed configuration: defaults, then a TOML file, then environment variables, then flags.
//!
//! `telemed serve` with nothing set listens on 127.0.0.1:8080 and keeps its data in
//! `./data/telemed.db` (SQLite). Every field can be set in the file, and the ones an operator
//! changes most have an environment variable and a flag.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// Everything the server needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`TELEMED_LISTEN`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…` (`DATABASE_URL`).
    pub database_url: String,
    /// Public base URL of the server, without `/fhir` (`TELEMED_BASE_URL`). Used in `Location`
    /// headers and Bundle links; when unset it is `http://{listen}`.
    pub base_url: Option<String>,
    /// Largest request body accepted, in bytes; larger bodies get 413. A whole patient record
    /// posted as one transaction Bundle can run to tens of megabytes.
    pub max_body_bytes: usize,
    /// Most entries a batch or transaction Bundle may hold; more get 413.
    pub max_bundle_entries: usize,
    /// Most connections kept open to the database: on PostgreSQL, half of them for reads and
    /// searches and the rest for writes, the audit trail and conditional writes' locks.
    pub max_db_connections: u32,
    /// Largest page a history or search Bundle returns, whatever `_count` asks for.
    pub max_page_size: u32,
    /// Page size when `_count` is not given.
    pub default_page_size: u32,
    /// Whether FHIR requests need a SMART access token (`TELEMED_AUTH`).
    pub auth: AuthMode,
    /// Whether practitioners must pass a TOTP second factor to sign in: a practitioner without
    /// one cannot, until an administrator sets one up (`telemed user add --totp`).
    pub practitioners_need_totp: bool,
    /// A hospital's own OpenID Connect provider that users may sign in with (`[upstream_oidc]`).
    pub upstream_oidc: Option<UpstreamOidc>,
}

/// An upstream OpenID Connect provider: login is delegated to it, and the `sub` of its
/// id_tokens names a local user (`telemed user add … --upstream-sub …`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOidc {
    /// The provider's issuer URL.
    pub issuer: String,
    /// telemed's client_id at the provider.
    pub client_id: String,
    /// telemed's client secret at the provider (`TELEMED_UPSTREAM_CLIENT_SECRET` overrides it,
    /// so that it need not sit in the file).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// What the login page calls it: "Sign in with {name}".
    pub name: String,
}

/// Whether the FHIR API needs a SMART access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every FHIR request needs a valid access token and stays within its scopes (the
    /// default).
    Smart,
    /// No token is needed and everything is reachable: only on a trusted network, with test
    /// data. The server says so in its log at start.
    Disabled,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://data/telemed.db".to_owned(),
            base_url: None,
            max_body_bytes: 64 * 1024 * 1024,
            max_bundle_entries: 10_000,
            max_db_connections: 16,
            max_page_size: 1000,
            default_page_size: 50,
            auth: AuthMode::Smart,
            practitioners_need_totp: false,
            upstream_oidc: None,
        }
    }
}

/// What went wrong while reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{name} is not valid: {message}")]
    Env { name: &'static str, message: String },
}

impl Config {
    /// Reads the TOML file at `path` over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    /// Applies `TELEMED_LISTEN`, `DATABASE_URL`, `TELEMED_BASE_URL` and `TELEMED_AUTH` from
    /// `env`.
    pub fn apply_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if let Some(listen) = env("TELEMED_LISTEN") {
            self.listen = listen.parse().map_err(|e| ConfigError::Env {
                name: "TELEMED_LISTEN",
                message: format!("{e} (expected host:port)"),
            })?;
        }
        if let Some(url) = env("DATABASE_URL") {
            self.database_url = url;
        }
        if let Some(url) = env("TELEMED_BASE_URL") {
            self.base_url = Some(url);
        }
        if let (Some(secret), Some(upstream)) = (
            env("TELEMED_UPSTREAM_CLIENT_SECRET"),
            self.upstream_oidc.as_mut(),
        ) {
            upstream.client_secret = Some(secret);
        }
        if let Some(mode) = env("TELEMED_AUTH") {
            self.auth = match mode.as_str() {
                "smart" => AuthMode::Smart,
                "disabled" => AuthMode::Disabled,
                _ => {
                    return Err(ConfigError::Env {
                        name: "TELEMED_AUTH",
                        message: "expected smart or disabled".to_owned(),
                    });
                }
            };
        }
        Ok(self)
    }

    /// A configuration for tests: a free port on loopback and the given database.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            ..Self::default()
        }
    }
}
