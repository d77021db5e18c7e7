//! The authorization server's storage: clients, users, signing keys, and the short-lived state
//! of authorizations (pending requests, codes, grants, refresh tokens, revocations, assertion
//! ids, launch contexts), on the same database as the FHIR server (SQLite or PostgreSQL).
//!
//! Secrets are never stored as such: passwords and client secrets as Argon2id hashes, codes,
//! refresh tokens, request ids and launch ids as SHA-256 digests ([`crate::secret`]), so a copy
//! of the database hands nobody a usable credential. The schema is in `migrations/`; its
//! versions start at 1001 so that they share `_sqlx_migrations` with the FHIR server's, and
//! its SQL is the same for both backends.
//!
//! Each statement is written once with `$n` placeholders, numbered in order of appearance, which
//! both backends accept; [`with_pool!`] runs it on the concrete pool.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Executor as _, Row as _};

use crate::scope::ScopeSet;

/// How a client authenticates at the token endpoint
/// (http://hl7.org/fhir/smart-app-launch/client-authentication.html).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A browser or native app that cannot keep a secret: PKCE only.
    Public,
    /// A client with a shared secret (`client_secret_basic` or `client_secret_post`).
    ConfidentialSymmetric,
    /// A client with a key pair (`private_key_jwt`), such as a backend service.
    ConfidentialAsymmetric,
}

impl ClientKind {
    /// The name stored and shown: `public`, `confidential-symmetric`, `confidential-asymmetric`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::ConfidentialSymmetric => "confidential-symmetric",
            Self::ConfidentialAsymmetric => "confidential-asymmetric",
        }
    }
}

impl FromStr for ClientKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "public" => Self::Public,
            "confidential-symmetric" => Self::ConfidentialSymmetric,
            "confidential-asymmetric" => Self::ConfidentialAsymmetric,
            other => anyhow::bail!(
                "{other:?} is not a client type: public, confidential-symmetric or \
                 confidential-asymmetric"
            ),
        })
    }
}

/// A registered client.
#[derive(Debug, Clone)]
pub struct Client {
    /// The `client_id`.
    pub client_id: String,
    /// What the consent page calls the app.
    pub name: String,
    /// How it authenticates.
    pub kind: ClientKind,
    /// Argon2id hash of the secret (confidential-symmetric).
    pub secret_hash: Option<String>,
    /// The client's public keys (confidential-asymmetric), inline…
    pub jwks: Option<Value>,
    /// …or at a URL.
    pub jwks_url: Option<String>,
    /// Redirect URIs, compared exactly.
    pub redirect_uris: Vec<String>,
    /// The most this client may be granted.
    pub scope: ScopeSet,
    /// Where an EHR launch of this app sends the browser.
    pub launch_url: Option<String>,
    /// Browser origins allowed to call the token endpoint and the FHIR API with this client's
    /// tokens.
    pub origins: Vec<String>,
    /// When it was registered (Unix seconds).
    pub created_at: i64,
}

/// Someone who logs in.
#[derive(Debug, Clone)]
pub struct User {
    /// What they sign in with.
    pub username: String,
    /// Argon2id hash of the password.
    pub password_hash: String,
    /// The FHIR resource that is this user: `Practitioner/1`, `Patient/2`, …
    pub fhir_user: Option<String>,
    /// Base32 TOTP secret; a user with one must pass the second factor.
    pub totp_secret: Option<String>,
    /// Their subject at the upstream OpenID provider, when login is delegated there.
    pub upstream_sub: Option<String>,
    /// When the user was added (Unix seconds).
    pub created_at: i64,
}

/// The context an authorization carries to the app: who the patient is, which encounter,
/// and how to show it (http://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaunchContext {
    /// The Patient id in context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The Encounter id in context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// `fhirContext` entries, e.g. `{"reference": "Appointment/7"}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fhir_context: Vec<Value>,
    /// Whether the app must show which patient it is about.
    #[serde(default)]
    pub need_patient_banner: bool,
    /// What the EHR launched the app for (`intent`), e.g. `reconcile-medications`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
}

