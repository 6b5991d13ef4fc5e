//! The [`Cache`] handle: the public API, keys and values (the codec).
//!
//! A `Cache` turns keys into storage keys, values into bytes and back, and
//! counts what happened; everything that makes reads consistent with
//! invalidations is the consistency layer's ([`Consistency`]), which every
//! method here goes through: reads through its one read operation,
//! invalidations through its one invalidation operation. How a cache is
//! made is in `builder.rs`; the direct API in `api.rs`; the typed
//! read-through shell of `#[cached]` and `get_or_set` in `read_through.rs`.

use std::sync::Arc;

use crate::backend::BackendKind;
use crate::config::CacheConfig;
use crate::consistency::Consistency;
use crate::error::CacheError;
use crate::stats::StatsRegistry;

mod api;
pub(crate) mod background;
pub(crate) mod builder;
pub(crate) mod call;
pub(crate) mod health;
pub(crate) mod install;
pub(crate) mod loader;
pub(crate) mod policy;
pub(crate) mod read_through;
pub(crate) mod shell;
pub(crate) mod typed;
mod values;

/// A handle to a cache: cheap to clone (one `Arc`), safe to share.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::CacheError> {
/// use std::time::Duration;
/// let cache = cache_core::Cache::memory();
/// cache.set("customer:42", &"Ada", Some(Duration::from_secs(60))).await?;
/// assert_eq!(cache.get::<String>("customer:42").await?, Some("Ada".to_owned()));
/// assert!(cache.delete("customer:42").await?);
/// assert_eq!(cache.get::<String>("customer:42").await?, None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    kind: BackendKind,
    stats: Arc<StatsRegistry>,
    layer: Consistency,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.kind.name())
            .field("target", &self.inner.config.target_description())
            .field("namespace", &self.inner.config.namespace)
            .field("enabled", &self.inner.config.enabled)
            .finish()
    }
}

impl Cache {
    fn from_layer(
        config: CacheConfig,
        kind: BackendKind,
        stats: Arc<StatsRegistry>,
        layer: Consistency,
    ) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                config,
                kind,
                stats,
                layer,
            }),
        }
    }

    /// Namespace of this cache's keys.
    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    /// The configuration in use.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// Which backend serves this cache.
    pub fn backend_kind(&self) -> BackendKind {
        self.inner.kind
    }

    /// The key as stored: `{namespace}:{key}`.
    ///
    /// ```
    /// let cache = cache_core::Cache::memory();
    /// assert_eq!(cache.storage_key("customer:42"), "cache:customer:42");
    /// ```
    pub fn storage_key(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.key_head_len() + key.len());
        self.push_key_head(&mut out);
        out.push_str(key);
        out
    }

    /// The length of `"{namespace}:"`.
    pub(crate) fn key_head_len(&self) -> usize {
        self.inner.config.namespace.len() + 1
    }

    /// Appends `"{namespace}:"`, the start of every storage key.
    pub(crate) fn push_key_head(&self, out: &mut String) {
        out.push_str(&self.inner.config.namespace);
        out.push(':');
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.inner.kind != BackendKind::Disabled
    }

    fn check_key(key: &str) -> Result<(), CacheError> {
        if key.is_empty() {
            return Err(CacheError::InvalidKey {
                key: key.to_owned(),
                reason: "keys must not be empty",
            });
        }
        if key.chars().any(|c| c.is_control()) {
            return Err(CacheError::InvalidKey {
                key: key.to_owned(),
                reason: "keys must not contain control characters",
            });
        }
        Ok(())
    }

    fn prefix_of(key: &str) -> &str {
        key.split(':').next().unwrap_or(key)
    }

    /// Creates the figures of `prefixes` now, at zero, instead of at their
    /// first use: every per-prefix `metrics` series
    /// ([`metrics_guide`](crate::metrics_guide)) exists from start-up,
    /// so `rate()` and absence alerts work before the first request, and
    /// [`stats`](Self::stats) lists the prefixes. Call it once after the
    /// metrics recorder is installed, with the prefixes of your
    /// `#[cached]` functions. A name is taken up to its first `:`
    /// (`"customer:"` is `customer`); empty names and repeats are ignored.
    /// It also registers `cache_failovers_total`, the one counter that is
    /// not per prefix.
    ///
    /// ```
    /// let cache = cache_core::Cache::memory();
    /// cache.register_prefixes(["customer", "churn", "query"]);
    /// assert_eq!(cache.stats().prefixes["churn"].hits, 0);
    /// ```
    pub fn register_prefixes<I, S>(&self, prefixes: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for prefix in prefixes {
            let prefix = prefix.as_ref().split(':').next().unwrap_or_default();
            if !prefix.is_empty() {
                let _ = self.inner.stats.prefix(prefix);
            }
        }
        // The one counter that is not per prefix.
        metrics::counter!("cache_failovers_total").increment(0);
    }
}
