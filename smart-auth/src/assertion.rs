//! SMART client authentication with asymmetric keys (`private_key_jwt`, SMART App Launch
//! "client-confidential-asymmetric", RFC 7523), used by Backend Services and confidential apps.
//!
//! The client signs a short-lived JWT (`iss` = `sub` = its client_id, `aud` = the token URL,
//! `exp` at most five minutes ahead, a unique `jti`) with a private key whose public half it
//! registered as a JWK Set. [`verify_client_assertion`] checks one against that JWK Set; the
//! caller resolves the set (inline, or fetched from the client's JWKS URL) and refuses a `jti`
//! it has already seen from that client.
//!
//! # Algorithms
//!
//! SMART requires clients to support RS384 and ES384 and servers to verify at least one of
//! them. This server verifies [`ASSERTION_ALGORITHMS`]: RS384 and ES384, and also RS256, RS512
//! and ES256, which some client libraries default to and which are as sound. ES512 is left
//! out (no P-521 support in the JWS library), and so are the RSASSA-PSS algorithms (no client
//! seen uses them). `none` and the HMAC algorithms are never accepted: the JWKS is public, so a
//! MAC keyed with it proves nothing. The smart-configuration's
//! `token_endpoint_auth_signing_alg_values_supported` should list [`ASSERTION_ALGORITHMS`].
//!
//! [`ClientKey`] and [`sign_client_assertion`] are the client side, for tests and for client
//! programs (a backend service written against this server).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p384::elliptic_curve::sec1::ToEncodedPoint as _;
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use serde_json::{Map, Value, json};

use crate::keys::{RSA_BITS, ec_thumbprint, rsa_thumbprint};
use crate::{CryptoError, JoseHeader, b64url, b64url_decode};

/// The `alg` values a client assertion may be signed with, the two SMART names first.
pub const ASSERTION_ALGORITHMS: [&str; 5] = ["RS384", "ES384", "RS256", "RS512", "ES256"];

/// The furthest ahead of `now` an assertion's `exp` may be (SMART: five minutes), not counting
/// [`ASSERTION_CLOCK_SKEW_SECS`]. It also bounds how long the caller must remember a `jti`.
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;

/// The difference tolerated between the client's clock and ours when checking `exp` and
/// `nbf`. A client that sets `exp` to exactly five minutes from its own now is not refused for
/// running a few seconds ahead.
pub const ASSERTION_CLOCK_SKEW_SECS: i64 = 10;

/// What a valid assertion carries that the caller still has to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The assertion's unique id: refuse it if already seen from this client, and remember it
    /// until `exp` plus [`ASSERTION_CLOCK_SKEW_SECS`].
    pub jti: String,
    /// When the assertion expires, Unix seconds.
    pub exp: i64,
}

/// Why a client assertion was refused: the rule that failed. The message is meant for the
/// `error_description` of the `invalid_client` answer; it never contains the assertion, a key
/// or a value the client sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// Not a JWS compact serialization, or its claims are not a JSON object.
    #[error("client assertion is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is not one of [`ASSERTION_ALGORITHMS`].
    #[error("client assertion alg must be one of RS384, ES384, RS256, RS512, ES256")]
    UnsupportedAlgorithm,
    /// `typ` is present and not `JWT`.
    #[error("client assertion typ must be JWT")]
    WrongType,
    /// The registered JWK Set is not a JSON object with a `keys` array.
    #[error("the client's registered JWK Set is not a JWK Set")]
    InvalidJwks,
    /// No key of the JWK Set has the header's `kid` and a type fitting `alg` (or, without a
    /// `kid`, the set has no key fitting `alg`).
    #[error("no key in the client's JWK Set matches the assertion's kid and alg")]
    NoMatchingKey,
    /// Several keys match: the same `kid` twice, or no `kid` in the header and several keys
    /// fitting `alg`.
    #[error("several keys in the client's JWK Set match the assertion; name one with kid")]
    AmbiguousKey,
    /// The matching key cannot be used: an RSA key under 2048 bits, or EC coordinates of the
    /// wrong size.
    #[error(
        "the matching key in the client's JWK Set is unusable (RSA under 2048 bits or a bad EC point)"
    )]
    UnusableKey,
    /// The signature does not verify with the matching key.
    #[error("client assertion signature does not verify")]
    BadSignature,
    /// A required claim (`iss`, `sub`, `aud`, `exp`, `jti`) is absent or not of its type.
    #[error("client assertion lacks a valid `{0}` claim")]
    MissingClaim(&'static str),
    /// `iss` is not the client_id.
    #[error("client assertion iss must be the client_id")]
    WrongIssuer,
    /// `sub` is not the client_id (SMART: `iss` and `sub` are both the client_id).
    #[error("client assertion sub must be the client_id")]
    WrongSubject,
    /// `aud` is not the token endpoint's URL.
    #[error("client assertion aud must be the token endpoint URL")]
    WrongAudience,
    /// `exp` has passed.
    #[error("client assertion expired")]
    Expired,
    /// `exp` is more than five minutes ahead.
    #[error("client assertion exp must be at most 5 minutes in the future")]
    ExpiresTooLate,
    /// `nbf` is still ahead.
    #[error("client assertion not valid yet (nbf)")]
    NotYetValid,
}

