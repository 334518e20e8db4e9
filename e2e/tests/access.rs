//! Every order action is authorised: Shop, CRM and MES as real processes taking the tokens of a
//! running Keycloak (the realm in `deploy/keycloak/`, started by `scripts/test`), as
//! `scripts/run` starts them.

use std::collections::BTreeMap;
use std::time::Duration;

use domain::System as Owner;
use e2e::{Service, System, place_order_at, watch::samples};
use order_watch::records::{Records, RecordsConfig};
use serde_json::{Value, json};
use testkit::oidc::{Issuer, ORDER_WATCH_SERVICE, PARTNER_ACME, PARTNER_GLOBEX};

const CLI: &str = "hallmark-cli";

async fn person(issuer: &Issuer, user: &str) -> String {
    issuer.password_token(CLI, user, user).await.unwrap()
}

/// `POST url` with `body` as `token`'s holder: the status and the error code (or the body).
async fn post(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// How many requests `service` refused with `code`, from its `/metrics`.
async fn refused(system: &System, service: Service, code: &str) -> f64 {
    let process = match service {
        Service::Shop => &system.shop,
        Service::Crm => &system.crm,
        Service::Mes => &system.mes,
    };
    let text = reqwest::get(format!("{}/metrics", process.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    samples(
        &text,
        "hallmark_http_requests_refused_total",
        &[("code", code)],
    )
    .sum()
}

fn records(system: &System, identity: Option<access::ClientConfig>) -> Records {
    Records::new(RecordsConfig {
        urls: BTreeMap::from([
            (Owner::Shop, system.shop.url()),
            (Owner::Crm, system.crm.url()),
            (Owner::Mes, system.mes.url()),
        ]),
        timeout: Duration::from_secs(5),
        ca: None,
        identity,
    })
    .unwrap()
}

#[tokio::test]
async fn with_sso_each_step_of_a_partners_order_is_taken_only_by_the_role_that_owns_it() {
    let issuer = Issuer::required();
    let system = System::start_with(&[("HALLMARK_OIDC_ISSUER", issuer.url())]).await;
    let acme = issuer.machine_token(&PARTNER_ACME).await.unwrap();
    let globex = issuer.machine_token(&PARTNER_GLOBEX).await.unwrap();
    let support = person(&issuer, "support").await;
    let workshop = person(&issuer, "workshop").await;
    let (shop, crm, mes) = (system.shop.url(), system.crm.url(), system.mes.url());

    // The partner places the order with its client's token; the customer's token comes back.
    let bearer = format!("Bearer {acme}");
    let placed = place_order_at(
        &system.client,
        &shop,
        "torus.STL",
        "gold_585",
        &[("authorization", &bearer)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(placed.response["partner_id"], "acme");
    system.remember_token(placed.id, &placed.token);
    system.act_as(&workshop);
    let id = placed.id;
    system.until_shop_status(id, "priced").await;

    // Another partner cannot decide it; its own partner can.
    let confirm = format!("{shop}/api/orders/{id}/confirm");
    let (status, body) = post(&confirm, Some(&globex), Value::Null).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("not_your_order"))
    );
    assert_eq!(post(&confirm, Some(&acme), Value::Null).await.0, 200);
    system.until_status_in("mes", id, "confirmed").await;

    // The floor's steps: not without a token, not with a partner's (its tokens are for Shop),
    // not with a forged one, not as support; as workshop, yes.
    let production = format!("{mes}/api/orders/{id}/production");
    let step = |name: &str| json!({ "step": name });
    let mut refused_tokens: Vec<(String, Option<String>, u16)> = vec![
        ("no token".into(), None, 401),
        ("a partner's".into(), Some(acme.clone()), 401),
        ("support's".into(), Some(support.clone()), 403),
    ];
    for (what, forged) in issuer.forgeries(&support, &["workshop"]).await.unwrap() {
        refused_tokens.push((what.to_owned(), Some(forged), 401));
    }
    for (what, token, expected) in &refused_tokens {
        let (status, body) = post(&production, token.as_deref(), step("in_production")).await;
        assert_eq!(status, *expected, "{what}: {body}");
    }
    assert_eq!(
        system.mes_order(id).await["status"],
        "confirmed",
        "nothing moved"
    );
    for name in ["in_production", "quality_check", "ready"] {
        let (status, body) = post(&production, Some(&workshop), step(name)).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    system.until_status_in("crm", id, "ready").await;

    // CRM: support reads customers' orders but does not ship; the floor ships and delivers.
    assert_eq!(get(&format!("{crm}/api/orders"), None).await.0, 401);
    let (status, listed) = get(&format!("{crm}/api/orders"), Some(&support)).await;
    assert_eq!(status, 200, "{listed}");
    let ship = format!("{crm}/api/orders/{id}/ship");
    let tracking = json!({ "tracking_number": "1Z999AA10123456784" });
    assert_eq!(post(&ship, Some(&support), tracking.clone()).await.0, 403);
    assert_eq!(post(&ship, Some(&workshop), tracking).await.0, 200);
    let deliver = format!("{crm}/api/orders/{id}/deliver");
    assert_eq!(post(&deliver, Some(&workshop), Value::Null).await.0, 200);
    system.until_shop_status(id, "delivered").await;

    // Each service's history names who asked for the moves people and clients made there, and
    // no one for those it took from another's message.
    let by = |history: &Value, status: &str| -> Option<String> {
        history["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["status"] == status)
            .map(|entry| entry["by"].as_str().unwrap_or("").to_owned())
    };
    let (status, at_shop) = get(&format!("{shop}/api/orders/{id}"), Some(&acme)).await;
    assert_eq!(status, 200, "{at_shop}");
    assert_eq!(
        by(&at_shop, "confirmed").unwrap(),
        "partner acme",
        "{at_shop}"
    );
    assert_eq!(
        by(&at_shop, "priced").unwrap(),
        "",
        "taken from MES's message"
    );
    let (status, at_mes) = get(&format!("{mes}/api/orders/{id}"), Some(&support)).await;
    assert_eq!(status, 200, "{at_mes}");
    for name in ["in_production", "quality_check", "ready"] {
        let person = by(&at_mes, name).unwrap();
        assert!(person.starts_with("workshop ("), "{name}: {at_mes}");
    }
    let (status, at_crm) = get(&format!("{crm}/api/orders/{id}"), Some(&support)).await;
    assert_eq!(status, 200, "{at_crm}");
    for name in ["shipped", "delivered"] {
        let person = by(&at_crm, name).unwrap();
        assert!(person.starts_with("workshop ("), "{name}: {at_crm}");
    }

    // Each refusal was counted by its service.
    assert!(refused(&system, Service::Mes, "forbidden").await >= 1.0);
    assert!(refused(&system, Service::Mes, "unauthenticated").await >= 5.0);
    assert!(refused(&system, Service::Crm, "forbidden").await >= 1.0);
    assert!(refused(&system, Service::Shop, "not_your_order").await >= 1.0);

    // order-watch reads every system's listing as its own service identity, and nothing
    // without it.
    let identity = access::ClientConfig {
        issuer: issuer.url().to_owned(),
        credentials: access::client::ClientCredentials {
            client_id: ORDER_WATCH_SERVICE.client_id.to_owned(),
            secret: ORDER_WATCH_SERVICE.secret().into(),
        },
    };
    let asked = records(&system, Some(identity));
    for owner in [Owner::Shop, Owner::Crm, Owner::Mes] {
        let held = asked.ask(owner, &[id]).await.unwrap();
        assert_eq!(held[&id].0, domain::OrderStatus::Delivered, "{owner:?}");
    }
    let anonymous = records(&system, None);
    let err = anonymous.ask(Owner::Crm, &[id]).await.unwrap_err();
    assert!(
        matches!(err, order_watch::records::AskError::Refused(401)),
        "{err:?}"
    );
}
