//! The identity provider for tests: tokens for the demo users of a running OpenID Connect issuer.
//!
//! `scripts/test` starts Keycloak with the realms in `deploy/keycloak/` (or reuses a running one)
//! and names them in `HALLMARK_TEST_OIDC_ISSUER` (realm `hallmark`: users `support`, `developer`,
//! `admin`, password equal to the name, public client `hallmark-cli` with the password grant) and
//! `HALLMARK_TEST_OIDC_OTHER_ISSUER` (realm `other`: user `developer`, the same client), whose
//! tokens a service of the hallmark realm must refuse. Nothing here is Keycloak's own: any issuer
//! with OpenID Connect discovery and the password grant will do.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// How to get an identity provider when a test needs one and none is configured.
const HOW_TO_START: &str = "run the tests with scripts/test, which starts Keycloak with the \
    realms in deploy/keycloak/ (or reuses one on 127.0.0.1:8180) and sets it; or start Keycloak \
    with scripts/keycloak.sh (it keeps running until Ctrl-C) and export \
    HALLMARK_TEST_OIDC_ISSUER=http://127.0.0.1:8180/realms/hallmark \
    HALLMARK_TEST_OIDC_OTHER_ISSUER=http://127.0.0.1:8180/realms/other";

/// An OpenID Connect issuer (for Keycloak, one realm).
#[derive(Clone, Debug)]
pub struct Issuer {
    url: String,
}

impl Issuer {
    /// The issuer `url` (e.g. `http://127.0.0.1:8180/realms/hallmark`), without a trailing slash.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    /// The hallmark realm's issuer named by `HALLMARK_TEST_OIDC_ISSUER`, if it is set (a blank
    /// value counts as unset).
    pub fn from_env() -> Option<Self> {
        from_variable("HALLMARK_TEST_OIDC_ISSUER")
    }

    /// The other realm's issuer named by `HALLMARK_TEST_OIDC_OTHER_ISSUER`, if it is set.
    pub fn other_from_env() -> Option<Self> {
        from_variable("HALLMARK_TEST_OIDC_OTHER_ISSUER")
    }

    /// [`Issuer::from_env`], or a panic that says how to start the identity provider: a test of
    /// authentication must fail, not pass, when there is nothing to authenticate against.
    pub fn required() -> Self {
        Self::from_env()
            .unwrap_or_else(|| panic!("HALLMARK_TEST_OIDC_ISSUER is not set: {HOW_TO_START}"))
    }

    /// [`Issuer::other_from_env`], or a panic that says how to start the identity provider.
    pub fn other_required() -> Self {
        Self::other_from_env()
            .unwrap_or_else(|| panic!("HALLMARK_TEST_OIDC_OTHER_ISSUER is not set: {HOW_TO_START}"))
    }

    /// The issuer URL: what tokens carry as `iss`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The issuer's token endpoint, from its discovery document
    /// (`{issuer}/.well-known/openid-configuration`).
    pub async fn token_endpoint(&self) -> anyhow::Result<String> {
        let discovery = format!("{}/.well-known/openid-configuration", self.url);
        let document: Value = reqwest::get(&discovery)
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("reading {discovery}: is the identity provider running?"))?
            .json()
            .await
            .with_context(|| format!("{discovery} is not JSON"))?;
        if document["issuer"] != self.url.as_str() {
            bail!(
                "{discovery} names issuer {} instead of {}",
                document["issuer"],
                self.url
            );
        }
        document["token_endpoint"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{discovery} names no token_endpoint"))
    }

    /// An access token for `user` with `password`, from the password grant of public client
    /// `client_id` (`hallmark-cli` in the test realms).
    pub async fn password_token(
        &self,
        client_id: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<String> {
        self.token(
            &format!("for {user} via {client_id}"),
            &[
                ("grant_type", "password"),
                ("client_id", client_id),
                ("username", user),
                ("password", password),
                ("scope", "openid"),
            ],
        )
        .await
    }

    /// An access token of confidential client `client_id` itself (its service account), from
    /// the client credentials grant with `secret`.
    pub async fn client_token(&self, client_id: &str, secret: &str) -> anyhow::Result<String> {
        self.token(
            &format!("of {client_id}"),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
            ],
        )
        .await
    }

