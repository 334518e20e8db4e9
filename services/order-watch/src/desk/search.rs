//! Finding an order by what people quote: its own id, the external order id a partner or the shop
//! front end gave it, the partner (its recent orders) or the customer (their orders). Never by
//! personal data: order-watch keeps none, and a query that looks like an e-mail address, a phone
//! number or a name is answered with what to ask by instead.
//!
//! Three tiers, each tried only when the one before found nothing:
//! 1. **exact**: an id equal to the query (external and partner ids case-insensitively);
//! 2. **partial** (at least [`MIN_PARTIAL`] characters): order and customer ids that begin with
//!    it, external ids that begin or end with it (a partner's "12345" for "PO-12345"), partner ids
//!    that contain it;
//! 3. **similar** ("did you mean"): ids within a few edits of it ([`allowed_edits`]). The
//!    candidates are an id's neighbours in byte order, which share the longest beginnings with it,
//!    and in the order of reversed ids, which share the longest endings — one slip leaves one of
//!    the two halves intact —, order and customer ids with the same first eight hex digits (a
//!    UUIDv7's creation time, to the minute), and every partner.
//!
//! Every lookup is a range of a B-tree (`order_identities`' indexes, migration 0005) or the
//! orders' primary key, so a search costs about the same with a million orders as with ten;
//! partners are found by walking their distinct ids ([`MAX_PARTNERS`] at most). Every answer says
//! in words what was found, or why nothing was, and what to try.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use telemetry::db::Traced;
use uuid::Uuid;

/// Shortest query looked for as part of an id: two characters match too much to help.
pub const MIN_PARTIAL: usize = 3;
/// Longest query taken; ids are far shorter.
pub const MAX_QUERY_CHARS: usize = 200;
/// Most orders in each list of an answer.
pub const MAX_RESULTS: i64 = 20;
/// Neighbours of a mistyped id read each way, by its beginning and by its end.
const NEIGHBOURS: i64 = 50;
/// Most order and customer ids read that share a mistyped UUID's first eight digits.
const UUID_CANDIDATES: i64 = 500;
/// Most distinct partner ids looked through for a partial or mistyped one.
pub const MAX_PARTNERS: i64 = 10_000;

/// Most edits between a mistyped id of `chars` characters (without a UUID's hyphens) and one
/// suggested for it: one for short ids, where two would suggest half of them, two for most, three
/// for UUIDs.
pub fn allowed_edits(chars: usize) -> usize {
    match chars {
        0..=5 => 1,
        6..=31 => 2,
        _ => 3,
    }
}

/// Which id of an order matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    OrderId,
    ExternalId,
    PartnerId,
    CustomerId,
}

impl Kind {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "order_id" => Some(Self::OrderId),
            "external_id" => Some(Self::ExternalId),
            "partner_id" => Some(Self::PartnerId),
            "customer_id" => Some(Self::CustomerId),
            _ => None,
        }
    }
}

/// Why a query is not searched for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "write what to look for: an order id, an external order id, a partner id or a customer id"
    )]
    Empty,
    #[error("at most {MAX_QUERY_CHARS} characters: ids are shorter")]
    TooLong,
}

/// A query taken apart: the text as given (trimmed), and what it may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub text: String,
    /// It is a whole UUID.
    pub uuid: Option<Uuid>,
    /// Its hex digits (hyphens left out), when it is nothing else: a UUID or the start of one.
    pub hex: Option<String>,
    /// What personal data it looks like, if any.
    pub personal: Option<&'static str>,
}

