//! The changed-since listing pages through every order whose status was recorded since a time,
//! oldest change first, each once, however the page size cuts the orders changed at the same
//! instant.

use axum::Router;
use chrono::{DateTime, Duration, Utc};
use domain::OrderStatus;
use domain::held::{ChangedSince, HeldStatuses, STATUSES_PATH};
use orderbook::OrderBook;
use sqlx::PgPool;
use testkit::database::TestDatabase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BOOK: OrderBook = OrderBook::new("test-api");

struct Listing {
    pool: PgPool,
    base: String,
    _database: TestDatabase,
    _stop: tokio_util::sync::DropGuard,
}

async fn listing() -> Listing {
    let database = TestDatabase::create("orderbook").await;
    let pool = database.connect().await;
    orderbook::install_schema(&pool).await.unwrap();
    let router: Router = orderbook::statuses::router().with_state(pool.clone());
    let (listener, port) = platform::server::bind_with("127.0.0.1", 0, None)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(platform::server::serve(listener, router, cancel.clone()));
    Listing {
        pool,
        base: format!("http://127.0.0.1:{port}{STATUSES_PATH}"),
        _database: database,
        _stop: cancel.drop_guard(),
    }
}

impl Listing {
    /// An order in `status`, recorded at `at`.
    async fn order(&self, status: OrderStatus, at: DateTime<Utc>) -> Uuid {
        let order = Uuid::now_v7();
        let mut tx = self.pool.begin().await.unwrap();
        BOOK.open(&mut tx, order, status, None, "test-api", at)
            .await
            .unwrap()
            .unwrap();
        sqlx::query("UPDATE orderbook.orders SET updated_at = $2 WHERE order_id = $1")
            .bind(order)
            .bind(at)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        order
    }

    async fn get(&self, query: &str) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!("{}?{query}", self.base))
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn page(&self, from: ChangedSince, limit: usize) -> HeldStatuses {
        let (status, body) = self.get(&from.query(limit)).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }
}

#[tokio::test]
async fn pages_of_changes_hold_every_order_once_oldest_change_first() {
    let listing = listing().await;
    let t0: DateTime<Utc> = "2026-03-01T10:00:00.000001Z".parse().unwrap();
    let before = listing
        .order(OrderStatus::Created, t0 - Duration::seconds(1))
        .await;
    // Three at the same instant: a page boundary falls between them.
    let mut expected = Vec::new();
    for _ in 0..3 {
        expected.push(listing.order(OrderStatus::Priced, t0).await);
    }
    expected.sort();
    let later = listing
        .order(OrderStatus::Submitted, t0 + Duration::milliseconds(1))
        .await;
    expected.push(later);

    let mut seen = Vec::new();
    let mut from = ChangedSince::from(t0);
    let mut pages = 0;
    loop {
        let page = listing.page(from, 2).await;
        pages += 1;
        seen.extend(page.orders.iter().map(|o| o.order_id));
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(
        seen, expected,
        "in (updated_at, order_id) order, none twice, {before} not at all"
    );
    assert_eq!(pages, 2, "a full last page says there is no other");

    let first = listing.page(ChangedSince::from(t0), 10).await;
    assert_eq!(first.orders.len(), 4);
    assert_eq!(first.orders[3].status, OrderStatus::Submitted);
    assert_eq!(first.orders[3].updated_at, t0 + Duration::milliseconds(1));
    assert_eq!(first.next, None);
}

#[tokio::test]
async fn an_order_that_changes_again_moves_to_the_end_of_the_changes() {
    let listing = listing().await;
    let t0 = Utc::now() - Duration::minutes(1);
    let order = listing.order(OrderStatus::Submitted, t0).await;
    let other = listing
        .order(OrderStatus::Submitted, t0 + Duration::seconds(1))
        .await;
    let after_both = ChangedSince::after(&listing.page(ChangedSince::from(t0), 10).await.orders[1]);
    assert!(listing.page(after_both, 10).await.orders.is_empty());

    let mut tx = listing.pool.begin().await.unwrap();
    BOOK.transition(
        &mut tx,
        order,
        orderbook::Change::to(OrderStatus::Registered),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let page = listing.page(after_both, 10).await;
    assert_eq!(page.orders.len(), 1, "{page:?}");
    assert_eq!(page.orders[0].order_id, order);
    assert_eq!(page.orders[0].status, OrderStatus::Registered);
    assert!(page.orders[0].updated_at > t0 + Duration::seconds(1));
    let all = listing.page(ChangedSince::from(t0), 10).await;
    assert_eq!(
        all.orders.iter().map(|o| o.order_id).collect::<Vec<_>>(),
        vec![other, order]
    );
}

#[tokio::test]
async fn a_listing_by_ids_is_answered_as_before_and_bad_questions_are_refused_by_code() {
    let listing = listing().await;
    let order = listing.order(OrderStatus::Created, Utc::now()).await;
    let (status, body) = listing.get(&format!("ids={order}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["orders"][0]["order_id"], order.to_string());
    assert!(body.get("next").is_none(), "{body}");
    for (query, code) in [
        (
            format!("ids={order}&changed_since=2026-03-01T10:00:00Z"),
            "conflicting_query",
        ),
        ("changed_since=soon".to_owned(), "invalid_changed_since"),
        (
            "changed_since=2026-03-01T10:00:00Z&limit=0".to_owned(),
            "invalid_limit",
        ),
        ("".to_owned(), "missing_ids"),
    ] {
        let (status, body) = listing.get(&query).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{query}: {body}"
        );
    }
}
