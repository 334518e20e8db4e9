//! The messages the services exchange over RabbitMQ.
//!
//! Every message body is an [`Envelope`] around one [`Event`]. The envelope's fields are fixed by
//! the architecture notes; `version` lets a consumer refuse a shape it does not understand instead
//! of misreading it. The AMQP properties (`message_id`, `type`, `timestamp`) repeat the envelope's
//! identity so brokers and tools can see it without parsing the body.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::material::Material;
use crate::pricing::Quote;
use crate::status::{OrderStatus, System};

/// The body schema version this build writes and reads.
pub const ENVELOPE_VERSION: u16 = 1;

/// The message body: identity and correlation around the event data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7, also the AMQP `message_id`; the inbox deduplicates on it.
    pub message_id: Uuid,
    /// The event type, also the AMQP `type` (see [`Event::kind`]).
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u16,
    pub order_id: Uuid,
    /// The key of the business operation that produced the event: the order's
    /// `Idempotency-Key` for `order.created`, `{order_id}/{status}` for a status change.
    pub idempotency_key: String,
    pub occurred_at: DateTime<Utc>,
    /// The `service.name` of the producer.
    pub source: String,
    pub data: Event,
}

impl Envelope {
    /// Wraps `data` with a fresh UUIDv7 message id.
    pub fn new(
        order_id: Uuid,
        idempotency_key: impl Into<String>,
        source: impl Into<String>,
        occurred_at: DateTime<Utc>,
        data: Event,
    ) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            kind: data.kind().to_owned(),
            version: ENVELOPE_VERSION,
            order_id,
            idempotency_key: idempotency_key.into(),
            occurred_at,
            source: source.into(),
            data,
        }
    }

    /// Parses a message body, refusing versions this build does not know and bodies whose
    /// `type` disagrees with their data.
    pub fn from_slice(body: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(EnvelopeError::Malformed)?;
        if envelope.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(envelope.version));
        }
        if envelope.kind != envelope.data.kind() {
            return Err(EnvelopeError::TypeMismatch {
                declared: envelope.kind,
                data: envelope.data.kind(),
            });
        }
        Ok(envelope)
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    pub fn routing_key(&self) -> String {
        self.data.routing_key()
    }
}

/// A message body that can never be processed: the consumer dead-letters it.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message body is not a valid envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("envelope version {0} is not supported (this build reads version {ENVELOPE_VERSION})")]
    UnsupportedVersion(u16),
    #[error("envelope type `{declared}` does not match its data (`{data}`)")]
    TypeMismatch {
        declared: String,
        data: &'static str,
    },
}

/// The event data, tagged on the wire by `type` in the envelope and `kind` here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// Shop accepted an order; CRM registers it.
    OrderCreated(OrderCreated),
    /// CRM asks MES to price the model.
    PricingRequested(PricingRequested),
    /// The owner of a transition announces it; every other service updates its projection.
    StatusChanged(StatusChanged),
}

pub const ORDER_CREATED: &str = "order.created";
pub const ORDER_PRICING_REQUESTED: &str = "order.pricing_requested";
pub const ORDER_STATUS_CHANGED: &str = "order.status_changed";

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OrderCreated(_) => ORDER_CREATED,
            Self::PricingRequested(_) => ORDER_PRICING_REQUESTED,
            Self::StatusChanged(_) => ORDER_STATUS_CHANGED,
        }
    }

    /// Topic routing key. Status changes carry the new status as the last word
    /// (`order.status_changed.confirmed`) so a queue can bind to just the moves it acts on.
    pub fn routing_key(&self) -> String {
        match self {
            Self::StatusChanged(change) => status_routing_key(change.to),
            other => other.kind().to_owned(),
        }
    }

    /// The system whose word this event is, and so the only one that may send it: Shop
    /// announces new orders, CRM asks for prices, and a status change belongs to the owner of
    /// the status it moves to ([`OrderStatus::owner`]). Consumers apply an event only when it
    /// comes from its owner.
    pub fn owner(&self) -> System {
        match self {
            Self::OrderCreated(_) => System::Shop,
            Self::PricingRequested(_) => System::Crm,
            Self::StatusChanged(change) => change.to.owner(),
        }
    }
}

