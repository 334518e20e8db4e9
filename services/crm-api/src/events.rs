//! CRM's consumer of `crm.orders`: registers new orders and asks MES for their price, and keeps
//! the manager's view in step with every status change.

use chrono::Utc;
use domain::OrderStatus;
use domain::events::{Envelope, Event, OrderCreated, PricingRequested};
use messaging::{Handler, HandlerError, Incoming};
use opentelemetry::KeyValue;
use orderbook::{Change, Observed, OrderBook};
use sqlx::PgConnection;
use telemetry::attr;
use telemetry::db::Traced;
use telemetry::spans;

use crate::SERVICE_NAME;

pub(crate) struct Registrar {
    pub orderbook: OrderBook,
}

impl Handler for Registrar {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        let envelope = &message.envelope;
        match &envelope.data {
            Event::OrderCreated(created) => self.register(tx, envelope, created).await,
            Event::StatusChanged(change) => {
                if envelope.source == SERVICE_NAME {
                    return Ok(());
                }
                match self.orderbook.observe(tx, envelope, change).await? {
                    Observed::Applied | Observed::Late | Observed::Ignored => Ok(()),
                    // Its order.created is still on its way (e.g. waiting for a retry).
                    Observed::Unknown => Err(HandlerError::transient(
                        "order_not_registered_yet",
                        format!("CRM has not registered order {} yet", envelope.order_id),
                    )),
                }
            }
            Event::PricingRequested(_) => Ok(()),
        }
    }
}

impl Registrar {
    /// Records the order, moves it to `registered` and asks MES for a price, in one transaction.
    async fn register(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
        created: &OrderCreated,
    ) -> Result<(), HandlerError> {
        spans::record(KeyValue::new(attr::ORDER_SOURCE, created.source.as_str()));
        spans::record(KeyValue::new(
            attr::ORDER_IDEMPOTENCY_KEY,
            envelope.idempotency_key.clone(),
        ));
        spans::record(KeyValue::new(
            attr::CUSTOMER_ID,
            created.customer.id.to_string(),
        ));
        if let Some(external) = &created.external_id {
            spans::record(KeyValue::new(attr::ORDER_EXTERNAL_ID, external.clone()));
        }
        if let Some(partner) = &created.partner_id {
            spans::record(KeyValue::new(attr::PARTNER_ID, partner.clone()));
        }
        // CRM passes the model on to MES for pricing: it must be this order's.
        if !created.model.belongs_to(envelope.order_id) {
            return Err(HandlerError::permanent(
                "model_not_of_order",
                format!(
                    "the model `{}` is not in order {}'s folder",
                    created.model.key, envelope.order_id
                ),
            ));
        }

        sqlx::query(
            "INSERT INTO orders (id, customer_id, customer_name, customer_email, customer_phone, \
                 source, partner_id, external_id, material, size, comment, model_key, \
                 model_file_name, model_size_bytes, model_sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(envelope.order_id)
        .bind(created.customer.id)
        .bind(&created.customer.name)
        .bind(&created.customer.email)
        .bind(&created.customer.phone)
        .bind(created.source.as_str())
        .bind(&created.partner_id)
        .bind(&created.external_id)
        .bind(created.material.as_str())
        .bind(&created.size)
        .bind(&created.comment)
        .bind(&created.model.key)
        .bind(&created.model.file_name)
        .bind(created.model.size_bytes as i64)
        .bind(&created.model.sha256)
        .execute(&mut *tx)
        .db("INSERT orders")
        .await?;
        let opened = self
            .orderbook
            .open(
                tx,
                envelope.order_id,
                OrderStatus::Submitted,
                Some(&envelope.idempotency_key),
                &envelope.source,
                envelope.occurred_at,
            )
            .await?;
        if opened.is_none() {
            // Registered before under another message id; nothing more to do.
            return Ok(());
        }
        self.orderbook
            .transition(tx, envelope.order_id, Change::to(OrderStatus::Registered))
            .await
            .map_err(|e| HandlerError::transient("registration_failed", e.to_string()))?;
        let request = Envelope::new(
            envelope.order_id,
            format!("{}/pricing", envelope.order_id),
            SERVICE_NAME,
            Utc::now(),
            Event::PricingRequested(PricingRequested {
                material: created.material,
                model: created.model.clone(),
                requester: Some(PricingRequested::requester_of(created)),
            }),
        );
        messaging::enqueue(tx, &request).await?;
        tracing::info!(order_id = %envelope.order_id, "order registered, price requested");
        Ok(())
    }
}