/// The kind of public key an `alg` needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    Ec {
        crv: &'static str,
        coordinate_bytes: usize,
    },
}

fn accepted_algorithm(alg: &str) -> Option<(Algorithm, KeyType)> {
    const P256: KeyType = KeyType::Ec {
        crv: "P-256",
        coordinate_bytes: 32,
    };
    const P384: KeyType = KeyType::Ec {
        crv: "P-384",
        coordinate_bytes: 48,
    };
    Some(match alg {
        "RS384" => (Algorithm::RS384, KeyType::Rsa),
        "ES384" => (Algorithm::ES384, P384),
        "RS256" => (Algorithm::RS256, KeyType::Rsa),
        "RS512" => (Algorithm::RS512, KeyType::Rsa),
        "ES256" => (Algorithm::ES256, P256),
        _ => return None,
    })
}

/// Verifies a client assertion posted to `token_url` by `client_id`, whose registered JWK Set
/// is `jwks`, at time `now` (Unix seconds).
///
/// The rules, in the order they are checked:
/// 1. `alg` is one of [`ASSERTION_ALGORITHMS`]; `typ`, if present, is `JWT`; no `crit`.
/// 2. The key is the one JWK of the set whose `kid` is the header's and whose `kty` (and
///    `crv`) fits `alg`, skipping keys whose `use`, `key_ops` or `alg` rule it out. A header
///    without `kid` is accepted when exactly one key of the set fits `alg`.
/// 3. The signature verifies with that key.
/// 4. `iss` and `sub` are `client_id`; `aud` is `token_url` (or an array containing it),
///    compared exactly.
/// 5. `exp` is present, not passed, and at most [`MAX_ASSERTION_LIFETIME_SECS`] ahead; `nbf`,
///    if present, reached (both within [`ASSERTION_CLOCK_SKEW_SECS`]).
/// 6. `jti` is a non-empty string.
///
/// Replay is the caller's to refuse, with the returned `jti`.
pub fn verify_client_assertion(
    assertion: &str,
    client_id: &str,
    token_url: &str,
    jwks: &Value,
    now: i64,
) -> Result<VerifiedAssertion, AssertionError> {
    let header = JoseHeader::of(assertion)
        .ok_or(AssertionError::Malformed("not a JWS with a JSON header"))?;
    let (algorithm, key_type) =
        accepted_algorithm(&header.alg).ok_or(AssertionError::UnsupportedAlgorithm)?;
    match header.media_type().as_deref() {
        None | Some("jwt") => {}
        Some(_) => return Err(AssertionError::WrongType),
    }
    if header.crit.is_some() {
        return Err(AssertionError::Malformed(
            "critical header extensions are not supported",
        ));
    }
    let jwk = select_key(jwks, &header, key_type)?;
    let key = decoding_key(jwk, key_type)?;

    let mut validation = Validation::new(algorithm);
    // Claims are checked below, against `now` rather than the system clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Map<String, Value>>(assertion, &key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AssertionError::BadSignature,
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => AssertionError::UnusableKey,
            _ => AssertionError::Malformed("undecodable header, claims or signature"),
        })?
        .claims;

    match claims.get("iss") {
        Some(Value::String(iss)) if iss == client_id => {}
        Some(Value::String(_)) => return Err(AssertionError::WrongIssuer),
        _ => return Err(AssertionError::MissingClaim("iss")),
    }
    match claims.get("sub") {
        Some(Value::String(sub)) if sub == client_id => {}
        Some(Value::String(_)) => return Err(AssertionError::WrongSubject),
        _ => return Err(AssertionError::MissingClaim("sub")),
    }
    match claims.get("aud") {
        Some(Value::String(aud)) if aud == token_url => {}
        Some(Value::Array(auds)) if auds.iter().any(|aud| aud == token_url) => {}
        Some(Value::String(_) | Value::Array(_)) => return Err(AssertionError::WrongAudience),
        _ => return Err(AssertionError::MissingClaim("aud")),
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(AssertionError::MissingClaim("exp"))?;
    if exp <= now.saturating_sub(ASSERTION_CLOCK_SKEW_SECS) {
        return Err(AssertionError::Expired);
    }
    if exp > now.saturating_add(MAX_ASSERTION_LIFETIME_SECS + ASSERTION_CLOCK_SKEW_SECS) {
        return Err(AssertionError::ExpiresTooLate);
    }
    match claims.get("nbf").map(Value::as_i64) {
        None => {}
        Some(None) => return Err(AssertionError::MissingClaim("nbf")),
        Some(Some(nbf)) if nbf > now.saturating_add(ASSERTION_CLOCK_SKEW_SECS) => {
            return Err(AssertionError::NotYetValid);
        }
        Some(Some(_)) => {}
    }
    let jti = match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() => jti.clone(),
        _ => return Err(AssertionError::MissingClaim("jti")),
    };
    Ok(VerifiedAssertion { jti, exp })
}

