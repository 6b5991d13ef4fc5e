//! Run with: cargo run -p customer-service
//!
//! Serves the customer API on `127.0.0.1:$PORT` (default 8080).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` | `8080` | port on 127.0.0.1 |
//! | `DATABASE_URL` | `sqlite://customer-service.db?mode=rwc` | SQLite database (`sqlite::memory:` for a throw-away one) or PostgreSQL (`postgres://user:password@host/db`); seeded with 1,000 demo customers when empty |
//! | `REDIS_URL` | unset: in-memory cache | Redis to cache in (`redis://[user:password@]host:port[/db]`) |
//! | `ADMIN_TOKEN` | unset: admin invalidation refused | bearer token of `POST /admin/cache/invalidate` |
//! | `CACHE_NAMESPACE` | `customer-service` | first segment of every cache key |
//! | `CACHE_OUTBOX` | `on` | `off`: writes do not record their invalidations in the outbox table, and no relay runs |
//! | `CACHE_OUTBOX_RELAY_MS` | `200` | how often this instance's relay delivers undelivered invalidations (10 to 60000) |
//! | `CACHE_DEFAULT_TTL`, `CACHE_TIMEOUT_MS`, ... | see `cache_core::CacheConfig` | cache settings |
//! | `HTTP_HEADER_TIMEOUT_MS`, `HTTP_BODY_TIMEOUT_MS`, `HTTP_IDLE_TIMEOUT_MS`, `HTTP_WRITE_TIMEOUT_MS`, `HTTP_MAX_CONNECTIONS`, `HTTP_MAX_HEADER_BYTES` | see [`customer_service::server`] | connection limits |
//! | `CHAOS_DB_DOWN_FILE` | unset | fault drills: every database call fails while this file exists (see [`customer_service::outage`]) |
//! | `RUST_LOG` | `info` | log filter |

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cache_core::{Cache, CacheConfig};
use customer_service::server::{self, ServerConfig};
use customer_service::{
    AppState, DEFAULT_NAMESPACE, DEFAULT_RELAY_INTERVAL, app, db, metrics_handle,
};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("customer-service: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_var(name: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("{name} is not valid UTF-8"),
    }
}

async fn run() -> anyhow::Result<()> {
    let port: u16 = match env_var("PORT")? {
        None => 8080,
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("PORT must be a port number (0-65535), got `{raw}`"))?,
    };
    let server_config = ServerConfig::from_env()?;
    let outbox = outbox_setting(env_var("CACHE_OUTBOX")?.as_deref())?;
    let relay_every = relay_interval(env_var("CACHE_OUTBOX_RELAY_MS")?.as_deref())?;
    // Bind before anything else starts, so a taken port fails fast and
    // says so before the log claims the cache or database is ready.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| listen_error(port, &e))?;

    // Before any cache exists, so the cache's counters register with it.
    let metrics = metrics_handle();

    let cache = Cache::builder()
        .config(cache_config()?)
        .build()
        .await
        .context("invalid cache configuration")?;
    cache.install();
    let stats = cache.stats();
    match stats.backend {
        "memory" => tracing::info!(
            namespace = %stats.namespace,
            "cache backend: in-process memory (set REDIS_URL to cache in Redis)"
        ),
        backend => tracing::info!(
            backend,
            target = %stats.target,
            namespace = %stats.namespace,
            "cache backend: {backend} at {}",
            stats.target
        ),
    }

    let database_url = env_var("DATABASE_URL")?.unwrap_or_else(|| db::DEFAULT_DATABASE_URL.into());
    let database = db::connect(&database_url).await?;
    tracing::info!(
        database = %db::redact_url(&database_url),
        kind = database.kind(),
        "database ready"
    );

    let admin_token = env_var("ADMIN_TOKEN")?;
    if admin_token.as_deref().is_none_or(str::is_empty) {
        tracing::warn!("ADMIN_TOKEN is unset: POST /admin/cache/invalidate is refused");
    }
    let state = AppState::new(database, cache)
        .with_admin_token(admin_token)
        .with_outbox(outbox)
        .with_db_outage(customer_service::DbOutage::from_env());
    // Every instance relays: one cut off from Redis (or restarted) leaves
    // its invalidations to the others.
    let _relay = state.spawn_outbox_relay(relay_every);
    if outbox {
        tracing::info!(
            relay_ms = relay_every.as_millis() as u64,
            "cache outbox on: writes record their invalidations in their transaction"
        );
    } else {
        tracing::warn!(
            "CACHE_OUTBOX=off: an invalidation that cannot reach Redis lives only in this process's memory"
        );
    }
    let router = app(state).await;

    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });

    let addr = listener.local_addr()?;
    tracing::info!(
        header_timeout_ms = server_config.header_timeout.as_millis() as u64,
        body_timeout_ms = server_config.body_timeout.as_millis() as u64,
        idle_timeout_ms = server_config.idle_timeout.as_millis() as u64,
        write_timeout_ms = server_config.write_timeout.as_millis() as u64,
        max_connections = server_config.max_connections,
        max_header_bytes = server_config.max_header_bytes,
        "listening on http://{addr} (try: curl http://{addr}/api/customers/42)"
    );
    server::serve(listener, router, server_config, shutdown_signal()).await;
    Ok(())
}

/// `CACHE_OUTBOX`: on unless `off` (or `false`, `0`, `no`).
fn outbox_setting(raw: Option<&str>) -> anyhow::Result<bool> {
    match raw.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "on" | "true" | "1" | "yes") => Ok(true),
        Some("off" | "false" | "0" | "no") => Ok(false),
        Some(_) => anyhow::bail!(
            "CACHE_OUTBOX must be `on` or `off`, got `{}`",
            raw.unwrap_or_default()
        ),
    }
}

/// `CACHE_OUTBOX_RELAY_MS`: 10 to 60000 ms, 200 when unset.
fn relay_interval(raw: Option<&str>) -> anyhow::Result<Duration> {
    match raw.map(str::trim) {
        None | Some("") => Ok(DEFAULT_RELAY_INTERVAL),
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if (10..=60_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => anyhow::bail!(
                "CACHE_OUTBOX_RELAY_MS must be a number of milliseconds from 10 to 60000, got `{v}`"
            ),
        },
    }
}

/// The cache configuration from the environment, with this service's own
/// name as the key namespace when `CACHE_NAMESPACE` is unset or empty, so
/// two services on one Redis don't share keys by accident.
fn cache_config() -> anyhow::Result<CacheConfig> {
    CacheConfig::from_lookup(|name| {
        let value = std::env::var(name).ok();
        if name == "CACHE_NAMESPACE" && value.as_deref().is_none_or(|v| v.trim().is_empty()) {
            return Some(DEFAULT_NAMESPACE.to_owned());
        }
        value
    })
    .context("invalid cache configuration")
}

/// Why the listening socket could not be opened, with what to change.
fn listen_error(port: u16, e: &std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "another process holds it; set PORT to a free port (for example PORT={})",
            port.wrapping_add(1).max(1024)
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("port {port} needs privileges; set PORT to a port above 1023")
        }
        _ => "set PORT to choose another port".to_owned(),
    };
    anyhow::anyhow!("cannot listen on 127.0.0.1:{port}: {e}; {hint}")
}

/// Resolves on Ctrl-C, or on SIGTERM where there is one.
async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
