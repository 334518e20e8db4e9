//! The gate in front of an API's routes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::config::AccessConfig;
use crate::verify::{Rejection, Verifier, bearer};
use crate::{Identity, role};

/// Checks callers' tokens for one API; one per process.
pub struct Gate {
    /// `None`: open ([`AccessConfig::Open`]).
    verifier: Option<Verifier>,
}

/// What a route needs: a caller holding any of these roles (or a person's role that includes
/// one, see [`Identity::has`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need(pub &'static [&'static str]);

impl Need {
    /// Reading orders: the support desk (and everyone above it) and the workshop floor, which
    /// needs the order to make and ship it.
    pub const READ: Self = Self(&[role::SUPPORT, role::WORKSHOP]);
    /// Moving an order on the workshop floor (production steps, shipping, delivery).
    pub const WORKSHOP: Self = Self(&[role::WORKSHOP]);
    /// The status listings: people who may read orders, and order-watch's service identity.
    pub const STATUSES: Self = Self(&[role::SUPPORT, role::STATUS_READER]);
    /// Sending an order's messages again (reconciliation's repair): order-watch's service
    /// identity, and administrators, who may do everything people may.
    pub const REPUBLISH: Self = Self(&[role::STATUS_REPUBLISHER, role::ADMIN]);

    pub fn allows(self, identity: &Identity) -> bool {
        self.0.iter().any(|role| identity.has(role))
    }
}

impl Gate {
    pub fn new(config: AccessConfig) -> Self {
        let verifier = match config {
            AccessConfig::Open => None,
            AccessConfig::Oidc(config) => Some(Verifier::new(config)),
        };
        Self { verifier }
    }

    /// Whether everyone is let in (development and tests without an identity provider).
    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    /// Fetches the provider's keys ahead of the first request, or warns that the API is open.
    pub async fn prepare(&self, api: &str) {
        match &self.verifier {
            None => tracing::warn!(
                api,
                "the API answers anyone: no identity provider is configured, which only development and tests allow"
            ),
            Some(verifier) => verifier.prepare().await,
        }
    }

    /// Who the request's bearer token names: `None` when it carries none, or when the gate is
    /// open (then nobody is identified and everything is allowed).
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, Rejection> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        match bearer(headers) {
            Some(token) => verifier.verify(token).await.map(Some),
            None => Ok(None),
        }
    }

    /// `routes` behind the gate: a request gets through when its caller's roles cover `need`
    /// (the caller's [`Identity`] goes into the request's extensions), and is answered 401 or
    /// 403 otherwise.
    pub fn guard<S>(self: &Arc<Self>, need: Need, routes: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        routes.route_layer(axum::middleware::from_fn_with_state(
            (self.clone(), need),
            require,
        ))
    }
}

/// Axum middleware behind [`Gate::guard`].
pub async fn require(
    State((gate, need)): State<(Arc<Gate>, Need)>,
    mut request: Request,
    next: Next,
) -> Response {
    if gate.is_open() {
        return next.run(request).await;
    }
    match gate.identify(request.headers()).await {
        Ok(Some(identity)) if need.allows(&identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Ok(Some(identity)) => {
            tracing::info!(caller = %identity.name, needed = ?need.0, "request refused: role missing");
            forbidden("your role does not allow this")
        }
        Ok(None) => unauthenticated(Rejection::Missing),
        Err(rejection) => unauthenticated(rejection),
    }
}

/// The 401 for a request without a valid token; the reason goes to the log only.
pub fn unauthenticated(rejection: Rejection) -> Response {
    tracing::info!(reason = %rejection, "request refused: not authenticated");
    let challenge = if rejection == Rejection::Missing {
        "Bearer realm=\"hallmark\""
    } else {
        "Bearer realm=\"hallmark\", error=\"invalid_token\""
    };
    platform::error::refused(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "sign in: a valid bearer token from the identity provider is needed",
        challenge,
    )
}

/// The 403 for a valid token whose roles do not cover the request.
pub fn forbidden(message: &str) -> Response {
    platform::error::refused(
        StatusCode::FORBIDDEN,
        "forbidden",
        message,
        "Bearer error=\"insufficient_scope\"",
    )
}