impl Query {
    pub fn parse(text: &str) -> Result<Self, Refusal> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Refusal::Empty);
        }
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(Refusal::TooLong);
        }
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        let hex = (hex.len() <= 32 && hex.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| hex.to_ascii_lowercase());
        Ok(Self {
            text: text.to_owned(),
            uuid: Uuid::parse_str(text).ok(),
            hex,
            personal: personal_data(text),
        })
    }

    /// The order ids that begin with the query's hex digits, as an inclusive range (UUIDs order
    /// by their bytes); none for fewer than [`MIN_PARTIAL`] digits.
    pub fn uuid_range(&self) -> Option<(Uuid, Uuid)> {
        let hex = self.hex.as_deref()?;
        if hex.len() < MIN_PARTIAL {
            return None;
        }
        let low = format!("{hex:0<32}");
        let high = format!("{hex:f<32}");
        Some((Uuid::parse_str(&low).ok()?, Uuid::parse_str(&high).ok()?))
    }

    /// The query as a `LIKE` pattern's literal part (its wildcards escaped), lowercase.
    fn like_literal(&self) -> String {
        escape_like(&self.text.to_lowercase())
    }

    /// As [`Query::like_literal`], of the query reversed: for ids that end with it.
    fn like_reversed(&self) -> String {
        escape_like(&self.text.to_lowercase().chars().rev().collect::<String>())
    }
}

/// `text` with `LIKE`'s wildcards and escape character escaped.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What personal data `text` looks like: order-watch holds none, so it cannot be searched by.
fn personal_data(text: &str) -> Option<&'static str> {
    if text.contains('@') {
        return Some("an e-mail address");
    }
    let digits = text.chars().filter(char::is_ascii_digit).count();
    let phone_like = text
        .chars()
        .all(|c| c.is_ascii_digit() || " +-()/.".contains(c));
    if phone_like && digits >= 6 && (text.starts_with('+') || text.contains(' ')) {
        return Some("a phone number");
    }
    if text.split_whitespace().count() >= 2 && digits == 0 {
        return Some("a name");
    }
    None
}

/// An order found, with what matched and where the order is.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Found {
    pub order_id: Uuid,
    #[sqlx(try_from = "String")]
    pub matched: MatchedKind,
    /// The id that matched, as stored.
    pub value: String,
    pub external_id: Option<String>,
    pub partner_id: Option<String>,
    pub customer_id: Option<String>,
    pub status: Option<String>,
    pub stage: String,
    pub terminal: bool,
    pub stuck: bool,
    pub first_seen: DateTime<Utc>,
    pub last_progress: DateTime<Utc>,
}

/// [`Kind`] as a column reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MatchedKind(pub Kind);

impl TryFrom<String> for MatchedKind {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Kind::parse(&text)
            .map(Self)
            .ok_or_else(|| format!("no id is called {text}"))
    }
}

/// A partner whose id matched, with how many of its orders order-watch holds.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Partner {
    pub partner_id: String,
    pub orders: i64,
    pub last_order_at: DateTime<Utc>,
}

/// How the orders of an answer matched the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Exact,
    Partial,
    Similar,
    None,
}

/// `GET /api/search`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub query: String,
    pub tier: Tier,
    /// What was found, or why nothing was and what to try, in words.
    pub hint: String,
    /// Orders, newest first within each kind of id (a partner's and a customer's most recent).
    pub orders: Vec<Found>,
    /// Partners whose id matched (exactly, in part or nearly, as `tier` says).
    pub partners: Vec<Partner>,
}

/// The columns of [`Found`], from `orders o` left-joined with `order_identities i`.
const FOUND_COLUMNS: &str = "o.order_id, i.external_id, i.partner_id, i.customer_id, o.status, \
    o.stage, o.terminal, o.stuck_since IS NOT NULL AS stuck, o.first_seen, o.last_progress";

/// The indexed keys of `order_identities i` (migration 0005): lowercased ids in byte order.
const EXTERNAL: &str = r#"(lower(i.external_id) COLLATE "C")"#;
const EXTERNAL_REVERSED: &str = r#"(reverse(lower(i.external_id)) COLLATE "C")"#;
const PARTNER: &str = r#"(lower(i.partner_id) COLLATE "C")"#;
const CUSTOMER: &str = r#"(lower(i.customer_id) COLLATE "C")"#;
/// The newest orders whose ids lie between `$2` and `$3`, at most `$4`: limited before the join,
/// so that the planner, which cannot tell how few a UUID range holds, joins them one by one.
const ORDERS_IN_RANGE: &str =
    "(SELECT * FROM orders WHERE order_id BETWEEN $2 AND $3 ORDER BY order_id DESC LIMIT $4)";

