//! Crash points for fault-injection tests: the process dies at an exact place in the delivery
//! protocol, as a `kill -9` would at the worst moment, so tests can prove that nothing is lost
//! or applied twice when it happens.
//!
//! `HALLMARK_CRASH_AT=<point>@<subject>` arms one point, read once at start-up:
//!
//! | point                    | subject     | dies                                              |
//! |--------------------------|-------------|---------------------------------------------------|
//! | `consumer.before_commit` | queue       | after the handler ran, before its transaction commits |
//! | `consumer.after_commit`  | queue       | after the commit, before the ack                  |
//! | `relay.after_confirm`    | routing key | after the broker confirmed, before the row is marked sent |
//!
//! e.g. `consumer.after_commit@crm.orders`. Unset (always, outside tests) it costs one branch.

use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const ENV: &str = "HALLMARK_CRASH_AT";

pub const CONSUMER_BEFORE_COMMIT: &str = "consumer.before_commit";
pub const CONSUMER_AFTER_COMMIT: &str = "consumer.after_commit";
pub const RELAY_AFTER_CONFIRM: &str = "relay.after_confirm";

static ARMED: OnceLock<Option<(String, String)>> = OnceLock::new();

fn armed() -> Option<&'static (String, String)> {
    ARMED.get_or_init(|| armed_by(ENV)).as_ref()
}

/// The `<point>@<subject>` that environment variable `variable` arms, if any: how the crash
/// points and the faults ([`crate::faults`]) are armed.
pub(crate) fn armed_by(variable: &str) -> Option<(String, String)> {
    let value = settings::optional(variable)?;
    let (point, subject) = value.split_once('@')?;
    Some((point.trim().to_owned(), subject.trim().to_owned()))
}

/// Aborts the process when `point` is armed for `subject`.
pub fn at(point: &str, subject: &str) {
    if let Some((armed_point, armed_subject)) = armed()
        && armed_point == point
        && armed_subject == subject
    {
        eprintln!("{ENV}: crashing at {point}@{subject}");
        std::process::abort();
    }
}
