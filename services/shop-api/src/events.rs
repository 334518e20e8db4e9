//! Shop's side of the message flow.
//!
//! * [`SubmitOnPublish`]: when the relay has handed `order.created` to the broker, the order is
//!   `submitted`: from here on a lost order is the broker's or a consumer's to explain.
//! * [`StatusFollower`]: consumes `shop.status` and keeps the customer-facing view in step with
//!   the owners' transitions (the orderbook keeps the price and a rejection reason with them).

use domain::OrderStatus;
use domain::events::{Event, ORDER_CREATED};
use messaging::{Handler, HandlerError, Incoming, PublishHook, Published};
use orderbook::{Change, Locked, Observed, OrderBook, TransitionFailure};
use sqlx::PgConnection;

use crate::SERVICE_NAME;

pub(crate) struct SubmitOnPublish {
    pub orderbook: OrderBook,
}

impl PublishHook for SubmitOnPublish {
    /// The order of an `order.created`, locked; `None` for other messages and unknown orders.
    type Held = Option<Locked>;

    /// CRM may register the order before the broker's confirm reaches us; holding the row
    /// makes Shop's view of that wait until `submitted` is written.
    async fn before_publish(
        &self,
        tx: &mut PgConnection,
        message: &Published,
    ) -> Result<Option<Locked>, sqlx::Error> {
        if message.kind != ORDER_CREATED {
            return Ok(None);
        }
        Ok(self.orderbook.lock(tx, message.order_id).await?)
    }

    async fn on_published(
        &self,
        tx: &mut PgConnection,
        message: &Published,
        held: Option<Locked>,
    ) -> Result<(), sqlx::Error> {
        if message.kind != ORDER_CREATED {
            return Ok(());
        }
        let Some(locked) = held else {
            tracing::warn!(order_id = %message.order_id, "published an order.created for an unknown order");
            return Ok(());
        };
        // Published again (a relay restart, or a republish asked by reconciliation): the order
        // has moved on already.
        if locked.status() != OrderStatus::Created {
            return Ok(());
        }
        match self
            .orderbook
            .transition_locked(
                tx,
                locked,
                Change::to(OrderStatus::Submitted).at(message.sent_at),
            )
            .await
        {
            Ok(_) => Ok(()),
            // A locked order is not looked up again, so it cannot be missing.
            Err(TransitionFailure::Illegal(_) | TransitionFailure::NotFound(_)) => Ok(()),
            Err(TransitionFailure::Database(err)) => Err(err),
            Err(TransitionFailure::Corrupt(err)) => Err(err.into()),
        }
    }
}

pub(crate) struct StatusFollower {
    pub orderbook: OrderBook,
}

impl Handler for StatusFollower {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        let Event::StatusChanged(change) = &message.envelope.data else {
            return Ok(());
        };
        if message.envelope.source == SERVICE_NAME {
            return Ok(());
        }
        match self
            .orderbook
            .observe(tx, &message.envelope, change)
            .await?
        {
            Observed::Applied | Observed::Late | Observed::Ignored => Ok(()),
            Observed::Unknown => Err(HandlerError::permanent(
                "order_unknown",
                format!("shop has no order {}", message.envelope.order_id),
            )),
        }
    }
}