/// Looks `query` up; `retention_days` goes into the answer that finds nothing.
pub async fn search(
    pool: &PgPool,
    query: &Query,
    retention_days: u32,
) -> Result<Answer, sqlx::Error> {
    let answer = |tier, orders: Vec<Found>, partners: Vec<Partner>| Answer {
        query: query.text.clone(),
        tier,
        hint: hint(query, tier, &orders, &partners, retention_days),
        orders,
        partners,
    };
    if query.personal.is_some() {
        return Ok(answer(Tier::None, vec![], vec![]));
    }
    let (orders, partners) = exact(pool, query).await?;
    if !orders.is_empty() || !partners.is_empty() {
        return Ok(answer(Tier::Exact, orders, partners));
    }
    if query.text.chars().count() < MIN_PARTIAL {
        return Ok(answer(Tier::None, vec![], vec![]));
    }
    let known_partners = distinct_partners(pool).await?;
    let (orders, partners) = partial(pool, query, &known_partners).await?;
    if !orders.is_empty() || !partners.is_empty() {
        return Ok(answer(Tier::Partial, orders, partners));
    }
    let (orders, partners) = similar(pool, query, &known_partners).await?;
    let tier = if orders.is_empty() && partners.is_empty() {
        Tier::None
    } else {
        Tier::Similar
    };
    Ok(answer(tier, orders, partners))
}

async fn exact(pool: &PgPool, query: &Query) -> Result<(Vec<Found>, Vec<Partner>), sqlx::Error> {
    let orders: Vec<Found> = sqlx::query_as(&format!(
        "(SELECT 'order_id' AS matched, o.order_id::text AS value, {FOUND_COLUMNS} \
           FROM orders o LEFT JOIN order_identities i USING (order_id) WHERE o.order_id = $2) \
         UNION ALL \
         (SELECT 'external_id', i.external_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {EXTERNAL} = lower($1) ORDER BY i.first_seen DESC LIMIT $3) \
         UNION ALL \
         (SELECT 'partner_id', i.partner_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {PARTNER} = lower($1) ORDER BY {PARTNER}, i.first_seen DESC LIMIT $3) \
         UNION ALL \
         (SELECT 'customer_id', i.customer_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {CUSTOMER} = lower($1) ORDER BY {CUSTOMER}, i.first_seen DESC LIMIT $3)"
    ))
    .bind(&query.text)
    .bind(query.uuid)
    .bind(MAX_RESULTS)
    .fetch_all(pool)
    .db("SELECT order_identities")
    .await?;
    let partners = match orders.iter().find(|o| o.matched.0 == Kind::PartnerId) {
        Some(found) => partners(pool, &[found.value.to_lowercase()]).await?,
        None => vec![],
    };
    Ok((orders, partners))
}

async fn partial(
    pool: &PgPool,
    query: &Query,
    known_partners: &[String],
) -> Result<(Vec<Found>, Vec<Partner>), sqlx::Error> {
    let (low, high) = query.uuid_range().unzip();
    let orders: Vec<Found> = sqlx::query_as(&format!(
        "(SELECT 'order_id' AS matched, o.order_id::text AS value, {FOUND_COLUMNS} \
           FROM {ORDERS_IN_RANGE} o LEFT JOIN order_identities i USING (order_id)) \
         UNION ALL \
         (SELECT 'customer_id', i.customer_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {CUSTOMER} LIKE $1 || '%' ORDER BY {CUSTOMER} LIMIT $4) \
         UNION ALL \
         (SELECT 'external_id', i.external_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {EXTERNAL} LIKE $1 || '%' ORDER BY {EXTERNAL} LIMIT $4) \
         UNION ALL \
         (SELECT 'external_id', i.external_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {EXTERNAL_REVERSED} LIKE $5 || '%' ORDER BY {EXTERNAL_REVERSED} LIMIT $4)"
    ))
    .bind(query.like_literal())
    .bind(low)
    .bind(high)
    .bind(MAX_RESULTS)
    .bind(query.like_reversed())
    .fetch_all(pool)
    .db("SELECT order_identities")
    .await?;
    let text = query.text.to_lowercase();
    let matching: Vec<String> = known_partners
        .iter()
        .filter(|p| p.contains(&text))
        .take(MAX_RESULTS as usize)
        .cloned()
        .collect();
    Ok((distinct(orders), partners(pool, &matching).await?))
}