/// The routing key of a move to `status`.
pub fn status_routing_key(status: OrderStatus) -> String {
    format!("{ORDER_STATUS_CHANGED}.{status}")
}

/// Every routing key `system` publishes, as [`Event::owner`] assigns them: what the broker lets
/// its account publish and nothing more.
pub fn routing_keys_owned_by(system: System) -> Vec<String> {
    let own_kinds = [
        (ORDER_CREATED, System::Shop),
        (ORDER_PRICING_REQUESTED, System::Crm),
    ]
    .into_iter()
    .filter(|(_, owner)| *owner == system)
    .map(|(key, _)| key.to_owned());
    let own_statuses = OrderStatus::ALL
        .into_iter()
        .filter(|status| status.owner() == system)
        .map(status_routing_key);
    own_kinds.chain(own_statuses).collect()
}

/// Where an order came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderSource {
    /// The shop's web front end.
    Web,
    /// A partner through the API (the request names a `partner_id`).
    PartnerApi,
    /// Entered by a manager in CRM.
    Crm,
}

impl OrderSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::PartnerApi => "partner_api",
            Self::Crm => "crm",
        }
    }
}

/// The customer's contact details. Personal data: it travels in message bodies between the
/// services that need it, and never into telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// Pseudonymous id, safe for spans and logs (`customer.id`).
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
}

/// Where the uploaded model is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Object key, `models/{order_id}/{file}.stl` ([`ModelRef::key_for`]).
    pub key: String,
    /// The customer's file name, sanitized.
    pub file_name: String,
    pub size_bytes: u64,
    /// Hex SHA-256 of the stored bytes, so a reader can tell it got the same file.
    pub sha256: String,
}

impl ModelRef {
    /// Where the model of `order_id` is stored: under the order's own folder, in a file whose
    /// name is letters, digits, `-`, `_` and `.` only (Shop sanitizes the customer's).
    pub fn key_for(order_id: Uuid, file_name: &str) -> String {
        format!("models/{order_id}/{file_name}")
    }

