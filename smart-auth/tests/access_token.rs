//! Access tokens and id_tokens: signing, the bearer-token check with its refusals, the cache,
//! key rotation and the published JWKS.

use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde_json::{Value, json};
use smart_auth::keys::{KeyRing, SigningKey};
use smart_auth::token::{
    AccessClaims, CLOCK_SKEW_SECS, IdClaims, TokenError, TokenVerifier, sign_access_token,
    sign_id_token,
};

const ISSUER: &str = "https://telemed.example/auth";
const FHIR_BASE: &str = "https://telemed.example/fhir";
const NOW: i64 = 1_750_000_000;

// RSA key generation is slow in a debug build: two keys serve every test.
static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate().unwrap());
static OTHER_KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate().unwrap());

fn ring() -> KeyRing {
    KeyRing::new(KEY.clone(), Vec::new())
}

fn verifier() -> TokenVerifier {
    TokenVerifier::new(&ring(), ISSUER, FHIR_BASE)
}

fn claims() -> AccessClaims {
    AccessClaims {
        iss: ISSUER.to_owned(),
        sub: "user-1".to_owned(),
        aud: FHIR_BASE.to_owned(),
        exp: NOW + 3600,
        iat: NOW,
        jti: "jti-1".to_owned(),
        client_id: "app-1".to_owned(),
        scope: "launch/patient patient/Observation.rs openid fhirUser".to_owned(),
        patient: Some("p-1".to_owned()),
        encounter: None,
        fhir_user: Some("Patient/p-1".to_owned()),
        sid: Some("grant-1".to_owned()),
    }
}

fn token(claims: &AccessClaims) -> String {
    sign_access_token(&ring(), claims).unwrap()
}

/// Signs any claims with `key` under any header, as an attacker holding that key (or a
/// careless issuer) could.
fn sign_raw(key: &SigningKey, header: &Header, claims: &Value) -> String {
    let pem = key.to_pkcs8_pem().unwrap();
    let der = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .unwrap()
        .to_pkcs1_der()
        .unwrap();
    jsonwebtoken::encode(header, claims, &EncodingKey::from_rsa_der(der.as_bytes())).unwrap()
}

fn at_jwt_header(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("at+jwt".to_owned());
    header.kid = Some(kid.to_owned());
    header
}

fn claims_json() -> Value {
    serde_json::to_value(claims()).unwrap()
}

fn segment(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

#[test]
fn signed_token_verifies_to_its_claims() {
    let verified = verifier().verify(&token(&claims()), NOW).unwrap();
    assert_eq!(*verified, claims());
}

#[test]
fn token_header_is_rs256_with_kid_and_at_jwt_type() {
    let header = jsonwebtoken::decode_header(token(&claims())).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref(), header.typ.as_deref()),
        (Algorithm::RS256, Some(KEY.kid()), Some("at+jwt"))
    );
}

#[test]
fn claims_serialise_fhir_user_and_omit_absent_context() {
    let json = serde_json::to_value(claims()).unwrap();
    assert_eq!(json["fhirUser"], "Patient/p-1");
    assert!(json.get("encounter").is_none(), "{json}");
}

