//! Run with: cargo run -p customer-service
//!
//! Serves the customer API on `127.0.0.1:$PORT` (default 8080).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` | `8080` | port on 127.0.0.1 |
//! | `DATABASE_URL` | `sqlite://customer-service.db?mode=rwc` | SQLite database (`sqlite::memory:` for a throw-away one); seeded with 1,000 demo customers when empty |
//! | `REDIS_URL` | unset: in-memory cache | Redis to cache in (`redis://[user:password@]host:port[/db]`) |
//! | `ADMIN_TOKEN` | unset: admin invalidation refused | bearer token of `POST /admin/cache/invalidate` |
//! | `CACHE_NAMESPACE`, `CACHE_DEFAULT_TTL`, `CACHE_TIMEOUT_MS`, ... | see `cache_core::CacheConfig` | cache settings |
//! | `RUST_LOG` | `info` | log filter |

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cache_core::Cache;
use customer_service::{AppState, app, db, metrics_handle};
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
    // Before any cache exists, so the cache's counters register with it.
    let metrics = metrics_handle();

    let cache = Cache::from_env()
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
    let pool = db::connect(&database_url).await?;
    tracing::info!(database = %database_url, "database ready");

    let admin_token = env_var("ADMIN_TOKEN")?;
    if admin_token.as_deref().is_none_or(str::is_empty) {
        tracing::warn!("ADMIN_TOKEN is unset: POST /admin/cache/invalidate is refused");
    }
    let state = AppState::new(pool, cache).with_admin_token(admin_token);
    let router = app(state).await;

    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    tracing::info!("listening on http://{addr} (try: curl http://{addr}/api/customers/42)");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed")?;
    Ok(())
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
