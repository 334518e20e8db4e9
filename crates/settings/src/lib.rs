//! Reading settings from environment variables with errors that name the variable: the one
//! reader of every Hallmark crate. A variable that is unset or blank takes its default; one that
//! is set and unusable is an error, never silently the default.
//!
//! (`otel-fastpath` reads the standard `OTEL_*` variables itself, by the same rule, so that it
//! stays free of Hallmark crates; command-line tools declare theirs once with clap's `env`.)

use std::str::FromStr;
use std::time::Duration;

/// A setting that is present but unusable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

/// The variable's value, or `default` when unset or empty.
pub fn string(variable: &str, default: &str) -> String {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => default.to_owned(),
    }
}

/// The variable's value when set and non-empty.
pub fn optional(variable: &str) -> Option<String> {
    present(std::env::var(variable).ok())
}

/// A value that is there and not blank.
fn present(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.trim().is_empty())
}

/// Where development defaults apply: `HALLMARK_ENV` unset or one of these. Anywhere else a
/// credential must be given ([`credential`]).
const DEVELOPMENT: &[&str] = &["development", "test"];

/// A setting that holds a credential (a URL with a password): the variable's value, or in
/// development (see [`DEVELOPMENT`]) `development_default`, a local account such as RabbitMQ's
/// `guest` or the development database's user. In any other environment an unset variable is
/// an error: a development credential is never used silently in production.
pub fn credential(variable: &str, development_default: &str) -> Result<String, ConfigError> {
    credential_value(
        variable,
        optional(variable),
        &string("HALLMARK_ENV", "development"),
        development_default,
    )
}

/// Whether this is a development or test environment (see [`DEVELOPMENT`]), where development
/// defaults (local accounts and their well-known passwords) may be used.
pub fn development() -> bool {
    is_development(&string("HALLMARK_ENV", "development"))
}

fn is_development(environment: &str) -> bool {
    DEVELOPMENT.contains(&environment.trim())
}

fn credential_value(
    variable: &str,
    value: Option<String>,
    environment: &str,
    development_default: &str,
) -> Result<String, ConfigError> {
    match present(value) {
        Some(value) => Ok(value),
        None if is_development(environment) => Ok(development_default.to_owned()),
        None => Err(ConfigError {
            variable: variable.to_owned(),
            message: format!(
                "must be set in `{environment}` (HALLMARK_ENV): the development default is for development only"
            ),
        }),
    }
}

/// The variable parsed as `T`, or `default` when unset.
pub fn parse<T: FromStr>(variable: &str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    parse_value(variable, optional(variable), default)
}

fn parse_value<T: FromStr>(
    variable: &str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match present(value) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| ConfigError {
            variable: variable.to_owned(),
            message: format!("`{value}` is not valid: {e}"),
        }),
    }
}

/// The variable as a duration such as `90s`, `15m` or `500ms`, or `default` when unset.
pub fn duration(variable: &str, default: Duration) -> Result<Duration, ConfigError> {
    duration_value(variable, optional(variable), default)
}

fn duration_value(
    variable: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match present(value) {
        None => Ok(default),
        Some(value) => humantime::parse_duration(value.trim()).map_err(|e| ConfigError {
            variable: variable.to_owned(),
            message: format!("`{value}` is not a duration like `90s` or `15m` ({e})"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_variable_takes_the_default_like_an_unset_one() {
        for value in [None, Some(String::new()), Some("  ".to_owned())] {
            assert_eq!(parse_value("PORT", value.clone(), 8081_u16).unwrap(), 8081);
            assert_eq!(
                duration_value("WAIT", value, Duration::from_secs(3)).unwrap(),
                Duration::from_secs(3)
            );
        }
    }

    #[test]
    fn a_set_value_is_read_with_surrounding_space_ignored() {
        assert_eq!(
            parse_value("PORT", Some(" 9000 ".into()), 1_u16).unwrap(),
            9000
        );
        assert_eq!(
            duration_value("WAIT", Some("1m 30s".into()), Duration::ZERO).unwrap(),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn a_credential_has_a_development_default_only_in_development() {
        let local = "amqp://guest:guest@127.0.0.1:5672/%2f";
        for environment in ["development", "test"] {
            assert_eq!(
                credential_value("HALLMARK_AMQP_URL", None, environment, local).unwrap(),
                local
            );
        }
        let err = credential_value("HALLMARK_AMQP_URL", None, "production", local).unwrap_err();
        assert_eq!(err.variable, "HALLMARK_AMQP_URL");
        assert!(!err.to_string().contains("guest"), "{err}");
        let given = "amqp://shop:s3cret@broker:5672/%2f";
        assert_eq!(
            credential_value("HALLMARK_AMQP_URL", Some(given.into()), "production", local).unwrap(),
            given
        );
    }

    #[test]
    fn an_unusable_value_is_an_error_naming_the_variable_and_the_value() {
        let err = parse_value("SHOP_PORT", Some("eighty".into()), 1_u16).unwrap_err();
        assert_eq!(err.variable, "SHOP_PORT");
        assert!(err.to_string().contains("`eighty`"), "{err}");
        let err = duration_value("HALLMARK_WAIT", Some("soon".into()), Duration::ZERO).unwrap_err();
        assert!(
            err.to_string().starts_with("HALLMARK_WAIT: `soon`"),
            "{err}"
        );
    }
}
