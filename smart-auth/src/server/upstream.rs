//! Login delegated to an upstream OpenID Connect provider (a hospital's own identity provider):
//! the login page offers "Sign in with …"; `GET /auth/upstream/start` sends the browser to the
//! provider (authorization code flow with PKCE and a nonce); `GET /auth/upstream/callback`
//! redeems the code, verifies the id_token (signature by the provider's published keys,
//! issuer, audience, expiry, nonce), and signs in the local user whose upstream subject is the
//! token's `sub` (`telemed user add … --upstream-sub …`). Nobody without such a user gets in.
//! The provider handles its own second factor, so a user signed in this way is not asked for
//! telemed's.
//!
//! The provider's metadata is discovered (OpenID Connect Discovery 1.0) at the first upstream
//! login, not at start, so that telemed starts while the provider is down.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::authorize;
use super::pages::error_page;
use super::{AuthEvent, AuthServer, ClientAddress};

/// An upstream OpenID Connect provider, as configured.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The provider's issuer URL (its metadata is at `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    /// telemed's client_id at the provider.
    pub client_id: String,
    /// telemed's client secret at the provider, if it gave one.
    pub client_secret: Option<String>,
    /// What the login page calls it ("Sign in with {name}").
    pub name: String,
}

/// The provider's metadata, discovered once.
#[derive(Default)]
pub struct Upstream {
    metadata: OnceCell<CoreProviderMetadata>,
}

impl Upstream {
    async fn metadata(
        &self,
        config: &UpstreamConfig,
        http: &reqwest::Client,
    ) -> anyhow::Result<&CoreProviderMetadata> {
        self.metadata
            .get_or_try_init(|| async {
                let issuer = IssuerUrl::new(config.issuer.clone())?;
                Ok(CoreProviderMetadata::discover_async(issuer, http).await?)
            })
            .await
    }
}

/// The client of the provider, for the callback at `redirect`.
fn client(
    metadata: &CoreProviderMetadata,
    config: &UpstreamConfig,
    redirect: &str,
) -> anyhow::Result<
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
> {
    Ok(CoreClient::from_provider_metadata(
        metadata.clone(),
        ClientId::new(config.client_id.clone()),
        config.client_secret.clone().map(ClientSecret::new),
    )
    .set_redirect_uri(RedirectUrl::new(redirect.to_owned())?))
}

fn unavailable(error: anyhow::Error) -> Response {
    tracing::warn!(error = %error, "upstream OpenID provider unavailable");
    error_page(
        StatusCode::BAD_GATEWAY,
        "The sign-in service cannot be reached. Try again later, or sign in with a password.",
    )
}

/// The query of `GET /auth/upstream/start`.
#[derive(Deserialize)]
pub struct StartQuery {
    request: String,
}

/// `GET /auth/upstream/start?request=…`: to the provider, remembering the PKCE verifier and
/// nonce with the authorization request, whose id is the `state`.
pub async fn get_start(
    State(server): State<Arc<AuthServer>>,
    Query(query): Query<StartQuery>,
) -> Response {
    let Some(config) = &server.config.upstream else {
        return error_page(StatusCode::NOT_FOUND, "No upstream sign-in is configured.");
    };
    let mut step = match authorize::load_request(&server, &query.request).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let metadata = match server.upstream.metadata(config, &server.http).await {
        Ok(metadata) => metadata,
        Err(error) => return unavailable(error),
    };
    let callback = server.config.endpoint("upstream/callback");
    let client = match client(metadata, config, &callback) {
        Ok(client) => client,
        Err(error) => return unavailable(error),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let state = step.id.clone();
    let (url, _, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state),
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".to_owned()))
        .set_pkce_challenge(challenge)
        .url();
    step.pending.upstream = Some(UpstreamLogin {
        verifier: verifier.secret().clone(),
        nonce: nonce.secret().clone(),
    });
    authorize::redirect_to(&server, step, url.as_str()).await
}

/// What the authorization request remembers of an upstream login in progress.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct UpstreamLogin {
    verifier: String,
    nonce: String,
}

/// The query of `GET /auth/upstream/callback`.
#[derive(Deserialize)]
pub struct CallbackQuery {
    state: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// `GET /auth/upstream/callback?code=…&state=…`: the provider's answer.
pub async fn get_callback(
    State(server): State<Arc<AuthServer>>,
    ClientAddress(address): ClientAddress,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let Some(config) = &server.config.upstream else {
        return error_page(StatusCode::NOT_FOUND, "No upstream sign-in is configured.");
    };
    let mut step = match authorize::load_request(&server, &query.state).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let Some(login) = step.pending.upstream.take() else {
        return error_page(StatusCode::BAD_REQUEST, "This sign-in did not go upstream.");
    };
    let failed = |detail: &str| AuthEvent {
        kind: "login",
        success: false,
        client_id: Some(step.client.client_id.clone()),
        address: address.clone(),
        detail: Some(format!("upstream: {detail}")),
        ..AuthEvent::default()
    };
    let Some(code) = query.code.filter(|_| query.error.is_none()) else {
        let event = failed("the provider refused");
        return authorize::refuse_login(&server, step, event, "The sign-in was not completed.")
            .await;
    };
    let subject = match redeem(&server, config, &login, code).await {
        Ok(subject) => subject,
        Err(error) => {
            tracing::warn!(error = %error, "upstream login failed");
            let event = failed("the id_token did not verify");
            return authorize::refuse_login(&server, step, event, "The sign-in failed.").await;
        }
    };
    let user = match server.store.user_by_upstream_sub(&subject).await {
        Ok(user) => user,
        Err(error) => return authorize::internal_page(error),
    };
    let Some(user) = user else {
        let event = failed("no local user has this upstream subject");
        return authorize::refuse_login(
            &server,
            step,
            event,
            "This account has no access to telemed yet. Ask your administrator.",
        )
        .await;
    };
    // The provider handled its own second factor.
    authorize::signed_in(&server, step, user, address, true).await
}

/// Redeems the code at the provider and verifies its id_token; the subject it names.
async fn redeem(
    server: &AuthServer,
    config: &UpstreamConfig,
    login: &UpstreamLogin,
    code: String,
) -> anyhow::Result<String> {
    let metadata = server.upstream.metadata(config, &server.http).await?;
    let client = client(
        metadata,
        config,
        &server.config.endpoint("upstream/callback"),
    )?;
    let response = client
        .exchange_code(AuthorizationCode::new(code))?
        .set_pkce_verifier(PkceCodeVerifier::new(login.verifier.clone()))
        .request_async(&server.http)
        .await?;
    let id_token = response
        .id_token()
        .ok_or_else(|| anyhow::anyhow!("the provider sent no id_token"))?;
    let claims = id_token.claims(
        &client.id_token_verifier(),
        &Nonce::new(login.nonce.clone()),
    )?;
    Ok(claims.subject().as_str().to_owned())
}
