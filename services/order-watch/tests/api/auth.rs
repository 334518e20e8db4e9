//! Who may use order-watch, against a running Keycloak (the realm in `deploy/keycloak/`,
//! started by `scripts/test`): every refusal a forged or misdirected token deserves.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use order_watch::auth::{AuthConfig, OidcConfig};
use serde_json::{Value, json};
use testkit::oidc::Issuer;

use crate::helpers::{TestApp, spawn_app_with_auth};

const CLI: &str = "hallmark-cli";

fn issuer() -> Issuer {
    Issuer::required()
}

fn oidc(issuer: &str) -> AuthConfig {
    AuthConfig::Oidc(OidcConfig {
        token: access::IssuerConfig {
            issuer: issuer.to_owned(),
            audience: "order-watch".to_owned(),
            roles_claim: "realm_access.roles".to_owned(),
            leeway: Duration::from_secs(5),
        },
        client_id: "order-watch".to_owned(),
        public_url: None,
    })
}

async fn app() -> (TestApp, Issuer) {
    let issuer = issuer();
    (spawn_app_with_auth(oidc(issuer.url())).await, issuer)
}

async fn me(app: &TestApp, token: Option<&str>) -> (u16, Value, Option<String>) {
    let mut request = reqwest::Client::new().get(app.api("/api/me"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        challenge,
    )
}

#[tokio::test]
async fn each_role_is_let_in_as_itself_and_the_answer_says_who_is_logged_in() {
    let (app, issuer) = app().await;
    for user in ["support", "developer", "admin"] {
        let token = issuer.password_token(CLI, user, user).await.unwrap();
        let (status, body, _) = me(&app, Some(&token)).await;
        assert_eq!(status, 200, "{user}: {body}");
        assert_eq!(body["name"], user);
        assert_eq!(body["role"], user);
    }
    app.stop().await;
}

#[tokio::test]
async fn without_a_token_the_api_and_the_ui_ask_for_one_and_health_answers_anyway() {
    let (app, _) = app().await;
    let (status, body, challenge) = me(&app, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"hallmark\""));
    for path in ["/", "/api/orders/stuck", "/api/incidents", "/api/config"] {
        let response = reqwest::get(app.api(path)).await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    assert_eq!(
        reqwest::get(app.api("/health")).await.unwrap().status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn forged_tampered_and_foreign_tokens_are_refused() {
    let (app, issuer) = app().await;
    let real = issuer
        .password_token(CLI, "support", "support")
        .await
        .unwrap();
    let mut forged = issuer.forgeries(&real, &["admin"]).await.unwrap();
    let payload = testkit::oidc::unverified_claims(&real).unwrap();
    // Signed by a key of our own under a key id the provider never issued.
    let stranger = {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("made-up-key".to_owned());
        jsonwebtoken::encode(
            &header,
            &payload,
            &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    // A token of the same user from another realm of the same server.
    let other = Issuer::other_required()
        .password_token(CLI, "developer", "developer")
        .await
        .unwrap();

    forged.push(("unknown key id", stranger));
    forged.push(("another realm", other));
    for (what, token) in &forged {
        let (status, body, challenge) = me(&app, Some(token)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"hallmark\", error=\"invalid_token\""),
            "{what}"
        );
        assert!(
            !body.to_string().contains("signature") && !body.to_string().contains("kid"),
            "{what}: the answer says no more than that the token is not valid: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let issuer = issuer();
    let AuthConfig::Oidc(mut config) = oidc(issuer.url()) else {
        unreachable!()
    };
    config.token.audience = "some-other-service".to_owned();
    let app = spawn_app_with_auth(AuthConfig::Oidc(config)).await;
    let token = issuer.password_token(CLI, "admin", "admin").await.unwrap();
    assert_eq!(me(&app, Some(&token)).await.0, 401);
    app.stop().await;
}

#[tokio::test]
async fn an_identity_provider_that_cannot_be_reached_lets_nobody_in_and_breaks_no_machine_endpoint()
{
    let issuer = issuer();
    let token = issuer.password_token(CLI, "admin", "admin").await.unwrap();
    // Nothing listens there: order-watch can never fetch a key to check the token with.
    let app = spawn_app_with_auth(oidc("http://127.0.0.1:9/realms/hallmark")).await;
    assert_eq!(me(&app, Some(&token)).await.0, 401);
    assert_eq!(
        reqwest::get(app.api("/health")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(app.api("/metrics")).await.unwrap().status(),
        200
    );
    let export = app
        .export(&testkit::otlp::build::request("shop-api", Vec::new()))
        .await;
    assert!(export.status().is_success(), "{}", export.status());
    app.stop().await;
}

#[tokio::test]
async fn only_a_developer_or_an_admin_may_change_the_configuration_and_the_audit_names_them() {
    let (app, issuer) = app().await;
    let change = |token: String, seconds: u64| {
        reqwest::Client::new()
            .patch(app.api("/api/config"))
            .bearer_auth(token)
            .json(&json!({ "stuck_after_seconds": { "pricing": seconds } }))
            .send()
    };
    let support = issuer
        .password_token(CLI, "support", "support")
        .await
        .unwrap();
    let refused = change(support.clone(), 60).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    let developer = issuer
        .password_token(CLI, "developer", "developer")
        .await
        .unwrap();
    assert_eq!(change(developer, 60).await.unwrap().status(), 200);
    let admin = issuer.password_token(CLI, "admin", "admin").await.unwrap();
    assert_eq!(change(admin, 90).await.unwrap().status(), 200);

    // Support reads who changed what.
    let changes: Value = reqwest::Client::new()
        .get(app.api("/api/config/changes"))
        .bearer_auth(support)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by: Vec<&str> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["changed_by"].as_str().unwrap())
        .collect();
    assert_eq!(by.len(), 2, "{changes}");
    assert!(by[0].starts_with("admin ("), "{by:?}");
    assert!(by[1].starts_with("developer ("), "{by:?}");
    app.stop().await;
}

#[tokio::test]
async fn support_reads_the_reconciliation_but_only_a_developer_or_an_admin_may_ask_for_a_repair() {
    let (app, issuer) = app().await;
    let order = uuid::Uuid::now_v7();
    let repair = |token: String| {
        reqwest::Client::new()
            .post(app.api(&format!("/api/reconciliation/{order}/repair")))
            .bearer_auth(token)
            .send()
    };
    let support = issuer
        .password_token(CLI, "support", "support")
        .await
        .unwrap();
    let read = reqwest::Client::new()
        .get(app.api("/api/reconciliation"))
        .bearer_auth(&support)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let refused = repair(support).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    // Let in, the developer and the admin hear that order-watch compares no such order.
    for (user, password) in [("developer", "developer"), ("admin", "admin")] {
        let token = issuer.password_token(CLI, user, password).await.unwrap();
        let answer = repair(token).await.unwrap();
        assert_eq!(answer.status(), 404, "{user}");
    }
    app.stop().await;
}

/// A browser's cookies, kept by hand: Keycloak's are `Secure` even over plain HTTP on
/// loopback, which a browser accepts there and an HTTP client's cookie store may not.
#[derive(Default)]
struct Jar(std::collections::BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((name, value)) = pair.split_once('=') {
                self.0.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_browser_logs_in_through_the_identity_provider_and_its_session_is_safe_from_other_sites()
{
    let (app, _) = app().await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut watch = Jar::default();
    let mut provider = Jar::default();

    // The page sends a browser that is not logged in to log in, and back to the page after.
    let page = browser
        .get(app.api("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303, "{page:?}");
    assert_eq!(location(&page), "/login?next=%2F");
    let login = browser.get(app.api("/login?next=/")).send().await.unwrap();
    assert_eq!(login.status(), 303);
    let authorize = location(&login);
    assert!(
        authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    assert!(authorize.contains("client_id=order-watch"), "{authorize}");

    // The provider's login form, filled in as the developer.
    let form = browser.get(&authorize).send().await.unwrap();
    provider.take(&form);
    let html = form.text().await.unwrap();
    let action = html
        .split("action=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a login form")
        .replace("&amp;", "&");
    let answer = browser
        .post(&action)
        .header("cookie", provider.header())
        .form(&[("username", "developer"), ("password", "developer")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 302, "the provider sends the browser back");
    let callback = location(&answer);
    assert!(
        callback.starts_with(&app.api("/auth/callback?")),
        "{callback}"
    );

    let landed = browser.get(&callback).send().await.unwrap();
    assert_eq!(landed.status(), 303);
    assert_eq!(location(&landed), "/");
    let set_cookie = landed.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    watch.take(&landed);

    // The same answer again is refused: a login state is good once.
    let replayed = browser.get(&callback).send().await.unwrap();
    assert_eq!(replayed.status(), 400);

    // Logged in: the page and the API answer, and say who is there.
    let page = browser
        .get(app.api("/"))
        .header("accept", "text/html")
        .header("cookie", watch.header())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let me: Value = browser
        .get(app.api("/api/me"))
        .header("cookie", watch.header())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "developer");
    assert_eq!(me["role"], "developer");
    let csrf = me["csrf_token"].as_str().expect("a CSRF token").to_owned();

    // A change with the cookie alone (what another site could make a browser send) is refused.
    let change = |csrf: Option<&str>| {
        let mut request = browser
            .patch(app.api("/api/config"))
            .header("cookie", watch.header())
            .json(&json!({ "stuck_after_seconds": { "pricing": 600 } }));
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send()
    };
    assert_eq!(change(None).await.unwrap().status(), 403);
    assert_eq!(change(Some("guessed")).await.unwrap().status(), 403);
    assert_eq!(change(Some(&csrf)).await.unwrap().status(), 200);

    // Logging out ends the session.
    let out = browser
        .post(app.api("/logout"))
        .header("cookie", watch.header())
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = browser
        .get(app.api("/api/me"))
        .header("cookie", watch.header())
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    app.stop().await;
}

/// `method` on `path` with `token` (none: no `Authorization`) and JSON `body`.
async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    app.call(method, path, token, body.as_ref()).await
}

fn firing(fingerprint: &str) -> Value {
    json!({ "alerts": [{
        "status": "firing",
        "labels": { "alertname": "ServiceDown", "service": "mes-api" },
        "annotations": { "summary": "MES does not answer" },
        "fingerprint": fingerprint,
    }] })
}

#[tokio::test]
async fn alerts_are_taken_only_from_the_alert_senders_service_identity() {
    let (app, issuer) = app().await;
    let post = reqwest::Method::POST;
    let (status, body) = call(&app, post.clone(), "/api/alerts", None, Some(firing("a"))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    // A person, even an admin, does not send alerts.
    for user in ["support", "admin"] {
        let token = issuer.password_token(CLI, user, user).await.unwrap();
        let (status, body) = call(
            &app,
            post.clone(),
            "/api/alerts",
            Some(&token),
            Some(firing("a")),
        )
        .await;
        assert_eq!(status, 403, "{user}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let machine = issuer.alertmanager_token().await.unwrap();
    let (status, body) = call(
        &app,
        post.clone(),
        "/api/alerts",
        Some(&machine),
        Some(firing("a")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["opened"], 1);
    let (status, body) = call(
        &app,
        post.clone(),
        "/api/alerts",
        Some(&machine),
        Some(json!({ "alerts": "none" })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_body");

    // The machine reads nothing, and the alert is an incident people read.
    let (status, _) = call(
        &app,
        reqwest::Method::GET,
        "/api/incidents",
        Some(&machine),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let support = issuer
        .password_token(CLI, "support", "support")
        .await
        .unwrap();
    let (_, incidents) = call(
        &app,
        reqwest::Method::GET,
        "/api/incidents",
        Some(&support),
        None,
    )
    .await;
    assert_eq!(incidents[0]["labels"]["alertname"], "ServiceDown");
    app.stop().await;
}

#[tokio::test]
async fn only_an_admin_erases_trace_data_acknowledges_and_closes_incidents_and_reads_the_erasures()
{
    let (app, issuer) = app().await;
    let machine = issuer.alertmanager_token().await.unwrap();
    let (status, body) = call(
        &app,
        reqwest::Method::POST,
        "/api/alerts",
        Some(&machine),
        Some(firing("b")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let admin = issuer.password_token(CLI, "admin", "admin").await.unwrap();
    let (_, incidents) = call(
        &app,
        reqwest::Method::GET,
        "/api/incidents",
        Some(&admin),
        None,
    )
    .await;
    let incident = incidents[0]["id"].as_str().unwrap().to_owned();
    let unknown_order = uuid::Uuid::now_v7();
    let actions = [
        (
            reqwest::Method::POST,
            format!("/api/incidents/{incident}/acknowledge"),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/orders/{unknown_order}"),
        ),
        (reqwest::Method::GET, "/api/erasures".to_owned()),
        (
            reqwest::Method::POST,
            format!("/api/incidents/{incident}/close"),
        ),
    ];
    let developer = issuer
        .password_token(CLI, "developer", "developer")
        .await
        .unwrap();
    for (method, path) in &actions {
        let (status, body) = call(&app, method.clone(), path, None, None).await;
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        let (status, body) = call(&app, method.clone(), path, Some(&developer), None).await;
        assert_eq!(status, 403, "{method} {path} as developer: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    // The developer changed nothing.
    let (_, incidents) = call(
        &app,
        reqwest::Method::GET,
        "/api/incidents",
        Some(&developer),
        None,
    )
    .await;
    assert!(incidents[0]["acknowledged_at"].is_null(), "{incidents}");

    let mut answers = Vec::new();
    for (method, path) in &actions {
        answers.push(call(&app, method.clone(), path, Some(&admin), None).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [200, 404, 200, 200], "{answers:?}");
    let (_, closed) = &answers[3];
    assert!(
        closed["acknowledged_by"]
            .as_str()
            .unwrap()
            .starts_with("admin ("),
        "{closed}"
    );
    assert!(
        closed["closed_by"].as_str().unwrap().starts_with("admin ("),
        "{closed}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_developer_changes_masking_and_the_webhook_but_a_change_touching_the_retention_needs_an_admin()
 {
    let (app, issuer) = app().await;
    let patch = reqwest::Method::PATCH;
    let developer = issuer
        .password_token(CLI, "developer", "developer")
        .await
        .unwrap();
    let (status, config) = call(
        &app,
        patch.clone(),
        "/api/config",
        Some(&developer),
        Some(json!({ "masking": { "mask_keys": ["customer.vat_id"] }, "webhook": null })),
    )
    .await;
    assert_eq!(status, 200, "{config}");
    assert!(config["webhook"].is_null());

    // Touching the retention is refused whole, with what it touched besides.
    let (status, body) = call(
        &app,
        patch.clone(),
        "/api/config",
        Some(&developer),
        Some(json!({ "retention_days": 7, "masking": { "mask_keys": [] } })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retention_days needs the admin role"),
        "{body}"
    );
    let (_, config) = call(
        &app,
        reqwest::Method::GET,
        "/api/config",
        Some(&developer),
        None,
    )
    .await;
    assert_eq!(config["retention_days"], 30);
    assert_eq!(config["masking"]["mask_keys"], json!(["customer.vat_id"]));

    let admin = issuer.password_token(CLI, "admin", "admin").await.unwrap();
    let (status, config) = call(
        &app,
        patch.clone(),
        "/api/config",
        Some(&admin),
        Some(json!({ "retention_days": 7 })),
    )
    .await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["retention_days"], 7);
    let (status, body) = call(
        &app,
        patch.clone(),
        "/api/config",
        Some(&admin),
        Some(json!({ "retention_days": 0 })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (_, changes) = call(
        &app,
        reqwest::Method::GET,
        "/api/config/changes",
        Some(&developer),
        None,
    )
    .await;
    let by: Vec<&str> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["changed_by"].as_str().unwrap())
        .collect();
    assert_eq!(by.len(), 2, "{changes}");
    assert!(by[0].starts_with("admin (") && by[1].starts_with("developer ("));
    app.stop().await;
}
