//! The customer repository: every read is `#[cached]`, every write
//! `#[invalidates]` what it changes. No cache calls are written by hand.
//!
//! | method | cache |
//! |---|---|
//! | [`Repo::get_customer`] | `customer:{id}`, 1 h; fail-safe 1 h |
//! | [`Repo::churn_risk`] | `churn:{id}`, 30 min (a deliberately slow ~50 ms computation); refresh-ahead at 80%, fail-safe 24 h |
//! | [`Repo::list_by_segment`] | `query:<hash of the arguments>`, 10 min |
//! | [`Repo::create_customer`] | drops prefix `query` |
//! | [`Repo::update_customer`] | drops `customer:{id}`, `churn:{id}` and prefix `query` |
//!
//! Writes record their invalidation in the cache's outbox table, in the
//! same database transaction as the change (`#[invalidates(..., outbox =
//! tx)]`), unless the outbox is off ([`Repo::with_outbox`]). The
//! transaction is committed inside the annotated function, so the writer's
//! own immediate invalidation runs after the commit; the outbox row is the
//! durable copy that any instance's relay delivers when the writer could
//! not (cut off from Redis, or gone).
//!
//! Errors (unknown id, conflicts, database failures) are `Err` values, which
//! `#[cached]` never stores: a customer created after a 404 for its id is
//! found at once.
//!
//! Fail-safe: while the database fails, a profile or churn score past its
//! TTL is answered from the value kept as a reserve (up to 1 h, 24 h for the
//! score) instead of a `503`; a value a write invalidated is never answered
//! that way. Refresh-ahead: a churn score read in the last 20% of its TTL
//! is recomputed in the background (once across instances), so readers of
//! a busy customer never wait for the slow computation.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use cache_core::outbox::OutboxError;
use cache_core::{Cache, cached, invalidates};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::db::{Db, Tx, with_pool, with_tx};

use crate::outage::DbOutage;

/// How long [`Repo::churn_risk`] pretends to think.
pub const CHURN_COMPUTATION: Duration = Duration::from_millis(50);

/// Largest page [`Repo::list_by_segment`] returns.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// Market segment of a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Segment {
    /// Large accounts.
    Enterprise,
    /// Medium-sized companies.
    MidMarket,
    /// Small businesses.
    Smb,
    /// Individuals.
    Consumer,
}

impl Segment {
    /// Every segment, in a fixed order.
    pub const ALL: [Segment; 4] = [
        Segment::Enterprise,
        Segment::MidMarket,
        Segment::Smb,
        Segment::Consumer,
    ];

    /// The name used in JSON, query strings and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::Enterprise => "enterprise",
            Segment::MidMarket => "mid-market",
            Segment::Smb => "smb",
            Segment::Consumer => "consumer",
        }
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Segment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Segment::ALL
            .into_iter()
            .find(|seg| seg.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown segment `{s}`; expected one of enterprise, mid-market, smb, consumer"
                )
            })
    }
}

/// A customer, as stored and as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Contact address (unique).
    pub email: String,
    /// Market segment.
    pub segment: Segment,
    /// Monthly revenue, in cents.
    pub monthly_spend_cents: i64,
    /// Months since sign-up.
    pub tenure_months: i64,
    /// Support tickets opened in the last 90 days.
    pub support_tickets: i64,
    /// Days since the last login.
    pub days_since_login: i64,
}

/// The body of `POST /api/customers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    /// Display name (1 to 200 characters).
    pub name: String,
    /// Contact address (must contain `@`, at most 254 characters, unique).
    pub email: String,
    /// Market segment.
    pub segment: Segment,
    /// Monthly revenue in cents (default 0).
    #[serde(default)]
    pub monthly_spend_cents: i64,
    /// Months since sign-up (default 0).
    #[serde(default)]
    pub tenure_months: i64,
    /// Support tickets in the last 90 days (default 0).
    #[serde(default)]
    pub support_tickets: i64,
    /// Days since the last login (default 0).
    #[serde(default)]
    pub days_since_login: i64,
}

