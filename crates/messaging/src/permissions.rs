//! What each broker account may do, as RabbitMQ permissions: derived from the topology (which
//! service consumes which queue) and from the ownership of messages
//! (`domain::events::routing_keys_owned_by`), so they cannot drift from what the code does.
//! `hallmark broker accounts` prints them and `scripts/broker.sh` applies them to the
//! development broker; a deployment applies the same lines to its own.
//!
//! A service may
//! * configure the shared exchanges and its own queues, their `.dlq`s and its retry queues (to
//!   declare them at start-up: it starts on a fresh broker by itself);
//! * write to the shared exchanges and to its own queues, their `.dlq`s and its retry queues
//!   (RabbitMQ asks for write on a queue to bind it, and on the dead-letter exchange of a queue
//!   it declares: `hallmark.requeue` for the retry queues, where its topic permissions let it
//!   publish nothing);
//! * read the exchanges it binds from, its own queues and its retry queues (RabbitMQ asks for
//!   that too of a queue declared with a dead-letter exchange), nothing else: no other
//!   service's queue or retries, no `.dlq` (the operator's);
//!
//! and on the topic exchanges (topic permissions: routing keys when publishing, binding keys
//! when binding)
//! * publish on `hallmark.orders` only the routing keys it owns, and bind only the keys its
//!   queues bind (so MES cannot bind a queue to `order.created`, which carries the customer's
//!   contact details, nor to `#`);
//! * publish and bind on `hallmark.dlx`, `hallmark.retry` and `hallmark.requeue` only keys
//!   naming its own queues: it cannot read another service's dead letters or retries, nor put
//!   messages into them.
//!
//! The operator may read the `.dlq`s and publish replays to `hallmark.requeue`, nothing more.
//!
//! RabbitMQ's topic permissions name one exchange exactly, so they are given per namespace; an
//! exchange without them lets every key through (the vhost permissions still apply).

use domain::System;
use domain::events::routing_keys_owned_by;

use crate::accounts::{Accounts, Party};
use crate::topology::{Names, QUEUES, QueueSpec, queues_of};

/// The names a set of permissions covers: one namespace's, or (for a development broker where
/// every test makes its own) those of any namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    Exactly(String),
    /// No namespace or any one word (`t1a2b3c.hallmark.orders`).
    Any,
}

impl Namespaces {
    fn prefix(&self) -> String {
        match self {
            Self::Exactly(namespace) if namespace.is_empty() => String::new(),
            Self::Exactly(namespace) => format!("{}\\.", escape(namespace)),
            Self::Any => "([^.]+\\.)?".to_owned(),
        }
    }
}

/// One account's permissions in one virtual host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub party: Party,
    pub user: String,
    /// Regular expressions over exchange and queue names, as `rabbitmqctl set_permissions`
    /// takes them.
    pub configure: String,
    pub write: String,
    pub read: String,
    /// As `rabbitmqctl set_topic_permissions` takes them, one per exchange.
    pub topics: Vec<TopicPermission>,
}

/// The routing keys an account may publish (`write`) and bind (`read`) on one topic exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermission {
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// A regular expression matching nothing.
const NOTHING: &str = "^$";

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if ".^$*+?()[]{}|\\".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn any_of(alternatives: &[String]) -> String {
    match alternatives {
        [] => NOTHING.to_owned(),
        _ => format!("^({})$", alternatives.join("|")),
    }
}

/// The permissions of every party, with `accounts`' names, covering `namespaces`, with topic
/// permissions on the exchanges of each of `topic_namespaces`.
pub fn all(
    accounts: &Accounts,
    namespaces: &Namespaces,
    topic_namespaces: &[String],
) -> Vec<Permissions> {
    Party::ALL
        .into_iter()
        .map(|party| of(party, accounts, namespaces, topic_namespaces))
        .collect()
}

/// `party`'s permissions (see [`all`]).
pub fn of(
    party: Party,
    accounts: &Accounts,
    namespaces: &Namespaces,
    topic_namespaces: &[String],
) -> Permissions {
    let prefix = namespaces.prefix();
    let names = |alternatives: Vec<String>| match alternatives.as_slice() {
        [] => NOTHING.to_owned(),
        _ => format!("^{prefix}({})$", alternatives.join("|")),
    };
    let user = accounts.of(party).to_owned();
    let (configure, write, read, topics) = match party {
        Party::Service(system) => {
            // `crm.retry.1`, `crm.retry.2`, …
            let retries =
                escape(&Names::new("").retry_queue(system, 0)).replace("\\.1", "\\.[0-9]+");
            let mut own: Vec<String> = queues_of(system).map(|q| escape(q.name)).collect();
            let own_with_dlq: Vec<String> = own
                .iter()
                .map(|q| format!("{q}(\\.dlq)?"))
                .chain([retries.clone()])
                .collect();
            own.push(retries);
            let exchanges = vec!["hallmark\\.(orders|dlx|requeue|retry)".to_owned()];
            let configure = [exchanges.clone(), own_with_dlq.clone()].concat();
            let write = [exchanges.clone(), own_with_dlq].concat();
            let read = [exchanges, own].concat();
            let topics = topic_namespaces
                .iter()
                .flat_map(|namespace| service_topics(system, &Names::new(namespace)))
                .collect();
            (names(configure), names(write), names(read), topics)
        }
        Party::Operator => {
            let dead_letter_queues = QUEUES
                .iter()
                .map(|q| format!("{}\\.dlq", escape(q.name)))
                .collect();
            let topics = topic_namespaces
                .iter()
                .map(|namespace| {
                    let names = Names::new(namespace);
                    let queues = queue_keys(&names, QUEUES.iter());
                    TopicPermission {
                        exchange: names.requeue_exchange(),
                        write: format!("^replay\\.{queues}$"),
                        read: NOTHING.to_owned(),
                    }
                })
                .collect();
            (
                NOTHING.to_owned(),
                names(vec!["hallmark\\.requeue".to_owned()]),
                names(dead_letter_queues),
                topics,
            )
        }
    };
    Permissions {
        party,
        user,
        configure,
        write,
        read,
        topics,
    }
}

