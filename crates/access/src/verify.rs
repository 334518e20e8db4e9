//! Checking a bearer token.
//!
//! A token is accepted when its signature checks against one of the provider's asymmetric keys
//! (the one its `kid` names, with the algorithm that key is for: `alg: none` and HMAC tokens are
//! refused, so the public key can never serve as a shared secret), its `iss` is the configured
//! issuer, its `aud` contains the configured audience, and it is within `exp` and `nbf` (give or
//! take the leeway). Anything else is a [`Rejection`], whose reason goes to the log; the caller
//! learns only that its token is not valid.

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use crate::Identity;
use crate::config::IssuerConfig;
use crate::keys::{Key, KeySet};

/// Why a token was refused. The variant goes to the log; the caller learns only that its token
/// is not valid.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("no bearer token")]
    Missing,
    #[error("not a JWT")]
    Malformed,
    #[error("signed with an algorithm that is not an asymmetric signature")]
    Algorithm,
    #[error("no key id")]
    NoKeyId,
    #[error("signed with a key the identity provider does not list")]
    UnknownKey,
    #[error("the signature does not match")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("issued by another issuer")]
    Issuer,
    #[error("meant for another audience")]
    Audience,
    #[error("claims missing or malformed")]
    Claims,
    #[error("a state-changing request with the session cookie but without its CSRF token")]
    Csrf,
}

/// Checks tokens of one issuer for one audience; keeps the issuer's keys.
pub struct Verifier {
    config: IssuerConfig,
    keys: KeySet,
}

impl Verifier {
    pub fn new(config: IssuerConfig) -> Self {
        Self {
            keys: KeySet::new(&config.issuer),
            config,
        }
    }

    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// The issuer's keys (and, through them, its discovery document and HTTP client).
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Fetches the issuer's keys ahead of the first request; an issuer that cannot be reached
    /// is logged, not fatal (keys are fetched again when a token needs them).
    pub async fn prepare(&self) {
        match self.keys.refresh().await {
            Ok(count) => {
                tracing::info!(issuer = %self.config.issuer, keys = count, "identity provider's keys fetched")
            }
            Err(err) => tracing::warn!(
                error = &err as &dyn std::error::Error,
                "identity provider's keys not fetched yet"
            ),
        }
    }

    /// Checks a bearer token (see the module's rules).
    pub async fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        if !is_asymmetric(header.alg) {
            return Err(Rejection::Algorithm);
        }
        let kid = header.kid.as_deref().ok_or(Rejection::NoKeyId)?;
        let key = self.keys.get(kid).await.ok_or(Rejection::UnknownKey)?;
        check(token, header.alg, &key, &self.config)
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn is_asymmetric(algorithm: Algorithm) -> bool {
    use jsonwebtoken::AlgorithmFamily;
    !matches!(algorithm.family(), AlgorithmFamily::Hmac)
}

/// Checks `token`, signed with `algorithm` by `key`, against `config`: the part of
/// [`Verifier::verify`] that needs no network.
pub fn check(
    token: &str,
    algorithm: Algorithm,
    key: &Key,
    config: &IssuerConfig,
) -> Result<Identity, Rejection> {
    if key.algorithm.is_some_and(|meant| meant != algorithm) {
        return Err(Rejection::Algorithm);
    }
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation.leeway = config.leeway.as_secs();
    let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|err| {
        use jsonwebtoken::errors::ErrorKind;
        match err.kind() {
            ErrorKind::ExpiredSignature => Rejection::Expired,
            ErrorKind::ImmatureSignature => Rejection::NotYetValid,
            ErrorKind::InvalidIssuer => Rejection::Issuer,
            ErrorKind::InvalidAudience => Rejection::Audience,
            ErrorKind::InvalidSignature => Rejection::Signature,
            ErrorKind::InvalidAlgorithm => Rejection::Algorithm,
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                Rejection::Claims
            }
            _ => Rejection::Malformed,
        }
    })?;
    Ok(identity(&data.claims, &config.roles_claim))
}

