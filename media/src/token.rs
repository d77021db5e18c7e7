//! Short-lived media tokens: the ticket a participant shows when joining a room.
//!
//! A token binds one participant, with one role, to one Encounter until an expiry. The server
//! that hands out tokens (FHIR `Encounter/{id}/$join`) and the SFU that checks them share a
//! [`MediaTokenKey`]; nothing else is needed to verify one, so an SFU node does not call back to
//! the API on every join.
//!
//! Wire form: `base64url(json claims) "." base64url(HMAC-SHA256(key, first part))`, both parts
//! without padding. The MAC covers the encoded claims exactly as sent, so verification never
//! depends on re-serialising JSON. The claims are readable by whoever holds the token (they carry
//! ids, never names), but cannot be changed without the key.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted: the output size of SHA-256, below which HMAC-SHA256 is weaker
/// than its hash.
pub const MIN_SECRET_LEN: usize = 32;

/// Tokens longer than this are refused before any decoding, so a hostile peer cannot make the
/// server allocate or hash large inputs. Real tokens are a few hundred bytes.
const MAX_TOKEN_LEN: usize = 4096;

/// Length of an HMAC-SHA256 tag.
const MAC_LEN: usize = 32;

/// The secret that mints and verifies media tokens.
///
/// `Debug` does not print the secret.
#[derive(Clone)]
pub struct MediaTokenKey(Vec<u8>);

impl std::fmt::Debug for MediaTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaTokenKey(..)")
    }
}

impl MediaTokenKey {
    /// A key from a configured secret (shared by the API nodes and SFU nodes of a deployment).
    ///
    /// Refuses secrets shorter than [`MIN_SECRET_LEN`] bytes with [`TokenError::WeakSecret`].
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(TokenError::WeakSecret);
        }
        Ok(Self(secret.to_vec()))
    }

    /// A random 32-byte key from the operating system's generator, for a single node where the
    /// same process mints and verifies.
    pub fn generate() -> Self {
        let mut secret = vec![0u8; MIN_SECRET_LEN];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self(secret)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; `new` guarantees ours is long enough to be strong.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }

    /// Signs `claims` into a token.
    pub fn mint(&self, claims: &MediaClaims) -> String {
        // Serialising a struct of strings, an enum and an integer cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        self.sign_payload(&json)
    }

    fn sign_payload(&self, json: &[u8]) -> String {
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{tag}")
    }

    /// Checks a token's signature (in constant time) and expiry at `now`, and returns its claims.
    ///
    /// The signature is checked before the claims are parsed, so nothing an attacker wrote is
    /// interpreted unless it was signed with this key. A token is expired from the second `exp`
    /// on (`now >= exp`).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<MediaClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        if payload.is_empty() || tag.contains('.') {
            return Err(TokenError::Malformed);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        if tag.len() != MAC_LEN {
            return Err(TokenError::Malformed);
        }
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;

        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: MediaClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;

        // A clock before 1970 is a broken clock; treating it as 0 keeps every token valid
        // rather than panicking, and such a clock breaks TLS long before it reaches here.
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// What a media token says: who may join which room, as what, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaClaims {
    /// The Encounter id; the room is keyed by it.
    pub encounter: String,
    /// The participant's id within the Encounter (a FHIR reference or opaque id, never a name).
    pub participant: String,
    /// What the participant is in the visit.
    pub role: Role,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
}

/// A participant's part in a visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The patient being seen.
    Patient,
    /// The clinician.
    Practitioner,
    /// A language or sign-language interpreter.
    Interpreter,
    /// A family member or carer (FHIR RelatedPerson).
    RelatedPerson,
}

