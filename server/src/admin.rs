//! The operator's commands for the authorization server's clients and users (`telemed client
//! …`, `telemed user …`): they work on the database directly, so they run beside a serving
//! server or before the first start. Secrets are shown once, to the operator, and stored only
//! as hashes.

use anyhow::Context as _;
use serde_json::Value;
use smart_auth::scope::ScopeSet;
use smart_auth::secret::{hash_password, random_token};
use smart_auth::server::now;
use smart_auth::store::{AuthStore, Client, ClientKind, User};
use smart_auth::totp::TotpSecret;

/// A client to register.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// The client_id; a random one when `None`.
    pub client_id: Option<String>,
    pub name: String,
    pub kind: ClientKind,
    pub redirect_uris: Vec<String>,
    /// The most the client may be granted.
    pub scope: String,
    /// Its public keys (confidential-asymmetric): a JWK Set…
    pub jwks: Option<Value>,
    /// …or where to fetch one.
    pub jwks_url: Option<String>,
    pub launch_url: Option<String>,
    /// Browser origins allowed by CORS.
    pub origins: Vec<String>,
}

/// What registering a client gives the operator, once.
#[derive(Debug, Clone)]
pub struct Registered {
    pub client_id: String,
    /// The secret of a confidential-symmetric client: shown now, never again.
    pub secret: Option<String>,
}

/// Registers a client after checking that what it holds fits its kind.
pub async fn add_client(store: &AuthStore, new: NewClient) -> anyhow::Result<Registered> {
    let scope = ScopeSet::parse(&new.scope);
    if scope.resource_scopes().next().is_none() {
        anyhow::bail!(
            "--scope must name at least one resource scope, e.g. 'patient/*.rs' or 'system/*.rs'"
        );
    }
    for uri in &new.redirect_uris {
        let parsed = url::Url::parse(uri)
            .with_context(|| format!("the redirect URI {uri:?} is not an absolute URL"))?;
        if parsed.fragment().is_some() {
            anyhow::bail!("the redirect URI {uri:?} has a fragment, which OAuth forbids");
        }
    }
    for origin in &new.origins {
        let parsed = url::Url::parse(origin)
            .with_context(|| format!("the origin {origin:?} is not a URL"))?;
        if parsed.origin().ascii_serialization() != *origin {
            anyhow::bail!(
                "the origin {origin:?} is not an origin (scheme://host[:port], no path or slash)"
            );
        }
    }
    let secret = match new.kind {
        ClientKind::Public if new.redirect_uris.is_empty() => {
            anyhow::bail!("a public client needs at least one --redirect-uri");
        }
        ClientKind::Public => None,
        ClientKind::ConfidentialSymmetric => Some(random_token(32)),
        ClientKind::ConfidentialAsymmetric => {
            match (&new.jwks, &new.jwks_url) {
                (Some(jwks), None) => {
                    if jwks["keys"].as_array().is_none_or(|keys| keys.is_empty()) {
                        anyhow::bail!("the JWK Set has no keys");
                    }
                }
                (None, Some(url)) => {
                    url::Url::parse(url)
                        .with_context(|| format!("the JWKS URL {url:?} is not a URL"))?;
                }
                _ => anyhow::bail!(
                    "a confidential-asymmetric client needs its keys: --jwks-file or --jwks-url"
                ),
            }
            None
        }
    };
    if new.kind != ClientKind::ConfidentialAsymmetric
        && (new.jwks.is_some() || new.jwks_url.is_some())
    {
        anyhow::bail!("only a confidential-asymmetric client has keys");
    }
    let secret_hash = secret.as_deref().map(hash_password).transpose()?;
    let client_id = new.client_id.unwrap_or_else(|| random_token(16));
    store
        .insert_client(&Client {
            client_id: client_id.clone(),
            name: new.name,
            kind: new.kind,
            secret_hash,
            jwks: new.jwks,
            jwks_url: new.jwks_url,
            redirect_uris: new.redirect_uris,
            scope,
            launch_url: new.launch_url,
            origins: new.origins,
            created_at: now(),
        })
        .await?;
    Ok(Registered { client_id, secret })
}

/// A user to add.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    /// The password; a random one (shown once) when `None`.
    pub password: Option<String>,
    /// The FHIR resource that is this user: `Practitioner/1`, `Patient/2`, …
    pub fhir_user: Option<String>,
    /// Whether to give the user a TOTP second factor.
    pub totp: bool,
    /// Their subject (`sub`) at the upstream OpenID provider, when they sign in there.
    pub upstream_sub: Option<String>,
}

/// What adding a user gives the operator, once.
#[derive(Debug, Clone)]
pub struct AddedUser {
    /// The password, when the server made it up.
    pub generated_password: Option<String>,
    /// The `otpauth://` URL to load into an authenticator app.
    pub otpauth_url: Option<String>,
}

/// The kinds of FHIR resource a user can be (SMART's `fhirUser`).
const FHIR_USER_TYPES: [&str; 4] = ["Practitioner", "Patient", "RelatedPerson", "Person"];

/// Adds a user.
pub async fn add_user(store: &AuthStore, new: NewUser, issuer: &str) -> anyhow::Result<AddedUser> {
    if new.username.trim().is_empty() || new.username.chars().any(char::is_whitespace) {
        anyhow::bail!("a username is not empty and has no spaces");
    }
    if let Some(reference) = &new.fhir_user {
        let valid = reference.split_once('/').is_some_and(|(rt, id)| {
            FHIR_USER_TYPES.contains(&rt)
                && (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        });
        if !valid {
            anyhow::bail!(
                "--fhir-user is a reference such as Practitioner/123 (to a Practitioner, \
                 Patient, RelatedPerson or Person)"
            );
        }
    }
    let (password, generated_password) = match new.password {
        Some(password) if password.chars().count() < 12 => {
            anyhow::bail!("a password has at least 12 characters");
        }
        Some(password) => (password, None),
        None => {
            let password = random_token(15);
            (password.clone(), Some(password))
        }
    };
    let totp = new.totp.then(TotpSecret::generate);
    let otpauth_url = totp
        .as_ref()
        .map(|secret| secret.otpauth_url(issuer, &new.username));
    store
        .insert_user(&User {
            username: new.username,
            password_hash: hash_password(&password)?,
            fhir_user: new.fhir_user,
            totp_secret: totp.map(|secret| secret.to_base32()),
            upstream_sub: new.upstream_sub,
            created_at: now(),
        })
        .await?;
    Ok(AddedUser {
        generated_password,
        otpauth_url,
    })
}
