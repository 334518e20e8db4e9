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
//! Tokens are checked as every Hallmark API checks them (`access::verify`): anything not valid is
//! a 401 that says only that the token is not valid (the reason goes to the log); a valid token
//! without the role is a 403.
//!
//! The machines' endpoints are not behind tokens: `/health`, `/metrics` and the OTLP receivers
//! are for scrapers and exporters, which reach them over the network the deployment allows
//! (loopback by default). Alertmanager's webhook is: alerts open incidents, which page people.

pub mod config;
pub mod session;

use std::sync::Arc;

use access::{Identity, Verifier};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

pub use access::Rejection;
pub use config::{AuthConfig, OidcConfig};

/// What a person may do, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Support,
    Developer,
    Admin,
}

/// The role of a machine that posts alerts into incidents (Alertmanager).
pub const ALERT_SENDER: &str = access::role::ALERT_SENDER;

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
            access::role::SUPPORT => Some(Self::Support),
            access::role::DEVELOPER => Some(Self::Developer),
            access::role::ADMIN => Some(Self::Admin),
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

    /// How the audits name them ([`access::audit_name`]).
    pub fn audit_name(&self) -> String {
        access::audit_name(&self.name, &self.subject)
    }
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
    verifier: Verifier,
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
                verifier: Verifier::new(config.token.clone()),
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
            Mode::Oidc(oidc) => oidc.verifier.prepare().await,
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
        if let Some(token) = access::bearer(headers) {
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
    /// Checks a bearer token (see `access::verify`).
    async fn verify(&self, token: &str) -> Result<Principal, Rejection> {
        self.verifier.verify(token).await.map(Principal::from)
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
        let keys = self.verifier.keys();
        let discovery = keys.discovery().await.map_err(LoginError::Provider)?;
        let response = keys
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
    Provider(#[source] access::keys::FetchError),
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
    let discovery = match oidc.verifier.keys().discovery().await {
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

impl From<Identity> for Principal {
    fn from(identity: Identity) -> Self {
        let role = identity.roles.iter().filter_map(|r| Role::parse(r)).max();
        let alert_sender = identity.roles.iter().any(|r| r == ALERT_SENDER);
        Self {
            subject: identity.subject,
            name: identity.name,
            role,
            alert_sender,
            csrf_token: None,
        }
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
            access::forbidden("your role does not allow this")
        }
        Err(Rejection::Csrf) => {
            tracing::info!("request refused: no CSRF token with the session cookie");
            platform::error::refused(
                StatusCode::FORBIDDEN,
                "csrf",
                "a change made with the session cookie needs the X-CSRF-Token header",
                "Bearer error=\"insufficient_scope\"",
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
        Err(rejection) => access::unauthenticated(rejection),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(roles: &[&str]) -> Identity {
        Identity {
            subject: "f3a1".into(),
            name: "dana".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            partner: None,
        }
    }

    fn config() -> OidcConfig {
        OidcConfig {
            token: access::IssuerConfig {
                issuer: "https://sso.example.com/realms/hallmark".to_owned(),
                audience: "order-watch".to_owned(),
                roles_claim: "realm_access.roles".to_owned(),
                leeway: std::time::Duration::ZERO,
            },
            client_id: "order-watch".to_owned(),
            public_url: None,
        }
    }

    #[test]
    fn a_person_is_known_by_their_highest_role() {
        let principal = Principal::from(identity(&["offline_access", "developer", "support"]));
        assert_eq!(principal.name, "dana");
        assert_eq!(principal.role, Some(Role::Developer));
        assert!(principal.may(Role::Support) && principal.may(Role::Developer));
        assert!(!principal.may(Role::Admin));
    }

    #[test]
    fn a_token_without_any_of_our_roles_authenticates_but_may_nothing() {
        let principal = Principal::from(identity(&["offline_access", "workshop"]));
        assert_eq!(principal.role, None);
        assert!(!principal.may(Role::Support));
        assert!(!principal.satisfies(Need::AlertSender));
    }

    #[test]
    fn the_alert_senders_role_lets_a_machine_post_alerts_and_nothing_else_and_no_person_has_it() {
        let machine = Principal::from(identity(&[ALERT_SENDER]));
        assert!(machine.satisfies(Need::AlertSender));
        assert_eq!(machine.role, None);
        assert!(!machine.satisfies(Need::Role(Role::Support)));
        let admin = Principal::from(identity(&["admin"]));
        assert!(admin.satisfies(Role::Admin.into()));
        assert!(!admin.satisfies(Need::AlertSender));
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