/// The body of `PUT /api/customers/{id}`: the fields to change (at least
/// one). The full representation `GET` returns is accepted, so a client can
/// read, modify and write back a customer; its `id` must then be the path's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerUpdate {
    /// The customer's id, if the body carries it; never changed.
    pub id: Option<i64>,
    /// New display name.
    pub name: Option<String>,
    /// New contact address.
    pub email: Option<String>,
    /// New segment.
    pub segment: Option<Segment>,
    /// New monthly revenue, in cents.
    pub monthly_spend_cents: Option<i64>,
    /// New tenure, in months.
    pub tenure_months: Option<i64>,
    /// New ticket count.
    pub support_tickets: Option<i64>,
    /// New days since the last login.
    pub days_since_login: Option<i64>,
}

fn check_name(name: &str) -> Result<(), String> {
    let chars = name.trim().chars().count();
    if chars == 0 || chars > 200 {
        return Err("`name` must have 1 to 200 characters".into());
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), String> {
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if ok {
        Ok(())
    } else {
        Err("`email` must look like an address (`name@domain`, at most 254 characters)".into())
    }
}

fn check_count(field: &str, value: i64) -> Result<(), String> {
    if (0..=1_000_000_000_000).contains(&value) {
        Ok(())
    } else {
        Err(format!("`{field}` must be between 0 and 10^12"))
    }
}

/// Refuses control characters (NUL, newlines, escapes, C1 controls) in a
/// text field: they are never part of a name or an address, and they break
/// logs, CSV exports and terminals downstream.
fn check_no_controls(field: &str, value: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        Err(format!("`{field}` must not contain control characters"))
    } else {
        Ok(())
    }
}

impl NewCustomer {
    /// Checks that the text fields hold no control characters.
    pub fn check_characters(&self) -> Result<(), String> {
        check_no_controls("name", &self.name)?;
        check_no_controls("email", &self.email)
    }

    /// Checks the fields' ranges and formats.
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        check_email(&self.email)?;
        check_count("monthly_spend_cents", self.monthly_spend_cents)?;
        check_count("tenure_months", self.tenure_months)?;
        check_count("support_tickets", self.support_tickets)?;
        check_count("days_since_login", self.days_since_login)
    }
}

impl CustomerUpdate {
    /// Checks that the text fields given hold no control characters.
    pub fn check_characters(&self) -> Result<(), String> {
        if let Some(name) = &self.name {
            check_no_controls("name", name)?;
        }
        if let Some(email) = &self.email {
            check_no_controls("email", email)?;
        }
        Ok(())
    }

    /// Checks that something changes and that the given fields are valid.
    pub fn validate(&self) -> Result<(), String> {
        let changes = CustomerUpdate {
            id: None,
            ..self.clone()
        };
        if changes == CustomerUpdate::default() {
            return Err("the body must set at least one field".into());
        }
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        if let Some(email) = &self.email {
            check_email(email)?;
        }
        for (field, value) in [
            ("monthly_spend_cents", self.monthly_spend_cents),
            ("tenure_months", self.tenure_months),
            ("support_tickets", self.support_tickets),
            ("days_since_login", self.days_since_login),
        ] {
            if let Some(value) = value {
                check_count(field, value)?;
            }
        }
        Ok(())
    }
}

/// Risk level bands of [`ChurnRisk::score`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// Score below 0.33.
    Low,
    /// Score from 0.33 to 0.66.
    Medium,
    /// Score above 0.66.
    High,
}

/// The answer of [`Repo::churn_risk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnRisk {
    /// Whose risk this is.
    pub customer_id: i64,
    /// Probability-like score in `[0, 1]`.
    pub score: f64,
    /// Band of the score.
    pub level: RiskLevel,
    /// The model that computed it.
    pub model: String,
}

