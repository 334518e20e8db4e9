//! MES's consumers: `mes.pricing` queues price calculations, `mes.production` follows the
//! customer's confirmation or cancellation.

use std::sync::Arc;

use domain::OrderStatus;
use domain::events::{Envelope, Event, PricingRequested};
use messaging::{Handler, HandlerError, Incoming};
use opentelemetry::KeyValue;
use orderbook::{Change, Observed, OrderBook};
use sqlx::PgConnection;
use telemetry::attr;
use telemetry::db::Traced;
use telemetry::spans;
use tokio::sync::Notify;

use crate::calc;

/// Accepts price requests: `registered → pricing` and a queued calculation, in one transaction.
pub(crate) struct PricingIntake {
    pub orderbook: OrderBook,
    /// Wakes a calc worker once the job is committed.
    pub wake: Arc<Notify>,
}

impl Handler for PricingIntake {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        let Event::PricingRequested(request) = &message.envelope.data else {
            return Ok(());
        };
        self.accept(tx, &message.envelope, request).await?;
        // The transaction commits right after this returns; a worker that wakes a little early
        // finds nothing and polls again within a second.
        self.wake.notify_one();
        Ok(())
    }

    async fn on_dead_letter(
        &self,
        tx: &mut PgConnection,
        message: &Incoming,
        code: &str,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        fail_order(&self.orderbook, tx, message, code, reason).await
    }
}

impl PricingIntake {
    async fn accept(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
        request: &PricingRequested,
    ) -> Result<(), HandlerError> {
        spans::record(KeyValue::new(
            attr::ORDER_MATERIAL,
            request.material.as_str(),
        ));
        // MES reads the model the message names: it must be this order's, or one message could
        // price (and show the customer the price of) another order's model.
        if !request.model.belongs_to(envelope.order_id) {
            return Err(HandlerError::permanent(
                "model_not_of_order",
                format!(
                    "the model `{}` is not in order {}'s folder",
                    request.model.key, envelope.order_id
                ),
            ));
        }
        sqlx::query(
            "INSERT INTO orders (id, material, model_key, model_size_bytes, model_sha256, requester) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(envelope.order_id)
        .bind(request.material.as_str())
        .bind(&request.model.key)
        .bind(request.model.size_bytes as i64)
        .bind(&request.model.sha256)
        .bind(request.requester.as_deref().unwrap_or_default())
        .execute(&mut *tx)
        .db("INSERT orders")
        .await?;
        let opened = self
            .orderbook
            .open(
                tx,
                envelope.order_id,
                OrderStatus::Registered,
                None,
                &envelope.source,
                envelope.occurred_at,
            )
            .await?;
        if opened.is_none() {
            return Ok(());
        }
        self.orderbook
            .transition(tx, envelope.order_id, Change::to(OrderStatus::Pricing))
            .await
            .map_err(|e| HandlerError::transient("pricing_not_started", e.to_string()))?;
        calc::enqueue(tx, envelope.order_id).await?;
        tracing::info!(order_id = %envelope.order_id, "price calculation queued");
        Ok(())
    }
}

/// Follows the other services' status changes: `confirmed` (production may start),
/// `cancelled` (drop a queued calculation), shipping and delivery.
pub(crate) struct ProductionIntake {
    pub orderbook: OrderBook,
}

impl Handler for ProductionIntake {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        let Event::StatusChanged(change) = &message.envelope.data else {
            return Ok(());
        };
        if message.envelope.source == crate::SERVICE_NAME {
            return Ok(());
        }
        match self
            .orderbook
            .observe(tx, &message.envelope, change)
            .await?
        {
            Observed::Applied => {
                if change.to == OrderStatus::Cancelled {
                    calc::cancel(tx, message.envelope.order_id).await?;
                }
                if change.to == OrderStatus::Confirmed {
                    tracing::info!(order_id = %message.envelope.order_id, "order confirmed, ready for production");
                }
                Ok(())
            }
            Observed::Late | Observed::Ignored => Ok(()),
            Observed::Unknown => self.unknown_order(tx, &message.envelope, change.to).await,
        }
    }
}

impl ProductionIntake {
    /// A status change of an order MES has not opened yet. MES joins an order at its price
    /// request, which travels on another queue, so the changes before it (`submitted`,
    /// `registered`) are none of MES's business, and an order can end (`cancelled`, `failed`)
    /// before its price request arrives: MES records the end, and the late request then finds
    /// the order already there and starts no calculation. Anything else presumes a price MES
    /// computed, so the order must exist: that message is a dead letter.
    async fn unknown_order(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
        to: OrderStatus,
    ) -> Result<(), HandlerError> {
        if matches!(
            to,
            OrderStatus::Created | OrderStatus::Submitted | OrderStatus::Registered
        ) {
            return Ok(());
        }
        if matches!(to, OrderStatus::Cancelled | OrderStatus::Failed) {
            let opened = self
                .orderbook
                .open(
                    tx,
                    envelope.order_id,
                    to,
                    None,
                    &envelope.source,
                    envelope.occurred_at,
                )
                .await?;
            if opened.is_none() {
                // The price request was accepted meanwhile: apply the end to that order.
                return Err(HandlerError::transient(
                    "order_opened_concurrently",
                    format!(
                        "order {} was opened while this change was applied",
                        envelope.order_id
                    ),
                ));
            }
            tracing::info!(order_id = %envelope.order_id, status = to.as_str(), "order ended before MES was asked to price it");
            return Ok(());
        }
        Err(HandlerError::permanent(
            "order_unknown",
            format!(
                "MES never priced order {}, yet it is now {}",
                envelope.order_id,
                to.as_str()
            ),
        ))
    }
}

/// A price request that can never be processed leaves the order `failed` with the reason, so it
/// does not silently hang in `registered`.
async fn fail_order(
    orderbook: &OrderBook,
    tx: &mut PgConnection,
    message: &Incoming,
    code: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let order_id = message.envelope.order_id;
    orderbook
        .open(
            tx,
            order_id,
            OrderStatus::Registered,
            None,
            &message.envelope.source,
            message.envelope.occurred_at,
        )
        .await?;
    let change = Change::to(OrderStatus::Failed).with_reason(
        code.to_owned(),
        format!("the price request could not be processed: {reason}"),
    );
    match orderbook.transition(tx, order_id, change).await {
        Ok(_) | Err(orderbook::TransitionFailure::Illegal(_)) => Ok(()),
        Err(orderbook::TransitionFailure::NotFound(_)) => Ok(()),
        Err(orderbook::TransitionFailure::Database(err)) => Err(err),
        Err(orderbook::TransitionFailure::Corrupt(err)) => Err(err.into()),
    }
}
