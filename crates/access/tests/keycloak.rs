//! The gate and a service's own tokens against a running Keycloak (the realm in
//! `deploy/keycloak/`, started by `scripts/test`).

use std::sync::Arc;
use std::time::Duration;

use access::client::ClientCredentials;
use access::{AccessConfig, ClientConfig, Gate, IssuerConfig, Need, ServiceToken};
use axum::Router;
use axum::routing::post;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use testkit::oidc::{Issuer, ORDER_WATCH_SERVICE, PARTNER_ACME};

const CLI: &str = "hallmark-cli";

/// A router with one route behind the gate, `need`ing what the workshop floor's routes need,
/// on a free port of its own: its address.
async fn floor(issuer: &Issuer) -> String {
    let gate = Arc::new(Gate::new(AccessConfig::Oidc(IssuerConfig {
        issuer: issuer.url().to_owned(),
        audience: "crm-api".into(),
        roles_claim: "realm_access.roles".into(),
        leeway: Duration::from_secs(5),
    })));
    gate.prepare("test").await;
    let routes = Router::new().route(
        "/ship",
        post(|identity: axum::Extension<access::Identity>| async move { identity.name.clone() }),
    );
    let app = gate.guard(Need::WORKSHOP, routes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

async fn ship(address: &str, token: Option<&str>) -> (u16, String, Option<String>) {
    let mut request = reqwest::Client::new().post(format!("{address}/ship"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let code = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|body| body["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or(text);
    (status, code, challenge)
}

#[tokio::test]
async fn the_gate_lets_in_the_roles_a_route_needs_and_refuses_everyone_else_in_the_error_shape() {
    let issuer = Issuer::required();
    let address = floor(&issuer).await;
    for user in ["workshop", "admin"] {
        let token = issuer.password_token(CLI, user, user).await.unwrap();
        assert_eq!(ship(&address, Some(&token)).await.1, user, "{user}");
    }
    for user in ["support", "developer"] {
        let token = issuer.password_token(CLI, user, user).await.unwrap();
        let (status, code, challenge) = ship(&address, Some(&token)).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{user}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer error=\"insufficient_scope\"")
        );
    }
    let (status, code, challenge) = ship(&address, None).await;
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"hallmark\""));
    // A partner's token is for Shop only.
    let partner = issuer.machine_token(&PARTNER_ACME).await.unwrap();
    assert_eq!(ship(&address, Some(&partner)).await.0, 401);
    let admin = issuer.password_token(CLI, "admin", "admin").await.unwrap();
    let workshop = issuer
        .password_token(CLI, "workshop", "workshop")
        .await
        .unwrap();
    for (what, forged) in issuer.forgeries(&workshop, &["admin"]).await.unwrap() {
        let (status, _, challenge) = ship(&address, Some(&forged)).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"hallmark\", error=\"invalid_token\"")
        );
    }
    let other = Issuer::other_required();
    let foreign = other
        .password_token(CLI, "developer", "developer")
        .await
        .unwrap();
    assert_eq!(ship(&address, Some(&foreign)).await.0, 401);
    assert_eq!(ship(&address, Some(&admin)).await.0, 200);
}

#[tokio::test]
async fn a_service_token_is_asked_for_once_kept_and_asked_for_again_when_forgotten() {
    let issuer = Issuer::required();
    let tokens = ServiceToken::new(ClientConfig {
        issuer: issuer.url().to_owned(),
        credentials: ClientCredentials {
            client_id: ORDER_WATCH_SERVICE.client_id.to_owned(),
            secret: SecretString::from(ORDER_WATCH_SERVICE.secret()),
        },
    });
    let first = tokens.get().await.unwrap();
    let again = tokens.get().await.unwrap();
    assert_eq!(first.expose_secret(), again.expose_secret(), "kept");
    let claims = testkit::oidc::unverified_claims(first.expose_secret()).unwrap();
    assert!(
        claims["realm_access"]["roles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "status-reader"),
        "{claims}"
    );
    tokens.forget().await;
    // Keycloak's tokens carry their issue time in seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let renewed = tokens.get().await.unwrap();
    assert_ne!(first.expose_secret(), renewed.expose_secret());

    let wrong = ServiceToken::new(ClientConfig {
        issuer: issuer.url().to_owned(),
        credentials: ClientCredentials {
            client_id: ORDER_WATCH_SERVICE.client_id.to_owned(),
            secret: SecretString::from("not-the-secret".to_owned()),
        },
    });
    let err = wrong.get().await.unwrap_err();
    assert!(
        matches!(err, access::client::TokenError::Refused { .. }),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains("not-the-secret"));
}
