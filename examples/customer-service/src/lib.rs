//! The flagship example of `cache-core`: an axum customer service over
//! SQLite (or PostgreSQL) whose repository is cached with `#[cached]` and
//! `#[invalidates]`, its invalidations recorded in a transactional outbox.
//!
//! Run it with `cargo run -p customer-service` (in-memory cache) or
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run -p customer-service` (Redis).
//!
//! | method and path | behaviour |
//! |---|---|
//! | `GET /api/customers/{id}` | a customer (`customer:{id}`, 1 h); 400 for an id that is not a canonical non-negative decimal (`42`, not `+42` or `042`), 404 for an unknown one |
//! | `GET /api/customers/{id}/churn-risk` | a slow (~50 ms) score (`churn:{id}`, 30 min) |
//! | `GET /api/customers?segment=S&limit=N` | a JSON array of customers (`query:<hash>`, 10 min) |
//! | `POST /api/customers` | create (201); drops prefix `query` |
//! | `PUT /api/customers/{id}` | update (some fields, or the whole representation `GET` returns; its `id` must match); drops `customer:{id}`, `churn:{id}`, prefix `query` |
//! | `GET /admin/cache/stats` | hits, misses, hit rate, keys, memory, per prefix |
//! | `POST /admin/cache/invalidate` | `{"pattern": "customer:*"}` with `Authorization: Bearer $ADMIN_TOKEN` |
//! | `GET /health` | always 200: `status` and the `cache` health object |
//! | `GET /metrics` | Prometheus text: `cache_hits_total{prefix=..}`, ..., and `http_requests_total` / `http_request_duration_seconds` by method, route and status |
//!
//! Every error response is JSON: `{"error": "..."}`, including the 400, 414
//! and 431 answers to requests that cannot be parsed. [`serve`] runs the
//! router with header, body and idle timeouts and caps on connections and
//! header size ([`ServerConfig`]).
//!
//! Tests build the router with [`app`] over their own database and cache
//! ([`AppState::new`]); the repository uses the cache of its state
//! (`cache = self.cache`), not the process-wide one, so tests don't interfere.
//!
//! Writes record their invalidations in the cache's outbox table in the
//! same transaction as the change; every instance runs a relay
//! ([`AppState::spawn_outbox_relay`]) that delivers what a writer could
//! not (cut off from Redis, or restarted before it reconnected).

pub mod db;
mod http;
pub mod outage;
pub mod repo;
pub mod server;

use std::sync::OnceLock;
use std::time::Duration;

use cache_core::Cache;
use cache_core::outbox::{Outbox, RelayHandle};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use db::{Db, Tx};
pub use http::BODY_LIMIT;
pub use outage::DbOutage;
pub use repo::Repo;
pub use server::{ServerConfig, serve};

/// The cache key namespace when `CACHE_NAMESPACE` is unset: the service's
/// own name, so services sharing a Redis keep apart by default.
pub const DEFAULT_NAMESPACE: &str = "customer-service";

/// The prefixes of the repository's `#[cached]` functions, registered at
/// start-up so that their metrics exist before the first request.
pub const CACHE_PREFIXES: [&str; 3] = ["customer", "churn", "query"];

/// How often the outbox relay looks for undelivered invalidations when
/// `CACHE_OUTBOX_RELAY_MS` is unset.
pub const DEFAULT_RELAY_INTERVAL: Duration = Duration::from_millis(200);

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    repo: Repo,
    /// SHA-256 of the admin token: the secret itself is not kept, and a
    /// comparison hashes only the presented token.
    admin_token: Option<http::TokenDigest>,
    metrics: PrometheusHandle,
}

impl AppState {
    /// State over `db` (a [`Db`], `SqlitePool` or `PgPool`), caching in
    /// `cache`, with the outbox on, the admin endpoints' token unset (so
    /// `POST /admin/cache/invalidate` is refused) and the process-wide
    /// Prometheus recorder ([`metrics_handle`]); registers
    /// [`CACHE_PREFIXES`] with the cache.
    pub fn new(db: impl Into<Db>, cache: Cache) -> Self {
        let metrics = metrics_handle();
        // Every per-prefix series exists from start-up, at 0.
        cache.register_prefixes(CACHE_PREFIXES);
        AppState {
            repo: Repo::new(db, cache),
            admin_token: None,
            metrics,
        }
    }

    /// Sets the bearer token of the admin endpoints; `None` or an empty
    /// token disables them.
    pub fn with_admin_token(mut self, token: Option<String>) -> Self {
        self.admin_token = token
            .filter(|t| !t.is_empty())
            .map(|t| http::token_digest(t.as_bytes()));
        self
    }

    /// Turns the outbox on (the default) or off: off, writes record
    /// nothing and [`spawn_outbox_relay`](Self::spawn_outbox_relay) starts
    /// no relay (`CACHE_OUTBOX=off`, for comparisons).
    pub fn with_outbox(mut self, on: bool) -> Self {
        self.repo = self.repo.with_outbox(on);
        self
    }

    /// The cache's outbox on this state's database, when it is on.
    pub fn outbox(&self) -> Option<Outbox> {
        self.repo
            .outbox_enabled()
            .then(|| self.repo.db().outbox(self.repo.cache().clone()))
    }

    /// Starts this instance's outbox relay on the current tokio runtime:
    /// every `every` it delivers the committed invalidations of its
    /// namespace that no instance delivered yet (its own, and those of
    /// instances cut off from Redis or gone). `None` when the outbox is
    /// off. The relay stops when the handle is dropped.
    pub fn spawn_outbox_relay(&self, every: Duration) -> Option<RelayHandle> {
        self.outbox().map(|outbox| outbox.spawn_relay(every))
    }

    /// The same state with `outage` as the database's fault switch
    /// ([`DbOutage::from_env`] in the binary).
    pub fn with_db_outage(mut self, outage: DbOutage) -> Self {
        self.repo = self.repo.with_outage(outage);
        self
    }

    /// The repository.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        self.repo.cache()
    }
}

/// The router with every endpoint, error mapping and the body size limit.
pub async fn app(state: AppState) -> axum::Router {
    http::router(state)
}

/// Buckets (seconds) of `http_request_duration_seconds`: from a cache hit
/// (~1 ms) to a slow miss.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

fn prometheus_builder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new();
    match builder.set_buckets_for_metric(
        Matcher::Full("http_request_duration_seconds".into()),
        &LATENCY_BUCKETS,
    ) {
        Ok(builder) => builder,
        // Only an empty bucket list fails; keep the summary then.
        Err(_) => PrometheusBuilder::new(),
    }
}

/// The process-wide Prometheus recorder, installed on first call. Call it
/// before any cache is used so the cache's counters register with it.
/// If another recorder was installed first, the handle renders nothing.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match prometheus_builder().install_recorder() {
            Ok(handle) => handle,
            Err(e) => {
                tracing::warn!(error = %e, "could not install the Prometheus recorder; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        })
        .clone()
}