/// The one JWK that may have signed an assertion with this header (SMART's key-resolution
/// algorithm, step 3).
fn select_key<'a>(
    jwks: &'a Value,
    header: &JoseHeader,
    key_type: KeyType,
) -> Result<&'a Map<String, Value>, AssertionError> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(AssertionError::InvalidJwks)?;
    let mut candidates = keys
        .iter()
        .filter_map(Value::as_object)
        .filter(|jwk| fits(jwk, &header.alg, key_type))
        .filter(|jwk| match &header.kid {
            Some(kid) => jwk.get("kid").and_then(Value::as_str) == Some(kid.as_str()),
            None => true,
        });
    match (candidates.next(), candidates.next()) {
        (Some(jwk), None) => Ok(jwk),
        (None, _) => Err(AssertionError::NoMatchingKey),
        (Some(_), Some(_)) => Err(AssertionError::AmbiguousKey),
    }
}

/// Whether a JWK can verify a signature made with `alg`: its `kty` (and `crv`) fit, and its
/// optional `use`, `key_ops` and `alg` members do not rule it out.
fn fits(jwk: &Map<String, Value>, alg: &str, key_type: KeyType) -> bool {
    let str_member = |name: &str| jwk.get(name).and_then(Value::as_str);
    let type_fits = match key_type {
        KeyType::Rsa => str_member("kty") == Some("RSA"),
        KeyType::Ec { crv, .. } => {
            str_member("kty") == Some("EC") && str_member("crv") == Some(crv)
        }
    };
    let use_fits = jwk.get("use").is_none_or(|u| u == "sig");
    let ops_fit = jwk.get("key_ops").is_none_or(|ops| {
        ops.as_array()
            .is_some_and(|ops| ops.iter().any(|op| op == "verify"))
    });
    let alg_fits = jwk.get("alg").is_none_or(|a| a == alg);
    type_fits && use_fits && ops_fit && alg_fits
}

fn decoding_key(
    jwk: &Map<String, Value>,
    key_type: KeyType,
) -> Result<DecodingKey, AssertionError> {
    let member = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(b64url_decode)
            .ok_or(AssertionError::UnusableKey)
    };
    match key_type {
        KeyType::Rsa => {
            let n = member("n")?;
            let e = member("e")?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant * 8 < RSA_BITS {
                return Err(AssertionError::UnusableKey);
            }
            Ok(DecodingKey::from_rsa_raw_components(&n, &e))
        }
        KeyType::Ec {
            coordinate_bytes, ..
        } => {
            let x = member("x")?;
            let y = member("y")?;
            if x.len() != coordinate_bytes || y.len() != coordinate_bytes {
                return Err(AssertionError::UnusableKey);
            }
            DecodingKey::from_ec_components(&b64url(&x), &b64url(&y))
                .map_err(|_| AssertionError::UnusableKey)
        }
    }
}

/// The algorithm a [`ClientKey`] signs with: the two SMART requires clients to support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-384, an RSA-2048 key.
    Rs384,
    /// ECDSA on P-384 with SHA-384.
    Es384,
}

impl ClientAlgorithm {
    /// The JWA name: `RS384` or `ES384`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs384 => "RS384",
            Self::Es384 => "ES384",
        }
    }

    fn jws(self) -> Algorithm {
        match self {
            Self::Rs384 => Algorithm::RS384,
            Self::Es384 => Algorithm::ES384,
        }
    }
}

#[derive(Clone)]
enum ClientPrivateKey {
    Rsa(Box<RsaPrivateKey>),
    Ec(p384::SecretKey),
}

/// A client's private key for signing assertions, with its `kid` (the RFC 7638 thumbprint).
/// `Debug` shows the algorithm and `kid` only.
#[derive(Clone)]
pub struct ClientKey {
    algorithm: ClientAlgorithm,
    kid: String,
    private: ClientPrivateKey,
    encoding: EncodingKey,
    public_jwk: Value,
}

impl ClientKey {
    /// Generates a key for `algorithm`: RSA-2048 for RS384, P-384 for ES384.
    pub fn generate(algorithm: ClientAlgorithm) -> Result<Self, CryptoError> {
        let private = match algorithm {
            ClientAlgorithm::Rs384 => ClientPrivateKey::Rsa(Box::new(
                RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
                    .map_err(|e| CryptoError::KeyGeneration(e.to_string()))?,
            )),
            ClientAlgorithm::Es384 => {
                ClientPrivateKey::Ec(p384::SecretKey::random(&mut rand::rngs::OsRng))
            }
        };
        Self::from_private(private)
    }

