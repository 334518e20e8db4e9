//! An order whose stored status, price, reason or history does not read is an error naming the
//! order, for every way the order book reads it: never a default, never skipped.

use chrono::Utc;
use domain::OrderStatus;
use orderbook::{Change, OrderBook, TransitionFailure};
use platform::db::ReadError;
use sqlx::PgPool;
use testkit::database::TestDatabase;
use uuid::Uuid;

const BOOK: OrderBook = OrderBook::new("test-api");

struct Setup {
    pool: PgPool,
    _database: TestDatabase,
}

async fn setup() -> Setup {
    let database = TestDatabase::create("orderbook").await;
    let pool = database.connect().await;
    orderbook::install_schema(&pool).await.unwrap();
    Setup {
        pool,
        _database: database,
    }
}

/// A `created` order, its row then changed with `update` (`$1` is the order id), as a newer
/// release or a hand edit would.
async fn order_with(setup: &Setup, update: &str) -> Uuid {
    let order = Uuid::now_v7();
    let mut tx = setup.pool.begin().await.unwrap();
    BOOK.open(
        &mut tx,
        order,
        OrderStatus::Created,
        None,
        "test-api",
        Utc::now(),
    )
    .await
    .unwrap()
    .unwrap();
    let updated = sqlx::query(update)
        .bind(order)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(updated, 1, "{update}");
    tx.commit().await.unwrap();
    order
}

fn corrupt(err: ReadError) -> platform::db::Corrupt {
    match err {
        ReadError::Corrupt(corrupt) => corrupt,
        other => panic!("not a corrupt row: {other:?}"),
    }
}

#[tokio::test]
async fn an_order_whose_stored_status_no_release_knows_is_an_error_naming_it_wherever_it_is_read() {
    let setup = setup().await;
    let order = order_with(
        &setup,
        "UPDATE orderbook.orders SET status = 'teleported' WHERE order_id = $1",
    )
    .await;
    let expected = format!("order {order} holds a malformed status: \"teleported\"");
    let mut tx = setup.pool.begin().await.unwrap();

    let err = corrupt(BOOK.get(&mut tx, order).await.unwrap_err());
    assert_eq!(err.to_string(), expected);
    let err = corrupt(BOOK.lock(&mut tx, order).await.unwrap_err());
    assert_eq!(err.to_string(), expected);
    match BOOK
        .transition(&mut tx, order, Change::to(OrderStatus::Submitted))
        .await
    {
        Err(TransitionFailure::Corrupt(err)) => assert_eq!(err.to_string(), expected),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_malformed_stored_price_or_reason_is_an_error_not_an_order_without_one() {
    let setup = setup().await;
    for (column, update) in [
        (
            "price",
            r#"UPDATE orderbook.orders SET price = '{"total_cents": "a lot"}' WHERE order_id = $1"#,
        ),
        (
            "reason",
            r#"UPDATE orderbook.orders SET reason = '"it broke"' WHERE order_id = $1"#,
        ),
    ] {
        let order = order_with(&setup, update).await;
        let mut conn = setup.pool.acquire().await.unwrap();
        let err = corrupt(BOOK.get(&mut conn, order).await.unwrap_err());
        assert_eq!((err.order_id, err.column), (order, column));
    }
}

#[tokio::test]
async fn a_history_entry_that_does_not_read_is_an_error_naming_the_order() {
    let setup = setup().await;
    for (column, update) in [
        (
            "to_status",
            "UPDATE orderbook.history SET to_status = 'teleported' WHERE order_id = $1",
        ),
        (
            "from_status",
            "UPDATE orderbook.history SET from_status = 'teleported' WHERE order_id = $1",
        ),
        (
            "reason",
            "UPDATE orderbook.history SET reason_code = 'half' WHERE order_id = $1",
        ),
    ] {
        let order = order_with(&setup, update).await;
        let mut conn = setup.pool.acquire().await.unwrap();
        let err = corrupt(BOOK.history(&mut conn, order).await.unwrap_err());
        assert_eq!((err.order_id, err.column), (order, column));
    }
}