/// What an authorization allowed: the scopes kept, for whom, in which context. Stored with
/// the code, then as the grant that access and refresh tokens are issued under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantInfo {
    /// The client authorized.
    pub client_id: String,
    /// The user who authorized; `None` for client_credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The user as a FHIR reference (`Practitioner/1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The scopes granted, space-separated.
    pub scope: String,
    /// Patient, encounter and how to show them.
    #[serde(default)]
    pub context: LaunchContext,
    /// The `nonce` of an OpenID Connect request, echoed in the id_token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// When the user authenticated (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

/// What an authorization code stands for until it is redeemed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeInfo {
    /// The redirect URI of the authorization request, which the token request must repeat.
    pub redirect_uri: String,
    /// The PKCE challenge the token request's verifier must meet.
    pub code_challenge: String,
    /// The grant the code becomes.
    pub grant: GrantInfo,
}

/// A grant as stored.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Its id, the `sid` of its access tokens.
    pub sid: String,
    /// What it allows.
    pub info: GrantInfo,
    /// When it was made (Unix seconds).
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// What redeeming an authorization code found.
#[derive(Debug, Clone)]
pub enum Redemption {
    /// Good, and now spent: what it stands for.
    Fresh(Box<CodeInfo>),
    /// Redeemed before: whoever presents it again replays it, so the grant it became is to be
    /// revoked.
    Reused {
        /// The grant the first redemption made.
        sid: String,
    },
    /// Unknown, expired, or another client's.
    Invalid,
}

/// What redeeming a refresh token found.
#[derive(Debug, Clone)]
pub enum Refresh {
    /// Unused and unexpired: now used. Carries the grant and the scope the token was issued
    /// with.
    Fresh {
        /// The grant.
        sid: String,
        /// The scope the token was issued with.
        scope: String,
    },
    /// Used before: whoever holds it is replaying it, so the grant is revoked.
    Reused {
        /// The grant, now revoked.
        sid: String,
    },
    /// Unknown or expired.
    Invalid,
}

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The authorization server's tables.
pub struct AuthStore {
    pool: Pool,
}