fn identity(claims: &Value, roles_claim: &str) -> Identity {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let subject = text("sub").unwrap_or_default();
    let name = text("preferred_username")
        .or_else(|| text("name"))
        .unwrap_or_else(|| subject.clone());
    let roles = roles_claim
        .split('.')
        .try_fold(claims, |value, part| value.get(part))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    Identity {
        subject,
        name,
        roles,
        partner: text("partner_id").filter(|p| !p.trim().is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{EncodingKey, Header};
    use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
    use serde_json::json;

    use super::*;
    use crate::keys;
    use crate::role;

    const ISSUER: &str = "https://sso.example.com/realms/hallmark";

    fn config() -> IssuerConfig {
        IssuerConfig {
            issuer: ISSUER.to_owned(),
            audience: "order-watch".to_owned(),
            roles_claim: "realm_access.roles".to_owned(),
            leeway: Duration::ZERO,
        }
    }

    /// A provider's signing key: the private half to sign test tokens, the public half as the
    /// provider would list it.
    struct Provider {
        signing: EncodingKey,
        public: p256::PublicKey,
    }

    impl Provider {
        fn new() -> Self {
            let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
            let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
            Self {
                signing: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
                public: secret.public_key(),
            }
        }

        /// The key as a verifier keeps it after reading the provider's JWKS.
        fn key(&self, kid: &str) -> Key {
            let mut jwk: Value = serde_json::from_str(&self.public.to_jwk_string()).unwrap();
            jwk["kid"] = json!(kid);
            jwk["alg"] = json!("ES256");
            jwk["use"] = json!("sig");
            let set: JwkSet = serde_json::from_value(json!({ "keys": [jwk] })).unwrap();
            keys::usable_keys(&set).remove(kid).unwrap()
        }

        fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some("k1".to_owned());
            jsonwebtoken::encode(&header, claims, &self.signing).unwrap()
        }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims(role: &str) -> Value {
        json!({
            "iss": ISSUER,
            "aud": ["order-watch", "account"],
            "sub": "f3a1",
            "preferred_username": "dana",
            "exp": now() + 300,
            "iat": now(),
            "realm_access": { "roles": ["offline_access", role] },
        })
    }

    fn checked(provider: &Provider, claims: &Value) -> Result<Identity, Rejection> {
        let token = provider.sign(claims);
        check(&token, Algorithm::ES256, &provider.key("k1"), &config())
    }

    #[test]
    fn a_valid_token_names_the_caller_and_their_roles() {
        let provider = Provider::new();
        let identity = checked(&provider, &claims(role::DEVELOPER)).unwrap();
        assert_eq!(identity.name, "dana");
        assert_eq!(identity.subject, "f3a1");
        assert_eq!(identity.roles, ["offline_access", "developer"]);
        assert!(identity.has(role::SUPPORT) && !identity.has(role::ADMIN));
        assert_eq!(identity.partner, None);
    }

    #[test]
    fn a_partners_token_names_its_partner() {
        let provider = Provider::new();
        let mut claims = claims(role::PARTNER);
        claims["partner_id"] = json!("acme");
        claims["azp"] = json!("partner-acme");
        let identity = checked(&provider, &claims).unwrap();
        assert_eq!(identity.partner.as_deref(), Some("acme"));
        assert!(identity.has(role::PARTNER) && !identity.has(role::SUPPORT));
    }

    #[test]
    fn expired_not_yet_valid_foreign_and_misaddressed_tokens_are_refused() {
        let provider = Provider::new();
        let with = |field: &str, value: Value| {
            let mut claims = claims(role::ADMIN);
            claims[field] = value;
            checked(&provider, &claims)
        };
        assert_eq!(with("exp", json!(now() - 5)), Err(Rejection::Expired));
        assert_eq!(with("nbf", json!(now() + 60)), Err(Rejection::NotYetValid));
        assert_eq!(
            with("iss", json!("https://sso.example.com/realms/other")),
            Err(Rejection::Issuer)
        );
        assert_eq!(with("aud", json!("crm-api")), Err(Rejection::Audience));
        let mut no_expiry = claims(role::ADMIN);
        no_expiry.as_object_mut().unwrap().remove("exp");
        assert_eq!(checked(&provider, &no_expiry), Err(Rejection::Claims));
    }

    #[test]
    fn a_token_signed_by_another_key_or_tampered_with_is_refused() {
        let provider = Provider::new();
        let stranger = Provider::new();
        let token = stranger.sign(&claims(role::ADMIN));
        assert_eq!(
            check(&token, Algorithm::ES256, &provider.key("k1"), &config()),
            Err(Rejection::Signature)
        );
        // The payload of a support token swapped for one that says admin.
        let token = provider.sign(&claims(role::SUPPORT));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = {
            use base64::Engine as _;
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            engine.encode(serde_json::to_vec(&claims(role::ADMIN)).unwrap())
        };
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(
            check(&tampered, Algorithm::ES256, &provider.key("k1"), &config()),
            Err(Rejection::Signature)
        );
    }

    #[test]
    fn a_key_is_used_only_with_the_algorithm_it_is_listed_for() {
        let provider = Provider::new();
        let token = provider.sign(&claims(role::ADMIN));
        assert_eq!(
            check(&token, Algorithm::ES384, &provider.key("k1"), &config()),
            Err(Rejection::Algorithm)
        );
    }

    #[test]
    fn symmetric_keys_in_a_key_set_are_never_used() {
        let set: JwkSet = serde_json::from_value(json!({ "keys": [
            { "kty": "oct", "kid": "shared", "alg": "HS256", "k": "c2VjcmV0" },
        ]}))
        .unwrap();
        assert!(keys::usable_keys(&set).is_empty());
        assert!(!is_asymmetric(Algorithm::HS256));
    }

    #[test]
    fn only_a_bearer_authorization_header_carries_a_token() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::AUTHORIZATION, value.parse().unwrap());
            map
        };
        assert_eq!(bearer(&headers("Bearer abc.def.ghi")), Some("abc.def.ghi"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic dXNlcjpwdw==")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
