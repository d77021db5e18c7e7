//! CORS for the FHIR API: only the origins a client registered, only with that client's tokens;
//! the public documents from anywhere.

use reqwest::Method;
use telemed_tests::spawn_app;

const APP_ORIGIN: &str = "https://app.example.org";

#[tokio::test]
async fn a_preflight_from_a_registered_origin_is_allowed() {
    let app = spawn_app().await;
    app.other_backend_token("browser-app", "system/*.rs", &[APP_ORIGIN])
        .await;
    let response = app
        .anonymous()
        .request(Method::OPTIONS, format!("{}/Patient", app.base))
        .header("origin", APP_ORIGIN)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap_or("")
            .contains("Authorization")
    );
}

#[tokio::test]
async fn a_preflight_from_an_unknown_origin_is_refused() {
    let app = spawn_app().await;
    let response = app
        .anonymous()
        .request(Method::OPTIONS, format!("{}/Patient", app.base))
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 403);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test]
async fn an_answer_is_readable_only_by_the_origins_of_the_token_s_client() {
    let app = spawn_app().await;
    let token = app
        .other_backend_token("browser-app", "system/*.rs", &[APP_ORIGIN])
        .await;
    let other = app
        .other_backend_token("other-app", "system/*.rs", &["https://other.example.org"])
        .await;
    let ask = |token: String, origin: &'static str| {
        let client = app.client_with_token(&token);
        let url = format!("{}/Patient", app.base);
        async move {
            client
                .get(url)
                .header("origin", origin)
                .send()
                .await
                .expect("sent")
        }
    };
    let own = ask(token.clone(), APP_ORIGIN).await;
    assert_eq!(own.status(), 200);
    assert_eq!(own.headers()["access-control-allow-origin"], APP_ORIGIN);
    // Another client's origin may not read what this client's token fetched.
    let foreign = ask(token, "https://other.example.org").await;
    assert!(
        !foreign
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let theirs = ask(other, APP_ORIGIN).await;
    assert!(!theirs.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn the_public_documents_are_readable_from_anywhere() {
    let app = spawn_app().await;
    for path in ["metadata", ".well-known/smart-configuration"] {
        let response = app
            .anonymous()
            .get(format!("{}/{path}", app.base))
            .header("origin", "https://anyone.example.net")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "*",
            "{path}"
        );
    }
}
