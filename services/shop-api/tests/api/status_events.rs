use std::time::Duration;

use chrono::{TimeDelta, Utc};
use domain::OrderStatus;
use domain::System;
use domain::events::{Envelope, Event, StatusChanged};
use lapin::types::FieldTable;
use messaging::Party;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

impl TestApp {
    /// Announces a status change as the service `source` would, `seconds` from now.
    async fn announce(
        &self,
        order_id: Uuid,
        source: &str,
        (from, to): (OrderStatus, OrderStatus),
        seconds: i64,
    ) {
        let envelope = Envelope::new(
            order_id,
            StatusChanged::idempotency_key(order_id, to),
            source,
            Utc::now() + TimeDelta::seconds(seconds),
            Event::StatusChanged(StatusChanged {
                from,
                to,
                reason: None,
                price: None,
            }),
        );
        // Sent by the service that owns the move, with its account.
        let owner = System::ALL
            .into_iter()
            .find(|system| system.service_name() == source)
            .expect("a service");
        testkit::broker::send_as(
            &self.broker,
            Party::Service(owner),
            &envelope,
            FieldTable::default(),
        )
        .await
        .unwrap();
    }

    async fn until_history_has(&self, id: &str, steps: usize) -> Value {
        testkit::wait::until(
            &format!("{steps} steps in the history of {id}"),
            Duration::from_secs(15),
            || async {
                let order: Value = self.get_order(id).await.json().await.unwrap();
                (order["history"].as_array().map(Vec::len) == Some(steps)).then_some(order)
            },
        )
        .await
    }
}

#[tokio::test]
async fn a_status_change_that_arrives_after_a_later_one_still_shows_in_the_history() {
    let app = spawn_app().await;
    let created: Value = app.place_ring(None).await.json().await.unwrap();
    let id = created["order_id"].as_str().unwrap();
    let order_id: Uuid = id.parse().unwrap();
    app.until_history_has(id, 2).await; // created, submitted

    // MES's move to pricing overtakes CRM's registration, as concurrent consumers may have it.
    let pricing = (OrderStatus::Registered, OrderStatus::Pricing);
    let registration = (OrderStatus::Submitted, OrderStatus::Registered);
    app.announce(order_id, "mes-api", pricing, 2).await;
    app.until_history_has(id, 3).await;
    app.announce(order_id, "crm-api", registration, 1).await;
    let order = app.until_history_has(id, 4).await;

    assert_eq!(
        order["status"], "pricing",
        "a late step does not move it back"
    );
    let steps: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["status"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["created", "submitted", "registered", "pricing"]);
    assert_eq!(order["history"][2]["source"], "crm-api");

    // The same step announced again is not repeated.
    let processed = app.count("messaging.inbox").await;
    app.announce(order_id, "crm-api", registration, 1).await;
    testkit::wait::until("shop to process it", Duration::from_secs(15), || async {
        (app.count("messaging.inbox").await > processed).then_some(())
    })
    .await;
    let order: Value = app.get_order(id).await.json().await.unwrap();
    assert_eq!(order["history"].as_array().map(Vec::len), Some(4));
}
