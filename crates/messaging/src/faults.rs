//! Faults for tests in which one consumer misses messages while the rest of the system goes on:
//! the disagreements reconciliation must find. Like the crash points ([`crate::crash`]) they are
//! armed by one environment variable read once at start-up, and unset (always, outside tests)
//! they cost one branch.
//!
//! `HALLMARK_FAULT_AT=<point>@<subject>`:
//!
//! | point                 | subject               | the consumer                                   |
//! |-----------------------|-----------------------|------------------------------------------------|
//! | `consumer.dead_letter`| `queue/routing key`   | dead-letters the first such delivery (code `injected_fault`) without applying it, as a handler's permanent failure would |
//! | `consumer.hold`       | queue                 | does not consume that queue: its messages wait there until a process without the fault starts |
//!
//! e.g. `consumer.dead_letter@crm.orders/order.created`, `consumer.hold@mes.production`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable that arms a fault.
pub const ENV: &str = "HALLMARK_FAULT_AT";

pub const CONSUMER_DEAD_LETTER: &str = "consumer.dead_letter";
pub const CONSUMER_HOLD: &str = "consumer.hold";

/// The error code of a message dead-lettered by [`CONSUMER_DEAD_LETTER`].
pub const INJECTED: &str = "injected_fault";

static ARMED: OnceLock<Option<(String, String)>> = OnceLock::new();
static DEAD_LETTERED: AtomicBool = AtomicBool::new(false);

fn armed() -> Option<&'static (String, String)> {
    ARMED.get_or_init(|| crate::crash::armed_by(ENV)).as_ref()
}

/// Whether this delivery, on `queue` with `routing_key`, is the one to dead-letter: true once
/// at most per process.
pub fn dead_letter(queue: &str, routing_key: &str) -> bool {
    let Some((point, subject)) = armed() else {
        return false;
    };
    point == CONSUMER_DEAD_LETTER
        && subject.split_once('/') == Some((queue, routing_key))
        && !DEAD_LETTERED.swap(true, Ordering::SeqCst)
}

/// Whether the consumer of `queue` is held.
pub fn holds(queue: &str) -> bool {
    armed().is_some_and(|(point, subject)| point == CONSUMER_HOLD && subject == queue)
}
