//! Access tokens (JWT, RFC 9068 `at+jwt`) and OpenID Connect id_tokens, and the bearer-token
//! check every FHIR request goes through.
//!
//! Both kinds are signed RS256 by the [`KeyRing`]'s active key with its `kid` in the header.
//! They differ in `typ` (`at+jwt` against `JWT`) and in `aud` (the FHIR base URL against the
//! client_id), and [`TokenVerifier`] checks both, so an id_token is never taken for an access
//! token.
//!
//! # Cost
//!
//! With the RustCrypto backend an RS256 verification costs about a third of a millisecond (and
//! a signature about three milliseconds) on the project's 2-core machine; a FHIR request should
//! not pay it every time for the same token. [`TokenVerifier`] keeps the claims of tokens it has
//! verified, keyed by the token itself, until they expire: a repeated token costs a map lookup
//! (a keyed SipHash of the token and one comparison of it in full), well under a microsecond.
//! SHA-256 as the key cost several microseconds on a CPU without SHA instructions, and bought
//! nothing: the full comparison already makes a forged token that collides with a cached one
//! useless. The cache is bounded and holds its lock only for the map operations.
//!
//! # Revocation
//!
//! [`TokenVerifier::verify`] answers whether a token is authentic and current, not whether it
//! was revoked: the caller checks the returned `jti` (and `sid`, for a revoked grant) against
//! its revocation list after every `verify`, cached or not. The verifier has no `forget`: a
//! cache on one node cannot learn of a revocation made through another node, so the check must
//! be the caller's anyway, and one place is easier to trust than two.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::keys::KeyRing;
use crate::{CryptoError, JoseHeader};

/// How many seconds a token is still taken after its `exp`, or already taken before its `nbf`:
/// the clock difference tolerated between the node that signed and the node that checks.
pub const CLOCK_SKEW_SECS: i64 = 5;

/// How many verified tokens a [`TokenVerifier`] keeps by default (each held with its token, about
/// a kilobyte: a few megabytes in all).
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

/// The `typ` header of an access token (RFC 9068 §2.1).
const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The claims of an access token.
///
/// `scope` is the space-separated granted scopes, as in the token response. The launch
/// context (`patient`, `encounter`) and the user (`fhirUser`) are present when the grant has
/// them. `sid` names the grant (the authorization, with its refresh tokens) the token belongs
/// to, so that revoking the grant revokes every token issued under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the authorization server's URL.
    pub iss: String,
    /// Subject: the user's id, or the client_id for a backend service.
    pub sub: String,
    /// Audience: the FHIR base URL. A verified token that named several audiences carries the
    /// verifier's audience here.
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issue time, Unix seconds.
    pub iat: i64,
    /// Unique id of this token, the key of its revocation.
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Patient in context (`launch/patient`), a Patient id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Encounter in context (`launch/encounter`), an Encounter id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// The user as a FHIR resource reference, e.g. `Practitioner/123`.
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The grant this token was issued under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// The claims of an OpenID Connect id_token (SMART `openid fhirUser`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdClaims {
    /// Issuer: the authorization server's URL.
    pub iss: String,
    /// Subject: the user's stable id.
    pub sub: String,
    /// Audience: the client_id.
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issue time, Unix seconds.
    pub iat: i64,
    /// The user as a FHIR resource URL or reference; present when `fhirUser` was granted.
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The `nonce` of the authorization request, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// When the user authenticated, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

/// Signs an access token with the ring's active key: RS256, `kid`, `typ: at+jwt`.
pub fn sign_access_token(keys: &KeyRing, claims: &AccessClaims) -> Result<String, CryptoError> {
    sign(keys, ACCESS_TOKEN_TYPE, claims)
}

/// Signs an id_token with the ring's active key: RS256, `kid`, `typ: JWT`.
pub fn sign_id_token(keys: &KeyRing, claims: &IdClaims) -> Result<String, CryptoError> {
    sign(keys, "JWT", claims)
}

