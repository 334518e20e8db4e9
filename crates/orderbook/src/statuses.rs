//! `GET /api/orders/statuses`: the status this service holds for each of up to [`MAX_IDS`]
//! orders (`?ids=…`), or the orders whose status it recorded since a time, a page at a time
//! (`?changed_since=…&after=…&limit=…`). [`domain::held`] is the contract. order-watch asks the
//! system that owns an order's stage before it calls the order stuck; reconciliation pages
//! through every system's changes and compares the systems' answers.
//!
//! The request names no single order in its path, so its spans belong to no order's journey:
//! asking about orders is not activity of theirs.

use axum::Router;
use axum::extract::{FromRef, Query, State};
use axum::routing::get;
use chrono::{DateTime, Utc};
use domain::held::{
    ChangedSince, HeldStatus, HeldStatuses, MAX_CHANGED_PAGE, MAX_IDS, STATUSES_PATH,
};
use platform::db::{Corrupt, parse_column};
use platform::error::ApiError;
use serde::Deserialize;
use sqlx::PgPool;
use telemetry::db::Traced;
use uuid::Uuid;

/// The listing, for a service whose router state holds its database pool.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    PgPool: FromRef<S>,
{
    Router::new().route(STATUSES_PATH, get(statuses))
}

#[derive(Debug, Deserialize)]
struct ListingQuery {
    /// Order ids separated by commas.
    ids: Option<String>,
    /// RFC 3339: orders whose status was recorded at this time or later.
    changed_since: Option<String>,
    /// With `changed_since`: leave out the orders changed at exactly that time up to this id
    /// (the previous page's last).
    after: Option<String>,
    /// With `changed_since`: the page size, 1 to [`MAX_CHANGED_PAGE`] (the default).
    limit: Option<String>,
}

/// What a listing request asks.
#[derive(Debug, PartialEq)]
enum Listing {
    Ids(Vec<Uuid>),
    Changed { from: ChangedSince, limit: usize },
}

impl ListingQuery {
    fn listing(&self) -> Result<Listing, ApiError> {
        match (&self.ids, &self.changed_since) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "conflicting_query",
                "ask either by `ids` or by `changed_since`, not both",
            )),
            (_, Some(since)) => self.changed(since),
            (ids, None) => {
                if self.after.is_some() || self.limit.is_some() {
                    return Err(ApiError::bad_request(
                        "conflicting_query",
                        "`after` and `limit` page a `changed_since` listing",
                    ));
                }
                parse_ids(ids.as_deref()).map(Listing::Ids)
            }
        }
    }

    fn changed(&self, since: &str) -> Result<Listing, ApiError> {
        let since = DateTime::parse_from_rfc3339(since.trim())
            .map_err(|_| {
                ApiError::bad_request(
                    "invalid_changed_since",
                    "`changed_since` is not an RFC 3339 time like 2026-03-01T10:00:00.000001Z",
                )
            })?
            .with_timezone(&Utc);
        let after = self
            .after
            .as_deref()
            .map(|id| {
                Uuid::try_parse(id.trim()).map_err(|_| {
                    ApiError::bad_request("invalid_order_id", "`after` is not an order id (a UUID)")
                })
            })
            .transpose()?;
        let limit = match self.limit.as_deref() {
            None => MAX_CHANGED_PAGE,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_CHANGED_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_limit",
                        format!("`limit` must be between 1 and {MAX_CHANGED_PAGE}"),
                    )
                })?,
        };
        Ok(Listing::Changed {
            from: ChangedSince { since, after },
            limit,
        })
    }
}

/// The ids of a listing request, each a UUID, at least one and at most [`MAX_IDS`].
fn parse_ids(text: Option<&str>) -> Result<Vec<Uuid>, ApiError> {
    let text = text.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Err(ApiError::bad_request(
            "missing_ids",
            "name the orders in `ids`, separated by commas, or ask for those changed since a time with `changed_since`",
        ));
    }
    let ids = text
        .split(',')
        .map(|id| {
            let id = id.trim();
            Uuid::try_parse(id).map_err(|_| {
                let shown: String = id.chars().take(40).collect();
                ApiError::bad_request(
                    "invalid_order_id",
                    format!("`{shown}` in `ids` is not an order id (a UUID)"),
                )
            })
        })
        .take(MAX_IDS + 1)
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad_request(
            "too_many_ids",
            format!("ask about at most {MAX_IDS} orders at once"),
        ));
    }
    Ok(ids)
}

async fn statuses(
    State(pool): State<PgPool>,
    Query(query): Query<ListingQuery>,
) -> Result<axum::Json<HeldStatuses>, ApiError> {
    let answer = match query.listing()? {
        Listing::Ids(ids) => HeldStatuses {
            orders: by_ids(&pool, &ids).await?,
            next: None,
        },
        Listing::Changed { from, limit } => changed(&pool, from, limit).await?,
    };
    Ok(axum::Json(answer))
}