#[test]
fn expired_token_is_refused() {
    let token = token(&claims());
    let at = claims().exp + CLOCK_SKEW_SECS;
    assert_eq!(
        verifier().verify(&token, at).unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn token_within_clock_skew_of_exp_verifies() {
    let token = token(&claims());
    let at = claims().exp + CLOCK_SKEW_SECS - 1;
    assert!(verifier().verify(&token, at).is_ok());
}

#[test]
fn token_for_another_audience_is_refused() {
    let token = token(&AccessClaims {
        aud: "https://other.example/fhir".to_owned(),
        ..claims()
    });
    assert_eq!(
        verifier().verify(&token, NOW).unwrap_err(),
        TokenError::WrongAudience
    );
}

#[test]
fn token_from_another_issuer_is_refused() {
    let token = token(&AccessClaims {
        iss: "https://evil.example".to_owned(),
        ..claims()
    });
    assert_eq!(
        verifier().verify(&token, NOW).unwrap_err(),
        TokenError::WrongIssuer
    );
}

#[test]
fn audience_array_containing_the_fhir_base_verifies() {
    let mut claims = claims_json();
    claims["aud"] = json!(["https://other.example", FHIR_BASE]);
    let token = sign_raw(&KEY, &at_jwt_header(KEY.kid()), &claims);
    assert_eq!(verifier().verify(&token, NOW).unwrap().aud, FHIR_BASE);
}

#[test]
fn audience_array_without_the_fhir_base_is_refused() {
    let mut claims = claims_json();
    claims["aud"] = json!(["https://other.example"]);
    let token = sign_raw(&KEY, &at_jwt_header(KEY.kid()), &claims);
    assert_eq!(
        verifier().verify(&token, NOW).unwrap_err(),
        TokenError::WrongAudience
    );
}

#[test]
fn token_without_exp_is_refused() {
    let mut claims = claims_json();
    claims.as_object_mut().unwrap().remove("exp");
    let token = sign_raw(&KEY, &at_jwt_header(KEY.kid()), &claims);
    assert_eq!(
        verifier().verify(&token, NOW).unwrap_err(),
        TokenError::MissingClaim("exp")
    );
}

#[test]
fn token_before_its_nbf_is_refused() {
    let mut claims = claims_json();
    claims["nbf"] = json!(NOW + 60);
    let token = sign_raw(&KEY, &at_jwt_header(KEY.kid()), &claims);
    assert_eq!(
        verifier().verify(&token, NOW).unwrap_err(),
        TokenError::NotYetValid
    );
}

#[test]
fn tampered_payload_is_refused() {
    let token = token(&claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut payload = claims_json();
    payload["scope"] = json!("system/*.cruds");
    parts[1] = segment(&payload);
    assert_eq!(
        verifier().verify(&parts.join("."), NOW).unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn alg_none_token_is_refused() {
    let header = json!({ "alg": "none", "typ": "at+jwt", "kid": KEY.kid() });
    let token = format!("{}.{}.", segment(&header), segment(&claims_json()));
    assert_eq!(
        verifier().verify(&token, NOW).unwrap_err(),
        TokenError::UnsupportedAlgorithm
    );
}

#[test]
fn hs256_token_keyed_with_the_public_key_is_refused() {
    // The classic confusion: a verifier that takes `alg` from the token would check this HMAC
    // with the (public) RSA key's bytes as the secret, and accept it.
    let public_pem = rsa::RsaPrivateKey::from_pkcs8_pem(&KEY.to_pkcs8_pem().unwrap())
        .unwrap()
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("at+jwt".to_owned());
    header.kid = Some(KEY.kid().to_owned());
    let token = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        verifier().verify(&token, NOW).unwrap_err(),
        TokenError::UnsupportedAlgorithm
    );
}

#[test]
fn token_from_an_unknown_key_is_refused() {
    let foreign =
        sign_access_token(&KeyRing::new(OTHER_KEY.clone(), Vec::new()), &claims()).unwrap();
    assert_eq!(
        verifier().verify(&foreign, NOW).unwrap_err(),
        TokenError::UnknownKey
    );
}

#[test]
fn token_signed_by_another_key_under_our_kid_is_refused() {
    let forged = sign_raw(&OTHER_KEY, &at_jwt_header(KEY.kid()), &claims_json());
    assert_eq!(
        verifier().verify(&forged, NOW).unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn token_without_kid_is_refused() {
    let mut header = at_jwt_header(KEY.kid());
    header.kid = None;
    let token = sign_raw(&KEY, &header, &claims_json());
    assert_eq!(
        verifier().verify(&token, NOW).unwrap_err(),
        TokenError::UnknownKey
    );
}

#[test]
fn id_token_is_not_taken_for_an_access_token() {
    let id_token = sign_id_token(&ring(), &id_claims()).unwrap();
    assert_eq!(
        verifier().verify(&id_token, NOW).unwrap_err(),
        TokenError::NotAnAccessToken
    );
}

#[test]
fn token_with_a_critical_header_extension_is_refused() {
    let mut header = at_jwt_header(KEY.kid());
    header.crit = Some(vec!["exp".to_owned()]);
    let token = sign_raw(&KEY, &header, &claims_json());
    assert!(matches!(
        verifier().verify(&token, NOW).unwrap_err(),
        TokenError::Malformed(_)
    ));
}

#[test]
fn garbage_is_malformed() {
    assert!(matches!(
        verifier().verify("not.a.jwt", NOW).unwrap_err(),
        TokenError::Malformed(_)
    ));
}

#[test]
fn repeated_token_is_answered_from_the_cache() {
    let verifier = verifier();
    let token = token(&claims());
    let first = verifier.verify(&token, NOW).unwrap();
    let second = verifier.verify(&token, NOW + 1).unwrap();
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn cached_token_is_refused_once_expired() {
    let verifier = verifier();
    let token = token(&claims());
    verifier.verify(&token, NOW).unwrap();
    let at = claims().exp + CLOCK_SKEW_SECS;
    assert_eq!(
        verifier.verify(&token, at).unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn cache_holds_no_more_than_its_capacity() {
    let verifier = verifier().with_cache_capacity(4);
    for i in 0..10 {
        let token = token(&AccessClaims {
            jti: format!("jti-{i}"),
            ..claims()
        });
        verifier.verify(&token, NOW).unwrap();
    }
    assert!(
        verifier.cached_tokens() <= 4,
        "{}",
        verifier.cached_tokens()
    );
}

#[test]
fn token_evicted_from_the_cache_still_verifies() {
    let verifier = verifier().with_cache_capacity(2);
    let first = token(&claims());
    verifier.verify(&first, NOW).unwrap();
    for i in 0..4 {
        let other = token(&AccessClaims {
            jti: format!("jti-{i}"),
            ..claims()
        });
        verifier.verify(&other, NOW).unwrap();
    }
    assert_eq!(*verifier.verify(&first, NOW).unwrap(), claims());
}

#[test]
fn token_signed_before_a_rotation_verifies_with_the_retired_key() {
    let before = token(&claims());
    let mut ring = ring();
    ring.rotate(OTHER_KEY.clone());
    let verifier = TokenVerifier::new(&ring, ISSUER, FHIR_BASE);
    assert!(verifier.verify(&before, NOW).is_ok());
}

#[test]
fn after_a_rotation_tokens_are_signed_with_the_new_key() {
    let mut ring = ring();
    ring.rotate(OTHER_KEY.clone());
    let header = jsonwebtoken::decode_header(sign_access_token(&ring, &claims()).unwrap()).unwrap();
    assert_eq!(header.kid.as_deref(), Some(OTHER_KEY.kid()));
}

#[test]
fn jwks_lists_active_then_retired_public_keys_only() {
    let ring = KeyRing::new(KEY.clone(), vec![OTHER_KEY.clone()]);
    let jwks = ring.jwks();
    let keys = jwks["keys"].as_array().unwrap();
    let kids: Vec<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [KEY.kid(), OTHER_KEY.kid()]);
    for key in keys {
        let mut members: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "e", "kid", "kty", "n", "use"]);
    }
}

#[test]
fn removed_retired_key_no_longer_verifies() {
    let before = token(&claims());
    let mut ring = ring();
    ring.rotate(OTHER_KEY.clone());
    assert!(ring.remove_retired(KEY.kid()));
    let verifier = TokenVerifier::new(&ring, ISSUER, FHIR_BASE);
    assert_eq!(
        verifier.verify(&before, NOW).unwrap_err(),
        TokenError::UnknownKey
    );
}

#[test]
fn pem_round_trip_keeps_the_key() {
    let again = SigningKey::from_pkcs8_pem(&KEY.to_pkcs8_pem().unwrap()).unwrap();
    let token = sign_access_token(&KeyRing::new(again.clone(), Vec::new()), &claims()).unwrap();
    assert_eq!(
        (again.kid(), verifier().verify(&token, NOW).is_ok()),
        (KEY.kid(), true)
    );
}

#[test]
fn pem_that_is_not_a_key_is_refused() {
    assert!(
        SigningKey::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err()
    );
}

#[test]
fn debug_output_shows_no_key_material() {
    let debug = format!("{:?}", *KEY);
    assert_eq!(debug, format!("SigningKey {{ kid: {:?}, .. }}", KEY.kid()));
}

fn id_claims() -> IdClaims {
    IdClaims {
        iss: ISSUER.to_owned(),
        sub: "user-1".to_owned(),
        aud: "app-1".to_owned(),
        exp: NOW + 300,
        iat: NOW,
        fhir_user: Some("https://telemed.example/fhir/Patient/p-1".to_owned()),
        nonce: Some("n-0S6_WzA2Mj".to_owned()),
        auth_time: Some(NOW - 10),
    }
}

#[test]
fn id_token_verifies_with_the_published_jwks_as_an_app_would() {
    let id_token = sign_id_token(&ring(), &id_claims()).unwrap();
    let header = jsonwebtoken::decode_header(&id_token).unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(ring().jwks()).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
    validation.set_audience(&["app-1"]);
    validation.validate_exp = false;
    let decoded = jsonwebtoken::decode::<Value>(
        &id_token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap();
    assert_eq!(
        (
            decoded.claims["fhirUser"].as_str(),
            decoded.claims["nonce"].as_str()
        ),
        (
            Some("https://telemed.example/fhir/Patient/p-1"),
            Some("n-0S6_WzA2Mj")
        )
    );
}