/// Runs `$body` with `$pool` bound to the concrete pool.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Records a revocation of a jti or sid (`$1`) until `$2`.
const INSERT_REVOCATION: &str = "INSERT INTO auth_revocations (token_id, expires_at) \
    VALUES ($1, $2) ON CONFLICT (token_id) DO UPDATE SET expires_at = EXCLUDED.expires_at";

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl AuthStore {
    /// Opens the database at `url` (`sqlite://…` or `postgres://…`) and brings the
    /// authorization tables up to date.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let pool = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url).context("DATABASE_URL is not valid")?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .context("cannot connect to PostgreSQL")?;
            migrator(sqlx::migrate!())
                .run(&pool)
                .await
                .context("cannot migrate the authorization tables")?;
            Pool::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .context("DATABASE_URL is not valid")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // Authorization writes are rare; they wait for the FHIR server's writer.
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            if let Some(dir) = options.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(options)
                .await
                .context("cannot open the SQLite database")?;
            migrator(sqlx::migrate!())
                .run(&pool)
                .await
                .context("cannot migrate the authorization tables")?;
            Pool::Sqlite(pool)
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite:// or postgres://");
        };
        Ok(Self { pool })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await);
    }

    // --- signing keys ---

    /// Every signing key, the active one (never retired) first, then the retired ones that
    /// may still have live tokens, newest first: `(kid, pem, retired_at)`.
    pub async fn signing_keys(&self) -> anyhow::Result<Vec<(String, String, Option<i64>)>> {
        const SQL: &str = "SELECT kid, private_key_pem, retired_at FROM auth_signing_keys \
                           ORDER BY retired_at IS NOT NULL, created_at DESC";
        let rows = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Stores a new active key and retires the one before it, in one transaction.
    pub async fn rotate_signing_key(&self, kid: &str, pem: &str, now: i64) -> anyhow::Result<()> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE auth_signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO auth_signing_keys (kid, private_key_pem, created_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(kid)
            .bind(pem)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Stores `kid` as the first key, unless a key exists already (another node made one at
    /// the same time). Returns whether it was stored.
    pub async fn insert_first_signing_key(
        &self,
        kid: &str,
        pem: &str,
        now: i64,
    ) -> anyhow::Result<bool> {
        let done = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO auth_signing_keys (kid, private_key_pem, created_at) \
                 SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM auth_signing_keys)",
            )
            .bind(kid)
            .bind(pem)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Forgets keys retired before `before` (every token they signed has expired).
    pub async fn drop_retired_keys(&self, before: i64) -> anyhow::Result<u64> {
        let done = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM auth_signing_keys WHERE retired_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done)
    }

    // --- clients ---

    /// Registers a client; an existing id is an error.
    pub async fn insert_client(&self, client: &Client) -> anyhow::Result<()> {
        const SQL: &str = "INSERT INTO auth_clients (client_id, name, kind, secret_hash, jwks, \
            jwks_url, redirect_uris, scope, launch_url, origins, created_at) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
        let jwks = client.jwks.as_ref().map(Value::to_string);
        let redirect_uris = serde_json::to_string(&client.redirect_uris)?;
        let origins = serde_json::to_string(&client.origins)?;
        let scope = client.scope.to_string();
        let result = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(&client.client_id)
                .bind(&client.name)
                .bind(client.kind.as_str())
                .bind(client.secret_hash.as_deref())
                .bind(jwks.as_deref())
                .bind(client.jwks_url.as_deref())
                .bind(&redirect_uris)
                .bind(&scope)
                .bind(client.launch_url.as_deref())
                .bind(&origins)
                .bind(client.created_at)
                .execute(pool)
                .await
                .map(|_| ())
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                anyhow::bail!("a client with id {:?} exists already", client.client_id)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One client.
    pub async fn client(&self, client_id: &str) -> anyhow::Result<Option<Client>> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM auth_clients WHERE client_id = $1");
        let client = with_pool!(self, |pool| {
            match sqlx::query(&sql)
                .bind(client_id)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(client_from_row(&row)?),
                None => None,
            }
        });
        Ok(client)
    }

    /// Every client, by id.
    pub async fn clients(&self) -> anyhow::Result<Vec<Client>> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM auth_clients ORDER BY client_id");
        let clients = with_pool!(self, |pool| {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(client_from_row)
                .collect::<anyhow::Result<Vec<_>>>()?
        });
        Ok(clients)
    }

    /// Removes a client and revokes every grant it holds. Returns whether it existed.
    pub async fn delete_client(&self, client_id: &str, now: i64) -> anyhow::Result<bool> {
        self.delete_with_grants("auth_clients", "client_id", client_id, now)
            .await
    }

    /// Deletes the row of `table` whose `column` (a client_id or a username, the column of the
    /// same name in `auth_grants`) is `value`, and revokes the grants of that client or user.
    async fn delete_with_grants(
        &self,
        table: &'static str,
        column: &'static str,
        value: &str,
        now: i64,
    ) -> anyhow::Result<bool> {
        let revoke = format!(
            "UPDATE auth_grants SET revoked_at = $1 WHERE {column} = $2 AND revoked_at IS NULL \
             RETURNING sid"
        );
        let delete = format!("DELETE FROM {table} WHERE {column} = $1");
        let deleted = with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            // The grants' access tokens, at most an hour old, are refused by sid until then.
            let sids: Vec<(String,)> = sqlx::query_as(&revoke)
                .bind(now)
                .bind(value)
                .fetch_all(&mut *tx)
                .await?;
            for (sid,) in sids {
                sqlx::query(INSERT_REVOCATION)
                    .bind(sid)
                    .bind(now + crate::MAX_ACCESS_TOKEN_SECONDS)
                    .execute(&mut *tx)
                    .await?;
            }
            let deleted = sqlx::query(&delete)
                .bind(value)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            deleted
        });
        Ok(deleted == 1)
    }

    // --- users ---

    /// Adds a user; an existing username is an error.
    pub async fn insert_user(&self, user: &User) -> anyhow::Result<()> {
        const SQL: &str = "INSERT INTO auth_users (username, password_hash, fhir_user, \
            totp_secret, upstream_sub, created_at) VALUES ($1, $2, $3, $4, $5, $6)";
        let result = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(&user.username)
                .bind(&user.password_hash)
                .bind(user.fhir_user.as_deref())
                .bind(user.totp_secret.as_deref())
                .bind(user.upstream_sub.as_deref())
                .bind(user.created_at)
                .execute(pool)
                .await
                .map(|_| ())
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                anyhow::bail!(
                    "the username {:?} or its upstream subject is taken",
                    user.username
                )
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One user, by username.
    pub async fn user(&self, username: &str) -> anyhow::Result<Option<User>> {
        self.user_where("username", username).await
    }

    /// The user an upstream OpenID provider's subject maps to.
    pub async fn user_by_upstream_sub(&self, sub: &str) -> anyhow::Result<Option<User>> {
        self.user_where("upstream_sub", sub).await
    }

    async fn user_where(&self, column: &'static str, value: &str) -> anyhow::Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_users WHERE {column} = $1");
        let user = with_pool!(self, |pool| {
            match sqlx::query(&sql).bind(value).fetch_optional(pool).await? {
                Some(row) => Some(user_from_row(&row)?),
                None => None,
            }
        });
        Ok(user)
    }

    /// Every user, by username.
    pub async fn users(&self) -> anyhow::Result<Vec<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_users ORDER BY username");
        let users = with_pool!(self, |pool| {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(user_from_row)
                .collect::<anyhow::Result<Vec<_>>>()?
        });
        Ok(users)
    }

    /// Removes a user and revokes every grant they made. Returns whether they existed.
    pub async fn delete_user(&self, username: &str, now: i64) -> anyhow::Result<bool> {
        self.delete_with_grants("auth_users", "username", username, now)
            .await
    }

    /// Records that `username` used the TOTP code of time step `step`, if no later or equal step
    /// was used before: false means the code was used already (a replay).
    pub async fn use_totp_step(&self, username: &str, step: i64) -> anyhow::Result<bool> {
        let done = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE auth_users SET totp_last_step = $1 WHERE username = $2 \
                 AND (totp_last_step IS NULL OR totp_last_step < $3)",
            )
            .bind(step)
            .bind(username)
            .bind(step)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    // --- authorization requests in progress ---

    /// Stores an authorization request between its steps, under the digest of its id.
    pub async fn put_request(
        &self,
        digest: &str,
        client_id: &str,
        request: &Value,
        expires_at: i64,
    ) -> anyhow::Result<()> {
        let text = request.to_string();
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO auth_requests (digest, client_id, request, expires_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO UPDATE SET \
                 request = EXCLUDED.request, expires_at = EXCLUDED.expires_at",
            )
            .bind(digest)
            .bind(client_id)
            .bind(&text)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// An unexpired authorization request.
    pub async fn request(&self, digest: &str, now: i64) -> anyhow::Result<Option<Value>> {
        let text: Option<String> = with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT request FROM auth_requests WHERE digest = $1 AND expires_at > $2",
            )
            .bind(digest)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        Ok(match text {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        })
    }

    /// Ends an authorization request (it became a code, or was refused).
    pub async fn delete_request(&self, digest: &str) -> anyhow::Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM auth_requests WHERE digest = $1")
                .bind(digest)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    // --- codes ---

    /// Stores an authorization code under its digest.
    pub async fn insert_code(
        &self,
        digest: &str,
        client_id: &str,
        info: &CodeInfo,
        expires_at: i64,
    ) -> anyhow::Result<()> {
        let text = serde_json::to_string(info)?;
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO auth_codes (digest, client_id, grant_json, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(digest)
            .bind(client_id)
            .bind(&text)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Redeems a code, to become grant `sid`: what it stands for, if it was issued to
    /// `client_id`, has not expired and was not redeemed before. A code is spent by its first
    /// presentation, however many requests race for it; a later one learns which grant the
    /// first made, to revoke it.
    pub async fn redeem_code(
        &self,
        digest: &str,
        client_id: &str,
        sid: &str,
        now: i64,
    ) -> anyhow::Result<Redemption> {
        let row: Option<(String, String, i64)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "UPDATE auth_codes SET used_at = $1, sid = $2 \
                 WHERE digest = $3 AND used_at IS NULL \
                 RETURNING client_id, grant_json, expires_at",
            )
            .bind(now)
            .bind(sid)
            .bind(digest)
            .fetch_optional(pool)
            .await?
        });
        if let Some((owner, text, expires_at)) = row {
            return Ok(if owner == client_id && expires_at > now {
                Redemption::Fresh(Box::new(serde_json::from_str(&text)?))
            } else {
                Redemption::Invalid
            });
        }
        let used: Option<Option<String>> = with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT sid FROM auth_codes WHERE digest = $1 AND used_at IS NOT NULL",
            )
            .bind(digest)
            .fetch_optional(pool)
            .await?
        });
        Ok(match used {
            Some(Some(sid)) => Redemption::Reused { sid },
            _ => Redemption::Invalid,
        })
    }

    // --- grants and refresh tokens ---

    /// Stores a grant.
    pub async fn insert_grant(&self, sid: &str, info: &GrantInfo, now: i64) -> anyhow::Result<()> {
        let context = serde_json::to_string(info)?;
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO auth_grants (sid, client_id, username, scope, context, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(sid)
            .bind(&info.client_id)
            .bind(info.username.as_deref())
            .bind(&info.scope)
            .bind(&context)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// One grant.
    pub async fn grant(&self, sid: &str) -> anyhow::Result<Option<Grant>> {
        let row: Option<(String, i64, Option<i64>)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT context, created_at, revoked_at FROM auth_grants WHERE sid = $1")
                .bind(sid)
                .fetch_optional(pool)
                .await?
        });
        Ok(match row {
            Some((context, created_at, revoked_at)) => Some(Grant {
                sid: sid.to_owned(),
                info: serde_json::from_str(&context)?,
                created_at,
                revoked_at,
            }),
            None => None,
        })
    }

    /// Revokes a grant: its refresh tokens stop working and its sid is recorded as revoked
    /// until `tokens_expire_by`, when every access token under it has expired.
    pub async fn revoke_grant(
        &self,
        sid: &str,
        now: i64,
        tokens_expire_by: i64,
    ) -> anyhow::Result<()> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE auth_grants SET revoked_at = $1 WHERE sid = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(sid)
            .execute(&mut *tx)
            .await?;
            sqlx::query(INSERT_REVOCATION)
                .bind(sid)
                .bind(tokens_expire_by)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Stores a refresh token (by digest) under a grant.
    pub async fn insert_refresh_token(
        &self,
        digest: &str,
        sid: &str,
        scope: &str,
        expires_at: i64,
    ) -> anyhow::Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO auth_refresh_tokens (digest, sid, scope, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(digest)
            .bind(sid)
            .bind(scope)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Uses a refresh token: the first use of a live token succeeds; any later use revokes
    /// the grant (RFC 9700 §4.14.2: a used refresh token seen again means it leaked).
    pub async fn use_refresh_token(&self, digest: &str, now: i64) -> anyhow::Result<Refresh> {
        let fresh: Option<(String, String)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "UPDATE auth_refresh_tokens SET used_at = $1 \
                 WHERE digest = $2 AND used_at IS NULL AND expires_at > $3 \
                 AND sid IN (SELECT sid FROM auth_grants WHERE revoked_at IS NULL) \
                 RETURNING sid, scope",
            )
            .bind(now)
            .bind(digest)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        if let Some((sid, scope)) = fresh {
            return Ok(Refresh::Fresh { sid, scope });
        }
        let used: Option<String> = with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT sid FROM auth_refresh_tokens WHERE digest = $1 AND used_at IS NOT NULL",
            )
            .bind(digest)
            .fetch_optional(pool)
            .await?
        });
        Ok(match used {
            Some(sid) => Refresh::Reused { sid },
            None => Refresh::Invalid,
        })
    }

    /// A refresh token that would be accepted now: unused, unexpired, its grant standing.
    /// Returns `(sid, scope, expires_at)`.
    pub async fn live_refresh_token(
        &self,
        digest: &str,
        now: i64,
    ) -> anyhow::Result<Option<(String, String, i64)>> {
        let row = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT t.sid, t.scope, t.expires_at FROM auth_refresh_tokens t \
                 JOIN auth_grants g ON g.sid = t.sid \
                 WHERE t.digest = $1 AND t.used_at IS NULL AND t.expires_at > $2 \
                 AND g.revoked_at IS NULL",
            )
            .bind(digest)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// The grant a refresh token belongs to, used or not, if it is known.
    pub async fn refresh_token_grant(&self, digest: &str) -> anyhow::Result<Option<String>> {
        let sid = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT sid FROM auth_refresh_tokens WHERE digest = $1")
                .bind(digest)
                .fetch_optional(pool)
                .await?
        });
        Ok(sid)
    }

    // --- revocations ---

    /// Records an access token (by jti) as revoked until it would have expired.
    pub async fn revoke_token_id(&self, token_id: &str, expires_at: i64) -> anyhow::Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(INSERT_REVOCATION)
                .bind(token_id)
                .bind(expires_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Every revocation still in force: `(jti or sid, until)`.
    pub async fn revocations(&self, now: i64) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT token_id, expires_at FROM auth_revocations WHERE expires_at > $1",
            )
            .bind(now)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    // --- client assertions ---

    /// Records the `jti` of a client assertion; false if the client used it before.
    pub async fn record_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
    ) -> anyhow::Result<bool> {
        let result = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO auth_assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3)",
            )
            .bind(client_id)
            .bind(jti)
            .bind(expires_at)
            .execute(pool)
            .await
            .map(|_| ())
        });
        match result {
            Ok(()) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    // --- launch contexts ---

    /// Stores an EHR launch context under the digest of its `launch` value.
    pub async fn insert_launch(
        &self,
        digest: &str,
        context: &LaunchContext,
        created_by: &str,
        expires_at: i64,
    ) -> anyhow::Result<()> {
        let text = serde_json::to_string(context)?;
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO auth_launches (digest, context, created_by, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(digest)
            .bind(&text)
            .bind(created_by)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// An unexpired launch context.
    pub async fn launch(&self, digest: &str, now: i64) -> anyhow::Result<Option<LaunchContext>> {
        let text: Option<String> = with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT context FROM auth_launches WHERE digest = $1 AND expires_at > $2",
            )
            .bind(digest)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        Ok(match text {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        })
    }

    /// Deletes what has expired: requests, codes, launches, assertion ids, refresh tokens and
    /// revocations. Returns how many rows went.
    pub async fn purge_expired(&self, now: i64) -> anyhow::Result<u64> {
        const TABLES: [&str; 6] = [
            "auth_requests",
            "auth_codes",
            "auth_launches",
            "auth_assertion_jtis",
            "auth_refresh_tokens",
            "auth_revocations",
        ];
        let mut purged = 0;
        for table in TABLES {
            let sql = format!("DELETE FROM {table} WHERE expires_at <= $1");
            purged += with_pool!(self, |pool| {
                pool.execute(sqlx::query(&sql).bind(now))
                    .await?
                    .rows_affected()
            });
        }
        Ok(purged)
    }
}

/// sqlx's migrator for this crate's migrations, which share `_sqlx_migrations` with the FHIR
/// server's and so must not mistake those for missing ones of its own.
fn migrator(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

const CLIENT_COLUMNS: &str = "client_id, name, kind, secret_hash, jwks, jwks_url, \
    redirect_uris, scope, launch_url, origins, created_at";

fn client_from_row<R: sqlx::Row>(row: &R) -> anyhow::Result<Client>
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = row.try_get(2)?;
    let jwks: Option<String> = row.try_get(4)?;
    let redirect_uris: String = row.try_get(6)?;
    let scope: String = row.try_get(7)?;
    let origins: String = row.try_get(9)?;
    Ok(Client {
        client_id: row.try_get(0)?,
        name: row.try_get(1)?,
        kind: kind.parse()?,
        secret_hash: row.try_get(3)?,
        jwks: jwks.map(|text| serde_json::from_str(&text)).transpose()?,
        jwks_url: row.try_get(5)?,
        redirect_uris: serde_json::from_str(&redirect_uris)?,
        scope: ScopeSet::parse(&scope),
        launch_url: row.try_get(8)?,
        origins: serde_json::from_str(&origins)?,
        created_at: row.try_get(10)?,
    })
}

const USER_COLUMNS: &str =
    "username, password_hash, fhir_user, totp_secret, upstream_sub, created_at";

fn user_from_row<R: sqlx::Row>(row: &R) -> anyhow::Result<User>
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(User {
        username: row.try_get(0)?,
        password_hash: row.try_get(1)?,
        fhir_user: row.try_get(2)?,
        totp_secret: row.try_get(3)?,
        upstream_sub: row.try_get(4)?,
        created_at: row.try_get(5)?,
    })
}