async fn by_ids(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<HeldStatus>, ApiError> {
    let rows: Vec<HeldRow> = sqlx::query_as(
        "SELECT order_id, status, updated_at FROM orderbook.orders WHERE order_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .db("SELECT orders")
    .await?;
    Ok(rows
        .into_iter()
        .map(HeldStatus::try_from)
        .collect::<Result<Vec<_>, Corrupt>>()?)
}

/// One page of changes from `from`, in `(updated_at, order_id)` order (the `orders_changed`
/// index). One row more than the page is read, to know whether another page follows.
async fn changed(
    pool: &PgPool,
    from: ChangedSince,
    limit: usize,
) -> Result<HeldStatuses, ApiError> {
    // The nil id precedes every order's, so without `after` the changes at `since` itself count.
    let rows: Vec<HeldRow> = sqlx::query_as(
        "SELECT order_id, status, updated_at FROM orderbook.orders \
         WHERE (updated_at, order_id) > ($1, $2) ORDER BY updated_at, order_id LIMIT $3",
    )
    .bind(from.since)
    .bind(from.after.unwrap_or_else(Uuid::nil))
    .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .db("SELECT orders")
    .await?;
    let mut orders = rows
        .into_iter()
        .map(HeldStatus::try_from)
        .collect::<Result<Vec<_>, Corrupt>>()?;
    let next = if orders.len() > limit {
        orders.truncate(limit);
        orders.last().map(ChangedSince::after)
    } else {
        None
    };
    Ok(HeldStatuses { orders, next })
}

/// What the listing reads of an order's row.
#[derive(sqlx::FromRow)]
struct HeldRow {
    order_id: Uuid,
    status: String,
    updated_at: DateTime<Utc>,
}

impl TryFrom<HeldRow> for HeldStatus {
    type Error = Corrupt;

    fn try_from(row: HeldRow) -> Result<Self, Corrupt> {
        Ok(Self {
            order_id: row.order_id,
            status: parse_column(row.order_id, "status", &row.status)?,
            updated_at: row.updated_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<Listing, ApiError>) -> &'static str {
        match result {
            Err(ApiError::BadRequest { code, .. }) => code,
            other => panic!("{other:?}"),
        }
    }

    fn query(
        ids: Option<&str>,
        since: Option<&str>,
        after: Option<&str>,
        limit: Option<&str>,
    ) -> ListingQuery {
        ListingQuery {
            ids: ids.map(str::to_owned),
            changed_since: since.map(str::to_owned),
            after: after.map(str::to_owned),
            limit: limit.map(str::to_owned),
        }
    }

    #[test]
    fn ids_are_uuids_separated_by_commas_and_bounded() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(parse_ids(Some(&format!("{a}, {b}"))).unwrap(), vec![a, b]);
        let code = |text: Option<&str>| match parse_ids(text) {
            Err(ApiError::BadRequest { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(None), "missing_ids");
        assert_eq!(code(Some(" ")), "missing_ids");
        assert_eq!(code(Some(&format!("{a},nope"))), "invalid_order_id");
        assert_eq!(code(Some(&format!("{a},"))), "invalid_order_id");
        let many = vec![a.to_string(); MAX_IDS + 1].join(",");
        assert_eq!(code(Some(&many)), "too_many_ids");
        let enough = vec![a.to_string(); MAX_IDS].join(",");
        assert_eq!(parse_ids(Some(&enough)).unwrap().len(), MAX_IDS);
    }

    #[test]
    fn a_changed_since_listing_takes_a_time_an_order_to_follow_and_a_page_size() {
        let a = Uuid::now_v7();
        let since: DateTime<Utc> = "2026-03-01T10:00:00.000001Z".parse().unwrap();
        let listing = query(
            None,
            Some("2026-03-01T11:00:00.000001+01:00"),
            Some(&a.to_string()),
            Some("10"),
        )
        .listing()
        .unwrap();
        assert_eq!(
            listing,
            Listing::Changed {
                from: ChangedSince {
                    since,
                    after: Some(a)
                },
                limit: 10
            }
        );
        let listing = query(None, Some("2026-03-01T10:00:00.000001Z"), None, None)
            .listing()
            .unwrap();
        assert_eq!(
            listing,
            Listing::Changed {
                from: ChangedSince::from(since),
                limit: MAX_CHANGED_PAGE
            }
        );
    }

    #[test]
    fn a_listing_asks_one_question_in_its_own_terms() {
        let a = Uuid::now_v7().to_string();
        let now = "2026-03-01T10:00:00Z";
        assert_eq!(
            code(query(Some(&a), Some(now), None, None).listing()),
            "conflicting_query"
        );
        assert_eq!(
            code(query(Some(&a), None, None, Some("5")).listing()),
            "conflicting_query"
        );
        assert_eq!(
            code(query(None, None, Some(&a), None).listing()),
            "conflicting_query"
        );
        assert_eq!(
            code(query(None, Some("yesterday"), None, None).listing()),
            "invalid_changed_since"
        );
        assert_eq!(
            code(query(None, Some(now), Some("x"), None).listing()),
            "invalid_order_id"
        );
        for limit in ["0", "1001", "many"] {
            assert_eq!(
                code(query(None, Some(now), None, Some(limit)).listing()),
                "invalid_limit"
            );
        }
        assert_eq!(code(query(None, None, None, None).listing()), "missing_ids");
    }
}
