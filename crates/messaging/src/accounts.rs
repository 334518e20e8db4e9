//! Who is who on the broker. Each service connects to RabbitMQ as its own user, an operator (the
//! `hallmark dlq` command) as another, and every message carries its sender's user name as the
//! AMQP `user-id`, which RabbitMQ refuses unless it is the user of the connection that publishes
//! it. So a consumer knows who sent a message, and applies it only when that is the message's
//! owner (`domain::events::Event::owner`); see [`crate::consumer`].
//!
//! The permissions each account needs are in [`crate::permissions`].

use std::fmt;

use domain::System;
use lapin::uri::AMQPUri;
use settings::ConfigError;

/// Who connects to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Party {
    /// A service: publishes the messages it owns, consumes its own queues.
    Service(System),
    /// An operator with `hallmark dlq`: reads dead letters and replays them.
    Operator,
}

impl Party {
    pub const ALL: [Party; 4] = [
        Party::Service(System::Shop),
        Party::Service(System::Crm),
        Party::Service(System::Mes),
        Party::Operator,
    ];

    /// Its name in `HALLMARK_AMQP_ACCOUNTS`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Service(System::Shop) => "shop",
            Self::Service(System::Crm) => "crm",
            Self::Service(System::Mes) => "mes",
            Self::Operator => "operator",
        }
    }

    /// The account of the local development broker (`scripts/broker.sh` creates it), and its
    /// password: well known, so accepted only where `HALLMARK_ENV` is `development` or `test`.
    pub fn development_account(self) -> (&'static str, &'static str) {
        match self {
            Self::Service(System::Shop) => ("hallmark-shop", "hallmark-shop-local-only"),
            Self::Service(System::Crm) => ("hallmark-crm", "hallmark-crm-local-only"),
            Self::Service(System::Mes) => ("hallmark-mes", "hallmark-mes-local-only"),
            Self::Operator => ("hallmark-ops", "hallmark-ops-local-only"),
        }
    }

    /// The development broker on this machine, as this party's development account.
    pub fn development_url(self) -> String {
        let (user, password) = self.development_account();
        format!("amqp://{user}:{password}@127.0.0.1:5672/%2f")
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(system) => write!(f, "{system}"),
            Self::Operator => f.write_str("the operator"),
        }
    }
}

/// The RabbitMQ user of each party: who may send what. Env: `HALLMARK_AMQP_ACCOUNTS`, e.g.
/// `shop=hallmark-shop,crm=hallmark-crm,mes=hallmark-mes,operator=hallmark-ops` (the default;
/// name only those that differ). Every service and the operator's command must be given the
/// same map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    shop: String,
    crm: String,
    mes: String,
    operator: String,
}

impl Default for Accounts {
    fn default() -> Self {
        let name = |party: Party| party.development_account().0.to_owned();
        Self {
            shop: name(Party::Service(System::Shop)),
            crm: name(Party::Service(System::Crm)),
            mes: name(Party::Service(System::Mes)),
            operator: name(Party::Operator),
        }
    }
}

impl Accounts {
    pub const VARIABLE: &'static str = "HALLMARK_AMQP_ACCOUNTS";

    /// The defaults overridden by `HALLMARK_AMQP_ACCOUNTS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        match settings::optional(Self::VARIABLE) {
            Some(text) => Self::parse(&text),
            None => Ok(Self::default()),
        }
    }

    /// `party=user` pairs separated by commas, over the defaults; no user may stand for two
    /// parties (its messages could not be told apart).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError {
            variable: Self::VARIABLE.to_owned(),
            message,
        };
        let mut accounts = Self::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, user) = pair
                .split_once('=')
                .map(|(k, u)| (k.trim(), u.trim()))
                .filter(|(_, user)| !user.is_empty())
                .ok_or_else(|| error(format!("`{pair}` is not `party=user`")))?;
            let party = Party::ALL
                .into_iter()
                .find(|party| party.key() == key)
                .ok_or_else(|| {
                    error(format!(
                        "unknown party `{key}`; the parties are shop, crm, mes and operator"
                    ))
                })?;
            *accounts.slot(party) = user.to_owned();
        }
        for (i, a) in Party::ALL.iter().enumerate() {
            for b in &Party::ALL[i + 1..] {
                if accounts.of(*a) == accounts.of(*b) {
                    return Err(error(format!(
                        "`{}` cannot be the account of both {} and {}",
                        accounts.of(*a),
                        a.key(),
                        b.key()
                    )));
                }
            }
        }
        Ok(accounts)
    }

    fn slot(&mut self, party: Party) -> &mut String {
        match party {
            Party::Service(System::Shop) => &mut self.shop,
            Party::Service(System::Crm) => &mut self.crm,
            Party::Service(System::Mes) => &mut self.mes,
            Party::Operator => &mut self.operator,
        }
    }

    /// The user `party` connects as.
    pub fn of(&self, party: Party) -> &str {
        match party {
            Party::Service(System::Shop) => &self.shop,
            Party::Service(System::Crm) => &self.crm,
            Party::Service(System::Mes) => &self.mes,
            Party::Operator => &self.operator,
        }
    }

    /// The account of a service.
    pub fn service(&self, system: System) -> &str {
        self.of(Party::Service(system))
    }

    pub fn operator(&self) -> &str {
        &self.operator
    }
}