    /// The access token the token endpoint answers `form` with; `whose` names it in errors.
    async fn token(&self, whose: &str, form: &[(&str, &str)]) -> anyhow::Result<String> {
        let endpoint = self.token_endpoint().await?;
        let response = reqwest::Client::new()
            .post(&endpoint)
            .form(form)
            .send()
            .await
            .with_context(|| format!("asking {endpoint} for a token {whose}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("the answer of {endpoint} ({status}) is not JSON"))?;
        if !status.is_success() {
            // The error and its description, never the request (which holds the password or
            // the secret).
            bail!(
                "{endpoint} refused a token {whose}: {status} {} {}",
                body["error"].as_str().unwrap_or("(no error code)"),
                body["error_description"].as_str().unwrap_or("")
            );
        }
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the answer of {endpoint} has no access_token"))
    }

    /// A token of the client `alertmanager`, the service identity Alertmanager posts alerts to
    /// order-watch with.
    pub async fn alertmanager_token(&self) -> anyhow::Result<String> {
        self.machine_token(&ALERTMANAGER).await
    }

    /// A token of the confidential client `client`, with its secret as the realm imported it.
    pub async fn machine_token(&self, client: &Machine) -> anyhow::Result<String> {
        self.client_token(client.client_id, &client.secret()).await
    }
}

/// A confidential client of the hallmark realm whose secret scripts/keycloak.sh takes from a
/// variable, with a development default when it is unset (local use only).
pub struct Machine {
    pub client_id: &'static str,
    pub secret_variable: &'static str,
    pub development_secret: &'static str,
}

impl Machine {
    /// The secret the realm was imported with.
    pub fn secret(&self) -> String {
        std::env::var(self.secret_variable)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| self.development_secret.to_owned())
    }
}

/// Alertmanager's client (role `alert-sender`; scripts/stack.sh gives Alertmanager the same
/// secret).
pub const ALERTMANAGER: Machine = Machine {
    client_id: "alertmanager",
    secret_variable: "HALLMARK_ALERTMANAGER_SECRET",
    development_secret: ALERTMANAGER_DEVELOPMENT_SECRET,
};

/// order-watch's service identity (role `status-reader`; audiences Shop, CRM and MES).
pub const ORDER_WATCH_SERVICE: Machine = Machine {
    client_id: "order-watch-service",
    secret_variable: "HALLMARK_ORDER_WATCH_SERVICE_SECRET",
    development_secret: "hallmark-order-watch-local-only",
};

/// The demo partner `acme`'s client (role `partner`, claim `partner_id: acme`; audience Shop).
pub const PARTNER_ACME: Machine = Machine {
    client_id: "partner-acme",
    secret_variable: "HALLMARK_PARTNER_ACME_SECRET",
    development_secret: "hallmark-partner-acme-local-only",
};

/// The demo partner `globex`'s client, like [`PARTNER_ACME`].
pub const PARTNER_GLOBEX: Machine = Machine {
    client_id: "partner-globex",
    secret_variable: "HALLMARK_PARTNER_GLOBEX_SECRET",
    development_secret: "hallmark-partner-globex-local-only",
};

/// The secret of the client `alertmanager` that scripts/keycloak.sh and scripts/stack.sh give
/// when `HALLMARK_ALERTMANAGER_SECRET` is unset: local use only.
pub const ALERTMANAGER_DEVELOPMENT_SECRET: &str = "hallmark-alertmanager-local-only";

impl Issuer {
    /// Tokens made from the real `token` that no verifier may accept, each named: its payload
    /// changed to hold the realm roles `roles` with the signature kept; the same unsigned (`alg:
    /// none`); the same signed HS256 with the issuer's public key as the shared secret (algorithm
    /// confusion); and text that is no JWT at all.
    pub async fn forgeries(
        &self,
        token: &str,
        roles: &[&str],
    ) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut parts = token.split('.');
        let (Some(header), Some(_payload), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            bail!("a JWT has three dot-separated parts");
        };
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
        let mut claims = unverified_claims(token)?;
        claims["realm_access"]["roles"] = serde_json::json!(roles);
        let encode = |json: &Value| URL_SAFE_NO_PAD.encode(json.to_string());
        let tampered = format!("{}.{}.{signature}", encode(&header), encode(&claims));
        let mut none = header.clone();
        none["alg"] = serde_json::json!("none");
        let unsigned = format!("{}.{}.", encode(&none), encode(&claims));
        let keys: Value = reqwest::get(format!("{}/protocol/openid-connect/certs", self.url))
            .await
            .context("the issuer's keys")?
            .json()
            .await
            .context("the issuer's keys are JSON")?;
        let public = serde_json::to_vec(&keys["keys"][0])?;
        let mut hs256 = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        hs256.kid = header["kid"].as_str().map(str::to_owned);
        let confused = jsonwebtoken::encode(
            &hs256,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )?;
        Ok(vec![
            ("a payload changed under its signature", tampered),
            ("alg none", unsigned),
            ("HS256 with the issuer's public key", confused),
            ("not a JWT", "garbage".to_owned()),
        ])
    }
}

fn from_variable(name: &str) -> Option<Issuer> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
        .map(|value| Issuer::new(value.trim()))
}

/// The claims of JWT `token`, decoded without checking its signature: for tests that look at what
/// an issuer put into a token, or that make a forged one from a real one.
pub fn unverified_claims(token: &str) -> anyhow::Result<Value> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("a JWT has three dot-separated parts");
    };
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .context("a JWT's payload is base64url without padding")?;
    serde_json::from_slice(&json).context("a JWT's payload is a JSON object")
}
