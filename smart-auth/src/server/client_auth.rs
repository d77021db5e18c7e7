//! Client authentication at the token, introspection and revocation endpoints
//! (http://hl7.org/fhir/smart-app-launch/client-authentication.html): none for a public
//! client, a secret by HTTP Basic or in the form (`client_secret_basic`, `client_secret_post`),
//! or a signed assertion (`private_key_jwt`, RFC 7523).

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

use super::{AuthServer, OAuthError, now};
use crate::assertion::{ASSERTION_CLOCK_SKEW_SECS, verify_client_assertion};
use crate::secret::verify_password;
use crate::store::{Client, ClientKind};

/// The only assertion type of `private_key_jwt`.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How a request presents its client.
#[derive(Debug)]
enum Presented {
    /// Only a client_id: a public client.
    Id(String),
    Secret {
        client_id: String,
        secret: String,
        basic: bool,
    },
    Assertion {
        client_id: Option<String>,
        assertion: String,
    },
}

/// The client a request authenticates as, or the OAuth error to answer with. A public client
/// is accepted on its client_id alone unless `confidential_only`.
pub async fn authenticate(
    server: &AuthServer,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    confidential_only: bool,
) -> Result<Client, OAuthError> {
    let presented = presented(headers, form)?;
    let basic = matches!(presented, Presented::Secret { basic: true, .. });
    let fail = |description: &str| invalid_client(description, basic);
    let client_id = match &presented {
        Presented::Id(id) | Presented::Secret { client_id: id, .. } => id.clone(),
        Presented::Assertion {
            client_id: Some(id),
            ..
        } => id.clone(),
        Presented::Assertion {
            client_id: None,
            assertion,
        } => unverified_issuer(assertion)
            .ok_or_else(|| fail("the client assertion names no issuer"))?,
    };
    let client = server
        .store
        .client(&client_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| fail("unknown client"))?;
    match (client.kind, presented) {
        (ClientKind::Public, Presented::Id(_)) if !confidential_only => Ok(client),
        (ClientKind::Public, _) => Err(fail(
            "this endpoint needs an authenticated confidential client",
        )),
        (ClientKind::ConfidentialSymmetric, Presented::Secret { secret, .. }) => {
            let hash = client.secret_hash.clone().unwrap_or_default();
            let good = tokio::task::spawn_blocking(move || verify_password(&secret, &hash))
                .await
                .unwrap_or(false);
            if good {
                Ok(client)
            } else {
                Err(fail("the client secret is wrong"))
            }
        }
        (ClientKind::ConfidentialAsymmetric, Presented::Assertion { assertion, .. }) => {
            check_assertion(server, &client, &assertion).await?;
            Ok(client)
        }
        (ClientKind::ConfidentialSymmetric, _) => Err(fail(
            "this client authenticates with its secret (client_secret_basic or client_secret_post)",
        )),
        (ClientKind::ConfidentialAsymmetric, _) => Err(fail(
            "this client authenticates with a signed assertion (private_key_jwt)",
        )),
    }
}

/// Reads which client a request presents and how; more than one way at once is an error.
fn presented(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<Presented, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => match basic_credentials(value) {
            Some(credentials) => Some(credentials),
            // A bearer token is how a resource server calls introspection, not a client.
            None if value.as_bytes().starts_with(b"Bearer ") => None,
            None => {
                return Err(invalid_client(
                    "the Authorization header is not valid HTTP Basic credentials",
                    true,
                ));
            }
        },
        None => None,
    };
    let form_id = form.get("client_id").filter(|id| !id.is_empty()).cloned();
    let form_secret = form.get("client_secret").cloned();
    let assertion = form.get("client_assertion").cloned();
    if let Some(kind) = form.get("client_assertion_type")
        && kind != JWT_BEARER
    {
        return Err(invalid_client(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            false,
        ));
    }
    let ways = usize::from(basic.is_some())
        + usize::from(form_secret.is_some())
        + usize::from(assertion.is_some());
    if ways > 1 {
        return Err(OAuthError::invalid_request(
            "use one way of client authentication, not several",
        ));
    }
    if let Some((client_id, secret)) = basic {
        if form_id.as_ref().is_some_and(|id| *id != client_id) {
            return Err(invalid_client(
                "client_id differs from the Basic credentials",
                true,
            ));
        }
        return Ok(Presented::Secret {
            client_id,
            secret,
            basic: true,
        });
    }
    if let Some(assertion) = assertion {
        if form.get("client_assertion_type").is_none() {
            return Err(OAuthError::invalid_request(
                "client_assertion_type is missing",
            ));
        }
        return Ok(Presented::Assertion {
            client_id: form_id,
            assertion,
        });
    }
    let client_id = form_id
        .ok_or_else(|| invalid_client("no client_id and no client authentication", false))?;
    Ok(match form_secret {
        Some(secret) => Presented::Secret {
            client_id,
            secret,
            basic: false,
        },
        None => Presented::Id(client_id),
    })
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let decode = |part: &str| -> Option<String> {
        form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

/// The `iss` of an assertion, read without checking it, to find whose keys check it.
fn unverified_issuer(assertion: &str) -> Option<String> {
    let payload = assertion.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// Verifies a client assertion against the client's keys and records its `jti`, refusing one
/// seen before.
async fn check_assertion(
    server: &AuthServer,
    client: &Client,
    assertion: &str,
) -> Result<(), OAuthError> {
    let jwks = match (&client.jwks, &client.jwks_url) {
        (Some(jwks), _) => jwks.clone(),
        (None, Some(url)) => fetch_jwks(server, url)
            .await
            .map_err(|_| invalid_client("the client's JWK Set cannot be fetched", false))?,
        (None, None) => return Err(invalid_client("the client has no registered keys", false)),
    };
    let token_url = server.config.endpoint("token");
    let verified = verify_client_assertion(assertion, &client.client_id, &token_url, &jwks, now())
        .map_err(|e| invalid_client(&e.to_string(), false))?;
    let fresh = server
        .store
        .record_assertion_jti(
            &client.client_id,
            &verified.jti,
            verified.exp + ASSERTION_CLOCK_SKEW_SECS,
        )
        .await
        .map_err(internal)?;
    if fresh {
        Ok(())
    } else {
        Err(invalid_client(
            "this client assertion (jti) was used before",
            false,
        ))
    }
}

/// A JWK Set registered by URL.
async fn fetch_jwks(server: &AuthServer, url: &str) -> anyhow::Result<Value> {
    let response = server.http.get(url).send().await?.error_for_status()?;
    Ok(response.json().await?)
}

/// 401 `invalid_client`; with a Basic challenge when the client tried Basic (RFC 6749 §5.2).
pub fn invalid_client(description: &str, basic: bool) -> OAuthError {
    let error = OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_client", description);
    if basic {
        error.with_challenge(HeaderValue::from_static("Basic realm=\"telemed\""))
    } else {
        error
    }
}

/// A failure of the server's own, as [`OAuthError::internal`].
pub fn internal(error: impl Into<anyhow::Error>) -> OAuthError {
    OAuthError::internal(error)
}
