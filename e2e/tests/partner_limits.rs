//! Partners' rates switched by incidents: Shop, CRM and MES as processes with SSO, order-watch
//! watching them with its service identity, pricing hanging so that orders stay in it.

use e2e::watch::Watch;
use e2e::{PATIENCE, System, place_order_at};
use serde_json::{Value, json};
use testkit::oidc::{Issuer, ORDER_WATCH_SERVICE, PARTNER_ACME, PARTNER_GLOBEX};
use uuid::Uuid;

/// How long an incident's tightening lasts at Shop unless order-watch renews it.
const TTL_SECS: u64 = 10;

struct Floor {
    issuer: Issuer,
    system: System,
    watch: Watch,
    acme: String,
    globex: String,
    support: String,
    _engine: tempfile::TempPath,
}

/// The system with pricing hanging, order-watch tightening partners to one order an hour.
async fn floor() -> Floor {
    let issuer = Issuer::required();
    let engine = e2e::hanging_calc_engine();
    let engine_path = engine.display().to_string();
    let system = System::start_with(&[
        ("HALLMARK_OIDC_ISSUER", issuer.url()),
        ("MES_CALC_BIN", &engine_path),
        ("MES_CALC_TIMEOUT", "10m"),
    ])
    .await;
    let support = issuer
        .password_token("hallmark-cli", "support", "support")
        .await
        .unwrap();
    system.act_as(&support);
    let secret = ORDER_WATCH_SERVICE.secret();
    let mut watch = Watch::watching(
        &system,
        "",
        &[
            ("ORDER_WATCH_OIDC_ISSUER", issuer.url()),
            ("ORDER_WATCH_SERVICE_CLIENT_SECRET", &secret),
            ("ORDER_WATCH_STUCK_AFTER", "3s"),
            ("ORDER_WATCH_INCIDENT_PARTNER_RATE", "1/1h"),
            ("ORDER_WATCH_INCIDENT_LIMIT_TTL", &format!("{TTL_SECS}s")),
            ("ORDER_WATCH_INCIDENT_LIMIT_INTERVAL", "200ms"),
        ],
    )
    .await;
    watch.read_as(issuer.clone(), "admin");
    Floor {
        acme: issuer.machine_token(&PARTNER_ACME).await.unwrap(),
        globex: issuer.machine_token(&PARTNER_GLOBEX).await.unwrap(),
        issuer,
        system,
        watch,
        support,
        _engine: engine,
    }
}

impl Floor {
    /// Places an order as the partner whose client token `token` is: Shop's status code and
    /// the order's id when it took it.
    async fn place(&self, token: &str) -> (u16, Option<Uuid>) {
        let bearer = format!("Bearer {token}");
        match place_order_at(
            &self.system.client,
            &self.system.shop.url(),
            "torus.STL",
            "gold_585",
            &[("authorization", &bearer)],
            None,
        )
        .await
        {
            Ok(placed) => {
                self.system.remember_token(placed.id, &placed.token);
                (201, Some(placed.id))
            }
            Err(refusal) => (refusal[..3].parse().unwrap(), None),
        }
    }

