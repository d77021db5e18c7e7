//! SMART App Launch 2.x authorization server, bearer-token checks and scope/compartment rules.
//!
//! # Map of the crate
//!
//! | module | what it gives |
//! | --- | --- |
//! | [`scope`] | SMART scopes (v1, and v2 with query filters) read once per token into a [`scope::ScopeSet`] that says what a request may do, what a client or a refresh may keep, and how each scope reads on a consent page |
//! | [`server`] | the authorization server's HTTP endpoints (discovery, authorize with its login, second-factor, picker and consent pages, token, introspection, revocation, EHR launch) and [`server::AuthServer::authenticate`], the FHIR server's bearer-token check |
//! | [`store`] | clients, users, signing keys and the state of authorizations (codes, grants, refresh tokens, revocations), on SQLite or PostgreSQL |
//! | [`keys`] | the server's RS256 signing keys ([`keys::SigningKey`]), their rotation ([`keys::KeyRing`]) and the published JWKS |
//! | [`token`] | access tokens (RFC 9068 `at+jwt`) and OpenID id_tokens, signed; [`token::TokenVerifier`], the per-request check, with its cache |
//! | [`assertion`] | SMART Backend Services client authentication (`private_key_jwt`, RS384/ES384): verify a client's assertion against its JWKS; sign one as a client |
//! | [`pkce`] | RFC 7636 `S256` code challenges |
//! | [`secret`] | random opaque values (codes, refresh tokens, client secrets), Argon2id password hashes, digests of stored tokens |
//! | [`totp`] | RFC 6238 one-time codes, the practitioners' second factor |
//!
//! The cryptographic modules and [`scope`] do no I/O: time comes in as `now` (Unix seconds) and
//! keys come in as values, so every rule is testable without a clock or a database.
//!
//! JWS signing and verification is `jsonwebtoken` (RustCrypto backend), RSA and P-384 keys are
//! `rsa` and `p384`, passwords are `argon2`, one-time codes are `totp-rs`: nothing here computes
//! a signature or a MAC by hand.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod assertion;
pub mod keys;
pub mod pkce;
pub mod scope;
pub mod secret;
pub mod server;
pub mod store;
pub mod token;
pub mod totp;

/// The longest life of an access token, in seconds (SMART: at most an hour). A revocation
/// needs to be remembered no longer than this.
pub const MAX_ACCESS_TOKEN_SECONDS: i64 = 3600;

/// Why a key could not be made or read, or a value could not be signed or hashed.
///
/// These are the server's own failures (a bad key file, an exhausted entropy source), not a
/// client's mistake: callers answer them with a 500 and log them. Messages never contain key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Generating a key failed.
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    /// A key could not be read (bad PEM, wrong type, too short).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// Signing a JWT failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// Hashing a password failed.
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    /// A TOTP secret could not be read (bad base32, too short).
    #[error("invalid TOTP secret: {0}")]
    InvalidTotpSecret(String),
}

/// Base64url without padding, the encoding of every JOSE value (RFC 7515 §2).
pub(crate) fn b64url(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` if it is not that.
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// The fields of a JOSE header this crate decides on, read before any signature is checked so
/// that a refusal can say why (`alg: none` is not even an algorithm `jsonwebtoken` can parse).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct JoseHeader {
    pub(crate) alg: String,
    #[serde(default)]
    pub(crate) kid: Option<String>,
    #[serde(default)]
    pub(crate) typ: Option<String>,
    /// Critical extensions (RFC 7515 §4.1.11): this crate understands none, so a header that
    /// has any is refused.
    #[serde(default)]
    pub(crate) crit: Option<serde_json::Value>,
}

impl JoseHeader {
    /// Reads the header of a compact JWS (`header.payload.signature`); `None` if the token does
    /// not have three segments or its header is not a JSON object with a string `alg`.
    pub(crate) fn of(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        serde_json::from_slice(&b64url_decode(header)?).ok()
    }

    /// The media type in `typ`, lower-cased and without an `application/` prefix (RFC 7515
    /// §4.1.9 lets a sender write either).
    pub(crate) fn media_type(&self) -> Option<String> {
        self.typ.as_deref().map(|typ| {
            let typ = typ.to_ascii_lowercase();
            match typ.strip_prefix("application/") {
                Some(rest) => rest.to_owned(),
                None => typ,
            }
        })
    }
}
