//! Partners' order intake, limited per partner (issue 18): GCRA (the generic cell rate
//! algorithm, a token bucket kept as one timestamp) in PostgreSQL, so that every Shop replica
//! draws on one budget per partner. Customers' own web orders are never limited by it.
//!
//! A partner with a rate of `quota` orders per `window` may send `quota` at once and then one
//! every `window / quota`. The state is the partner's theoretical arrival time (`tat`): a
//! request at `now` is let through when `max(tat, now) + interval - window <= now`, and moves
//! `tat` on by one interval; one statement decides and records, so concurrent requests through
//! any replica cannot overdraw. When the rate changes (an override set, lifted or lapsed:
//! `crate::limits`) the orders the partner owes carry over, each taking the new interval, capped
//! at one window: a partner that placed one order under `1/1h` is not kept waiting an hour once
//! its configured `60/1m` applies again, and one that ran up a burst under a loose rate meets a
//! tightened one at once. A refused request changes nothing and stores nothing: it gets
//! 429 with `Retry-After` and the `RateLimit-Policy` / `RateLimit` fields of the IETF httpapi
//! draft (`"partner";q=…;w=…` and `"partner";r=…;t=…`), which every answer to a partner carries.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use telemetry::db::Traced;

use platform::error::ApiError;

/// A rate: `quota` orders per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub quota: u32,
    pub window: Duration,
}

impl Rate {
    /// `120/1m`: a count, a slash, a duration.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (quota, window) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not a rate like `120/1m`"))?;
        let quota: u32 = quota
            .trim()
            .parse()
            .map_err(|_| format!("`{quota}` in `{text}` is not a whole number of orders"))?;
        let window = humantime::parse_duration(window.trim())
            .map_err(|e| format!("`{window}` in `{text}` is not a duration ({e})"))?;
        if quota == 0 || window.is_zero() || window > Duration::from_secs(86_400) {
            return Err(format!(
                "`{text}`: at least one order, in a window of more than 0 and at most 1 day"
            ));
        }
        Ok(Self { quota, window })
    }

    pub(crate) fn interval(self) -> Duration {
        self.window / self.quota
    }
}

/// `120/1m`, as [`Rate::parse`] reads it.
impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.quota,
            humantime::format_duration(self.window)
        )
    }
}

/// Each partner's rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerLimits {
    /// For partners without their own.
    pub default: Rate,
    pub per_partner: BTreeMap<String, Rate>,
}

impl PartnerLimits {
    /// The metric label of `partner`: its name when it has a rate of its own, else `other`.
    pub fn label_of(&self, partner: &str) -> String {
        if self.per_partner.contains_key(partner) {
            partner.to_owned()
        } else {
            "other".to_owned()
        }
    }

    pub fn rate_of(&self, partner: &str) -> Rate {
        self.per_partner
            .get(partner)
            .copied()
            .unwrap_or(self.default)
    }

    /// `acme=600/1m,bulk=30/1m`.
    pub fn parse_overrides(text: &str) -> Result<BTreeMap<String, Rate>, String> {
        text.split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| {
                let (partner, rate) = entry
                    .split_once('=')
                    .ok_or_else(|| format!("`{entry}` is not `partner=rate`"))?;
                Ok((partner.trim().to_owned(), Rate::parse(rate)?))
            })
            .collect()
    }
}

/// What the limiter said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub rate: Rate,
    /// Orders the partner may still send at once.
    pub remaining: u32,
    /// Seconds until the budget is full again (allowed) or until the next order is let
    /// through (refused), rounded up.
    pub reset_secs: u64,
}

impl Verdict {
    /// `RateLimit-Policy` and `RateLimit`, as the draft spells them.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (
                "ratelimit-policy",
                format!(
                    "\"partner\";q={};w={}",
                    self.rate.quota,
                    self.rate.window.as_secs().max(1)
                ),
            ),
            (
                "ratelimit",
                format!("\"partner\";r={};t={}", self.remaining, self.reset_secs),
            ),
        ]
    }

    /// The refusal, when the request is over the rate.
    pub fn refusal(&self, partner: &str) -> Option<ApiError> {
        (!self.allowed).then(|| ApiError::RateLimited {
            message: format!(
                "partner `{partner}` may place {} orders per {}; retry in {} s",
                self.rate.quota,
                humantime::format_duration(self.rate.window),
                self.reset_secs
            ),
            retry_after_secs: self.reset_secs,
            headers: self.headers().to_vec(),
        })
    }
}