/// Why a repository call failed. Never cached.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// No customer has this id.
    #[error("customer {0} not found")]
    NotFound(i64),
    /// A unique constraint (the email) would be violated.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The invalidation could not be recorded in the outbox (the database
    /// failed; the change was not made).
    #[error("{0}")]
    Outbox(#[from] OutboxError),
}

fn map_write_error(e: sqlx::Error) -> RepoError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            RepoError::Conflict("a customer with this email already exists".into())
        }
        _ => RepoError::Db(e),
    }
}

const COLUMNS: &str = "id, name, email, segment, monthly_spend_cents, tenure_months, support_tickets, days_since_login";

fn customer_from_row<'r, R>(row: &'r R) -> Result<Customer, sqlx::Error>
where
    R: Row,
    &'static str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let segment: String = row.try_get("segment")?;
    let segment = segment
        .parse::<Segment>()
        .map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(Customer {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        segment,
        monthly_spend_cents: row.try_get("monthly_spend_cents")?,
        tenure_months: row.try_get("tenure_months")?,
        support_tickets: row.try_get("support_tickets")?,
        days_since_login: row.try_get("days_since_login")?,
    })
}

/// The repository: a database and the cache its annotations use.
#[derive(Debug, Clone)]
pub struct Repo {
    db: Db,
    cache: Cache,
    outbox: bool,
    outage: DbOutage,
}

impl Repo {
    /// A repository over `db` (a [`Db`], `SqlitePool` or `PgPool`), caching
    /// in `cache`, recording invalidations in the outbox.
    pub fn new(db: impl Into<Db>, cache: Cache) -> Self {
        Repo {
            db: db.into(),
            cache,
            outbox: true,
            outage: DbOutage::new(),
        }
    }

    /// The same repository with `outage` as its database fault switch.
    pub fn with_outage(self, outage: DbOutage) -> Self {
        Repo { outage, ..self }
    }

    /// The switch that makes the database fail (fault drills).
    pub fn outage(&self) -> &DbOutage {
        &self.outage
    }

    /// Whether writes record their invalidation in the outbox (default:
    /// yes). Without, an invalidation that cannot reach Redis lives only
    /// in the writer's memory.
    pub fn with_outbox(mut self, outbox: bool) -> Self {
        self.outbox = outbox;
        self
    }

