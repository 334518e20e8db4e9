//! Who is asking: OIDC bearer tokens checked against the identity provider's keys, and the
//! role each route needs.
//!
//! People's roles, each including the ones before it (a developer may do what support may):
//! * `support`: read journeys, stuck orders, incidents, configuration and metrics;
//! * `developer`: also change configuration (thresholds, masking rules, the incident webhook);
//! * `admin`: everything: also the retention, erasing an order's trace data, acknowledging and
//!   closing incidents.
//!
//! And one machine's: `alert-sender` ([`ALERT_SENDER`]) may post alerts (`POST /api/alerts`)
//! and nothing else; it is no person's role and holds none of theirs. Alertmanager gets it as
//! the service account of its own confidential client (client credentials).
//!
//! A token is accepted when its signature checks against one of the provider's asymmetric keys
//! (the one its `kid` names, with the algorithm that key is for: `alg: none` and HMAC tokens
//! are refused, so the public key can never serve as a shared secret), its `iss` is the
//! configured issuer, its `aud` contains the configured audience, and it is within `exp` and
//! `nbf` (give or take the leeway). Anything else is a 401 that says only that the token is not
//! valid (the reason goes to the log); a valid token without the role is a 403.
//!
//! The machines' endpoints are not behind tokens: `/health`, `/metrics` and the OTLP receivers
//! are for scrapers and exporters, which reach them over the network the deployment allows
//! (loopback by default). Alertmanager's webhook is: alerts open incidents, which page people.

pub mod config;
pub mod keys;
pub mod session;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

pub use config::{AuthConfig, OidcConfig};
use keys::{Key, KeySet};

/// What a person may do, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Support,
    Developer,
    Admin,
}

/// The role of a machine that posts alerts into incidents (Alertmanager).
pub const ALERT_SENDER: &str = "alert-sender";

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A person with this role or a higher one.
    Role(Role),
    /// A machine with the role [`ALERT_SENDER`].
    AlertSender,
}

impl From<Role> for Need {
    fn from(role: Role) -> Self {
        Self::Role(role)
    }
}

