//! Who sent a message, as far as the broker vouches for it, and whether that is the one who may
//! send it.
//!
//! RabbitMQ refuses a message whose AMQP `user-id` is not the user of the connection publishing
//! it, so the `user-id` of a delivery names its sender. A message that a consumer republished
//! (its retries and dead letters) or that the operator replayed carries the republisher's
//! `user-id`, and the first sender in the `x-original-user-id` header, which is believed only
//! when the republisher is the queue's own consumer or the operator: anyone else could write
//! anything there.
//!
//! A consumer applies a message only when its sender is the account of the message's owner
//! (`domain::events::Event::owner`); see [`crate::consumer`].

use std::fmt;

use domain::System;
use domain::events::Event;
use lapin::types::{AMQPValue, FieldTable};

use crate::accounts::Accounts;
use crate::publisher::HEADER_ORIGINAL_USER_ID;
use crate::topology::QueueSpec;

/// The error code of a message that did not come from its owner.
pub const FORGED_SENDER: &str = "forged_sender";

/// The accounts whose copies of `queue`'s messages are believed to name their first sender:
/// its consumer's (retries, dead letters) and the operator's (replays).
pub fn republishers<'a>(queue: &QueueSpec, accounts: &'a Accounts) -> [&'a str; 2] {
    [accounts.service(queue.consumer), accounts.operator()]
}

/// The account that sent a message: its `user_id`, or for a copy made by one of
/// `republishers`, the first sender the copy names (`None` when that was nobody, or when the
/// header is not a string). `None` when the message has no `user-id` at all.
pub fn sender_of(
    user_id: Option<&str>,
    headers: &FieldTable,
    republishers: [&str; 2],
) -> Option<String> {
    let user = user_id?;
    if !republishers.contains(&user) {
        return Some(user.to_owned());
    }
    match headers.inner().get(HEADER_ORIGINAL_USER_ID) {
        None => Some(user.to_owned()),
        Some(AMQPValue::LongString(original)) => std::str::from_utf8(original.as_bytes())
            .ok()
            .map(str::to_owned),
        Some(AMQPValue::ShortString(original)) => Some(original.as_str().to_owned()),
        Some(_) => None,
    }
    .filter(|sender| !sender.is_empty())
}

/// A message that did not come from its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forged {
    /// Who may send it.
    pub owner: System,
    /// The owner's account.
    pub expected: String,
    /// Who sent it; `None` when nobody is named.
    pub sender: Option<String>,
    /// Its routing key by its content, e.g. `order.status_changed.priced`.
    pub routing_key: String,
}

impl fmt::Display for Forged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {}'s to send (as `{}`), but this one came ",
            self.routing_key, self.owner, self.expected
        )?;
        match &self.sender {
            Some(sender) => write!(f, "from `{sender}`"),
            None => f.write_str("without a sender (no AMQP user-id)"),
        }
    }
}

/// `Ok` when `sender` is the account of `event`'s owner.
pub fn check(event: &Event, sender: Option<&str>, accounts: &Accounts) -> Result<(), Forged> {
    let owner = event.owner();
    let expected = accounts.service(owner);
    if sender == Some(expected) {
        return Ok(());
    }
    Err(Forged {
        owner,
        expected: expected.to_owned(),
        sender: sender.map(str::to_owned),
        routing_key: event.routing_key(),
    })
}

#[cfg(test)]
mod tests {
    use domain::OrderStatus;
    use domain::events::StatusChanged;
    use lapin::types::{LongString, ShortString};

    use super::*;
    use crate::topology::{CRM_ORDERS, MES_PRICING};

    fn with_original(value: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_ORIGINAL_USER_ID.into(), value);
        headers
    }

    fn long(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text))
    }

    #[test]
    fn the_sender_is_the_user_id_unless_the_consumer_or_the_operator_made_the_copy() {
        let accounts = Accounts::default();
        let crm = republishers(&CRM_ORDERS, &accounts);
        assert_eq!(crm, ["hallmark-crm", "hallmark-ops"]);
        let claims_mes = with_original(long("hallmark-mes"));
        let none = FieldTable::default();
        let sender = |user: Option<&str>, headers: &FieldTable| sender_of(user, headers, crm);

        assert_eq!(
            sender(Some("hallmark-shop"), &none).as_deref(),
            Some("hallmark-shop")
        );
        assert_eq!(
            sender(Some("hallmark-shop"), &claims_mes).as_deref(),
            Some("hallmark-shop"),
            "anyone else's header is ignored"
        );
        assert_eq!(
            sender(Some("hallmark-crm"), &claims_mes).as_deref(),
            Some("hallmark-mes")
        );
        assert_eq!(
            sender(Some("hallmark-ops"), &claims_mes).as_deref(),
            Some("hallmark-mes")
        );
        assert_eq!(
            sender(Some("hallmark-crm"), &none).as_deref(),
            Some("hallmark-crm"),
            "the consumer's own message"
        );
        assert_eq!(sender(None, &claims_mes), None, "no user-id, no sender");
        assert_eq!(
            sender(Some("hallmark-ops"), &with_original(long(""))),
            None,
            "a copy of a message that had no sender"
        );
        let short = with_original(AMQPValue::ShortString(ShortString::from("hallmark-mes")));
        assert_eq!(
            sender(Some("hallmark-ops"), &short).as_deref(),
            Some("hallmark-mes")
        );
        assert_eq!(
            sender(Some("hallmark-ops"), &with_original(AMQPValue::LongInt(7))),
            None
        );
        let mes = republishers(&MES_PRICING, &accounts);
        assert_eq!(
            sender_of(Some("hallmark-crm"), &claims_mes, mes).as_deref(),
            Some("hallmark-crm"),
            "CRM does not republish MES's queues"
        );
    }

    #[test]
    fn a_message_counts_only_from_the_account_of_its_owner() {
        let accounts = Accounts::default();
        let priced = Event::StatusChanged(StatusChanged {
            from: OrderStatus::Pricing,
            to: OrderStatus::Priced,
            reason: None,
            price: None,
        });
        assert!(check(&priced, Some("hallmark-mes"), &accounts).is_ok());
        let forged = check(&priced, Some("hallmark-shop"), &accounts).unwrap_err();
        assert_eq!(forged.owner, System::Mes);
        assert_eq!(
            forged.to_string(),
            "order.status_changed.priced is mes-api's to send (as `hallmark-mes`), but this one came from `hallmark-shop`"
        );
        let anonymous = check(&priced, None, &accounts).unwrap_err();
        assert!(
            anonymous
                .to_string()
                .ends_with("without a sender (no AMQP user-id)")
        );
        assert!(
            check(&priced, Some("hallmark-ops"), &accounts).is_err(),
            "the operator owns nothing"
        );
        assert!(check(&priced, Some("guest"), &accounts).is_err());
    }
}
