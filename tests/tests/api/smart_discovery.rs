//! SMART discovery (SMART App Launch 2.2 conformance.html): the smart-configuration document,
//! the CapabilityStatement's security extension, and the OpenID Connect metadata and JWK Set
//! that verify an id_token.

use std::collections::BTreeSet;

use reqwest::header::{ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_TYPE};
use serde_json::Value;
use telemed_tests::{AppLaunch, TestApp, spawn_app};

/// The capabilities issue 5 asks the server to declare.
const CAPABILITIES: [&str; 19] = [
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
];

/// `GET {base}/.well-known/smart-configuration` without a token: the response and its body.
async fn smart_configuration(app: &TestApp) -> (reqwest::header::HeaderMap, Value) {
    let response = app
        .anonymous()
        .get(format!("{}/.well-known/smart-configuration", app.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, response.json().await.expect("JSON"))
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

#[tokio::test]
async fn smart_configuration_is_json_open_to_any_origin_without_a_token() {
    let app = spawn_app().await;
    let (headers, _) = smart_configuration(&app).await;
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let content_type = headers[CONTENT_TYPE].to_str().expect("ASCII");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
}

#[tokio::test]
async fn smart_configuration_names_absolute_endpoints_of_this_server() {
    let app = spawn_app().await;
    let (_, config) = smart_configuration(&app).await;
    let expected = [
        ("issuer", app.auth.clone()),
        ("authorization_endpoint", format!("{}/authorize", app.auth)),
        ("token_endpoint", format!("{}/token", app.auth)),
        ("introspection_endpoint", format!("{}/introspect", app.auth)),
        ("revocation_endpoint", format!("{}/revoke", app.auth)),
        ("jwks_uri", format!("{}/jwks", app.auth)),
    ];
    for (field, url) in expected {
        assert_eq!(config[field], url.as_str(), "{field}");
        assert!(url.starts_with("http://127.0.0.1:"), "{field} is absolute");
    }
}

#[tokio::test]
async fn smart_configuration_declares_every_capability_of_the_issue() {
    let app = spawn_app().await;
    let (_, config) = smart_configuration(&app).await;
    let declared = strings(&config["capabilities"]);
    let wanted: BTreeSet<String> = CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    assert_eq!(declared, wanted);
}

#[tokio::test]
async fn smart_configuration_offers_s256_only_and_the_grants_and_client_methods() {
    let app = spawn_app().await;
    let (_, config) = smart_configuration(&app).await;
    assert_eq!(
        config["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        strings(&config["grant_types_supported"]),
        BTreeSet::from(
            ["authorization_code", "client_credentials", "refresh_token"].map(String::from)
        )
    );
    assert_eq!(
        strings(&config["token_endpoint_auth_methods_supported"]),
        BTreeSet::from(
            [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt"
            ]
            .map(String::from)
        )
    );
    assert_eq!(
        config["response_types_supported"],
        serde_json::json!(["code"])
    );
    let algorithms = strings(&config["token_endpoint_auth_signing_alg_values_supported"]);
    assert!(
        algorithms.contains("RS384") && algorithms.contains("ES384"),
        "{algorithms:?}"
    );
    let scopes = strings(&config["scopes_supported"]);
    for scope in [
        "openid",
        "fhirUser",
        "launch",
        "launch/patient",
        "offline_access",
    ] {
        assert!(scopes.contains(scope), "{scope} in {scopes:?}");
    }
}

#[tokio::test]
async fn capability_statement_carries_the_smart_security_extension() {
    let app = spawn_app().await;
    let (_, config) = smart_configuration(&app).await;
    let statement: Value = app
        .anonymous()
        .get(format!("{}/metadata", app.base))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let security = &statement["rest"][0]["security"];
    assert_eq!(
        security["service"][0]["coding"][0]["code"], "SMART-on-FHIR",
        "{security}"
    );
    let uris = security["extension"]
        .as_array()
        .expect("extensions")
        .iter()
        .find(|e| {
            e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
        })
        .expect("the oauth-uris extension");
    let uri = |name: &str| {
        uris["extension"]
            .as_array()
            .expect("inner extensions")
            .iter()
            .find(|e| e["url"] == name)
            .and_then(|e| e["valueUri"].as_str())
            .unwrap_or_else(|| panic!("no {name} in {uris}"))
            .to_owned()
    };
    assert_eq!(uri("authorize"), config["authorization_endpoint"]);
    assert_eq!(uri("token"), config["token_endpoint"]);
    assert_eq!(uri("introspect"), config["introspection_endpoint"]);
    assert_eq!(uri("revoke"), config["revocation_endpoint"]);
}

#[tokio::test]
async fn openid_configuration_leads_to_keys_that_verify_an_id_token() {
    let app = spawn_app().await;
    let patient = app
        .created(&serde_json::json!({"resourceType": "Patient", "name": [{"family": "Pat"}]}))
        .await;
    let patient_id = telemed_tests::id_of(&patient);
    app.register_public_app("oidc-app", "openid fhirUser patient/*.rs launch/patient")
        .await;
    app.register_user("pat", Some(&format!("Patient/{patient_id}")), None)
        .await;
    let tokens = AppLaunch::new(&app, "oidc-app", "pat", "openid fhirUser patient/*.rs")
        .run(&app)
        .await;
    let id_token = tokens.body["id_token"].as_str().expect("an id_token");

    // Discovery from the id_token's own issuer, as an OpenID Connect client does it.
    let issuer = telemed_tests::jwt_claims(id_token)["iss"]
        .as_str()
        .expect("iss")
        .to_owned();
    let metadata: Value = app
        .anonymous()
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(metadata["issuer"], issuer.as_str());
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .anonymous()
        .get(metadata["jwks_uri"].as_str().expect("jwks_uri"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("a JWK Set");
    let header = jsonwebtoken::decode_header(id_token).expect("a JWS header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let jwk = jwks
        .find(header.kid.as_deref().expect("a kid"))
        .expect("the JWK Set has the id_token's key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["oidc-app"]);
    validation.set_issuer(&[issuer.as_str()]);
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("an RSA key");
    jsonwebtoken::decode::<Value>(id_token, &key, &validation).expect("the id_token verifies");
}