fn sign(keys: &KeyRing, typ: &str, claims: &impl Serialize) -> Result<String, CryptoError> {
    let key = keys.active();
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some(typ.to_owned());
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(&header, claims, key.encoding_key())
        .map_err(|e| CryptoError::Signing(e.to_string()))
}

/// Why a bearer token was refused. Every variant means a 401; the message is fit for a
/// `WWW-Authenticate` `error_description` (it never repeats the token).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWS compact serialization, or its header or claims are not what they must be.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not RS256 (`none`, `HS256` and every other are refused).
    #[error("token algorithm is not RS256")]
    UnsupportedAlgorithm,
    /// `typ` is not `at+jwt`: an id_token or some other JWT.
    #[error("not an access token (typ is not at+jwt)")]
    NotAnAccessToken,
    /// No `kid`, or a `kid` that names none of the server's keys.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify: the token was altered or not signed by this server.
    #[error("token signature does not verify")]
    BadSignature,
    /// A required claim is absent or not of its type.
    #[error("token lacks a valid `{0}` claim")]
    MissingClaim(&'static str),
    /// `iss` is not this server.
    #[error("token issued by another server")]
    WrongIssuer,
    /// `aud` does not name this FHIR server.
    #[error("token issued for another audience")]
    WrongAudience,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("token not valid yet")]
    NotYetValid,
}

/// Verifies access tokens, every FHIR request, with a cache of the tokens already verified.
///
/// Built from a [`KeyRing`] (its public parts are copied: after a rotation, build a new
/// verifier), the issuer it expects in `iss` and the audience it expects in `aud` (the FHIR
/// base URL). Shared between threads as `&self`; see the [module docs](self) for what it does
/// not check (revocation).
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
    issuer: String,
    audience: String,
    validation: Validation,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for tokens signed by any key of `keys`, issued by `issuer` for `audience`,
    /// keeping up to [`DEFAULT_CACHE_CAPACITY`] verified tokens.
    pub fn new(keys: &KeyRing, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        // jsonwebtoken reads the system clock for exp/nbf; the claims are checked below against
        // the `now` the caller passes, so its own claim checks are all off. It still checks the
        // signature and that the header's alg is RS256.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        Self {
            keys: keys
                .keys()
                .map(|key| (key.kid().to_owned(), key.decoding_key().clone()))
                .collect(),
            issuer: issuer.into(),
            audience: audience.into(),
            validation,
            cache: Mutex::new(Cache::new(DEFAULT_CACHE_CAPACITY)),
        }
    }

    /// The same verifier keeping up to `capacity` verified tokens (at least 2).
    pub fn with_cache_capacity(self, capacity: usize) -> Self {
        Self {
            cache: Mutex::new(Cache::new(capacity)),
            ..self
        }
    }

    /// Checks `token` at time `now` (Unix seconds) and returns its claims.
    ///
    /// The token must be a JWS signed RS256 by one of the ring's keys (chosen by `kid`), typed
    /// `at+jwt`, with `iss` the issuer, `aud` the audience (or an array containing it), `exp`
    /// not passed and `nbf`, if present, reached, both within [`CLOCK_SKEW_SECS`]. A token seen
    /// before is answered from the cache until its `exp`.
    ///
    /// Revocation is not checked here: check `jti` and `sid` of the result.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<AccessClaims>, TokenError> {
        if let Some(hit) = self.cache().get(token, now) {
            return hit;
        }
        let claims = Arc::new(self.verify_uncached(token, now)?);
        let evicted = self.cache().insert(token.into(), Arc::clone(&claims));
        // Freeing a whole generation of entries happens here, after the lock is released.
        drop(evicted);
        Ok(claims)
    }

    /// How many verified tokens the cache holds now (for metrics).
    pub fn cached_tokens(&self) -> usize {
        let cache = self.cache();
        cache.current.len() + cache.previous.len()
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // The cache holds no invariant a panicking thread could break halfway: a poisoned lock
        // is still a usable cache.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn verify_uncached(&self, token: &str, now: i64) -> Result<AccessClaims, TokenError> {
        let header =
            JoseHeader::of(token).ok_or(TokenError::Malformed("not a JWS with a JSON header"))?;
        if header.alg != "RS256" {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed(
                "critical header extensions are not supported",
            ));
        }
        if header.media_type().as_deref() != Some(ACCESS_TOKEN_TYPE) {
            return Err(TokenError::NotAnAccessToken);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        let mut claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                    TokenError::UnsupportedAlgorithm
                }
                _ => TokenError::Malformed("undecodable header, claims or signature"),
            })?
            .claims;

        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(match claims.get("iss") {
                Some(Value::String(_)) => TokenError::WrongIssuer,
                _ => TokenError::MissingClaim("iss"),
            });
        }
        match claims.get("aud") {
            Some(Value::String(aud)) if *aud == self.audience => {}
            Some(Value::Array(auds)) if auds.iter().any(|aud| *aud == *self.audience) => {
                claims.insert("aud".to_owned(), Value::String(self.audience.clone()));
            }
            Some(Value::String(_) | Value::Array(_)) => return Err(TokenError::WrongAudience),
            _ => return Err(TokenError::MissingClaim("aud")),
        }
        let exp = time_claim(&claims, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
        if now >= exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = time_claim(&claims, "nbf")?
            && nbf > now.saturating_add(CLOCK_SKEW_SECS)
        {
            return Err(TokenError::NotYetValid);
        }
        AccessClaims::deserialize(Value::Object(claims))
            .map_err(|_| TokenError::Malformed("claims are not those of an access token"))
    }
}