    /// Reads a PKCS#8 PEM private key (`BEGIN PRIVATE KEY`): an RSA key (at least 2048 bits)
    /// signs RS384, a P-384 key signs ES384.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        if let Ok(rsa) = RsaPrivateKey::from_pkcs8_pem(pem) {
            if rsa.size() * 8 < RSA_BITS {
                return Err(CryptoError::InvalidKey(format!(
                    "RSA key of {} bits, at least {RSA_BITS} needed",
                    rsa.size() * 8
                )));
            }
            return Self::from_private(ClientPrivateKey::Rsa(Box::new(rsa)));
        }
        let ec = p384::SecretKey::from_pkcs8_pem(pem).map_err(|_| {
            CryptoError::InvalidKey("neither an RSA nor a P-384 PKCS#8 PEM key".to_owned())
        })?;
        Self::from_private(ClientPrivateKey::Ec(ec))
    }

    fn from_private(private: ClientPrivateKey) -> Result<Self, CryptoError> {
        let invalid = |e: &dyn std::fmt::Display| CryptoError::InvalidKey(e.to_string());
        let (algorithm, kid, encoding, mut public_jwk) = match &private {
            ClientPrivateKey::Rsa(rsa) => {
                let der = rsa.to_pkcs1_der().map_err(|e| invalid(&e))?;
                let n = b64url(rsa.n().to_bytes_be());
                let e = b64url(rsa.e().to_bytes_be());
                (
                    ClientAlgorithm::Rs384,
                    rsa_thumbprint(&n, &e),
                    EncodingKey::from_rsa_der(der.as_bytes()),
                    json!({ "kty": "RSA", "n": n, "e": e }),
                )
            }
            ClientPrivateKey::Ec(ec) => {
                let der = ec.to_pkcs8_der().map_err(|e| invalid(&e))?;
                let point = ec.public_key().to_encoded_point(false);
                let (Some(x), Some(y)) = (point.x(), point.y()) else {
                    return Err(CryptoError::InvalidKey(
                        "P-384 public key is the identity".to_owned(),
                    ));
                };
                let (x, y) = (b64url(x), b64url(y));
                (
                    ClientAlgorithm::Es384,
                    ec_thumbprint("P-384", &x, &y),
                    EncodingKey::from_ec_der(der.as_bytes()),
                    json!({ "kty": "EC", "crv": "P-384", "x": x, "y": y }),
                )
            }
        };
        if let Some(jwk) = public_jwk.as_object_mut() {
            jwk.insert("kid".to_owned(), json!(kid));
            jwk.insert("alg".to_owned(), json!(algorithm.name()));
            jwk.insert("use".to_owned(), json!("sig"));
        }
        Ok(Self {
            algorithm,
            kid,
            private,
            encoding,
            public_jwk,
        })
    }

    /// The key as PKCS#8 PEM, for the client to keep.
    pub fn to_pkcs8_pem(&self) -> Result<String, CryptoError> {
        let pem = match &self.private {
            ClientPrivateKey::Rsa(rsa) => rsa.to_pkcs8_pem(LineEnding::LF),
            ClientPrivateKey::Ec(ec) => ec.to_pkcs8_pem(LineEnding::LF),
        };
        pem.map(|pem| pem.as_str().to_owned())
            .map_err(|e| CryptoError::InvalidKey(e.to_string()))
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> ClientAlgorithm {
        self.algorithm
    }

    /// The key id, its RFC 7638 thumbprint.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (`kty`, `n`/`e` or `crv`/`x`/`y`, `kid`, `alg`, `use: sig`).
    pub fn public_jwk(&self) -> Value {
        self.public_jwk.clone()
    }

    /// The JWK Set to register for the client: `{"keys": [public_jwk]}`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk] })
    }

    /// Signs arbitrary claims with this key, header `alg`, `kid` and `typ: JWT`. For building
    /// deliberately wrong assertions in tests; clients use [`sign_client_assertion`].
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, CryptoError> {
        let mut header = Header::new(self.algorithm.jws());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| CryptoError::Signing(e.to_string()))
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Signs a client assertion for `client_id` to post to `token_url`: `iss` = `sub` =
/// `client_id`, `aud` = `token_url`, the given `jti` (unique per assertion) and `exp` (at most
/// five minutes ahead).
pub fn sign_client_assertion(
    key: &ClientKey,
    client_id: &str,
    token_url: &str,
    jti: &str,
    exp: i64,
) -> Result<String, CryptoError> {
    key.sign_jwt(&json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": exp,
        "jti": jti,
    }))
}