/// The user and password in an AMQP URI, or why it is not one. The error never repeats the URI
/// (it holds the password).
pub(crate) fn credentials_of(url: &str) -> Result<(String, String), String> {
    let uri: AMQPUri = url
        .parse()
        .map_err(|_| "is not an AMQP URI like amqp://user:password@host:5672/%2f".to_owned())?;
    let info = uri.authority.userinfo;
    Ok((info.username, info.password))
}

/// Refuses to connect `party` with `url` when that cannot be right: outside development (see
/// `settings::development`) RabbitMQ's `guest` or a development password; anywhere, a user that
/// is not `party`'s in `accounts` (every message it sent would be refused as forged).
pub(crate) fn check(
    party: Party,
    url: &str,
    accounts: &Accounts,
    development: bool,
) -> Result<(), ConfigError> {
    let error = |message: String| ConfigError {
        variable: "HALLMARK_AMQP_URL".to_owned(),
        message,
    };
    let (user, password) = credentials_of(url).map_err(error)?;
    if !development {
        if user == "guest" {
            return Err(error(format!(
                "connects as RabbitMQ's `guest`, which is for local development only: give {party} its own account (`{}`)",
                accounts.of(party)
            )));
        }
        if Party::ALL
            .iter()
            .any(|p| p.development_account().1 == password)
        {
            return Err(error(format!(
                "uses a development password (for local development only) for `{user}`: set the account's own password"
            )));
        }
    }
    let expected = accounts.of(party);
    if user != expected {
        return Err(error(format!(
            "connects as `{user}`, but {} names `{expected}` for {party}: the others would refuse its messages as forged",
            Accounts::VARIABLE
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: Party = Party::Service(System::Shop);

    #[test]
    fn the_default_accounts_are_the_development_accounts_and_can_be_renamed() {
        let accounts = Accounts::default();
        assert_eq!(accounts.service(System::Mes), "hallmark-mes");
        assert_eq!(accounts.operator(), "hallmark-ops");
        let renamed = Accounts::parse(" mes = prod-mes , operator=oncall").unwrap();
        assert_eq!(renamed.service(System::Mes), "prod-mes");
        assert_eq!(renamed.operator(), "oncall");
        assert_eq!(renamed.service(System::Shop), "hallmark-shop");
    }

    #[test]
    fn an_accounts_map_that_is_ambiguous_or_unreadable_is_refused() {
        for text in [
            "shop=same,crm=same",
            "mes=hallmark-shop",
            "warehouse=hallmark-wh",
            "shop",
            "shop=",
        ] {
            let err = Accounts::parse(text).unwrap_err();
            assert_eq!(err.variable, "HALLMARK_AMQP_ACCOUNTS", "{text}");
        }
    }

    #[test]
    fn guest_and_development_passwords_are_refused_outside_development() {
        let accounts = Accounts::default();
        let guest = "amqp://guest:guest@broker:5672/%2f";
        let dev = SHOP.development_url();
        let real = "amqp://hallmark-shop:Xk3%23p9@broker:5672/%2f";
        let renamed = Accounts::parse("shop=guest").unwrap();
        assert!(check(SHOP, guest, &renamed, true).is_ok(), "local guest");
        assert!(check(SHOP, &dev, &accounts, true).is_ok());
        let err = check(SHOP, guest, &renamed, false).unwrap_err();
        assert!(err.message.contains("`guest`"), "{err}");
        let err = check(SHOP, &dev, &accounts, false).unwrap_err();
        assert!(err.message.contains("development password"), "{err}");
        assert!(!err.message.contains("local-only"), "never shows it: {err}");
        check(SHOP, real, &accounts, false).unwrap();
    }

    #[test]
    fn a_service_connecting_as_another_account_is_refused_everywhere() {
        let accounts = Accounts::default();
        let crm = "amqp://hallmark-crm:Xk3p9@broker:5672/%2f";
        for development in [true, false] {
            let err = check(SHOP, crm, &accounts, development).unwrap_err();
            assert!(err.message.contains("`hallmark-crm`"), "{err}");
            assert!(err.message.contains("`hallmark-shop`"), "{err}");
        }
        let guest = "amqp://guest:guest@127.0.0.1:5672/%2f";
        assert!(check(SHOP, guest, &accounts, true).is_err());
        let err = check(SHOP, "not a url s3cr3t", &accounts, true).unwrap_err();
        assert!(!err.message.contains("s3cr3t"), "{err}");
    }
}