async fn similar(
    pool: &PgPool,
    query: &Query,
    known_partners: &[String],
) -> Result<(Vec<Found>, Vec<Partner>), sqlx::Error> {
    // A UUID mistyped after its first eight digits still shares them.
    let first_eight = query
        .hex
        .as_deref()
        .filter(|hex| hex.len() >= 16)
        .map(|hex| hex[..8].to_owned());
    let (low, high) = first_eight
        .as_ref()
        .and_then(|prefix| {
            Query {
                hex: Some(prefix.clone()),
                ..query.clone()
            }
            .uuid_range()
        })
        .unzip();
    let candidates: Vec<Found> = sqlx::query_as(&format!(
        "(SELECT 'order_id' AS matched, o.order_id::text AS value, {FOUND_COLUMNS} \
           FROM {ORDERS_IN_RANGE} o LEFT JOIN order_identities i USING (order_id)) \
         UNION ALL \
         (SELECT 'customer_id', i.customer_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {CUSTOMER} LIKE $6 || '%' LIMIT $4) \
         UNION ALL \
         (SELECT 'external_id', i.external_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {EXTERNAL} >= lower($1) ORDER BY {EXTERNAL} LIMIT $5) \
         UNION ALL \
         (SELECT 'external_id', i.external_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {EXTERNAL} < lower($1) ORDER BY {EXTERNAL} DESC LIMIT $5) \
         UNION ALL \
         (SELECT 'external_id', i.external_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {EXTERNAL_REVERSED} >= reverse(lower($1)) ORDER BY {EXTERNAL_REVERSED} LIMIT $5) \
         UNION ALL \
         (SELECT 'external_id', i.external_id, {FOUND_COLUMNS} \
           FROM order_identities i JOIN orders o USING (order_id) \
           WHERE {EXTERNAL_REVERSED} < reverse(lower($1)) \
           ORDER BY {EXTERNAL_REVERSED} DESC LIMIT $5)"
    ))
    .bind(&query.text)
    .bind(low)
    .bind(high)
    .bind(UUID_CANDIDATES)
    .bind(NEIGHBOURS)
    .bind(first_eight.map(|hex| escape_like(&hex)))
    .fetch_all(pool)
    .db("SELECT order_identities")
    .await?;
    let text = query.text.to_lowercase();
    let allowed = allowed_edits(text.chars().count());
    let mut near: Vec<(usize, &String)> = known_partners
        .iter()
        .map(|p| (edit_distance(&text, p), p))
        .filter(|(distance, _)| *distance <= allowed)
        .collect();
    near.sort();
    let matching: Vec<String> = near
        .into_iter()
        .take(MAX_RESULTS as usize)
        .map(|(_, p)| p.clone())
        .collect();
    // Closest first.
    let mut found = partners(pool, &matching).await?;
    found.sort_by_key(|p| {
        matching
            .iter()
            .position(|m| *m == p.partner_id.to_lowercase())
    });
    Ok((closest(query, candidates), found))
}

/// Every partner id order-watch holds, lowercased, at most [`MAX_PARTNERS`]: a walk down the
/// partners' index from one distinct id to the next (an index probe per partner, however many
/// orders each has).
async fn distinct_partners(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "WITH RECURSIVE walk (partner) AS ( \
             (SELECT {PARTNER} FROM order_identities i WHERE i.partner_id IS NOT NULL \
              ORDER BY {PARTNER} LIMIT 1) \
             UNION ALL \
             SELECT (SELECT {PARTNER} FROM order_identities i WHERE {PARTNER} > walk.partner \
                     ORDER BY {PARTNER} LIMIT 1) \
             FROM walk WHERE walk.partner IS NOT NULL) \
         SELECT partner FROM walk WHERE partner IS NOT NULL LIMIT $1"
    ))
    .bind(MAX_PARTNERS)
    .fetch_all(pool)
    .db("SELECT order_identities")
    .await
}

