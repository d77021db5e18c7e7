//! The server's signing keys: RSA-2048, RS256, named by their RFC 7638 thumbprint.
//!
//! Access tokens and id_tokens are signed with the [`KeyRing`]'s active key and verified with
//! any key in the ring, so a key can be rotated without cutting off the tokens it signed: the
//! new key becomes active, the old one stays as retired until the last token it signed has
//! expired (an hour at most), then it is dropped. [`KeyRing::jwks`] publishes every key in the
//! ring so that other verifiers (apps checking an id_token) can follow the same rotation.

use jsonwebtoken::{DecodingKey, EncodingKey};
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::{CryptoError, b64url};

/// Size of the keys [`SigningKey::generate`] makes, and the least [`SigningKey::from_pkcs8_pem`]
/// accepts.
pub const RSA_BITS: usize = 2048;

/// One RSA private key the server signs tokens with, with its `kid`.
///
/// The `kid` is the key's RFC 7638 JWK thumbprint (SHA-256, base64url): it is derived from the
/// public key, so it never needs storing and two nodes holding the same key agree on it.
/// `Debug` shows the `kid` only.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    private: RsaPrivateKey,
    /// `jsonwebtoken`'s form of `private` (PKCS#1 DER), made once.
    encoding: EncodingKey,
    /// The public half, as the verifier uses it.
    decoding: DecodingKey,
    /// Modulus and exponent, base64url, as the JWK shows them.
    n: String,
    e: String,
}

impl SigningKey {
    /// Generates a new RSA-2048 key from the operating system's randomness.
    ///
    /// This takes a noticeable time (about half a second in a release build): do it at
    /// start-up or on rotation, never on a request.
    pub fn generate() -> Result<Self, CryptoError> {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
            .map_err(|e| CryptoError::KeyGeneration(e.to_string()))?;
        Self::from_private(private)
    }

    /// Reads a key stored by [`SigningKey::to_pkcs8_pem`] (PKCS#8, `BEGIN PRIVATE KEY`).
    ///
    /// Refuses keys that are not RSA or shorter than [`RSA_BITS`].
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| CryptoError::InvalidKey(format!("not an RSA PKCS#8 PEM key: {e}")))?;
        if private.size() * 8 < RSA_BITS {
            return Err(CryptoError::InvalidKey(format!(
                "RSA key of {} bits, at least {RSA_BITS} needed",
                private.size() * 8
            )));
        }
        Self::from_private(private)
    }

    fn from_private(private: RsaPrivateKey) -> Result<Self, CryptoError> {
        let der = private
            .to_pkcs1_der()
            .map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
        let n_bytes = private.n().to_bytes_be();
        let e_bytes = private.e().to_bytes_be();
        let n = b64url(&n_bytes);
        let e = b64url(&e_bytes);
        Ok(Self {
            kid: rsa_thumbprint(&n, &e),
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            decoding: DecodingKey::from_rsa_raw_components(&n_bytes, &e_bytes),
            private,
            n,
            e,
        })
    }

    /// The key as PKCS#8 PEM, for storing it. This is the private key: keep it as secret as
    /// the database's encryption keys.
    pub fn to_pkcs8_pem(&self) -> Result<String, CryptoError> {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .map_err(|e| CryptoError::InvalidKey(e.to_string()))
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK: `kty`, `n`, `e`, `kid`, `alg: RS256`, `use: sig`.
    pub fn public_jwk(&self) -> serde_json::Value {
        json!({
            "kty": "RSA",
            "n": self.n,
            "e": self.e,
            "kid": self.kid,
            "alg": "RS256",
            "use": "sig",
        })
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The server's keys: one active key that signs, and retired keys that still verify.
#[derive(Clone, Debug)]
pub struct KeyRing {
    active: SigningKey,
    retired: Vec<SigningKey>,
}

impl KeyRing {
    /// A ring that signs with `active` and also verifies with `retired` (the keys rotated out
    /// less than a token lifetime ago). A retired key with the active key's `kid` is dropped.
    pub fn new(active: SigningKey, retired: Vec<SigningKey>) -> Self {
        let mut ring = Self {
            active,
            retired: Vec::with_capacity(retired.len()),
        };
        for key in retired {
            if ring.get(key.kid()).is_none() {
                ring.retired.push(key);
            }
        }
        ring
    }

    /// The key new tokens are signed with.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// The keys that verify but no longer sign, most recently retired first.
    pub fn retired(&self) -> &[SigningKey] {
        &self.retired
    }

    /// Makes `next` the active key; the active key becomes the first retired one.
    pub fn rotate(&mut self, next: SigningKey) {
        let previous = std::mem::replace(&mut self.active, next);
        self.retired.retain(|key| key.kid() != self.active.kid());
        if previous.kid() != self.active.kid() {
            self.retired.insert(0, previous);
        }
    }

    /// Drops the retired key named `kid`, once no unexpired token can carry it. Returns whether
    /// there was one; the active key is never dropped.
    pub fn remove_retired(&mut self, kid: &str) -> bool {
        let before = self.retired.len();
        self.retired.retain(|key| key.kid() != kid);
        self.retired.len() != before
    }

    /// The key named `kid`, active or retired.
    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.keys().find(|key| key.kid() == kid)
    }

    /// Every key, the active one first.
    pub fn keys(&self) -> impl Iterator<Item = &SigningKey> {
        std::iter::once(&self.active).chain(&self.retired)
    }

    /// The JWK Set served at `jwks_uri`: `{"keys": [...]}`, public parts only, active key
    /// first.
    pub fn jwks(&self) -> serde_json::Value {
        json!({ "keys": self.keys().map(SigningKey::public_jwk).collect::<Vec<_>>() })
    }
}

/// RFC 7638 thumbprint of an RSA public key given as base64url `n` and `e`.
pub(crate) fn rsa_thumbprint(n: &str, e: &str) -> String {
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2). base64url values need no
    // JSON escaping, so formatting them in is exact.
    thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#))
}

/// RFC 7638 thumbprint of an EC public key.
pub(crate) fn ec_thumbprint(crv: &str, x: &str, y: &str) -> String {
    thumbprint(&format!(
        r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#
    ))
}

fn thumbprint(canonical_jwk: &str) -> String {
    b64url(Sha256::digest(canonical_jwk.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 §3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            rsa_thumbprint(n, "AQAB"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
