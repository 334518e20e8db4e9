//! The customer's key to their order: a capability Shop returns when it accepts the order, which
//! reading, confirming and cancelling that order require (`Authorization: Bearer ord_…`).
//!
//! A token is `ord_` and the URL-safe base64 of HMAC-SHA256(key, order id): Shop stores none,
//! a repeated request (the same `Idempotency-Key`) gets the same token again, and a token opens
//! its own order only. Whoever holds it may act for the customer, so it travels only in the
//! `Authorization` header (never in a URL, log line or span). Changing the key
//! (`SHOP_ORDER_TOKEN_KEY`) invalidates every token handed out before.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use platform::error::ApiError;

const PREFIX: &str = "ord_";

/// Makes and checks order tokens.
#[derive(Clone)]
pub struct OrderTokens {
    key: SecretString,
}

impl std::fmt::Debug for OrderTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderTokens { key: [REDACTED] }")
    }
}

impl OrderTokens {
    pub fn new(key: SecretString) -> Self {
        Self { key }
    }

    fn mac(&self, order_id: Uuid) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(order_id.as_bytes());
        mac
    }

    /// The token of `order_id`.
    pub fn issue(&self, order_id: Uuid) -> String {
        format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.mac(order_id).finalize().into_bytes())
        )
    }

    /// Whether `headers` carry `order_id`'s token; compared in constant time.
    pub fn check(&self, order_id: Uuid, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| ApiError::Unauthorized {
                code: "order_token_missing",
                message: "send the order's token (returned when the order was placed) as `Authorization: Bearer ord_…`".into(),
            })?;
        let valid = token
            .strip_prefix(PREFIX)
            .and_then(|mac| URL_SAFE_NO_PAD.decode(mac).ok())
            .is_some_and(|mac| self.mac(order_id).verify_slice(&mac).is_ok());
        if valid {
            Ok(())
        } else {
            Err(ApiError::Unauthorized {
                code: "order_token_invalid",
                message: "the token is not this order's".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header};

    fn tokens(key: &str) -> OrderTokens {
        OrderTokens::new(SecretString::from(key))
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    #[test]
    fn a_token_opens_its_own_order_and_no_other() {
        let tokens = tokens("k1");
        let (mine, other) = (Uuid::now_v7(), Uuid::now_v7());
        let token = tokens.issue(mine);
        assert!(token.starts_with("ord_"));
        assert_eq!(token, tokens.issue(mine), "the same order, the same token");
        tokens.check(mine, &bearer(&token)).unwrap();
        let err = tokens.check(other, &bearer(&token)).unwrap_err();
        assert!(matches!(
            err,
            ApiError::Unauthorized {
                code: "order_token_invalid",
                ..
            }
        ));
    }

    #[test]
    fn a_token_of_another_key_a_tampered_one_and_none_are_refused() {
        let order = Uuid::now_v7();
        let token = tokens("k1").issue(order);
        let refused = |headers: &HeaderMap| tokens("k2").check(order, headers).unwrap_err();
        assert!(matches!(
            refused(&bearer(&token)),
            ApiError::Unauthorized { .. }
        ));
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        tokens("k1").check(order, &bearer(&tampered)).unwrap_err();
        tokens("k1").check(order, &bearer("ord_")).unwrap_err();
        tokens("k1")
            .check(order, &bearer(&token.replace("ord_", "")))
            .unwrap_err();
        assert!(matches!(
            refused(&HeaderMap::new()),
            ApiError::Unauthorized {
                code: "order_token_missing",
                ..
            }
        ));
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        assert!(!format!("{:?}", tokens("s3cr3t-key")).contains("s3cr3t"));
    }
}
