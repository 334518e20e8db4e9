//! Republishing puts the messages by which a service told the others about an order back into
//! its outbox, with the ids they were first sent with: its latest status event and the message
//! that introduced the order, nothing else.

use axum::Router;
use chrono::Utc;
use domain::OrderStatus;
use domain::events::{Envelope, Event, ModelRef, PricingRequested};
use domain::held::{Republished, republish_path};
use orderbook::{Change, OrderBook};
use sqlx::PgPool;
use testkit::database::TestDatabase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BOOK: OrderBook = OrderBook::new("crm-api");

struct Service {
    pool: PgPool,
    base: String,
    _database: TestDatabase,
    _stop: tokio_util::sync::DropGuard,
}

async fn service() -> Service {
    let database = TestDatabase::create("orderbook").await;
    let pool = database.connect().await;
    orderbook::install_schema(&pool).await.unwrap();
    let router: Router = orderbook::republish::router().with_state(pool.clone());
    let (listener, port) = platform::server::bind_with("127.0.0.1", 0, None)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(platform::server::serve(listener, router, cancel.clone()));
    Service {
        pool,
        base: format!("http://127.0.0.1:{port}"),
        _database: database,
        _stop: cancel.drop_guard(),
    }
}

impl Service {
    async fn republish(&self, order: Uuid) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{}", self.base, republish_path(order)))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// What the relay would do: every row published.
    async fn relay_everything(&self) {
        sqlx::query("UPDATE messaging.outbox SET published_at = now() WHERE published_at IS NULL")
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn pending(&self) -> Vec<Uuid> {
        sqlx::query_scalar(
            "SELECT message_id FROM messaging.outbox WHERE published_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn message_ids(&self, order: Uuid) -> Vec<(Uuid, String)> {
        sqlx::query_as(
            "SELECT message_id, routing_key FROM messaging.outbox WHERE order_id = $1 ORDER BY id",
        )
        .bind(order)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

/// Opens `order` as Shop submitted it and registers it.
async fn open_registered(tx: &mut sqlx::PgConnection, order: Uuid) {
    BOOK.open(
        &mut *tx,
        order,
        OrderStatus::Submitted,
        None,
        "shop-api",
        Utc::now(),
    )
    .await
    .unwrap();
    BOOK.transition(&mut *tx, order, Change::to(OrderStatus::Registered))
        .await
        .unwrap();
}

/// An order CRM registered (announcing `registered` and asking MES for a price) and later
/// shipped and delivered.
async fn registered_and_delivered(service: &Service) -> Uuid {
    let order = Uuid::now_v7();
    let mut tx = service.pool.begin().await.unwrap();
    open_registered(&mut tx, order).await;
    let request = Envelope::new(
        order,
        format!("{order}/pricing"),
        "crm-api",
        Utc::now(),
        Event::PricingRequested(PricingRequested {
            material: domain::Material::Gold585,
            model: ModelRef {
                key: ModelRef::key_for(order, "ring.stl"),
                file_name: "ring.stl".into(),
                size_bytes: 1,
                sha256: "00".into(),
            },
            requester: None,
        }),
    );
    messaging::enqueue(&mut tx, &request).await.unwrap();
    tx.commit().await.unwrap();
    // Another order's messages stay as they are.
    let mut tx = service.pool.begin().await.unwrap();
    open_registered(&mut tx, Uuid::now_v7()).await;
    tx.commit().await.unwrap();
    for step in [
        OrderStatus::Ready,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
    ] {
        let mut tx = service.pool.begin().await.unwrap();
        if step == OrderStatus::Ready {
            // MES's move, as CRM's projection follows it.
            sqlx::query("UPDATE orderbook.orders SET status = 'ready' WHERE order_id = $1")
                .bind(order)
                .execute(&mut *tx)
                .await
                .unwrap();
        } else {
            BOOK.transition(&mut tx, order, Change::to(step))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    service.relay_everything().await;
    order
}

#[tokio::test]
async fn the_latest_status_event_and_the_introduction_go_out_again_with_their_ids() {
    let service = service().await;
    let order = registered_and_delivered(&service).await;
    let written = service.message_ids(order).await;
    let keys: Vec<&str> = written.iter().map(|(_, key)| key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "order.status_changed.registered",
            "order.pricing_requested",
            "order.status_changed.shipped",
            "order.status_changed.delivered"
        ]
    );

    let (status, body) = service.republish(order).await;
    assert_eq!(status, 200, "{body}");
    let republished: Republished = serde_json::from_value(body).unwrap();
    assert_eq!(republished.order_id, order);
    let sent: Vec<(Uuid, String)> = republished
        .messages
        .iter()
        .map(|m| (m.message_id, m.routing_key.clone()))
        .collect();
    assert_eq!(sent, vec![written[1].clone(), written[3].clone()]);
    assert!(
        republished
            .messages
            .iter()
            .all(|m| m.published_at.is_some())
    );
    assert_eq!(
        service.pending().await,
        vec![written[1].0, written[3].0],
        "back in the outbox under their ids, and nothing else"
    );

    // Still waiting: asked again, they are named and left as they are.
    let (status, body) = service.republish(order).await;
    assert_eq!(status, 200, "{body}");
    let again: Republished = serde_json::from_value(body).unwrap();
    assert!(again.messages.iter().all(|m| m.published_at.is_none()));
    assert_eq!(service.pending().await.len(), 2);
}

#[tokio::test]
async fn an_unknown_order_and_one_whose_messages_are_gone_are_refused_by_code() {
    let service = service().await;
    let (status, body) = service.republish(Uuid::now_v7()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("order_not_found"))
    );

    let order = registered_and_delivered(&service).await;
    sqlx::query("DELETE FROM messaging.outbox WHERE order_id = $1")
        .bind(order)
        .execute(&service.pool)
        .await
        .unwrap();
    let (status, body) = service.republish(order).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("nothing_to_republish")),
        "{body}"
    );
}
