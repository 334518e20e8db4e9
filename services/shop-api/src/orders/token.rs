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

/// What every order token starts with, which tells it from an identity provider's token.
pub(crate) const PREFIX: &str = "ord_";

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

    /// Whether `token` is `order_id`'s; compared in constant time.
    pub fn check(&self, order_id: Uuid, token: &str) -> Result<(), ApiError> {
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

    fn tokens(key: &str) -> OrderTokens {
        OrderTokens::new(SecretString::from(key))
    }

    #[test]
    fn a_token_opens_its_own_order_and_no_other() {
        let tokens = tokens("k1");
        let (mine, other) = (Uuid::now_v7(), Uuid::now_v7());
        let token = tokens.issue(mine);
        assert!(token.starts_with("ord_"));
        assert_eq!(token, tokens.issue(mine), "the same order, the same token");
        tokens.check(mine, &token).unwrap();
        let err = tokens.check(other, &token).unwrap_err();
        assert!(matches!(
            err,
            ApiError::Unauthorized {
                code: "order_token_invalid",
                ..
            }
        ));
    }

    #[test]
    fn a_token_of_another_key_a_tampered_one_and_a_bare_prefix_are_refused() {
        let order = Uuid::now_v7();
        let token = tokens("k1").issue(order);
        assert!(matches!(
            tokens("k2").check(order, &token).unwrap_err(),
            ApiError::Unauthorized { .. }
        ));
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        tokens("k1").check(order, &tampered).unwrap_err();
        tokens("k1").check(order, "ord_").unwrap_err();
        tokens("k1")
            .check(order, &token.replace("ord_", ""))
            .unwrap_err();
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        assert!(!format!("{:?}", tokens("s3cr3t-key")).contains("s3cr3t"));
    }
}
