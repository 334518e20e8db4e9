//! Who is calling a Hallmark API and what they may do.
//!
//! Every caller but a customer proves who it is with an access token of the identity provider
//! (OpenID Connect; Keycloak in development, see `deploy/keycloak/`): people through SSO, machines
//! through the client credentials grant of their own confidential client. A token is accepted
//! when its signature checks against one of the provider's published asymmetric keys, and its
//! issuer, audience (the API it was asked for: `shop-api`, `crm-api`, `mes-api`, `order-watch`)
//! and validity period are right ([`verify`]). Customers hold no account: Shop gives each order
//! its own capability token instead (`shop-api`'s `orders::token`).
//!
//! The roles ([`role`]) mean the same on every API:
//!
//! | role | who | may |
//! | --- | --- | --- |
//! | `support` | the support desk | read orders, journeys, incidents, configuration |
//! | `developer` | engineers | support's, and change configuration |
//! | `workshop` | the workshop floor | read orders, move production steps, ship and deliver |
//! | `admin` | administrators | everything people may do |
//! | `partner` | a partner's integration (machine) | place orders and act on its own orders |
//! | `status-reader` | order-watch (machine) | read the status listings |
//! | `limit-controller` | order-watch (machine) | tighten and lift partners' rates at Shop for incidents |
//! | `status-republisher` | order-watch (machine) | ask a service to send an order's messages again (reconciliation's repair) |
//! | `alert-sender` | Alertmanager (machine) | post alerts to order-watch |
//!
//! People's roles nest: `admin` includes `developer` and `workshop`, `developer` includes
//! `support` ([`Identity::has`]). Machines' roles are held by no person's role and include none:
//! a leaked partner secret cannot read another partner's orders, an administrator's token cannot
//! post alerts.
//!
//! The [`Gate`] puts this in front of routes: 401 without a valid token, 403 when its roles do not
//! cover the route, both in the one JSON error shape and counted (`platform::error::refused`).

pub mod client;
pub mod config;
pub mod gate;
pub mod keys;
pub mod verify;

pub use client::{ClientConfig, ServiceToken};
pub use config::{AccessConfig, IssuerConfig};
pub use gate::{Gate, Need, forbidden, require, unauthenticated};
pub use verify::{Rejection, Verifier, bearer};

/// The names of the roles, as tokens carry them.
pub mod role {
    pub const SUPPORT: &str = "support";
    pub const DEVELOPER: &str = "developer";
    pub const WORKSHOP: &str = "workshop";
    pub const ADMIN: &str = "admin";
    pub const PARTNER: &str = "partner";
    pub const STATUS_READER: &str = "status-reader";
    pub const LIMIT_CONTROLLER: &str = "limit-controller";
    pub const STATUS_REPUBLISHER: &str = "status-republisher";
    pub const ALERT_SENDER: &str = "alert-sender";
}

/// The caller a valid token names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// The token's `sub`.
    pub subject: String,
    /// What to call them: `preferred_username`, else `name`, else the subject.
    pub name: String,
    /// The roles the token lists (under the configured claim), as listed.
    pub roles: Vec<String>,
    /// For a partner's client: the partner it acts for (the token's `partner_id` claim, which
    /// the identity provider sets per client; no caller can choose it).
    pub partner: Option<String>,
}

impl Identity {
    /// Whether they hold `role`, or a person's role that includes it (see the module's table).
    pub fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|held| includes(held, role))
    }

    /// How audits and histories name them ([`audit_name`]).
    pub fn audit_name(&self) -> String {
        audit_name(&self.name, &self.subject)
    }
}

/// How every audit and order history names a caller: their name and, in brackets, their
/// subject at the identity provider (names may repeat or change; subjects do not).
pub fn audit_name(name: &str, subject: &str) -> String {
    format!("{name} ({subject})")
}

/// Whether holding `held` grants `role`.
fn includes(held: &str, role: &str) -> bool {
    use role::*;
    held == role
        || match held {
            ADMIN => matches!(role, DEVELOPER | SUPPORT | WORKSHOP),
            DEVELOPER => role == SUPPORT,
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(roles: &[&str]) -> Identity {
        Identity {
            subject: "s".into(),
            name: "n".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            partner: None,
        }
    }

    #[test]
    fn peoples_roles_nest_and_machines_roles_stand_alone() {
        let admin = holding(&[role::ADMIN]);
        for role in [role::SUPPORT, role::DEVELOPER, role::WORKSHOP, role::ADMIN] {
            assert!(admin.has(role), "{role}");
        }
        for machine in [
            role::PARTNER,
            role::STATUS_READER,
            role::LIMIT_CONTROLLER,
            role::STATUS_REPUBLISHER,
            role::ALERT_SENDER,
        ] {
            assert!(!admin.has(machine), "{machine}");
        }
        let developer = holding(&[role::DEVELOPER]);
        assert!(developer.has(role::SUPPORT) && !developer.has(role::WORKSHOP));
        let workshop = holding(&[role::WORKSHOP]);
        assert!(!workshop.has(role::SUPPORT));
        let reader = holding(&[role::STATUS_READER]);
        assert!(reader.has(role::STATUS_READER) && !reader.has(role::SUPPORT));
    }
}