    /// Whether the key names a file directly in `order_id`'s folder: one file name of safe
    /// characters, not starting with a dot, so no `..`, slash or other order's folder can make
    /// a message about one order read another order's model.
    pub fn belongs_to(&self, order_id: Uuid) -> bool {
        let folder = format!("models/{order_id}/");
        self.key.strip_prefix(&folder).is_some_and(|file| {
            !file.is_empty()
                && !file.starts_with('.')
                && file
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub external_id: Option<String>,
    pub source: OrderSource,
    pub partner_id: Option<String>,
    pub customer: Customer,
    pub material: Material,
    /// Ring size or other size note, as the customer gave it.
    pub size: Option<String>,
    pub comment: Option<String>,
    pub model: ModelRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricingRequested {
    pub material: Material,
    pub model: ModelRef,
    /// Who the order is for, so MES shares its calculations fairly between them: `partner:{id}`
    /// for a partner's order, `customer:{id}` otherwise (pseudonymous ids, no personal data).
    /// Absent in requests of earlier versions, which share one turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
}

impl PricingRequested {
    /// The requester of an order: its partner when a partner placed it, else its customer.
    pub fn requester_of(created: &OrderCreated) -> String {
        match &created.partner_id {
            Some(partner) => format!("partner:{partner}"),
            None => format!("customer:{}", created.customer.id),
        }
    }
}

/// Why an order was rejected or failed, in words the customer (or an operator) can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// Stable machine-readable code, e.g. `stl_not_closed`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChanged {
    pub from: OrderStatus,
    pub to: OrderStatus,
    /// Present when `to` is `rejected`, `failed` or `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Present when `to` is `priced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Quote>,
}

impl StatusChanged {
    /// The idempotency key of the business operation "order moved to `to`".
    pub fn idempotency_key(order_id: Uuid, to: OrderStatus) -> String {
        format!("{order_id}/{to}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_changed(to: OrderStatus) -> Envelope {
        let order_id = Uuid::now_v7();
        Envelope::new(
            order_id,
            StatusChanged::idempotency_key(order_id, to),
            "mes-api",
            Utc::now(),
            Event::StatusChanged(StatusChanged {
                from: OrderStatus::Priced,
                to,
                reason: None,
                price: None,
            }),
        )
    }

    #[test]
    fn an_envelope_round_trips_through_json() {
        let envelope = status_changed(OrderStatus::Confirmed);
        let parsed = Envelope::from_slice(&envelope.to_vec()).unwrap();
        assert_eq!(parsed, envelope);
        assert_eq!(parsed.kind, "order.status_changed");
    }

    #[test]
    fn a_status_change_routes_by_its_target_status() {
        assert_eq!(
            status_changed(OrderStatus::Confirmed).routing_key(),
            "order.status_changed.confirmed"
        );
    }

    #[test]
    fn a_body_that_is_not_an_envelope_is_malformed() {
        assert!(matches!(
            Envelope::from_slice(b"{not json"),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::from_slice(br#"{"message_id": 5}"#),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn every_routing_key_has_exactly_one_owner_and_the_owner_of_an_event_publishes_its_key() {
        let owned: Vec<(System, String)> = System::ALL
            .into_iter()
            .flat_map(|system| {
                routing_keys_owned_by(system)
                    .into_iter()
                    .map(move |key| (system, key))
            })
            .collect();
        let mut keys: Vec<&String> = owned.iter().map(|(_, key)| key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), owned.len(), "a key owned twice: {owned:?}");
        assert_eq!(owned.len(), 2 + OrderStatus::ALL.len());
        for status in OrderStatus::ALL {
            let event = status_changed(status);
            let owner = event.data.owner();
            assert!(
                routing_keys_owned_by(owner).contains(&event.routing_key()),
                "{status}"
            );
        }
        assert_eq!(
            routing_keys_owned_by(System::Shop)[0],
            "order.created",
            "Shop announces new orders"
        );
        assert!(routing_keys_owned_by(System::Crm).contains(&"order.pricing_requested".into()));
        assert!(
            !routing_keys_owned_by(System::Shop).contains(&"order.status_changed.priced".into())
        );
    }

    #[test]
    fn a_model_key_belongs_only_to_its_own_order() {
        let order = Uuid::now_v7();
        let model = |key: String| ModelRef {
            key,
            file_name: "ring.stl".into(),
            size_bytes: 1,
            sha256: String::new(),
        };
        assert!(model(ModelRef::key_for(order, "ring.stl")).belongs_to(order));
        assert!(model(ModelRef::key_for(order, "Ring_v2-final.stl")).belongs_to(order));
        let other = Uuid::now_v7();
        for key in [
            ModelRef::key_for(other, "ring.stl"),
            format!("models/{order}/../{other}/ring.stl"),
            format!("models/{order}/.."),
            format!("models/{order}/"),
            format!("models/{order}/sub/ring.stl"),
            format!("models/{order}/.hidden.stl"),
            format!("models/{order}ring.stl"),
            format!("/models/{order}/ring.stl"),
            format!("models/{order}/ring.stl\n"),
            format!("models/{}/ring.stl", order.simple()),
        ] {
            assert!(!model(key.clone()).belongs_to(order), "{key}");
        }
    }

    #[test]
    fn an_unknown_version_or_a_lying_type_is_refused() {
        let mut envelope = status_changed(OrderStatus::Confirmed);
        envelope.version = 99;
        assert!(matches!(
            Envelope::from_slice(&envelope.to_vec()),
            Err(EnvelopeError::UnsupportedVersion(99))
        ));
        let mut envelope = status_changed(OrderStatus::Confirmed);
        envelope.kind = "order.created".into();
        assert!(matches!(
            Envelope::from_slice(&envelope.to_vec()),
            Err(EnvelopeError::TypeMismatch { .. })
        ));
    }
}