/// A NumericDate claim (RFC 7519 §2) as whole seconds: `None` if absent, an error if present
/// but not an integer.
fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or(TokenError::MissingClaim(name)),
    }
}

/// Verified claims by token, in two generations: new entries go to `current`;
/// when it is full it becomes `previous` and the old `previous` is dropped whole. A hit in
/// `previous` moves back to `current` (while it has room). So the cache holds at most `capacity`
/// entries, every operation is O(1), and tokens in use survive while tokens seen once age out.
struct Cache {
    current: HashMap<Box<str>, Arc<AccessClaims>>,
    previous: HashMap<Box<str>, Arc<AccessClaims>>,
    generation: usize,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        let generation = (capacity / 2).max(1);
        Self {
            current: HashMap::with_capacity(generation),
            previous: HashMap::new(),
            generation,
        }
    }

    /// The cached answer for a token: `None` if it is not cached; its claims, or `Expired`
    /// once its `exp` has passed (and then it is dropped).
    fn get(&mut self, token: &str, now: i64) -> Option<Result<Arc<AccessClaims>, TokenError>> {
        let claims = match self.current.get(token) {
            Some(claims) => Arc::clone(claims),
            // A hit in `previous` moves to `current` while there is room, so that `current`
            // never outgrows its generation and the whole cache its capacity.
            None if self.current.len() < self.generation => {
                let (token, claims) = self.previous.remove_entry(token)?;
                self.current.insert(token, Arc::clone(&claims));
                claims
            }
            None => Arc::clone(self.previous.get(token)?),
        };
        if now >= claims.exp.saturating_add(CLOCK_SKEW_SECS) {
            self.current.remove(token);
            self.previous.remove(token);
            return Some(Err(TokenError::Expired));
        }
        Some(Ok(claims))
    }

    /// Caches a verified token; returns the generation dropped to make room, for the caller to
    /// free outside the lock.
    fn insert(
        &mut self,
        token: Box<str>,
        claims: Arc<AccessClaims>,
    ) -> Option<HashMap<Box<str>, Arc<AccessClaims>>> {
        let evicted = if self.current.len() >= self.generation && !self.current.contains_key(&token)
        {
            let full =
                std::mem::replace(&mut self.current, HashMap::with_capacity(self.generation));
            Some(std::mem::replace(&mut self.previous, full))
        } else {
            None
        };
        self.current.insert(token, claims);
        evicted
    }
}
