//! SMART Backend Services client authentication: assertions signed by [`ClientKey`] and by a
//! third party (the SMART App Launch IG's worked examples), and every rule that refuses one.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use smart_auth::assertion::{
    AssertionError, ClientAlgorithm, ClientKey, VerifiedAssertion, sign_client_assertion,
    verify_client_assertion,
};

const CLIENT_ID: &str = "bulk-exporter";
const TOKEN_URL: &str = "https://telemed.example/auth/token";
const NOW: i64 = 1_750_000_000;

static RS384_KEY: LazyLock<ClientKey> =
    LazyLock::new(|| ClientKey::generate(ClientAlgorithm::Rs384).unwrap());
static ES384_KEY: LazyLock<ClientKey> =
    LazyLock::new(|| ClientKey::generate(ClientAlgorithm::Es384).unwrap());

fn claims() -> Value {
    json!({
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": TOKEN_URL,
        "exp": NOW + 240,
        "jti": "jti-1",
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn verify(assertion: &str, key: &ClientKey) -> Result<VerifiedAssertion, AssertionError> {
    verify_client_assertion(assertion, CLIENT_ID, TOKEN_URL, &key.jwks(), NOW)
}

fn verify_claims(claims: &Value) -> Result<VerifiedAssertion, AssertionError> {
    verify(&RS384_KEY.sign_jwt(claims).unwrap(), &RS384_KEY)
}

fn segment(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

#[test]
fn rs384_assertion_is_accepted() {
    let assertion =
        sign_client_assertion(&RS384_KEY, CLIENT_ID, TOKEN_URL, "jti-1", NOW + 240).unwrap();
    assert_eq!(
        verify(&assertion, &RS384_KEY),
        Ok(VerifiedAssertion {
            jti: "jti-1".to_owned(),
            exp: NOW + 240
        })
    );
}

#[test]
fn es384_assertion_is_accepted() {
    let assertion =
        sign_client_assertion(&ES384_KEY, CLIENT_ID, TOKEN_URL, "jti-2", NOW + 240).unwrap();
    assert_eq!(
        verify(&assertion, &ES384_KEY),
        Ok(VerifiedAssertion {
            jti: "jti-2".to_owned(),
            exp: NOW + 240
        })
    );
}

#[test]
fn assertion_header_names_alg_kid_and_jwt_type() {
    let assertion = sign_client_assertion(&ES384_KEY, CLIENT_ID, TOKEN_URL, "j", NOW + 60).unwrap();
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref(), header.typ.as_deref()),
        (Algorithm::ES384, Some(ES384_KEY.kid()), Some("JWT"))
    );
}

#[test]
fn exp_six_minutes_ahead_is_refused() {
    let claims = with(claims(), "exp", json!(NOW + 360));
    assert_eq!(verify_claims(&claims), Err(AssertionError::ExpiresTooLate));
}

#[test]
fn exp_five_minutes_ahead_is_accepted() {
    let claims = with(claims(), "exp", json!(NOW + 300));
    assert!(verify_claims(&claims).is_ok());
}

#[test]
fn expired_assertion_is_refused() {
    let claims = with(claims(), "exp", json!(NOW - 60));
    assert_eq!(verify_claims(&claims), Err(AssertionError::Expired));
}

#[test]
fn assertion_without_exp_is_refused() {
    assert_eq!(
        verify_claims(&without(claims(), "exp")),
        Err(AssertionError::MissingClaim("exp"))
    );
}

#[test]
fn assertion_without_jti_is_refused() {
    assert_eq!(
        verify_claims(&without(claims(), "jti")),
        Err(AssertionError::MissingClaim("jti"))
    );
}

#[test]
fn assertion_for_another_audience_is_refused() {
    let claims = with(claims(), "aud", json!("https://telemed.example/fhir"));
    assert_eq!(verify_claims(&claims), Err(AssertionError::WrongAudience));
}

#[test]
fn audience_array_containing_the_token_url_is_accepted() {
    let claims = with(
        claims(),
        "aud",
        json!(["https://elsewhere.example", TOKEN_URL]),
    );
    assert!(verify_claims(&claims).is_ok());
}

#[test]
fn issuer_other_than_the_client_is_refused() {
    let claims = with(claims(), "iss", json!("someone-else"));
    assert_eq!(verify_claims(&claims), Err(AssertionError::WrongIssuer));
}

#[test]
fn subject_other_than_the_issuer_is_refused() {
    let claims = with(claims(), "sub", json!("someone-else"));
    assert_eq!(verify_claims(&claims), Err(AssertionError::WrongSubject));
}

#[test]
fn assertion_before_its_nbf_is_refused() {
    let claims = with(claims(), "nbf", json!(NOW + 60));
    assert_eq!(verify_claims(&claims), Err(AssertionError::NotYetValid));
}

#[test]
fn tampered_assertion_is_refused() {
    let assertion = RS384_KEY.sign_jwt(&claims()).unwrap();
    let mut parts: Vec<String> = assertion.split('.').map(str::to_owned).collect();
    parts[1] = segment(&with(claims(), "exp", json!(NOW + 290)));
    assert_eq!(
        verify(&parts.join("."), &RS384_KEY),
        Err(AssertionError::BadSignature)
    );
}

#[test]
fn assertion_signed_by_another_key_under_the_registered_kid_is_refused() {
    let impostor = ClientKey::generate(ClientAlgorithm::Es384).unwrap();
    let header = json!({ "alg": "ES384", "typ": "JWT", "kid": ES384_KEY.kid() });
    let genuine = impostor.sign_jwt(&claims()).unwrap();
    let signature = genuine.rsplit('.').next().unwrap();
    let forged = format!("{}.{}.{signature}", segment(&header), segment(&claims()));
    assert_eq!(
        verify(&forged, &ES384_KEY),
        Err(AssertionError::BadSignature)
    );
}

#[test]
fn alg_none_is_refused() {
    let header = json!({ "alg": "none", "typ": "JWT", "kid": RS384_KEY.kid() });
    let assertion = format!("{}.{}.", segment(&header), segment(&claims()));
    assert_eq!(
        verify(&assertion, &RS384_KEY),
        Err(AssertionError::UnsupportedAlgorithm)
    );
}

#[test]
fn hs256_keyed_with_the_public_jwk_is_refused() {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(RS384_KEY.kid().to_owned());
    let secret = serde_json::to_vec(&RS384_KEY.public_jwk()).unwrap();
    let assertion =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
    assert_eq!(
        verify(&assertion, &RS384_KEY),
        Err(AssertionError::UnsupportedAlgorithm)
    );
}

#[test]
fn unknown_kid_is_refused() {
    let assertion = RS384_KEY.sign_jwt(&claims()).unwrap();
    assert_eq!(
        verify_client_assertion(&assertion, CLIENT_ID, TOKEN_URL, &ES384_KEY.jwks(), NOW),
        Err(AssertionError::NoMatchingKey)
    );
}

#[test]
fn key_of_the_wrong_type_for_alg_is_not_used() {
    // The RSA key's JWK relabelled with the EC key's kid: an ES384 assertion must not be
    // checked against it.
    let mut jwk = RS384_KEY.public_jwk();
    jwk["kid"] = json!(ES384_KEY.kid());
    jwk.as_object_mut().unwrap().remove("alg");
    let assertion = ES384_KEY.sign_jwt(&claims()).unwrap();
    assert_eq!(
        verify_client_assertion(
            &assertion,
            CLIENT_ID,
            TOKEN_URL,
            &json!({ "keys": [jwk] }),
            NOW
        ),
        Err(AssertionError::NoMatchingKey)
    );
}

#[test]
fn jwks_with_both_keys_picks_each_by_kid() {
    let jwks = json!({ "keys": [RS384_KEY.public_jwk(), ES384_KEY.public_jwk()] });
    let rs = RS384_KEY.sign_jwt(&claims()).unwrap();
    let es = ES384_KEY.sign_jwt(&claims()).unwrap();
    assert!(verify_client_assertion(&rs, CLIENT_ID, TOKEN_URL, &jwks, NOW).is_ok());
    assert!(verify_client_assertion(&es, CLIENT_ID, TOKEN_URL, &jwks, NOW).is_ok());
}

/// An ES384 assertion signed by `key` whose header has no `kid`.
fn without_kid(key: &ClientKey, claims: &Value) -> String {
    use p384::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
    let secret = p384::SecretKey::from_pkcs8_pem(&key.to_pkcs8_pem().unwrap()).unwrap();
    let der = secret.to_pkcs8_der().unwrap();
    let mut header = Header::new(Algorithm::ES384);
    header.kid = None;
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap()
}

#[test]
fn assertion_without_kid_uses_the_single_fitting_key() {
    let assertion = without_kid(&ES384_KEY, &claims());
    let jwks = json!({ "keys": [RS384_KEY.public_jwk(), ES384_KEY.public_jwk()] });
    assert!(verify_client_assertion(&assertion, CLIENT_ID, TOKEN_URL, &jwks, NOW).is_ok());
}

#[test]
fn assertion_without_kid_and_two_fitting_keys_is_refused() {
    let other = ClientKey::generate(ClientAlgorithm::Es384).unwrap();
    let assertion = without_kid(&ES384_KEY, &claims());
    let jwks = json!({ "keys": [other.public_jwk(), ES384_KEY.public_jwk()] });
    assert_eq!(
        verify_client_assertion(&assertion, CLIENT_ID, TOKEN_URL, &jwks, NOW),
        Err(AssertionError::AmbiguousKey)
    );
}

#[test]
fn typ_other_than_jwt_is_refused() {
    let header = json!({ "alg": "RS384", "typ": "at+jwt", "kid": RS384_KEY.kid() });
    let assertion = format!("{}.{}.AAAA", segment(&header), segment(&claims()));
    assert_eq!(
        verify(&assertion, &RS384_KEY),
        Err(AssertionError::WrongType)
    );
}

#[test]
fn jwks_that_is_not_a_jwk_set_is_refused() {
    let assertion = RS384_KEY.sign_jwt(&claims()).unwrap();
    assert_eq!(
        verify_client_assertion(
            &assertion,
            CLIENT_ID,
            TOKEN_URL,
            &RS384_KEY.public_jwk(),
            NOW
        ),
        Err(AssertionError::InvalidJwks)
    );
}

#[test]
fn error_messages_do_not_repeat_client_input() {
    let claims = with(claims(), "iss", json!("evil<script>"));
    let message = verify_claims(&claims).unwrap_err().to_string();
    assert_eq!(message, "client assertion iss must be the client_id");
}

#[test]
fn client_key_pem_round_trip_keeps_kid_and_algorithm() {
    for key in [&*RS384_KEY, &*ES384_KEY] {
        let again = ClientKey::from_pkcs8_pem(&key.to_pkcs8_pem().unwrap()).unwrap();
        assert_eq!(
            (again.kid(), again.algorithm()),
            (key.kid(), key.algorithm())
        );
    }
}

#[test]
fn client_jwks_has_public_members_only() {
    let jwk = ES384_KEY.public_jwk();
    let mut members: Vec<&str> = jwk
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    members.sort_unstable();
    assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
}

// The SMART App Launch IG's worked example (example-authorization-jwks-and-signatures),
// signed by python-jose with the IG's sample keys: an independent signer.
const IG_CLIENT: &str = "https://bili-monitor.example.com";
const IG_TOKEN_URL: &str = "https://authorize.smarthealthit.org/token";
const IG_EXP: i64 = 1_422_568_860;
const IG_RS384: &str = "eyJhbGciOiJSUzM4NCIsImtpZCI6ImVlZTlmMTdhM2I1OThmZDg2NDE3YTk4MGI1OTFmYmU2IiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2JpbGktbW9uaXRvci5leGFtcGxlLmNvbSIsInN1YiI6Imh0dHBzOi8vYmlsaS1tb25pdG9yLmV4YW1wbGUuY29tIiwiYXVkIjoiaHR0cHM6Ly9hdXRob3JpemUuc21hcnRoZWFsdGhpdC5vcmcvdG9rZW4iLCJleHAiOjE0MjI1Njg4NjAsImp0aSI6InJhbmRvbS1ub24tcmV1c2FibGUtand0LWlkLTEyMyJ9.D5kAqNJwaftCqsRdVVQDq6dMBxuGFOF5svQJuXbcYp-oEyg5qOwK9ZE5cGLTHxqwfpUPNzRKgVdIGuhawAA-8g0s1nKQae8CuKs33hhKh4J34xSEwW3MYs1gwI4GHTtR_g3kYSX6QCi14Ed3GIAvYFgqRqt-gD7sewMUXL4SB8I8cXcDbCqVizm7uPVhjw6QaeKZygJJ_AVLhM4Xs9LTy4HAhdCHpN0FrNmCerUIYJvHDpcod7A0jDmxdoeW1KIBYlhdhQNwjtsTvT1ce4qacN_3KIv_fIzCKLIgDv9eWxkjAtxOmIm8aW5gX9xX7X0nbd0QglIyiic_bZVNNEh0kg";
const IG_ES384: &str = "eyJhbGciOiJFUzM4NCIsImtpZCI6ImNkNTIwMjExZTU2NjFkYmJhMjI1NmY2N2Y2ZDUzZjk3IiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2JpbGktbW9uaXRvci5leGFtcGxlLmNvbSIsInN1YiI6Imh0dHBzOi8vYmlsaS1tb25pdG9yLmV4YW1wbGUuY29tIiwiYXVkIjoiaHR0cHM6Ly9hdXRob3JpemUuc21hcnRoZWFsdGhpdC5vcmcvdG9rZW4iLCJleHAiOjE0MjI1Njg4NjAsImp0aSI6InJhbmRvbS1ub24tcmV1c2FibGUtand0LWlkLTEyMyJ9.ddl5N8dt5PYI_7syKg_dm1wj1LR3dYVztFlTODs6pU1vKH1Zv3d9NctbnAsZ4aZ1K7HE83_fA_hIAL0JsU1GoB7roLmrpj8zfygG9Q1ZBAmKNoR60pyONPZsGTihoR29";

fn ig_jwks() -> Value {
    json!({ "keys": [
        {
            "kty": "RSA",
            "alg": "RS384",
            "n": "wJq2RHIA-7RT6q4go7wjcbHdW7ck7Kz22A8wf-kN7Wi5CWvhFG2_Y7nQp1lDpb2IKMQr-Q4n_vgJ6d5rWPspJpSPY7iffUK4ipQCEbzID5DJ6fQMBZOfCTXyxkuMh3jYGKEF3Ziw2oxbM1H9j-eJAPtrj5stUG6kVoXowegdox-bSjWP0iI5PnkwUNzcekLMug4M3LRluEQgGR9O_BAML6-w3igZ_rZA_gunyrLAMbfmCVaceW5ohLp679kyM7U6W2gDK_NbkDKcINUakVmPeoG5h8RzgGzvGrySR0k0VDFiZv60Ua07DqHTeDGH9e4NV07AECae-oykIj5NDCs3pw",
            "e": "AQAB",
            "key_ops": ["verify"],
            "ext": true,
            "kid": "eee9f17a3b598fd86417a980b591fbe6"
        },
        {
            "kty": "EC",
            "crv": "P-384",
            "x": "pyqburM9y8HPcFhNosDW6ngoVEJitqXi_HJgI5hYqX21PoFDwCbYirGy_o0oapIU",
            "y": "95bxkCnMKoHvgbcPAIAcgzzu8scd81mXfM_IzuJFNfkUNkGYBFGvuEU1KPi5j1ob",
            "key_ops": ["verify"],
            "ext": true,
            "kid": "cd520211e5661dbba2256f67f6d53f97",
            "alg": "ES384"
        }
    ]})
}

#[test]
fn smart_ig_rs384_example_verifies() {
    let verified =
        verify_client_assertion(IG_RS384, IG_CLIENT, IG_TOKEN_URL, &ig_jwks(), IG_EXP - 60);
    assert_eq!(
        verified.map(|v| v.jti),
        Ok("random-non-reusable-jwt-id-123".to_owned())
    );
}

#[test]
fn smart_ig_es384_example_verifies() {
    let verified =
        verify_client_assertion(IG_ES384, IG_CLIENT, IG_TOKEN_URL, &ig_jwks(), IG_EXP - 60);
    assert_eq!(
        verified.map(|v| v.jti),
        Ok("random-non-reusable-jwt-id-123".to_owned())
    );
}

#[test]
fn smart_ig_example_is_refused_by_another_client() {
    assert_eq!(
        verify_client_assertion(
            IG_RS384,
            "bili_monitor",
            IG_TOKEN_URL,
            &ig_jwks(),
            IG_EXP - 60
        ),
        Err(AssertionError::WrongIssuer)
    );
}
