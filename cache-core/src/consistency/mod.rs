//! The consistency layer: what makes "once an invalidation returns, no read
//! returns the old value, and one missing key runs its loader once" true.
//!
//! [`Consistency`] owns everything that promise rests on, each concern a
//! type of its own: prefix generations (held under Redis client tracking),
//! the near level, this process's single-flight table, and leases. It has
//! one read operation ([`read`](Consistency::read), in `read.rs`), one
//! invalidation operation ([`invalidate`](Consistency::invalidate), in
//! `invalidate.rs`) and one write operation ([`write`](Consistency::write)),
//! and the read-through path of `#[cached]` and `get_or_set` (`load.rs`)
//! is built on them. Every public read API and every kind of invalidation
//! of the cache goes through them, so a check added here applies to all.
//!
//! Invariants this layer owns:
//! - a value labeled with another generation than its prefix's current one
//!   is never returned (prefix invalidation);
//! - the near level and held generations are used only while Redis client
//!   tracking is established, and an install that an invalidation overtook
//!   is refused (tickets);
//! - an invalidation evicts this process's near entries and seals the key's
//!   flight before it returns, so this process never reads its own
//!   invalidation's old value;
//! - a load stores its value only under a lease no invalidation removed,
//!   and keeps that lease (renewed) for as long as it runs.
//!
//! Below it, the [`Store`] is reached only through its methods.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::backend::redis::tracking::{Listener, Tracker};
use crate::stats::StatsRegistry;
use crate::store::Store;

mod flight;
mod generations;
pub(crate) mod invalidate;
mod lease;
pub(crate) mod load;
pub(crate) mod near;
pub(crate) mod read;
mod refresh;
pub(crate) mod tags;

use flight::Flights;
use near::NearCache;
use tags::HeldTags;

/// The settings the consistency layer works with.
pub(crate) struct Settings {
    pub(crate) namespace: String,
    /// Whether values are labeled with their prefix's generation.
    pub(crate) generations: bool,
    /// Whether misses take leases.
    pub(crate) leases: bool,
    pub(crate) lease_ttl: Duration,
}

/// The consistency layer of one cache (see the module docs).
pub(crate) struct Consistency {
    store: Arc<Store>,
    stats: Arc<StatsRegistry>,
    settings: Settings,
    /// Holds generations and near entries under Redis client tracking.
    tracker: Option<Tracker>,
    /// The near level (Redis or a cluster, with a capacity configured).
    near: Option<Arc<NearCache>>,
    flights: Flights,
    /// Tag generations held under tracking.
    held_tags: Arc<HeldTags>,
    /// Keys a refresh-ahead of this process is reloading.
    refreshing: refresh::Refreshing,
    /// Source of lease markers and fresh generations.
    tokens: AtomicU64,
}

impl Consistency {
    pub(crate) fn new(
        store: Arc<Store>,
        stats: Arc<StatsRegistry>,
        settings: Settings,
        tracker: Option<Tracker>,
        near: Option<NearCache>,
        seed: u64,
    ) -> Self {
        let near = near.filter(|_| tracker.is_some()).map(Arc::new);
        let held_tags = Arc::new(HeldTags::default());
        if let Some(tracker) = &tracker {
            tracker.listen(Arc::new(Held {
                stats: stats.clone(),
                near: near.clone(),
                tags: held_tags.clone(),
                generation_head: format!("{}:%gen:", settings.namespace),
                tag_head: format!("{}:%tag:", settings.namespace),
            }));
            tracker.ensure_connecting();
        }
        Consistency {
            store,
            stats,
            settings,
            tracker,
            near,
            flights: Flights::default(),
            held_tags,
            refreshing: refresh::Refreshing::default(),
            tokens: AtomicU64::new(seed),
        }
    }

    /// The store below.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Now on the clock logical expiry is judged against.
    pub(crate) fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }

    /// Whether prefix generations are in use.
    pub(crate) fn generations_on(&self) -> bool {
        self.settings.generations
    }

    /// Whether client tracking is established (`None`: no tracking).
    pub(crate) fn tracking(&self) -> Option<bool> {
        self.tracker.as_ref().map(Tracker::live)
    }

    /// Figures of the near level, if there is one.
    pub(crate) fn near_stats(&self) -> Option<crate::NearStats> {
        self.near.as_ref().map(|near| near.stats())
    }

    /// The next token: lease markers and fresh generations never repeat
    /// within a process, and start at a random point in each.
    fn next_token(&self) -> u64 {
        self.tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts tracking if it is not established and the backend is trusted
    /// (no point while the breaker keeps calls away from Redis).
    fn reconnect_tracking(&self, tracker: &Tracker) {
        if self.store.trusted() {
            tracker.ensure_connecting();
        }
    }
}

/// What Redis client tracking tells: a generation key changed (the prefix's
/// held generation is dropped), another key changed (its near entry is
/// evicted), or anything may have (everything held is dropped).
struct Held {
    stats: Arc<StatsRegistry>,
    near: Option<Arc<NearCache>>,
    tags: Arc<HeldTags>,
    /// `{namespace}:%gen:`, to map a key Redis names back to its prefix.
    generation_head: String,
    /// `{namespace}:%tag:`, to map a key Redis names back to its tag.
    tag_head: String,
}

impl Listener for Held {
    fn changed(&self, key: &[u8]) {
        let name = std::str::from_utf8(key).ok();
        if let Some(prefix) = name.and_then(|k| k.strip_prefix(&self.generation_head)) {
            self.stats.prefix(prefix).generation.invalidate();
        } else if let Some(tag) = name.and_then(|k| k.strip_prefix(&self.tag_head)) {
            self.tags.invalidate(tag);
        } else if let Some(near) = &self.near {
            near.invalidate(key);
        }
    }

    fn everything_changed(&self) {
        for entry in self.stats.entries() {
            entry.generation.invalidate();
        }
        self.tags.clear();
        if let Some(near) = &self.near {
            near.flush();
        }
    }
}
