//! Who is acting on an order at Shop, and whether they may.
//!
//! * A customer holds no account: anyone may place a web order, and the order's capability token
//!   (`ord_…`, [`super::token`]) opens that order alone: read, confirm, cancel.
//! * A partner's integration authenticates with a token of its own client of the identity
//!   provider (client credentials, role `partner`); the partner is the token's `partner_id`
//!   claim, never the request's word. It places orders for that partner only and reads,
//!   confirms and cancels that partner's orders only.
//! * Staff come through SSO: `support` (and above) and `workshop` read any order; only `admin`
//!   confirms or cancels one on a customer's behalf.
//!
//! Without an identity provider (development and tests only, `access::AccessConfig::Open`) a
//! partner is whoever names one in the order, as before partners had clients.

use access::{Identity, Need, role};
use platform::error::ApiError;
use sqlx::PgPool;
use telemetry::db::Traced as _;
use uuid::Uuid;

use super::token::{OrderTokens, PREFIX};
use crate::startup::AppState;

/// The caller of an order endpoint.
pub(crate) enum Caller {
    /// No credential: a customer in the web shop (or anyone, where the gate is open).
    Anonymous,
    /// An order's capability token, to be checked against the order it is used on.
    OrderToken(String),
    /// A partner's client, for this partner.
    Partner(String),
    /// A person through SSO.
    Staff(Identity),
}

/// What is being done to an existing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Read,
    Decide,
}

impl Caller {
    /// How the order's history names them for a move they asked for: a person by their audit
    /// name, a partner's client by its partner, a customer by the order's token (no one in
    /// particular where the gate is open).
    pub fn audit_name(&self) -> Option<String> {
        match self {
            Self::Anonymous => None,
            Self::OrderToken(_) => Some("the customer (the order's token)".to_owned()),
            Self::Partner(partner) => Some(format!("partner {partner}")),
            Self::Staff(person) => Some(person.audit_name()),
        }
    }

    /// The caller the request's `Authorization` names; 401 for a token that is not valid.
    pub async fn of(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Self, ApiError> {
        let Some(token) = access::bearer(headers) else {
            return Ok(Self::Anonymous);
        };
        if token.starts_with(PREFIX) {
            return Ok(Self::OrderToken(token.to_owned()));
        }
        match state.gate.identify(headers).await {
            Ok(None) => Ok(Self::Anonymous),
            Ok(Some(identity)) => Ok(match &identity.partner {
                Some(partner) if identity.has(role::PARTNER) => Self::Partner(partner.clone()),
                _ => Self::Staff(identity),
            }),
            Err(rejection) => {
                tracing::info!(reason = %rejection, "request refused: token not valid");
                Err(ApiError::Unauthorized {
                    code: "unauthenticated",
                    message: "the bearer token is not valid: send a current token of the identity provider, or the order's own token".into(),
                })
            }
        }
    }

    /// The partner a new order is placed for: the token's partner, which the order may repeat
    /// but not contradict; `named` (the order's `partner_id`) only where the gate is open.
    pub fn partner_for_new_order(
        &self,
        gate_open: bool,
        named: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        match self {
            Self::Partner(partner) => match named {
                Some(named) if named != partner => Err(ApiError::forbidden(
                    "partner_mismatch",
                    format!(
                        "your client places orders for partner `{partner}`, not `{named}`; leave partner_id out or give your own"
                    ),
                )),
                _ => Ok(Some(partner.clone())),
            },
            Self::Staff(_) => Err(ApiError::forbidden(
                "not_a_partner",
                "orders through the API are placed with a partner's client; this token is a person's",
            )),
            Self::Anonymous | Self::OrderToken(_) => match named {
                Some(named) if gate_open => Ok(Some(named.to_owned())),
                Some(_) => Err(ApiError::Unauthorized {
                    code: "partner_token_required",
                    message: "a partner's order needs the partner's access token (client credentials of its client at the identity provider) as `Authorization: Bearer …`".into(),
                }),
                None => Ok(None),
            },
        }
    }

    /// Whether the caller may do `action` to `order_id`: 401 without a credential or with
    /// another order's token, 403 for another partner's order or a role that does not cover it.
    pub async fn may(
        &self,
        pool: &PgPool,
        tokens: &OrderTokens,
        order_id: Uuid,
        action: Action,
    ) -> Result<(), ApiError> {
        match self {
            Self::Anonymous => Err(ApiError::Unauthorized {
                code: "order_token_missing",
                message: "send the order's token (returned when the order was placed) as `Authorization: Bearer ord_…`".into(),
            }),
            Self::OrderToken(token) => tokens.check(order_id, token),
            Self::Partner(partner) => {
                if partner_of(pool, order_id).await?.as_deref() == Some(partner.as_str()) {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(
                        "not_your_order",
                        "this order was not placed by your partner account",
                    ))
                }
            }
            Self::Staff(identity) => {
                let needed = match action {
                    Action::Read => Need::READ,
                    Action::Decide => Need(&[role::ADMIN]),
                };
                if needed.allows(identity) {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(
                        "forbidden",
                        format!(
                            "your role does not allow this; it needs one of {}",
                            needed.0.join(", ")
                        ),
                    ))
                }
            }
        }
    }
}

/// The partner that placed `order_id`; `None` for a web order or an order that does not exist.
async fn partner_of(pool: &PgPool, order_id: Uuid) -> Result<Option<String>, ApiError> {
    let partner: Option<Option<String>> =
        sqlx::query_scalar("SELECT partner_id FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_optional(pool)
            .db("SELECT orders")
            .await?;
    Ok(partner.flatten())
}