impl Role {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "support" => Some(Self::Support),
            "developer" => Some(Self::Developer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// The person a request is from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// What to call them: `preferred_username`, else `name`, else the subject.
    pub name: String,
    /// Their highest role, if they hold any of ours.
    pub role: Option<Role>,
    /// Whether they hold [`ALERT_SENDER`] (a machine: Alertmanager).
    #[serde(skip)]
    pub alert_sender: bool,
    /// For a browser logged in with a session cookie: the token its state-changing requests
    /// carry in `X-CSRF-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

impl Principal {
    /// The principal of an open order-watch (see [`AuthConfig::Open`]): may do everything.
    fn anonymous() -> Self {
        Self {
            subject: String::new(),
            name: "anonymous".to_owned(),
            role: Some(Role::Admin),
            alert_sender: true,
            csrf_token: None,
        }
    }

    pub fn may(&self, needed: Role) -> bool {
        self.role.is_some_and(|role| role >= needed)
    }

    /// Whether they may call a route that needs `need`.
    pub fn satisfies(&self, need: Need) -> bool {
        match need {
            Need::Role(role) => self.may(role),
            Need::AlertSender => self.alert_sender,
        }
    }

    /// How the audits name them: their name and, in brackets, their subject at the identity
    /// provider.
    pub fn audit_name(&self) -> String {
        format!("{} ({})", self.name, self.subject)
    }
}

/// Why a token was refused. The variant goes to the log; the caller learns only that its token
/// is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// Checks requests' tokens; one per process.
pub struct Authenticator {
    mode: Mode,
}

enum Mode {
    Open,
    Oidc(Box<Oidc>),
}

struct Oidc {
    config: OidcConfig,
    keys: KeySet,
    sessions: session::Store,
    /// How browsers reach order-watch when no public URL is configured: `https` when the API
    /// serves TLS.
    scheme: &'static str,
}

impl Authenticator {
    /// Checks requests with `config`; `over_tls` says whether the API serves TLS, which makes
    /// the login's redirect URI `https` (and so its cookie `Secure`) when no public URL is set.
    pub fn new(config: AuthConfig, over_tls: bool) -> Self {
        let mode = match config {
            AuthConfig::Open => Mode::Open,
            AuthConfig::Oidc(config) => Mode::Oidc(Box::new(Oidc {
                keys: KeySet::new(&config.issuer),
                sessions: session::Store::default(),
                config,
                scheme: if over_tls { "https" } else { "http" },
            })),
        };
        Self { mode }
    }

    /// Fetches the provider's keys ahead of the first request; a provider that cannot be
    /// reached is logged, not fatal (keys are fetched again when a token needs them).
    pub async fn prepare(&self) {
        match &self.mode {
            Mode::Open => tracing::warn!(
                "order-watch answers anyone: no identity provider is configured (ORDER_WATCH_OIDC_ISSUER), which only development and tests allow"
            ),
            Mode::Oidc(oidc) => match oidc.keys.refresh().await {
                Ok(count) => {
                    tracing::info!(issuer = %oidc.config.issuer, keys = count, "identity provider's keys fetched")
                }
                Err(err) => {
                    tracing::warn!(error = %err, "identity provider's keys not fetched yet")
                }
            },
        }
    }

    /// The principal a request comes from: its bearer token's, else its session cookie's.
    pub async fn authenticate(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Principal, Rejection> {
        let Mode::Oidc(oidc) = &self.mode else {
            return Ok(Principal::anonymous());
        };
        if let Some(token) = bearer(headers) {
            return oidc.verify(token).await;
        }
        let id = session::cookie(headers, session::COOKIE).ok_or(Rejection::Missing)?;
        let session = oidc.session(id).await.ok_or(Rejection::Missing)?;
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let csrf = headers
            .get(session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if !safe && csrf != Some(session.csrf.as_str()) {
            return Err(Rejection::Csrf);
        }
        Ok(Principal {
            csrf_token: Some(session.csrf),
            ..session.principal
        })
    }

    /// The routes of the UI's login (`/login`, `/auth/callback`, `/logout`), which anyone may
    /// call; without an identity provider there is nothing to log in to.
    pub fn login_routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> axum::Router<S> {
        use axum::routing::{get, post};
        axum::Router::new()
            .route("/login", get(login))
            .route("/auth/callback", get(callback))
            .route("/logout", post(logout))
            .with_state(self.clone())
    }
}

impl Oidc {
    /// Checks a bearer token (see the module's rules).
    async fn verify(&self, token: &str) -> Result<Principal, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        if !is_asymmetric(header.alg) {
            return Err(Rejection::Algorithm);
        }
        let kid = header.kid.as_deref().ok_or(Rejection::NoKeyId)?;
        let key = self.keys.get(kid).await.ok_or(Rejection::UnknownKey)?;
        check(token, header.alg, &key, &self.config)
    }

    /// The session `id`, refreshed when its access token is about to expire; `None` when there
    /// is no such session or it could not be kept alive.
    async fn session(&self, id: &str) -> Option<session::Session> {
        let current = self.sessions.get(id).await?;
        if !current.needs_refresh() {
            return Some(current);
        }
        let refreshed = match &current.refresh_token {
            Some(refresh_token) => self
                .token(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("client_id", &self.config.client_id),
                ])
                .await
                .ok(),
            None => None,
        };
        let Some(tokens) = refreshed else {
            self.sessions.close(id).await;
            return None;
        };
        let Ok(principal) = self.verify(&tokens.access_token).await else {
            self.sessions.close(id).await;
            return None;
        };
        let session = session::Session {
            principal,
            expires: tokens.expires(),
            refresh_token: tokens.refresh_token.or(current.refresh_token),
            access_token: tokens.access_token,
            csrf: current.csrf,
        };
        self.sessions.replace(id, session.clone()).await;
        Some(session)
    }

    /// Asks the provider's token endpoint with `form`.
    async fn token(&self, form: &[(&str, &str)]) -> Result<session::Tokens, LoginError> {
        let discovery = self.keys.discovery().await.map_err(LoginError::Provider)?;
        let response = self
            .keys
            .http()
            .post(&discovery.token_endpoint)
            .form(form)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(LoginError::Token)?;
        response.json().await.map_err(LoginError::Token)
    }
}

/// Why a login could not finish.
#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("the identity provider cannot be reached")]
    Provider(#[source] keys::FetchError),
    #[error("the identity provider did not exchange the code")]
    Token(#[source] reqwest::Error),
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// `GET /login`: off to the identity provider, with a fresh `state` and PKCE challenge.
async fn login(
    State(authenticator): State<Arc<Authenticator>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
) -> Response {
    let Mode::Oidc(oidc) = &authenticator.mode else {
        return Redirect::to("/").into_response();
    };
    let discovery = match oidc.keys.discovery().await {
        Ok(discovery) => discovery,
        Err(err) => return platform::error::unavailable("identity_provider_unavailable", &err),
    };
    let redirect_uri = format!(
        "{}/auth/callback",
        public_url(&oidc.config, oidc.scheme, &headers)
    );
    let verifier = session::random_token();
    let challenge = session::challenge(&verifier);
    let state = oidc
        .sessions
        .begin(
            verifier,
            redirect_uri.clone(),
            session::safe_next(query.next.as_deref()),
        )
        .await;
    let mut url = match reqwest::Url::parse(&discovery.authorization_endpoint) {
        Ok(url) => url,
        Err(err) => return platform::error::internal_error(&err),
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &oidc.config.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", "openid")
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    Redirect::to(url.as_str()).into_response()
}

#[derive(serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /auth/callback`: the provider's answer; opens a session and goes where the login was
/// asked from.
async fn callback(
    State(authenticator): State<Arc<Authenticator>>,
    axum::extract::Query(query): axum::extract::Query<CallbackQuery>,
) -> Response {
    let Mode::Oidc(oidc) = &authenticator.mode else {
        return Redirect::to("/").into_response();
    };
    let refused = |message: &str| {
        platform::error::error_response(StatusCode::BAD_REQUEST, "login_failed", message)
    };
    if let Some(error) = &query.error {
        tracing::info!(error = %error, "the identity provider refused the login");
        return refused("the identity provider did not log you in; try again from /login");
    }
    let (Some(code), Some(state)) = (&query.code, &query.state) else {
        return refused("a login answer needs a code and a state");
    };
    let Some(pending) = oidc.sessions.finish(state).await else {
        return refused("this login is unknown or too old; start again from /login");
    };
    let tokens = match oidc
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &pending.redirect_uri),
            ("client_id", &oidc.config.client_id),
            ("code_verifier", &pending.verifier),
        ])
        .await
    {
        Ok(tokens) => tokens,
        Err(err) => {
            tracing::warn!(error = &err as &dyn std::error::Error, "login not finished");
            return refused("the login could not be finished; try again from /login");
        }
    };
    let principal = match oidc.verify(&tokens.access_token).await {
        Ok(principal) => principal,
        Err(rejection) => {
            tracing::warn!(reason = %rejection, "the identity provider's token was refused");
            return refused("the identity provider's answer was not valid");
        }
    };
    tracing::info!(user = %principal.name, "logged in");
    let secure = pending.redirect_uri.starts_with("https://");
    let id = oidc
        .sessions
        .open(session::Session {
            principal,
            expires: tokens.expires(),
            refresh_token: tokens.refresh_token,
            access_token: tokens.access_token,
            csrf: session::random_token(),
        })
        .await;
    let cookie = format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Lax{}",
        session::COOKIE,
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to(&pending.next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: ends the session (it needs its CSRF token).
async fn logout(State(authenticator): State<Arc<Authenticator>>, headers: HeaderMap) -> Response {
    if let Mode::Oidc(oidc) = &authenticator.mode
        && let Some(id) = session::cookie(&headers, session::COOKIE)
        && let Some(session) = oidc.sessions.get(id).await
    {
        let csrf = headers
            .get(session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if csrf != Some(session.csrf.as_str()) {
            return platform::error::error_response(
                StatusCode::FORBIDDEN,
                "csrf",
                "log out from order-watch's page",
            );
        }
        oidc.sessions.close(id).await;
        tracing::info!(user = %session.principal.name, "logged out");
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("order_watch_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    response
}

/// Where browsers reach order-watch: the configured public URL, else the request's own host
/// over `scheme` (the one the API serves).
fn public_url(config: &OidcConfig, scheme: &str, headers: &HeaderMap) -> String {
    if let Some(url) = &config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("{scheme}://{host}")
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
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
/// [`Authenticator::authenticate`] that needs no network.
pub fn check(
    token: &str,
    algorithm: Algorithm,
    key: &Key,
    config: &OidcConfig,
) -> Result<Principal, Rejection> {
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
    Ok(principal(&data.claims, &config.roles_claim))
}

fn principal(claims: &Value, roles_claim: &str) -> Principal {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let subject = text("sub").unwrap_or_default();
    let name = text("preferred_username")
        .or_else(|| text("name"))
        .unwrap_or_else(|| subject.clone());
    let roles = roles_claim
        .split('.')
        .try_fold(claims, |value, part| value.get(part))
        .and_then(Value::as_array);
    let names = || roles.into_iter().flatten().filter_map(Value::as_str);
    let role = names().filter_map(Role::parse).max();
    let alert_sender = names().any(|name| name == ALERT_SENDER);
    Principal {
        subject,
        name,
        role,
        alert_sender,
        csrf_token: None,
    }
}

/// Whether the request is a browser asking for a page (it gets sent to log in, not a 401).
fn wants_page(request: &Request) -> bool {
    request.method() == Method::GET
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"))
}

/// Axum middleware: lets a request through when its token names a principal with `needed`
/// (the principal goes into the request's extensions), answers 401 or 403 otherwise.
pub async fn require(
    State((authenticator, needed)): State<(Arc<Authenticator>, Need)>,
    mut request: Request,
    next: Next,
) -> Response {
    match authenticator
        .authenticate(request.method(), request.headers())
        .await
    {
        Ok(principal) if principal.satisfies(needed) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Ok(principal) => {
            tracing::info!(user = %principal.name, needed = ?needed, "request refused: role missing");
            let mut response = platform::error::error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "your role does not allow this",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            );
            response
        }
        Err(Rejection::Csrf) => {
            tracing::info!("request refused: no CSRF token with the session cookie");
            platform::error::error_response(
                StatusCode::FORBIDDEN,
                "csrf",
                "a change made with the session cookie needs the X-CSRF-Token header",
            )
        }
        Err(Rejection::Missing) if wants_page(&request) => {
            let next = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let next =
                percent_encoding::utf8_percent_encode(&next, percent_encoding::NON_ALPHANUMERIC);
            Redirect::to(&format!("/login?next={next}")).into_response()
        }
        Err(rejection) => {
            tracing::info!(reason = %rejection, "request refused: not authenticated");
            let mut response = platform::error::error_response(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "sign in: a valid bearer token from the identity provider is needed",
            );
            let challenge = if rejection == Rejection::Missing {
                "Bearer realm=\"order-watch\""
            } else {
                "Bearer realm=\"order-watch\", error=\"invalid_token\""
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response.into_response()
        }
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

    const ISSUER: &str = "https://sso.example.com/realms/hallmark";

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: ISSUER.to_owned(),
            audience: "order-watch".to_owned(),
            roles_claim: "realm_access.roles".to_owned(),
            leeway: Duration::ZERO,
            client_id: "order-watch".to_owned(),
            public_url: None,
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

        /// The key as order-watch keeps it after reading the provider's JWKS.
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

    fn checked(provider: &Provider, claims: &Value) -> Result<Principal, Rejection> {
        let token = provider.sign(claims);
        check(&token, Algorithm::ES256, &provider.key("k1"), &config())
    }

    #[test]
    fn a_valid_token_names_the_person_and_their_highest_role() {
        let provider = Provider::new();
        let principal = checked(&provider, &claims("developer")).unwrap();
        assert_eq!(principal.name, "dana");
        assert_eq!(principal.subject, "f3a1");
        assert_eq!(principal.role, Some(Role::Developer));
        assert!(principal.may(Role::Support) && principal.may(Role::Developer));
        assert!(!principal.may(Role::Admin));
    }

    #[test]
    fn a_token_without_any_of_our_roles_authenticates_but_may_nothing() {
        let provider = Provider::new();
        let principal = checked(&provider, &claims("offline_access")).unwrap();
        assert_eq!(principal.role, None);
        assert!(!principal.may(Role::Support));
        assert!(!principal.satisfies(Need::AlertSender));
    }

    #[test]
    fn the_alert_senders_role_lets_a_machine_post_alerts_and_nothing_else_and_no_person_has_it() {
        let provider = Provider::new();
        let machine = checked(&provider, &claims(ALERT_SENDER)).unwrap();
        assert!(machine.satisfies(Need::AlertSender));
        assert_eq!(machine.role, None);
        assert!(!machine.satisfies(Need::Role(Role::Support)));
        let admin = checked(&provider, &claims("admin")).unwrap();
        assert!(admin.satisfies(Role::Admin.into()));
        assert!(!admin.satisfies(Need::AlertSender));
    }

    #[test]
    fn expired_not_yet_valid_foreign_and_misaddressed_tokens_are_refused() {
        let provider = Provider::new();
        let with = |field: &str, value: Value| {
            let mut claims = claims("admin");
            claims[field] = value;
            checked(&provider, &claims)
        };
        assert_eq!(with("exp", json!(now() - 5)), Err(Rejection::Expired));
        assert_eq!(with("nbf", json!(now() + 60)), Err(Rejection::NotYetValid));
        assert_eq!(
            with("iss", json!("https://sso.example.com/realms/other")),
            Err(Rejection::Issuer)
        );
        assert_eq!(with("aud", json!("account")), Err(Rejection::Audience));
        let mut no_expiry = claims("admin");
        no_expiry.as_object_mut().unwrap().remove("exp");
        assert_eq!(checked(&provider, &no_expiry), Err(Rejection::Claims));
    }

    #[test]
    fn a_token_signed_by_another_key_or_tampered_with_is_refused() {
        let provider = Provider::new();
        let stranger = Provider::new();
        let token = stranger.sign(&claims("admin"));
        assert_eq!(
            check(&token, Algorithm::ES256, &provider.key("k1"), &config()),
            Err(Rejection::Signature)
        );
        // The payload of a support token swapped for one that says admin.
        let token = provider.sign(&claims("support"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = {
            use base64::Engine as _;
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            engine.encode(serde_json::to_vec(&claims("admin")).unwrap())
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
        let token = provider.sign(&claims("admin"));
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

    #[test]
    fn the_login_comes_back_over_the_scheme_the_api_serves_unless_a_public_url_is_set() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "watch.internal:8443".parse().unwrap());
        assert_eq!(
            public_url(&config(), "https", &headers),
            "https://watch.internal:8443"
        );
        assert_eq!(
            public_url(&config(), "http", &headers),
            "http://watch.internal:8443"
        );
        let configured = OidcConfig {
            public_url: Some("https://watch.example.com/".into()),
            ..config()
        };
        assert_eq!(
            public_url(&configured, "http", &headers),
            "https://watch.example.com"
        );
    }
}
