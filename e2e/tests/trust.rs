//! Messages are authentic: with the services as real processes, each on its own broker account,
//! a message that does not come from its owner's account is dead-lettered as forged by every
//! service that receives it and applied by none; an order's model must be its own; and a service
//! refuses to start with an account that is not its own, or outside development with `guest` or
//! a development password.

use chrono::Utc;
use domain::events::{
    Customer, Envelope, Event, ModelRef, OrderCreated, OrderSource, PricingRequested, StatusChanged,
};
use domain::{Material, OrderStatus};
use e2e::{PATIENCE, Service, System};
use lapin::types::FieldTable;
use messaging::{Broker, Party};
use serde_json::Value;
use testkit::otlp::kind;
use testkit::process::binary;
use uuid::Uuid;

/// Who sends a message: a party's own account, the broker's administrator (`guest`), or a
/// connection that puts no user-id on it.
#[derive(Debug, Clone, Copy)]
enum From {
    Party(Party),
    Guest,
    Nobody,
}

async fn send(system: &System, from: From, envelope: &Envelope) {
    let key = envelope.routing_key();
    let broker = match from {
        From::Party(party) => testkit::broker::connect_as(&system.broker, party),
        From::Guest => Broker::operator(system.broker.clone(), "e2e-guest"),
        From::Nobody => {
            return testkit::broker::send_without_user_id(&system.broker, envelope).await;
        }
    };
    testkit::broker::send(&broker, envelope, FieldTable::default())
        .await
        .unwrap_or_else(|err| panic!("{from:?} sending {key}: {err}"));
    broker.close().await;
}