/// The partner's theoretical arrival time as the rate in force (`$2` its interval, `$3` its
/// window) sees it: the orders it owes under the rate its `tat` was run up with
/// (`rate_interval`), each taking the new interval, and never more than one window of them.
const TAT_NOW: &str = "clock_timestamp() + least(\
    greatest(r.tat - clock_timestamp(), interval '0') \
        * (extract(epoch from $2::interval) / extract(epoch from coalesce(r.rate_interval, $2::interval))), \
    $3::interval)";

/// Takes one order from `partner`'s budget, if it has one left.
pub async fn take(pool: &PgPool, partner: &str, rate: Rate) -> Result<Verdict, sqlx::Error> {
    let interval = rate.interval();
    let taken: Option<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(&format!(
        "INSERT INTO partner_rate AS r (partner_id, tat, rate_interval) \
             VALUES ($1, clock_timestamp() + $2, $2) \
         ON CONFLICT (partner_id) DO UPDATE \
             SET tat = {TAT_NOW} + $2, rate_interval = $2 \
             WHERE {TAT_NOW} + $2 - $3 <= clock_timestamp() \
         RETURNING tat, clock_timestamp()"
    ))
    .bind(partner)
    .bind(interval)
    .bind(rate.window)
    .fetch_optional(pool)
    .db("INSERT partner_rate")
    .await?;
    if let Some((tat, now)) = taken {
        let ahead = (tat - now).to_std().unwrap_or_default();
        let spare = rate.window.saturating_sub(ahead);
        return Ok(Verdict {
            allowed: true,
            rate,
            remaining: (spare.as_micros() / interval.as_micros().max(1)) as u32,
            reset_secs: ahead.as_secs_f64().ceil() as u64,
        });
    }
    // Refused: the debt is kept as the rate in force counts it, so the wait it is told holds.
    let (tat, now): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(&format!(
        "UPDATE partner_rate AS r SET tat = {TAT_NOW}, rate_interval = $2 \
         WHERE partner_id = $1 RETURNING tat, clock_timestamp()"
    ))
    .bind(partner)
    .bind(interval)
    .bind(rate.window)
    .fetch_one(pool)
    .db("UPDATE partner_rate")
    .await?;
    // The next order fits once `tat + interval - window` has passed.
    let due = (tat - now).to_std().unwrap_or_default() + interval;
    let wait = due.saturating_sub(rate.window);
    Ok(Verdict {
        allowed: false,
        rate,
        remaining: 0,
        reset_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_count_per_duration_and_nonsense_is_named() {
        assert_eq!(
            Rate::parse("120/1m").unwrap(),
            Rate {
                quota: 120,
                window: Duration::from_secs(60)
            }
        );
        for bad in ["120", "0/1m", "5/0s", "x/1m", "5/soon", "5/2d"] {
            let err = Rate::parse(bad).unwrap_err();
            assert!(err.contains('`'), "{bad}: {err}");
        }
        let overrides = PartnerLimits::parse_overrides("acme=600/1m, bulk=3/10s").unwrap();
        assert_eq!(overrides["bulk"].quota, 3);
        assert!(PartnerLimits::parse_overrides("acme").is_err());
    }

    #[test]
    fn the_headers_follow_the_draft() {
        let verdict = Verdict {
            allowed: true,
            rate: Rate {
                quota: 10,
                window: Duration::from_secs(60),
            },
            remaining: 7,
            reset_secs: 18,
        };
        assert_eq!(
            verdict.headers(),
            [
                ("ratelimit-policy", "\"partner\";q=10;w=60".to_owned()),
                ("ratelimit", "\"partner\";r=7;t=18".to_owned()),
            ]
        );
        assert!(verdict.refusal("acme").is_none());
    }
}