/// Why a token was refused, or a key not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of this form (wrong shape, bad base64, bad claims, too long).
    #[error("media token is malformed")]
    Malformed,
    /// The signature does not match: tampered, or minted with another key.
    #[error("media token signature is invalid")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("media token has expired")]
    Expired,
    /// The secret given for a key is shorter than 32 bytes.
    #[error("media token secret must be at least 32 bytes")]
    WeakSecret,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn key() -> MediaTokenKey {
        MediaTokenKey::new(&[7u8; 32]).expect("32 bytes is enough")
    }

    fn claims() -> MediaClaims {
        MediaClaims {
            encounter: "enc-1".into(),
            participant: "Practitioner/p-9".into(),
            role: Role::Practitioner,
            exp: NOW + 300,
        }
    }

    #[test]
    fn minted_token_verifies_to_its_claims() {
        let token = key().mint(&claims());
        assert_eq!(key().verify(&token, at(NOW)), Ok(claims()));
    }

    #[test]
    fn role_is_kebab_case_on_the_wire() {
        let mut c = claims();
        c.role = Role::RelatedPerson;
        let token = key().mint(&c);
        let (payload, _) = token.split_once('.').expect("two parts");
        let json = URL_SAFE_NO_PAD.decode(payload).expect("base64url");
        let value: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(value["role"], "related-person");
    }

    #[test]
    fn short_secret_is_refused() {
        assert_eq!(
            MediaTokenKey::new(&[1u8; 31]).map(|_| ()),
            Err(TokenError::WeakSecret)
        );
        assert_eq!(
            MediaTokenKey::new(b"").map(|_| ()),
            Err(TokenError::WeakSecret)
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", key());
        assert!(!shown.contains('7'), "{shown}");
    }

    #[test]
    fn generated_keys_differ_and_do_not_verify_each_other() {
        let a = MediaTokenKey::generate();
        let b = MediaTokenKey::generate();
        let token = a.mint(&claims());
        assert_eq!(a.verify(&token, at(NOW)), Ok(claims()));
        assert_eq!(b.verify(&token, at(NOW)), Err(TokenError::BadSignature));
    }

    #[test]
    fn token_from_another_key_is_refused() {
        let other = MediaTokenKey::new(&[8u8; 32]).expect("key");
        let token = other.mint(&claims());
        assert_eq!(key().verify(&token, at(NOW)), Err(TokenError::BadSignature));
    }

    #[test]
    fn changed_claims_are_refused() {
        let token = key().mint(&claims());
        let (_, tag) = token.split_once('.').expect("two parts");
        let mut forged = claims();
        forged.encounter = "enc-2".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
        let tampered = format!("{forged_payload}.{tag}");
        assert_eq!(
            key().verify(&tampered, at(NOW)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let token = key().mint(&claims());
        for i in 0..token.len() {
            for bit in 0..7 {
                let mut bytes = token.clone().into_bytes();
                bytes[i] ^= 1 << bit;
                let Ok(changed) = String::from_utf8(bytes) else {
                    continue;
                };
                // A flip in the last character of an unpadded base64 part can land in the
                // unused low bits; the base64 decoder refuses those as non-canonical.
                let result = key().verify(&changed, at(NOW));
                assert!(
                    matches!(
                        result,
                        Err(TokenError::BadSignature | TokenError::Malformed)
                    ),
                    "flip of bit {bit} at {i} gave {result:?}"
                );
            }
        }
    }

    #[test]
    fn expiry_is_exclusive() {
        let token = key().mint(&claims());
        assert!(key().verify(&token, at(NOW + 299)).is_ok());
        assert_eq!(
            key().verify(&token, at(NOW + 300)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            key().verify(&token, at(NOW + 10_000)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn clock_before_epoch_does_not_panic() {
        let token = key().mint(&claims());
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(key().verify(&token, before), Ok(claims()));
    }

    #[test]
    fn malformed_shapes_are_refused_without_panic() {
        let good = key().mint(&claims());
        let (payload, tag) = good.split_once('.').expect("two parts");
        let cases = [
            String::new(),
            ".".into(),
            "..".into(),
            "abc".into(),
            payload.to_string(),
            format!("{payload}."),
            format!(".{tag}"),
            format!("{payload}.{tag}."),
            format!("{payload}.{tag}.{tag}"),
            format!("{payload}..{tag}"),
            format!("{payload}.{}", &tag[..tag.len() - 2]),
            format!("{payload}.{tag}AA"),
            format!("{payload}.{tag}="),
            format!("{payload}=.{tag}"),
            format!("{payload}.!!!!"),
            format!("{payload}.\u{e9}\u{e9}"),
            format!("\u{1F600}.{tag}"),
            "\0.\0".into(),
            " ".repeat(10),
            "a".repeat(MAX_TOKEN_LEN + 1),
            format!("{}.{tag}", "A".repeat(MAX_TOKEN_LEN)),
        ];
        for case in &cases {
            let result = key().verify(case, at(NOW));
            assert!(
                matches!(
                    result,
                    Err(TokenError::Malformed | TokenError::BadSignature)
                ),
                "{case:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn signed_but_invalid_claims_are_malformed() {
        // Only reachable by someone holding the key; still must not panic or pass.
        let payloads: [&[u8]; 9] = [
            b"",
            b"not json",
            b"{}",
            b"[]",
            b"null",
            br#"{"encounter":"e","participant":"p","role":"surgeon","exp":1900000000}"#,
            br#"{"encounter":"e","participant":"p","role":"patient","exp":-1}"#,
            br#"{"encounter":"e","participant":"p","role":"patient","exp":"1900000000"}"#,
            br#"{"encounter":"e","participant":"p","role":"patient","exp":1900000000,"admin":true}"#,
        ];
        for payload in payloads {
            let token = key().sign_payload(payload);
            assert_eq!(
                key().verify(&token, at(NOW)),
                Err(TokenError::Malformed),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        let non_utf8 = key().sign_payload(&[0xff, 0xfe, 0x00]);
        assert_eq!(key().verify(&non_utf8, at(NOW)), Err(TokenError::Malformed));
    }

    #[test]
    fn signed_valid_claims_parse() {
        // Guards the case above: the same shape with valid values does verify, so the
        // refusals there come from the values, not from `sign_payload`.
        let token = key().sign_payload(
            br#"{"encounter":"e","participant":"p","role":"interpreter","exp":1900000000}"#,
        );
        let claims = key().verify(&token, at(NOW)).expect("valid");
        assert_eq!(claims.role, Role::Interpreter);
        assert_eq!(claims.exp, 1_900_000_000);
    }
}