/// `hallmark` as the operator, on `system`'s namespace.
fn hallmark(system: &System, args: &[&str]) -> String {
    let output = std::process::Command::new(binary("hallmark"))
        .args(args)
        .envs(e2e::broker_env(system, Party::Operator))
        .output()
        .expect("the hallmark command runs");
    assert!(output.status.success(), "hallmark {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn a_price_forged_with_another_account_or_none_is_dead_lettered_everywhere_and_applied_nowhere()
 {
    let engine = e2e::hanging_calc_engine();
    let system = System::start_with(&[("MES_CALC_BIN", &engine.display().to_string())]).await;
    let order = system.place_order("torus.STL", "gold_750").await;
    system.until_shop_status(order.id, "pricing").await;

    // (The operator's account may not publish there at all.)
    let senders = [
        From::Party(Service::Shop.party()),
        From::Party(Service::Crm.party()),
        From::Guest,
        From::Nobody,
    ];
    for from in senders {
        // What MES would say: priced, at one cent.
        let priced = Envelope::new(
            order.id,
            StatusChanged::idempotency_key(order.id, OrderStatus::Priced),
            "mes-api",
            Utc::now(),
            Event::StatusChanged(StatusChanged {
                from: OrderStatus::Pricing,
                to: OrderStatus::Priced,
                reason: None,
                price: Some(domain::pricing::Quote {
                    volume_mm3: 1.0,
                    metal_weight_g: 0.01,
                    metal_cents: 0,
                    labour_cents: 1,
                    total_cents: 1,
                    currency: "EUR".into(),
                }),
            }),
        );
        send(&system, from, &priced).await;
    }

    // Every queue bound to order.status_changed.priced holds all four, and nothing else.
    let forged = senders.len() as u32;
    let expected = vec![
        ("crm.orders", forged),
        ("mes.production", forged),
        ("shop.status", forged),
    ];
    testkit::wait::until(
        "the forged messages in every dead-letter queue",
        PATIENCE,
        || async { (system.dead_letters().await == expected).then_some(()) },
    )
    .await;
    assert_eq!(system.shop_order(order.id).await["status"], "pricing");
    assert_eq!(system.crm_order(order.id).await["status"], "pricing");
    assert_eq!(system.mes_order(order.id).await["status"], "pricing");
    assert!(system.shop_order(order.id).await["price"].is_null());

    // The operator sees who sent them.
    let listed: Value =
        serde_json::from_str(&hallmark(&system, &["dlq", "list", "shop.status"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), senders.len());
    let mut named: Vec<Value> = listed
        .iter()
        .map(|letter| letter["sender"].clone())
        .collect();
    named.sort_by_key(Value::to_string);
    let expected_senders: Vec<Value> = ["guest", "hallmark-crm", "hallmark-shop"]
        .into_iter()
        .map(Value::from)
        .chain([Value::Null])
        .collect();
    let mut expected_senders = expected_senders;
    expected_senders.sort_by_key(Value::to_string);
    assert_eq!(named, expected_senders);
    for letter in listed {
        assert_eq!(letter["error_code"], "forged_sender", "{letter}");
        assert_eq!(letter["retries"], 0, "{letter}");
    }

    // Each service counts them by the owner they claimed, and its consumer span fails.
    for service in [&system.shop, &system.crm, &system.mes] {
        testkit::wait::until("the forged messages counted", PATIENCE, || async {
            let metrics = system
                .client
                .get(format!("{}/metrics", service.url()))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .lines()
                .any(|line| {
                    line.starts_with("hallmark_messages_forged_total{")
                        && line.contains("claimed_owner=\"mes-api\"")
                        && line.ends_with(&format!(" {forged}"))
                })
                .then_some(())
        })
        .await;
    }
    let spans = testkit::wait::until("the failed consumer spans", PATIENCE, || async {
        let spans: Vec<_> = system
            .otlp
            .spans()
            .into_iter()
            .filter(|s| {
                s.kind == kind::CONSUMER
                    && s.attr("hallmark.error.code").as_deref() == Some("forged_sender")
            })
            .collect();
        (spans.len() == 3 * senders.len()).then_some(spans)
    })
    .await;
    for span in &spans {
        assert_eq!(span.status_code, 2, "{span:?}");
        assert!(
            span.attr("hallmark.dlq.route")
                .is_some_and(|r| r.ends_with(".dlq")),
            "{span:?}"
        );
    }
    assert!(
        spans
            .iter()
            .any(|s| s.attr("hallmark.message.sender").as_deref() == Some("hallmark-shop")),
        "the span names the sender"
    );
}

/// An `order.created` as Shop writes it, for `order_id` with `model`.
fn order_created(order_id: Uuid, model: ModelRef) -> Envelope {
    Envelope::new(
        order_id,
        format!("forged-{order_id}"),
        "shop-api",
        Utc::now(),
        Event::OrderCreated(OrderCreated {
            external_id: None,
            source: OrderSource::Web,
            partner_id: None,
            customer: Customer {
                id: Uuid::now_v7(),
                name: "Mallory".into(),
                email: "mallory@example.com".into(),
                phone: None,
            },
            material: Material::Platinum950,
            size: None,
            comment: None,
            model,
        }),
    )
}

async fn status_at(system: &System, base: String, id: Uuid) -> u16 {
    system
        .client
        .get(format!("{base}/api/orders/{id}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_forged_order_is_not_registered_and_no_order_is_priced_from_another_orders_model() {
    let system = System::start().await;
    let placed = system.place_order("torus.STL", "gold_585").await;
    let real = system.until_status_in("crm", placed.id, "priced").await;
    // The real order's model: the one a forger would have priced for another order.
    let model = ModelRef {
        key: real["model_key"].as_str().unwrap().to_owned(),
        file_name: real["model_file_name"].as_str().unwrap().to_owned(),
        size_bytes: 1,
        sha256: String::new(),
    };

    // A new order nobody placed, sent with CRM's account.
    let forged = Uuid::now_v7();
    send(
        &system,
        From::Party(Service::Crm.party()),
        &order_created(forged, model.clone()),
    )
    .await;
    // A new order from Shop's account, but with the real order's model.
    let borrowed = Uuid::now_v7();
    send(
        &system,
        From::Party(Service::Shop.party()),
        &order_created(borrowed, model.clone()),
    )
    .await;
    // A price request from CRM's account for a third order, with the real order's model.
    let priced_elsewhere = Uuid::now_v7();
    let request = Envelope::new(
        priced_elsewhere,
        format!("{priced_elsewhere}/pricing"),
        "crm-api",
        Utc::now(),
        Event::PricingRequested(PricingRequested {
            material: Material::Platinum950,
            model,
            requester: None,
        }),
    );
    send(&system, From::Party(Service::Crm.party()), &request).await;

    let codes = |queue: &'static str| {
        let system = &system;
        async move {
            let listed: Value =
                serde_json::from_str(&hallmark(system, &["dlq", "list", queue])).unwrap();
            listed
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    (
                        l["order_id"].as_str().unwrap_or_default().to_owned(),
                        l["error_code"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let crm = testkit::wait::until("CRM's dead letters", PATIENCE, || async {
        let codes = codes("crm.orders").await;
        (codes.len() >= 2).then_some(codes)
    })
    .await;
    assert!(
        crm.contains(&(forged.to_string(), "forged_sender".into())),
        "{crm:?}"
    );
    assert!(
        crm.contains(&(borrowed.to_string(), "model_not_of_order".into())),
        "{crm:?}"
    );
    let mes = testkit::wait::until("MES's dead letter", PATIENCE, || async {
        let codes = codes("mes.pricing").await;
        (!codes.is_empty()).then_some(codes)
    })
    .await;
    assert_eq!(
        mes,
        [(priced_elsewhere.to_string(), "model_not_of_order".into())]
    );

    for id in [forged, borrowed] {
        assert_eq!(
            status_at(&system, system.crm.url(), id).await,
            404,
            "CRM registered {id}"
        );
        assert_eq!(
            status_at(&system, system.mes.url(), id).await,
            404,
            "MES priced {id}"
        );
    }
    // MES records why it will not price the third order, and computes nothing for it.
    let mes_db = system.database(Service::Mes).await;
    let (status, code): (String, Option<String>) =
        testkit::wait::until("MES to fail the third order", PATIENCE, || async {
            sqlx::query_as(
                "SELECT status, reason->>'code' FROM orderbook.orders WHERE order_id = $1",
            )
            .bind(priced_elsewhere)
            .fetch_optional(&mes_db)
            .await
            .unwrap()
            .filter(|(status, _): &(String, Option<String>)| status == "failed")
        })
        .await;
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("failed", Some("model_not_of_order"))
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM calc_jobs WHERE order_id = $1")
        .bind(priced_elsewhere)
        .fetch_one(&mes_db)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "no calculation of another order's model");
    assert_eq!(system.shop_order(placed.id).await["status"], "priced");
}

/// Starts `service` with `env` on top of a test environment and returns what it printed when
/// it exited, which it must do at once.
fn refused_start(service: Service, env: &[(&str, &str)]) -> String {
    let output = std::process::Command::new(binary(service.binary()))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HALLMARK_ENV", "test")
        .env("OTEL_SDK_DISABLED", "true")
        .envs(env.iter().copied())
        .output()
        .expect("the service runs");
    assert!(
        !output.status.success(),
        "{} started: {output:?}",
        service.binary()
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn a_service_refuses_to_start_with_an_account_that_is_not_its_own_or_not_for_production() {
    let local = |user: &str, password: &str| format!("amqp://{user}:{password}@127.0.0.1:5672/%2f");
    let guest = local("guest", "guest");
    let development = Party::Service(domain::System::Shop).development_url();
    let production = [
        ("HALLMARK_ENV", "production"),
        ("SHOP_DATABASE_URL", "postgres://shop:secret@db:5432/shop"),
        (
            "HALLMARK_OIDC_ISSUER",
            "https://sso.example.com/realms/hallmark",
        ),
    ];

    let log = refused_start(
        Service::Shop,
        &[
            production.as_slice(),
            &[("HALLMARK_AMQP_URL", guest.as_str())],
        ]
        .concat(),
    );
    assert!(
        log.contains("HALLMARK_AMQP_URL") && log.contains("`guest`"),
        "{log}"
    );
    let log = refused_start(
        Service::Shop,
        &[
            production.as_slice(),
            &[("HALLMARK_AMQP_URL", development.as_str())],
        ]
        .concat(),
    );
    assert!(log.contains("development password"), "{log}");
    assert!(
        !log.contains("local-only"),
        "the password is not shown: {log}"
    );
    let log = refused_start(
        Service::Shop,
        &[production.as_slice(), &[("HALLMARK_AMQP_URL", "")]].concat(),
    );
    assert!(log.contains("HALLMARK_AMQP_URL: must be set"), "{log}");
    // Nor without an identity provider: CRM would answer anyone.
    let log = refused_start(
        Service::Crm,
        &[
            ("HALLMARK_ENV", "production"),
            ("CRM_DATABASE_URL", "postgres://crm:secret@db:5432/crm"),
        ],
    );
    assert!(log.contains("HALLMARK_OIDC_ISSUER: must be set"), "{log}");

    // In a test environment too: another service's account would have its messages refused.
    let crm = Party::Service(domain::System::Crm).development_url();
    let log = refused_start(Service::Shop, &[("HALLMARK_AMQP_URL", crm.as_str())]);
    assert!(log.contains("connects as `hallmark-crm`"), "{log}");
    let log = refused_start(Service::Mes, &[("HALLMARK_AMQP_URL", guest.as_str())]);
    assert!(log.contains("connects as `guest`"), "{log}");
}