/// `ids` (lowercased partner ids) with how many orders each has and its latest, latest first.
async fn partners(pool: &PgPool, ids: &[String]) -> Result<Vec<Partner>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    sqlx::query_as(&format!(
        "SELECT min(i.partner_id) AS partner_id, count(*) AS orders, \
             max(i.first_seen) AS last_order_at \
         FROM order_identities i WHERE {PARTNER} = ANY($1) \
         GROUP BY {PARTNER} ORDER BY max(i.first_seen) DESC"
    ))
    .bind(ids)
    .fetch_all(pool)
    .db("SELECT order_identities")
    .await
}

/// `orders` with each order once (an external id can both begin and end with the query).
fn distinct(orders: Vec<Found>) -> Vec<Found> {
    let mut seen = std::collections::HashSet::new();
    orders
        .into_iter()
        .filter(|o| seen.insert(o.order_id))
        .collect()
}

/// Of the candidates, those within [`allowed_edits`] of the query, closest first, each order
/// once.
fn closest(query: &Query, candidates: Vec<Found>) -> Vec<Found> {
    let normal = |kind: Kind, value: &str| match kind {
        Kind::OrderId | Kind::CustomerId => value
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase(),
        Kind::ExternalId | Kind::PartnerId => value.to_lowercase(),
    };
    let mut by_distance: BTreeMap<usize, Vec<Found>> = BTreeMap::new();
    for found in candidates {
        let kind = found.matched.0;
        let asked = match kind {
            Kind::OrderId | Kind::CustomerId => query.hex.clone().unwrap_or_default(),
            Kind::ExternalId | Kind::PartnerId => query.text.to_lowercase(),
        };
        if asked.is_empty() {
            continue;
        }
        let distance = edit_distance(&asked, &normal(kind, &found.value));
        if distance <= allowed_edits(asked.chars().count()) {
            by_distance.entry(distance).or_default().push(found);
        }
    }
    let mut orders = distinct(by_distance.into_values().flatten().collect());
    orders.truncate(MAX_RESULTS as usize);
    orders
}

