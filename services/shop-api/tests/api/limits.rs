//! Partners' rates tightened for incidents and by hand, against a running Keycloak:
//! order-watch's service identity (`limit-controller`), developers and admins change them;
//! every override lapses unless renewed; an incident's never overrides a person's.

use serde_json::{Value, json};
use testkit::oidc::{Issuer, ORDER_WATCH_SERVICE, PARTNER_ACME, PARTNER_GLOBEX};
use uuid::Uuid;

use crate::helpers::{TestApp, error_code, order_json, spawn_app_with_access};

const CLI: &str = "hallmark-cli";

async fn put(app: &TestApp, partner: &str, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = app
        .client
        .put(format!("{}/api/partner-limits/{partner}", app.address))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn delete(app: &TestApp, partner: &str, token: &str) -> u16 {
    app.client
        .delete(format!("{}/api/partner-limits/{partner}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn listing(app: &TestApp, token: &str) -> Value {
    let response = app
        .client
        .get(format!("{}/api/partner-limits", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The override in force for `partner` in `listing`, if any.
fn override_of<'a>(listing: &'a Value, partner: &str) -> Option<&'a Value> {
    listing["partners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partner_id"] == partner)
        .map(|p| &p["override"])
        .filter(|o| !o.is_null())
}

#[tokio::test]
async fn order_watch_tightens_a_partners_rate_for_an_incident_and_lifting_it_restores_it() {
    let app = spawn_app_with_access(&Issuer::required()).await;
    let issuer = Issuer::required();
    let watch = issuer.machine_token(&ORDER_WATCH_SERVICE).await.unwrap();
    let acme = issuer.machine_token(&PARTNER_ACME).await.unwrap();
    let globex = issuer.machine_token(&PARTNER_GLOBEX).await.unwrap();
    let incident = Uuid::now_v7();

    let body = json!({"rate": "2/1m", "ttl": "5m", "reason": "orders stuck in pricing", "incident": incident});
    let set: Value = put(&app, "acme", Some(&watch), body.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(set["source"], "incident");
    assert_eq!(set["rate"], "2/1m");
    let set_by = set["set_by"].as_str().unwrap();
    assert!(
        set_by.starts_with("service-account-order-watch-service ("),
        "{set}"
    );
    // Setting it again (order-watch renewing it) is the same answer.
    assert_eq!(put(&app, "acme", Some(&watch), body).await.status(), 200);

    for _ in 0..2 {
        let accepted = app.post_order_as(&acme, order_json()).await;
        assert_eq!(accepted.status(), 201);
        assert_eq!(
            accepted.headers()["ratelimit-policy"],
            "\"partner\";q=2;w=60"
        );
    }
    let refused = app.post_order_as(&acme, order_json()).await;
    assert!(refused.headers().contains_key("retry-after"));
    let (status, code, message) = error_code(refused).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"), "{message}");
    assert_eq!(
        app.post_order_as(&globex, order_json()).await.status(),
        201,
        "another partner keeps its rate"
    );
    let limits = listing(&app, &watch).await;
    assert_eq!(
        override_of(&limits, "acme").unwrap()["incident_id"],
        incident.to_string()
    );
    assert_eq!(
        limits["partners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["partner_id"] == "acme")
            .unwrap()["effective"],
        "2/1m"
    );

    assert_eq!(delete(&app, "acme", &watch).await, 204);
    assert_eq!(
        delete(&app, "acme", &watch).await,
        204,
        "lifting again is harmless"
    );
    assert!(override_of(&listing(&app, &watch).await, "acme").is_none());
    assert_eq!(app.post_order_as(&acme, order_json()).await.status(), 201);
}

#[tokio::test]
async fn an_incidents_limit_neither_replaces_nor_lifts_one_a_person_set_and_every_change_is_recorded()
 {
    let issuer = Issuer::required();
    let app = spawn_app_with_access(&issuer).await;
    let watch = issuer.machine_token(&ORDER_WATCH_SERVICE).await.unwrap();
    let developer = issuer
        .password_token(CLI, "developer", "developer")
        .await
        .unwrap();
    let manual = json!({"rate": "1/1m", "ttl": "1h", "reason": "partner's integration misbehaves"});
    let set: Value = put(&app, "acme", Some(&developer), manual)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(set["source"], "manual");
    assert!(
        set["set_by"].as_str().unwrap().starts_with("developer ("),
        "{set}"
    );

    let incident = json!({"rate": "10/1m", "ttl": "5m", "reason": "stuck in pricing", "incident": Uuid::now_v7()});
    let (status, code, message) = error_code(put(&app, "acme", Some(&watch), incident).await).await;
    assert_eq!(
        (status, code.as_str()),
        (409, "manual_limit_in_force"),
        "{message}"
    );
    assert!(message.contains("developer"), "{message}");
    assert_eq!(delete(&app, "acme", &watch).await, 204);
    assert_eq!(
        override_of(&listing(&app, &developer).await, "acme").unwrap()["source"],
        "manual"
    );

    assert_eq!(delete(&app, "acme", &developer).await, 204);
    assert!(override_of(&listing(&app, &developer).await, "acme").is_none());
    let changes: Value = app
        .client
        .get(format!("{}/api/partner-limits/changes", app.address))
        .bearer_auth(&developer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let made: Vec<(&str, &str)> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let by = c["made_by"].as_str().unwrap();
            (
                c["action"].as_str().unwrap(),
                by.split(" (").next().unwrap(),
            )
        })
        .collect();
    assert_eq!(made, [("lift", "developer"), ("set", "developer")]);
}

#[tokio::test]
async fn an_override_nobody_renews_lapses_and_the_configured_rate_applies_again() {
    let issuer = Issuer::required();
    let app = spawn_app_with_access(&issuer).await;
    let watch = issuer.machine_token(&ORDER_WATCH_SERVICE).await.unwrap();
    let acme = issuer.machine_token(&PARTNER_ACME).await.unwrap();
    let body = json!({"rate": "1/1h", "ttl": "1s", "reason": "stuck in pricing", "incident": Uuid::now_v7()});
    assert_eq!(put(&app, "acme", Some(&watch), body).await.status(), 200);
    assert_eq!(app.post_order_as(&acme, order_json()).await.status(), 201);
    assert_eq!(app.post_order_as(&acme, order_json()).await.status(), 429);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(override_of(&listing(&app, &watch).await, "acme").is_none());
    let again = app.post_order_as(&acme, order_json()).await;
    assert_eq!(again.status(), 201, "back to the configured rate");
    // The one order it owed counts as one under the configured 1000/1m, not as an hour.
    let remaining: u32 = again.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .split("r=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining >= 990, "{remaining}");
}

#[tokio::test]
async fn only_developers_admins_and_order_watch_change_limits_and_nonsense_is_refused() {
    let issuer = Issuer::required();
    let app = spawn_app_with_access(&issuer).await;
    let support = issuer
        .password_token(CLI, "support", "support")
        .await
        .unwrap();
    let admin = issuer.password_token(CLI, "admin", "admin").await.unwrap();
    let acme = issuer.machine_token(&PARTNER_ACME).await.unwrap();
    let body = json!({"rate": "5/1m", "reason": "load test"});
    for (who, token, expected) in [
        ("nobody", None, 401),
        ("support", Some(&support), 403),
        ("a partner", Some(&acme), 403),
    ] {
        let (status, _, _) =
            error_code(put(&app, "acme", token.map(String::as_str), body.clone()).await).await;
        assert_eq!(status, expected, "{who}");
    }
    assert!(
        listing(&app, &support).await["partners"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    for (bad, code) in [
        (json!({"rate": "5", "reason": "x"}), "invalid_rate"),
        (
            json!({"rate": "5/1m", "ttl": "30d", "reason": "x"}),
            "invalid_ttl",
        ),
        (json!({"rate": "5/1m", "reason": " "}), "invalid_reason"),
    ] {
        let (status, got, _) = error_code(put(&app, "acme", Some(&admin), bad).await).await;
        assert_eq!((status, got.as_str()), (422, code));
    }
    let (status, code, _) = error_code(put(&app, "a%20b", Some(&admin), body.clone()).await).await;
    assert_eq!((status, code.as_str()), (400, "invalid_partner"));
    let set: Value = put(&app, "acme", Some(&admin), body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(set["source"], "manual");
}