/// `(q1|q2)`: the concrete names of `queues`, for routing keys that name queues.
fn queue_keys<'a>(names: &Names, queues: impl Iterator<Item = &'a QueueSpec>) -> String {
    let queues: Vec<String> = queues.map(|q| escape(&names.queue(q.name))).collect();
    format!("({})", queues.join("|"))
}

fn service_topics(system: System, names: &Names) -> Vec<TopicPermission> {
    let own: Vec<QueueSpec> = queues_of(system).collect();
    let owned: Vec<String> = routing_keys_owned_by(system)
        .iter()
        .map(|key| escape(key))
        .collect();
    let queues = queue_keys(names, own.iter());
    vec![
        TopicPermission {
            exchange: names.orders_exchange(),
            write: any_of(&owned),
            read: binding_keys(&own),
        },
        TopicPermission {
            exchange: names.dead_letter_exchange(),
            write: format!("^{queues}$"),
            read: format!("^{queues}$"),
        },
        TopicPermission {
            exchange: names.retry_exchange(),
            write: format!("^[0-9]+\\.{queues}$"),
            read: format!("^[0-9]+\\.{queues}$"),
        },
        TopicPermission {
            exchange: names.requeue_exchange(),
            write: NOTHING.to_owned(),
            read: format!("^(\\*\\.)?{queues}$"),
        },
    ]
}

/// The binding keys `queues` bind (and retire) on the orders exchange: each exactly, and one
/// ending in `#` as everything under its literal words (a key starting with the literal words
/// `order.status_changed.` can only match routing keys that start with them).
fn binding_keys(queues: &[QueueSpec]) -> String {
    let keys: Vec<&str> = queues
        .iter()
        .flat_map(|q| q.bindings.iter().chain(q.retired))
        .copied()
        .collect();
    let prefixes: Vec<&str> = keys.iter().filter_map(|k| k.strip_suffix('#')).collect();
    let mut alternatives: Vec<String> = prefixes
        .iter()
        .map(|prefix| format!("{}.*", escape(prefix)))
        .collect();
    for key in keys {
        if !key.ends_with('#') && !prefixes.iter().any(|p| key.starts_with(p)) {
            alternatives.push(escape(key));
        }
    }
    alternatives.sort();
    alternatives.dedup();
    any_of(&alternatives)
}