    /// Shop's limit listing, as support reads it.
    async fn limits(&self) -> Value {
        self.system
            .client
            .get(format!("{}/api/partner-limits", self.system.shop.url()))
            .bearer_auth(&self.support)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `partner`'s override at Shop, if one is in force.
    async fn override_of(&self, partner: &str) -> Option<Value> {
        self.limits().await["partners"]
            .as_array()?
            .iter()
            .find(|p| p["partner_id"] == partner)
            .map(|p| p["override"].clone())
            .filter(|o| !o.is_null())
    }

    async fn until_override(&self, partner: &str, present: bool) -> Option<Value> {
        testkit::wait::until(
            &format!(
                "{partner}'s override to be {}",
                if present { "set" } else { "gone" }
            ),
            PATIENCE,
            || async {
                let found = self.override_of(partner).await;
                (found.is_some() == present).then_some(found)
            },
        )
        .await
    }
}

#[tokio::test]
async fn a_stuck_partner_order_tightens_that_partners_rate_at_shop_until_its_incident_ends() {
    let floor = floor().await;
    let (_, first) = floor.place(&floor.acme).await;
    let first = first.unwrap();
    floor.watch.until_stuck(first).await;
    let incident = testkit::wait::until("the incident", PATIENCE, || async {
        floor.watch.incidents_of(first).await.into_iter().next()
    })
    .await;

    let tightened = floor.until_override("acme", true).await.unwrap();
    assert_eq!(tightened["source"], "incident");
    assert_eq!(tightened["rate"], "1/1h");
    assert_eq!(tightened["incident_id"], incident["id"]);
    assert_eq!(
        floor.override_of("globex").await,
        None,
        "globex has no order stuck"
    );
    // The incident says what it switched.
    let shown = testkit::wait::until("the incident to show the limit", PATIENCE, || async {
        let (_, incidents) = floor.watch.get("/api/incidents?open=true").await;
        incidents
            .as_array()?
            .iter()
            .find(|i| i["id"] == incident["id"])
            .and_then(|i| {
                let limits = i["partner_limits"].as_array()?;
                (limits.len() == 1 && !limits[0]["switched_on_at"].is_null())
                    .then(|| limits[0].clone())
            })
    })
    .await;
    assert_eq!(shown["partner_id"], "acme");

    // acme may send one order an hour now; globex keeps its own rate.
    assert_eq!(floor.place(&floor.acme).await.0, 201);
    assert_eq!(floor.place(&floor.acme).await.0, 429);
    // The refusal's request span says why: acme, over a rate an incident set.
    testkit::wait::until("the refused request's span", PATIENCE, || async {
        floor.system.otlp.spans().into_iter().find(|s| {
            s.service == "shop-api"
                && s.attr("hallmark.rate_limited").as_deref() == Some("true")
                && s.attr("hallmark.rate_limit.source").as_deref() == Some("incident")
                && s.attr("partner.id").as_deref() == Some("acme")
        })
    })
    .await;
    for _ in 0..3 {
        assert_eq!(floor.place(&floor.globex).await.0, 201);
    }

    // Every incident of acme's orders closed by hand (an admin): the rate is lifted.
    let (_, open) = floor.watch.get("/api/incidents?open=true").await;
    let admin = floor
        .issuer
        .password_token("hallmark-cli", "admin", "admin")
        .await
        .unwrap();
    for incident in open.as_array().unwrap() {
        let url = format!(
            "{}/api/incidents/{}/close",
            floor.watch.process.url(),
            incident["id"].as_str().unwrap()
        );
        let closed = reqwest::Client::new()
            .post(url)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert!(
            closed.status() == 200 || closed.status() == 409,
            "{}",
            closed.status()
        );
    }
    floor.until_override("acme", false).await;
    assert_eq!(
        floor.place(&floor.acme).await.0,
        201,
        "acme's own rate again"
    );
    let changes: Value = floor
        .system
        .client
        .get(format!(
            "{}/api/partner-limits/changes",
            floor.system.shop.url()
        ))
        .bearer_auth(&floor.support)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = changes
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["partner_id"] == "acme")
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.first(), Some(&"lift"), "{changes}");

    // A developer holds acme to a rate by hand from the command line; order-watch leaves it.
    let developer = floor
        .issuer
        .password_token("hallmark-cli", "developer", "developer")
        .await
        .unwrap();
    let shop = floor.system.shop.url();
    let set = hallmark(
        &shop,
        &developer,
        &[
            "set",
            "acme",
            "2/1m",
            "--reason",
            "load test",
            "--ttl",
            "10m",
        ],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&set).unwrap()["source"],
        "manual"
    );
    let listed: Value = serde_json::from_str(&hallmark(&shop, &developer, &["list"])).unwrap();
    let set_by = listed["partners"][0]["override"]["set_by"]
        .as_str()
        .unwrap();
    assert!(set_by.starts_with("developer ("), "{listed}");
    hallmark(&shop, &developer, &["lift", "acme"]);
    assert_eq!(floor.override_of("acme").await, None);
}

/// `hallmark limits ARGS` against Shop at `shop` with `token`: what it printed.
fn hallmark(shop: &str, token: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(testkit::process::binary("hallmark"))
        .args(["limits"])
        .args(args)
        .env("HALLMARK_SHOP_URL", shop)
        .env("HALLMARK_TOKEN", token)
        .output()
        .expect("the hallmark command runs");
    assert!(
        output.status.success(),
        "hallmark limits {args:?}: {output:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn a_pricing_alert_tightens_every_partner_in_pricing_and_without_order_watch_it_lapses() {
    let mut floor = floor().await;
    let (_, acme_order) = floor.place(&floor.acme).await;
    let (_, globex_order) = floor.place(&floor.globex).await;
    for id in [acme_order.unwrap(), globex_order.unwrap()] {
        floor.system.until_status_in("mes", id, "pricing").await;
    }
    // Alertmanager's webhook, as the stack posts it, with its own service identity.
    let alertmanager = floor.issuer.alertmanager_token().await.unwrap();
    let alert = json!({"alerts": [{
        "status": "firing",
        "labels": {"alertname": "PriceCalculationBudgetBurn", "severity": "page"},
        "annotations": {"summary": "price calculation is burning its error budget"},
        "fingerprint": format!("burn-{}", Uuid::now_v7()),
    }]});
    let posted = reqwest::Client::new()
        .post(format!("{}/api/alerts", floor.watch.process.url()))
        .bearer_auth(&alertmanager)
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    for partner in ["acme", "globex"] {
        let tightened = floor.until_override(partner, true).await.unwrap();
        assert_eq!(tightened["source"], "incident", "{partner}");
    }

    // order-watch gone: nobody renews, and within the TTL both rates are back to normal.
    let gone = std::time::Instant::now();
    floor.watch.process.kill().await;
    for partner in ["acme", "globex"] {
        floor.until_override(partner, false).await;
    }
    let ttl = std::time::Duration::from_secs(TTL_SECS);
    assert!(
        gone.elapsed() <= ttl + std::time::Duration::from_secs(3),
        "{:?}",
        gone.elapsed()
    );
    assert_eq!(floor.place(&floor.acme).await.0, 201);
}