    /// Whether writes record their invalidation in the outbox.
    pub fn outbox_enabled(&self) -> bool {
        self.outbox
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The cache the annotations use.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// One customer by id; [`RepoError::NotFound`] (not cached) when absent.
    #[cached(prefix = "customer", ttl = 3600, key = "{id}", fail_safe = 3600, cache = self.cache)]
    pub async fn get_customer(&self, id: i64) -> Result<Customer, RepoError> {
        self.outage.check()?;
        let sql = format!("SELECT {COLUMNS} FROM customers WHERE id = $1");
        let customer = with_pool!(&self.db, pool => {
            sqlx::query(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|row| customer_from_row(&row))
                .transpose()?
        });
        customer.ok_or(RepoError::NotFound(id))
    }

    /// The churn risk of a customer: a deliberately slow (~50 ms) scoring
    /// model over the customer's activity.
    #[cached(
        prefix = "churn",
        ttl = 1800,
        key = "{id}",
        refresh_ahead = 0.8,
        fail_safe = 86_400,
        cache = self.cache
    )]
    pub async fn churn_risk(&self, id: i64) -> Result<ChurnRisk, RepoError> {
        let customer = self.get_customer(id).await?;
        tokio::time::sleep(CHURN_COMPUTATION).await;
        Ok(score(&customer))
    }

    /// Customers of `segment` (every segment when `None`), by id, at most
    /// `limit` of them.
    #[cached(prefix = "query", ttl = 600, cache = self.cache)]
    pub async fn list_by_segment(
        &self,
        segment: Option<Segment>,
        limit: u32,
    ) -> Result<Vec<Customer>, RepoError> {
        self.outage.check()?;
        let limit = i64::from(limit.min(MAX_LIST_LIMIT));
        let customers = with_pool!(&self.db, pool => {
            let rows = match segment {
                Some(segment) => {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM customers WHERE segment = $1 ORDER BY id LIMIT $2"
                    );
                    sqlx::query(&sql)
                        .bind(segment.as_str())
                        .bind(limit)
                        .fetch_all(pool)
                        .await?
                }
                None => {
                    let sql = format!("SELECT {COLUMNS} FROM customers ORDER BY id LIMIT $1");
                    sqlx::query(&sql).bind(limit).fetch_all(pool).await?
                }
            };
            rows.iter()
                .map(customer_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(customers)
    }

    /// Creates a customer, in a transaction of its own (see
    /// [`Repo::create_customer_tx`]).
    pub async fn create_customer(&self, new: &NewCustomer) -> Result<Customer, RepoError> {
        let mut tx = self.db.begin(self.outbox).await?;
        self.create_customer_tx(&mut tx, new).await
    }

    /// Creates a customer through `tx` and commits it; every cached list
    /// may now be incomplete, so the `query` prefix is dropped. The
    /// invalidation is recorded in the outbox in `tx` (when `tx` records),
    /// and delivered by this instance after the commit.
    #[invalidates(Self::list_by_segment(..), outbox = tx, cache = self.cache)]
    pub async fn create_customer_tx(
        &self,
        tx: &mut Tx,
        new: &NewCustomer,
    ) -> Result<Customer, RepoError> {
        self.outage.check()?;
        let sql = format!(
            "INSERT INTO customers (name, email, segment, monthly_spend_cents, tenure_months, support_tickets, days_since_login) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        );
        let customer = with_tx!(tx, conn => {
            let row = sqlx::query(&sql)
                .bind(new.name.trim())
                .bind(&new.email)
                .bind(new.segment.as_str())
                .bind(new.monthly_spend_cents)
                .bind(new.tenure_months)
                .bind(new.support_tickets)
                .bind(new.days_since_login)
                .fetch_one(conn)
                .await
                .map_err(map_write_error)?;
            customer_from_row(&row)?
        });
        tx.commit().await.map_err(map_write_error)?;
        Ok(customer)
    }

    /// Changes the given fields of customer `id`, in a transaction of its
    /// own (see [`Repo::update_customer_tx`]).
    pub async fn update_customer(
        &self,
        id: i64,
        update: &CustomerUpdate,
    ) -> Result<Customer, RepoError> {
        let mut tx = self.db.begin(self.outbox).await?;
        self.update_customer_tx(&mut tx, id, update).await
    }

    /// Changes the given fields of customer `id` through `tx` and commits
    /// it; drops its profile, its churn risk and every cached list. The
    /// invalidation is recorded in the outbox in `tx` (when `tx` records),
    /// so it commits or rolls back with the change, and is delivered by
    /// this instance after the commit.
    #[invalidates(
        Self::get_customer(id),
        Self::churn_risk(id),
        Self::list_by_segment(..),
        outbox = tx,
        cache = self.cache
    )]
    pub async fn update_customer_tx(
        &self,
        tx: &mut Tx,
        id: i64,
        update: &CustomerUpdate,
    ) -> Result<Customer, RepoError> {
        self.outage.check()?;
        let sql = format!(
            "UPDATE customers SET \
               name = COALESCE($1, name), email = COALESCE($2, email), segment = COALESCE($3, segment), \
               monthly_spend_cents = COALESCE($4, monthly_spend_cents), tenure_months = COALESCE($5, tenure_months), \
               support_tickets = COALESCE($6, support_tickets), days_since_login = COALESCE($7, days_since_login) \
             WHERE id = $8 RETURNING {COLUMNS}"
        );
        let customer = with_tx!(tx, conn => {
            sqlx::query(&sql)
                .bind(update.name.as_deref().map(str::trim))
                .bind(update.email.as_deref())
                .bind(update.segment.map(Segment::as_str))
                .bind(update.monthly_spend_cents)
                .bind(update.tenure_months)
                .bind(update.support_tickets)
                .bind(update.days_since_login)
                .bind(id)
                .fetch_optional(conn)
                .await
                .map_err(map_write_error)?
                .map(|row| customer_from_row(&row))
                .transpose()?
        });
        let customer = customer.ok_or(RepoError::NotFound(id))?;
        tx.commit().await.map_err(map_write_error)?;
        Ok(customer)
    }
}