#[cfg(test)]
mod tests {
    use domain::OrderStatus;
    use regex::Regex;

    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        Regex::new(pattern).unwrap().is_match(text)
    }

    fn service(system: System, namespaces: Namespaces) -> Permissions {
        of(
            Party::Service(system),
            &Accounts::default(),
            &namespaces,
            &[String::new()],
        )
    }

    fn topic<'a>(permissions: &'a Permissions, exchange: &str) -> &'a TopicPermission {
        permissions
            .topics
            .iter()
            .find(|t| t.exchange == exchange)
            .unwrap_or_else(|| panic!("no topic permission on {exchange}"))
    }

    #[test]
    fn a_service_may_publish_exactly_the_routing_keys_it_owns() {
        let every_key: Vec<String> = System::ALL
            .into_iter()
            .flat_map(routing_keys_owned_by)
            .collect();
        for system in System::ALL {
            let permissions = service(system, Namespaces::Exactly(String::new()));
            let orders = topic(&permissions, "hallmark.orders");
            for key in &every_key {
                let own = routing_keys_owned_by(system).contains(key);
                assert_eq!(matches(&orders.write, key), own, "{system} {key}");
            }
            assert!(!matches(&orders.write, "order.#"), "{system}");
        }
        let shop = service(System::Shop, Namespaces::Exactly(String::new()));
        let write = &topic(&shop, "hallmark.orders").write;
        assert!(matches(write, "order.created"));
        assert!(matches(write, "order.status_changed.confirmed"));
        assert!(!matches(write, "order.status_changed.priced"));
        assert!(!matches(write, "order.created.x"));
    }

    #[test]
    fn only_crm_may_bind_to_the_orders_that_carry_personal_data() {
        for system in System::ALL {
            let permissions = service(system, Namespaces::Exactly(String::new()));
            let read = &topic(&permissions, "hallmark.orders").read;
            for spec in queues_of(system) {
                for key in spec.bindings.iter().chain(spec.retired) {
                    assert!(matches(read, key), "{system} must bind {key}");
                }
            }
            let may_see_new_orders = system == System::Crm;
            for wide in [
                "order.created",
                "#",
                "order.#",
                "order.*",
                "*.created",
                "#.created",
            ] {
                let allowed = matches(read, wide);
                assert_eq!(
                    allowed,
                    may_see_new_orders && wide == "order.created",
                    "{system} binding {wide}"
                );
            }
            assert!(!matches(read, "order.status_changed"), "{system}");
        }
        let mes = service(System::Mes, Namespaces::Exactly(String::new()));
        let read = &topic(&mes, "hallmark.orders").read;
        assert!(matches(read, "order.pricing_requested"));
        assert!(matches(read, "order.status_changed.#"));
        assert!(matches(
            read,
            &format!("order.status_changed.{}", OrderStatus::Confirmed)
        ));
    }

    #[test]
    fn a_service_reads_only_its_own_queues_and_retries_and_never_a_dead_letter() {
        let crm = service(System::Crm, Namespaces::Any);
        for name in [
            "crm.orders",
            "t0a1b2c3d4e5f.crm.orders",
            "crm.retry.1",
            "t0a1b2c3d4e5f.crm.retry.12",
            "hallmark.orders",
            "hallmark.dlx",
        ] {
            assert!(matches(&crm.read, name), "{name}");
        }
        for name in [
            "crm.orders.dlq",
            "mes.pricing",
            "shop.status",
            "mes.retry.1",
            "hallmark.retry.1",
            "t0a1b2c3d4e5f.shop.retry.2",
            "xcrm.orders",
            "a.b.crm.orders",
        ] {
            assert!(!matches(&crm.read, name), "{name}");
        }
        assert!(matches(&crm.configure, "crm.orders.dlq"));
        assert!(matches(&crm.configure, "crm.retry.3"));
        assert!(
            !matches(&crm.configure, "hallmark.retry.3"),
            "an earlier version's shared retry queue"
        );
        assert!(!matches(&crm.configure, "mes.pricing"));
        assert!(matches(&crm.write, "hallmark.retry"));
        assert!(!matches(&crm.write, "mes.pricing"));
        assert!(!matches(&crm.write, "mes.retry.1"));
    }

    #[test]
    fn a_service_names_only_its_own_queues_on_the_dead_letter_retry_and_requeue_exchanges() {
        let names = Names::new("acl");
        let mes = of(
            Party::Service(System::Mes),
            &Accounts::default(),
            &Namespaces::Any,
            &["acl".to_owned()],
        );
        let dlx = topic(&mes, "acl.hallmark.dlx");
        assert!(matches(&dlx.write, &names.queue("mes.pricing")));
        assert!(matches(&dlx.read, &names.queue("mes.production")));
        assert!(!matches(&dlx.read, &names.queue("crm.orders")));
        assert!(!matches(&dlx.read, "#"));
        let retry = topic(&mes, "acl.hallmark.retry");
        assert!(matches(
            &retry.write,
            &names.retry_key(0, &names.queue("mes.pricing"))
        ));
        assert!(!matches(
            &retry.read,
            &names.retry_key(0, &names.queue("crm.orders"))
        ));
        assert!(!matches(&retry.read, "#"));
        let requeue = topic(&mes, "acl.hallmark.requeue");
        assert!(matches(
            &requeue.read,
            &names.requeue_key("*", &names.queue("mes.pricing"))
        ));
        assert!(matches(&requeue.read, &names.queue("mes.pricing")));
        assert!(!matches(
            &requeue.read,
            &names.requeue_key("*", &names.queue("crm.orders"))
        ));
        assert!(!matches(
            &requeue.write,
            &names.requeue_key("replay", &names.queue("mes.pricing"))
        ));
    }

    #[test]
    fn the_operator_reads_dead_letters_and_replays_them_and_nothing_else() {
        let operator = of(
            Party::Operator,
            &Accounts::default(),
            &Namespaces::Exactly(String::new()),
            &[String::new()],
        );
        assert_eq!(operator.user, "hallmark-ops");
        assert_eq!(operator.configure, NOTHING);
        for spec in QUEUES {
            assert!(matches(&operator.read, &format!("{}.dlq", spec.name)));
            assert!(!matches(&operator.read, spec.name));
        }
        assert!(matches(&operator.write, "hallmark.requeue"));
        assert!(!matches(&operator.write, "hallmark.orders"));
        let [requeue] = operator.topics.as_slice() else {
            panic!("{:?}", operator.topics);
        };
        assert!(matches(&requeue.write, "replay.crm.orders"));
        assert!(!matches(&requeue.write, "1.crm.orders"));
    }
}
