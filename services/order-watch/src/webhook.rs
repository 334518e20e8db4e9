//! The address incident notifications go to. Receivers often take their credential in the URL
//! (a password in its user part, a token in its query, or a path such as
//! `/services/T000/B000/XXXX`), so the URL is a secret: it is kept in a [`SecretString`], and
//! wherever it is shown — `GET /api/config`, the configuration audit, logs — only its
//! [`WebhookUrl::shown`] form appears: scheme, host and port, the first segment of the path, and
//! `***`/`…` for the rest.

use std::fmt;

use secrecy::{ExposeSecret as _, SecretString};

/// Longest webhook URL taken.
pub const MAX_URL_CHARS: usize = 2048;

/// A validated `http` or `https` URL with a host.
#[derive(Clone)]
pub struct WebhookUrl {
    url: SecretString,
    shown: String,
}

/// Why a webhook URL was refused; it never repeats the URL (which may hold a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook: not a URL ({0})")]
    NotAUrl(String),
    #[error("webhook: an http or https URL with a host is needed")]
    NotHttp,
    #[error("webhook: at most {MAX_URL_CHARS} characters")]
    TooLong,
    #[error(
        "webhook: this is the masked form order-watch shows (`…`, `***`); send the whole URL, or leave `webhook` out to keep the current one"
    )]
    Masked,
    #[error("webhook: a URL (text) or null")]
    NotText,
}

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let text = text.trim();
        if text.chars().count() > MAX_URL_CHARS {
            return Err(WebhookError::TooLong);
        }
        if text.contains('…') || text.contains("***") {
            return Err(WebhookError::Masked);
        }
        let url =
            reqwest::Url::parse(text).map_err(|err| WebhookError::NotAUrl(err.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(WebhookError::NotHttp);
        }
        Ok(Self {
            shown: shown(&url),
            url: SecretString::from(url.as_str().to_owned()),
        })
    }

    /// The URL in full, to send to.
    pub fn expose(&self) -> &str {
        self.url.expose_secret()
    }

    /// The URL as order-watch shows it: no user part, query or path beyond its first segment.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl PartialEq for WebhookUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WebhookUrl").field(&self.shown).finish()
    }
}

fn shown(url: &reqwest::Url) -> String {
    let mut out = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        out.push_str("***@");
    }
    out.push_str(url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    let mut segments = url
        .path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty());
    out.push('/');
    if let Some(first) = segments.next() {
        out.push_str(first);
        if segments.next().is_some() {
            out.push_str("/…");
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        out.push_str("?***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_form_keeps_where_it_goes_and_hides_what_may_be_a_credential() {
        let url = WebhookUrl::parse(
            "https://bot:s3cret@hooks.example.com:8443/services/T000/B000/XXXX?token=abc#x",
        )
        .unwrap();
        assert_eq!(
            url.shown(),
            "https://***@hooks.example.com:8443/services/…?***"
        );
        assert!(url.expose().contains("s3cret") && url.expose().contains("token=abc"));
        let debug = format!("{url:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("abc"),
            "{debug}"
        );
        assert_eq!(
            WebhookUrl::parse("http://127.0.0.1:9093/alerts")
                .unwrap()
                .shown(),
            "http://127.0.0.1:9093/alerts"
        );
        assert_eq!(
            WebhookUrl::parse("http://pager.example").unwrap().shown(),
            "http://pager.example/"
        );
    }

    #[test]
    fn only_a_whole_http_url_is_taken() {
        for (text, expected) in [
            ("not a url", "webhook: not a URL"),
            ("ftp://files.example.com/x", "webhook: an http or https URL"),
            ("mailto:ops@example.com", "webhook: an http or https URL"),
            (
                "https://hooks.example.com/services/…?***",
                "webhook: this is the masked form",
            ),
        ] {
            let err = WebhookUrl::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text}: {err}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert_eq!(WebhookUrl::parse(&long).unwrap_err(), WebhookError::TooLong);
    }
}