/// A logistic model over the customer's activity (the "slow" part is the
/// sleep in [`Repo::churn_risk`]).
fn score(c: &Customer) -> ChurnRisk {
    let inactivity = (c.days_since_login as f64 / 30.0).min(6.0);
    let tickets = (c.support_tickets as f64).min(20.0);
    let tenure = (c.tenure_months as f64 / 12.0).min(10.0);
    let spend = ((c.monthly_spend_cents as f64 / 100.0) + 1.0).ln();
    let z = -1.0 + 0.9 * inactivity + 0.25 * tickets - 0.35 * tenure - 0.15 * spend;
    let score = 1.0 / (1.0 + (-z).exp());
    let score = (score * 1000.0).round() / 1000.0;
    let level = if score < 0.33 {
        RiskLevel::Low
    } else if score <= 0.66 {
        RiskLevel::Medium
    } else {
        RiskLevel::High
    };
    ChurnRisk {
        customer_id: c.id,
        score,
        level,
        model: "logistic-v1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer() -> Customer {
        Customer {
            id: 1,
            name: "Ada".into(),
            email: "ada@example.com".into(),
            segment: Segment::Smb,
            monthly_spend_cents: 10_000,
            tenure_months: 24,
            support_tickets: 1,
            days_since_login: 3,
        }
    }

    #[test]
    fn keys_are_the_pinned_ones() {
        assert_eq!(Repo::get_customer_cache_key(&42), "customer:42");
        assert_eq!(Repo::churn_risk_cache_key(&42), "churn:42");
        let list = Repo::list_by_segment_cache_key(&Some(Segment::Smb), &10);
        assert!(list.starts_with("query:"), "{list}");
        assert_ne!(list, Repo::list_by_segment_cache_key(&None, &10));
    }

    #[test]
    fn segments_round_trip() {
        for seg in Segment::ALL {
            assert_eq!(seg.as_str().parse::<Segment>(), Ok(seg));
            assert_eq!(serde_json::to_value(seg).unwrap(), seg.as_str());
        }
        assert!("Enterprise".parse::<Segment>().is_err());
    }

    #[test]
    fn score_is_bounded_and_tracks_inactivity() {
        let active = score(&customer());
        let idle = score(&Customer {
            days_since_login: 170,
            support_tickets: 9,
            ..customer()
        });
        for risk in [&active, &idle] {
            assert!((0.0..=1.0).contains(&risk.score), "{risk:?}");
        }
        assert!(idle.score > active.score);
        assert_eq!(idle.level, RiskLevel::High);
        assert_eq!(active.level, RiskLevel::Low);
    }

    #[test]
    fn validation() {
        let ok = NewCustomer {
            name: "Ada".into(),
            email: "ada@example.com".into(),
            segment: Segment::Consumer,
            monthly_spend_cents: 0,
            tenure_months: 0,
            support_tickets: 0,
            days_since_login: 0,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            NewCustomer {
                name: "  ".into(),
                ..ok.clone()
            },
            NewCustomer {
                email: "no-at-sign".into(),
                ..ok.clone()
            },
            NewCustomer {
                email: "@x".into(),
                ..ok.clone()
            },
            NewCustomer {
                tenure_months: -1,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(CustomerUpdate::default().validate().is_err());
        let rename = CustomerUpdate {
            name: Some("B".into()),
            ..Default::default()
        };
        assert!(rename.validate().is_ok());
        let negative = CustomerUpdate {
            support_tickets: Some(-5),
            ..Default::default()
        };
        assert!(negative.validate().is_err());
    }
}