/// Edits (insertions, deletions, substitutions, swaps of neighbours) from `a` to `b`: the
/// optimal string alignment distance.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// What an answer says.
fn hint(
    query: &Query,
    tier: Tier,
    orders: &[Found],
    partners: &[Partner],
    retention_days: u32,
) -> String {
    let q = &query.text;
    if let Some(personal) = query.personal {
        return format!(
            "“{q}” looks like {personal}. order-watch keeps no personal data, so it cannot be \
             searched by; ask for the order id, the external order id (the partner's or the \
             shop's order number), the partner id or the customer id."
        );
    }
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    match tier {
        Tier::Exact => {
            let kinds: Vec<Kind> = {
                let mut kinds: Vec<Kind> = orders.iter().map(|o| o.matched.0).collect();
                kinds.sort();
                kinds.dedup();
                kinds
            };
            match kinds.as_slice() {
                [Kind::PartnerId] => {
                    let total = partners.first().map_or(orders.len() as i64, |p| p.orders);
                    format!(
                        "Partner {} has {} in order-watch; the {} most recent first.",
                        partners.first().map_or(q.as_str(), |p| &p.partner_id),
                        plural(total as usize, "order", "orders"),
                        orders.len()
                    )
                }
                [Kind::CustomerId] => format!(
                    "Customer {q}: {}, the most recent first.",
                    plural(orders.len(), "order", "orders")
                ),
                [Kind::OrderId] => format!("Order {q}."),
                [Kind::ExternalId] if orders.len() == 1 => {
                    format!("The order with external id {}.", orders[0].value)
                }
                [Kind::ExternalId] => format!(
                    "{} have the external id {q} (from different partners or channels).",
                    plural(orders.len(), "order", "orders")
                ),
                _ => format!(
                    "{} match “{q}”, by different ids.",
                    plural(orders.len(), "order", "orders")
                ),
            }
        }
        Tier::Partial => {
            let mut parts = Vec::new();
            if !orders.is_empty() {
                parts.push(plural(orders.len(), "order", "orders"));
            }
            if !partners.is_empty() {
                parts.push(plural(partners.len(), "partner", "partners"));
            }
            format!(
                "No id is exactly “{q}”. {} whose id contains it{}:",
                parts.join(" and "),
                if orders.len() as i64 >= MAX_RESULTS {
                    " (the first ones; type more of the id to narrow it)"
                } else {
                    ""
                }
            )
        }
        Tier::Similar => format!("No id is “{q}”. Did you mean one of these?"),
        Tier::None if q.chars().count() < MIN_PARTIAL => format!(
            "No id is exactly “{q}”. Type at least {MIN_PARTIAL} characters to look for ids \
             that contain it."
        ),
        Tier::None => format!(
            "order-watch knows no order by “{q}”: not as an order id, external order id, partner \
             id or customer id, nor anything close to one. An order appears here once a service \
             has reported work on it, and is kept {retention_days} days after its last activity."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_trimmed_and_an_empty_or_endless_one_refused() {
        assert_eq!(Query::parse("  PO-1 ").unwrap().text, "PO-1");
        assert_eq!(Query::parse("   "), Err(Refusal::Empty));
        assert_eq!(Query::parse(&"x".repeat(201)), Err(Refusal::TooLong));
    }

    #[test]
    fn the_start_of_a_uuid_is_the_range_of_ids_that_begin_with_it() {
        let query = Query::parse("0190A1B2-c3").unwrap();
        assert_eq!(query.hex.as_deref(), Some("0190a1b2c3"));
        let (low, high) = query.uuid_range().unwrap();
        assert_eq!(low.to_string(), "0190a1b2-c300-0000-0000-000000000000");
        assert_eq!(high.to_string(), "0190a1b2-c3ff-ffff-ffff-ffffffffffff");
        assert_eq!(Query::parse("PO-12").unwrap().uuid_range(), None, "not hex");
        assert_eq!(
            Query::parse("ab").unwrap().uuid_range(),
            None,
            "too short to narrow"
        );
        let whole = Uuid::now_v7();
        let query = Query::parse(&whole.to_string()).unwrap();
        assert_eq!(query.uuid, Some(whole));
        assert_eq!(query.uuid_range(), Some((whole, whole)));
    }

    #[test]
    fn like_wildcards_in_a_query_are_taken_literally_forwards_and_reversed() {
        let query = Query::parse("PO_1%\\").unwrap();
        assert_eq!(query.like_literal(), "po\\_1\\%\\\\");
        assert_eq!(query.like_reversed(), "\\\\\\%1\\_op");
    }

    #[test]
    fn e_mail_addresses_phone_numbers_and_names_are_recognised_as_personal_data() {
        let personal = |q: &str| Query::parse(q).unwrap().personal;
        assert_eq!(personal("jane@example.com"), Some("an e-mail address"));
        assert_eq!(personal("+49 170 1234567"), Some("a phone number"));
        assert_eq!(personal("0170 1234567"), Some("a phone number"));
        assert_eq!(personal("Jane Doe"), Some("a name"));
        for id in ["PO-12345", "WEB-00001234", "partner-007", "12345678"] {
            assert_eq!(personal(id), None, "{id}");
        }
        let q = Query::parse("jane@example.com").unwrap();
        let words = hint(&q, Tier::None, &[], &[], 30);
        assert!(
            words.starts_with("“jane@example.com” looks like an e-mail address. order-watch keeps no personal data"),
            "{words}"
        );
    }

    #[test]
    fn the_edit_distance_counts_a_swap_of_neighbours_as_one() {
        assert_eq!(edit_distance("abcdef", "abcdef"), 0);
        assert_eq!(edit_distance("abcdef", "abdcef"), 1);
        assert_eq!(edit_distance("abcdef", "abcxef"), 1);
        assert_eq!(edit_distance("abcdef", "abcef"), 1);
        assert_eq!(edit_distance("abc", "xyz"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    fn found(kind: Kind, value: &str) -> Found {
        let now = Utc::now();
        Found {
            order_id: Uuid::now_v7(),
            matched: MatchedKind(kind),
            value: value.into(),
            external_id: None,
            partner_id: None,
            customer_id: None,
            status: Some("pricing".into()),
            stage: "pricing".into(),
            terminal: false,
            stuck: false,
            first_seen: now,
            last_progress: now,
        }
    }

    #[test]
    fn a_mistyped_uuid_is_offered_the_closest_ids_and_not_the_distant_ones() {
        let query = Query::parse("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b").unwrap();
        let one_off = found(Kind::OrderId, "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2c");
        let swapped = found(Kind::CustomerId, "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f12ac");
        let distant = found(Kind::OrderId, "0190a1b2-0000-7000-8000-000000000000");
        let external = found(Kind::ExternalId, "PO-1");
        let kept = closest(&query, vec![distant, external, swapped, one_off]);
        let values: Vec<&str> = kept.iter().map(|f| f.value.as_str()).collect();
        assert_eq!(
            values,
            [
                "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2c",
                "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f12ac"
            ]
        );
    }

    #[test]
    fn a_mistyped_external_id_is_offered_the_ids_a_slip_or_two_away() {
        let query = Query::parse("po-12354").unwrap();
        // Two edits, one (a swap), too many, three.
        let candidates = ["PO-12300", "PO-12345", "PO-99999", "WEB-12354"]
            .map(|id| found(Kind::ExternalId, id))
            .to_vec();
        let values: Vec<String> = closest(&query, candidates)
            .into_iter()
            .map(|f| f.value)
            .collect();
        assert_eq!(values, ["PO-12345", "PO-12300"]);
    }

    #[test]
    fn short_ids_allow_one_edit_most_ids_two_and_uuids_three() {
        assert_eq!(allowed_edits(4), 1);
        assert_eq!(allowed_edits(8), 2);
        assert_eq!(allowed_edits(32), 3);
    }

    #[test]
    fn each_answer_says_what_was_found_or_what_to_try() {
        let q = |text: &str| Query::parse(text).unwrap();
        let partner = Partner {
            partner_id: "acme".into(),
            orders: 42,
            last_order_at: Utc::now(),
        };
        let recent = vec![found(Kind::PartnerId, "acme"); 20];
        assert_eq!(
            hint(&q("ACME"), Tier::Exact, &recent, &[partner], 30),
            "Partner acme has 42 orders in order-watch; the 20 most recent first."
        );
        assert_eq!(
            hint(
                &q("PO-1"),
                Tier::Exact,
                &[found(Kind::ExternalId, "PO-1")],
                &[],
                30
            ),
            "The order with external id PO-1."
        );
        assert_eq!(
            hint(
                &q("PO-1"),
                Tier::Partial,
                &[found(Kind::ExternalId, "PO-12")],
                &[],
                30
            ),
            "No id is exactly “PO-1”. 1 order whose id contains it:"
        );
        assert_eq!(
            hint(
                &q("PO-12354"),
                Tier::Similar,
                &[found(Kind::ExternalId, "PO-12345")],
                &[],
                30
            ),
            "No id is “PO-12354”. Did you mean one of these?"
        );
        assert_eq!(
            hint(&q("ab"), Tier::None, &[], &[], 30),
            "No id is exactly “ab”. Type at least 3 characters to look for ids that contain it."
        );
        assert!(
            hint(&q("nothing-like-it"), Tier::None, &[], &[], 30)
                .ends_with("is kept 30 days after its last activity.")
        );
    }
}
