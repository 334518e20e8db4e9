//! The identity provider the tests use (Keycloak with deploy/keycloak/, started by scripts/test)
//! issues what the services will check: each demo user's token names the issuer, order-watch as
//! audience and the user's role in `realm_access.roles`.

use serde_json::Value;
use testkit::oidc::{Issuer, unverified_claims};

/// The test realms' public client with the password grant.
const CLIENT: &str = "hallmark-cli";

fn roles(claims: &Value) -> Vec<&str> {
    claims["realm_access"]["roles"]
        .as_array()
        .map(|roles| roles.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn audiences(claims: &Value) -> Vec<&str> {
    match &claims["aud"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn each_demo_user_gets_a_token_naming_its_role_and_order_watch_as_audience() {
    let issuer = Issuer::required();
    // Each role, and what it holds through the composite roles: admin holds developer, support
    // and workshop, developer holds support, so "may read" is a check for `support` alone.
    let expected: [(&str, &[&str]); 4] = [
        ("support", &["support"]),
        ("developer", &["developer", "support"]),
        ("workshop", &["workshop"]),
        ("admin", &["admin", "developer", "support", "workshop"]),
    ];
    for (user, held) in expected {
        let token = issuer
            .password_token(CLIENT, user, user)
            .await
            .unwrap_or_else(|error| panic!("a token for {user}: {error:#}"));
        let claims = unverified_claims(&token).expect("a JWT");
        assert_eq!(
            claims["iss"],
            issuer.url(),
            "{user}'s token names its issuer"
        );
        assert!(
            audiences(&claims).contains(&"order-watch"),
            "{user}'s token is for order-watch: aud is {}",
            claims["aud"]
        );
        assert_eq!(claims["preferred_username"], user);
        let mut got = roles(&claims);
        got.sort_unstable();
        assert_eq!(got, held, "{user}'s realm roles");
        let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
        assert_eq!(lifetime, 300, "access tokens live five minutes");
    }
}

#[tokio::test]
async fn a_wrong_password_gets_no_token() {
    let issuer = Issuer::required();
    let refused = issuer
        .password_token(CLIENT, "support", "not-the-password")
        .await;
    let error = format!("{:#}", refused.expect_err("a wrong password is refused"));
    assert!(error.contains("invalid_grant"), "{error}");
    assert!(
        !error.contains("not-the-password"),
        "the error repeats no password: {error}"
    );
}

#[tokio::test]
async fn the_other_realm_issues_the_same_user_a_token_of_another_issuer() {
    let issuer = Issuer::required();
    let other = Issuer::other_required();
    assert_ne!(issuer.url(), other.url());
    let token = other
        .password_token(CLIENT, "developer", "developer")
        .await
        .expect("a token of the other realm");
    let claims = unverified_claims(&token).expect("a JWT");
    assert_eq!(claims["iss"], other.url());
    assert!(audiences(&claims).contains(&"order-watch"));
    assert!(roles(&claims).contains(&"developer"));
}

#[tokio::test]
async fn alertmanagers_service_identity_holds_the_alert_senders_role_alone_and_is_for_order_watch()
{
    let issuer = Issuer::required();
    let token = issuer
        .alertmanager_token()
        .await
        .unwrap_or_else(|error| panic!("a token of the client alertmanager: {error:#}"));
    let claims = unverified_claims(&token).expect("a JWT");
    assert_eq!(claims["iss"], issuer.url());
    assert_eq!(claims["azp"], "alertmanager");
    assert!(
        audiences(&claims).contains(&"order-watch"),
        "aud is {}",
        claims["aud"]
    );
    assert_eq!(
        roles(&claims),
        ["alert-sender"],
        "no person's role, and none of theirs holds it (each user's roles are checked above)"
    );
    let wrong = issuer.client_token("alertmanager", "not-the-secret").await;
    let error = format!("{:#}", wrong.expect_err("a wrong secret is refused"));
    assert!(!error.contains("not-the-secret"), "{error}");
}
