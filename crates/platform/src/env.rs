//! Reading settings from environment variables with errors that name the variable.

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
    std::env::var(variable)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// The variable parsed as `T`, or `default` when unset.
pub fn parse<T: FromStr>(variable: &str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match optional(variable) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| ConfigError {
            variable: variable.to_owned(),
            message: format!("`{value}` is not valid: {e}"),
        }),
    }
}

/// The variable as a duration such as `90s`, `15m` or `500ms`, or `default` when unset.
pub fn duration(variable: &str, default: Duration) -> Result<Duration, ConfigError> {
    match optional(variable) {
        None => Ok(default),
        Some(value) => humantime::parse_duration(value.trim()).map_err(|e| ConfigError {
            variable: variable.to_owned(),
            message: format!("`{value}` is not a duration like `90s` or `15m` ({e})"),
        }),
    }
}
