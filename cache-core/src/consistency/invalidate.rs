//! The one invalidation operation, and the writes that change a key.
//!
//! Every way of removing data goes through [`Consistency::invalidate`]:
//! `delete`, `delete_many`, `delete_pattern`, `invalidate_prefix`,
//! `invalidate_tag`, `clear` and `#[invalidates]` in all its forms. It evicts this process's near
//! entries and seals the flights of what it removes before it returns, so
//! nothing this process reads afterwards can be the old value, and it hands
//! the store what must reach the backend (the store remembers and replays
//! what does not).

use std::time::Duration;

use super::Consistency;
use crate::keys::glob_literal;
use crate::stats::{Event, PrefixEntry};
use crate::store::Deadline;

/// What an invalidation did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Outcome {
    /// Keys deleted (a prefix invalidated by a generation change deletes none).
    pub(crate) deleted: u64,
    /// Whether the backend confirmed every part of it. When it did not,
    /// the store remembers the missing parts and replays them before it
    /// trusts the backend again; a durable caller (an outbox) keeps its
    /// record until a later delivery is confirmed.
    pub(crate) delivered: bool,
}

/// Everything one call removes.
#[derive(Default)]
pub(crate) struct Invalidation<'a> {
    /// Storage keys to delete.
    pub(crate) keys: &'a [String],
    /// Prefixes to invalidate whole.
    pub(crate) prefixes: &'a [&'a str],
    /// Glob patterns over storage keys to delete.
    pub(crate) patterns: &'a [String],
    /// Tags whose values are all invalidated (their generations replaced).
    pub(crate) tags: &'a [String],
    /// Every key of the namespace (and nothing else).
    pub(crate) everything: bool,
}

impl Consistency {
    /// Removes what `what` names.
    pub(crate) async fn invalidate(&self, what: Invalidation<'_>) -> Outcome {
        let deadline = self.store.deadline();
        let mut deleted = 0;
        let mut delivered = true;
        let mut add = |(n, confirmed): (u64, bool)| {
            deleted += n;
            delivered &= confirmed;
        };
        for key in what.keys {
            let entry = self.stats.prefix(prefix_of_storage_key(key));
            self.stats.record(&entry, Event::Invalidation);
        }
        if let Some(first) = what.keys.first() {
            let entry = self.stats.prefix(prefix_of_storage_key(first));
            add(boxed(self.delete_keys(&entry, what.keys, &deadline)).await);
        }
        for prefix in what.prefixes {
            let entry = self.stats.prefix(prefix);
            self.stats.record(&entry, Event::Invalidation);
            if self.generations_on() {
                add((
                    0,
                    boxed(self.bump_generation(&entry, prefix, &deadline)).await,
                ));
            } else {
                let pattern = format!(
                    "{}:{}:*",
                    glob_literal(&self.settings.namespace),
                    glob_literal(prefix)
                );
                add(boxed(self.delete_pattern(&entry, &pattern)).await);
            }
        }
        if !what.tags.is_empty() {
            let entry = self.stats.prefix(super::tags::TAGS_ENTRY);
            for tag in what.tags {
                self.stats.record(&entry, Event::Invalidation);
                add((0, boxed(self.bump_tag(tag, &deadline)).await));
            }
        }
        for pattern in what.patterns {
            let entry = self.stats.prefix(prefix_of_storage_key(pattern));
            self.stats.record(&entry, Event::Invalidation);
            add(boxed(self.delete_pattern(&entry, pattern)).await);
        }
        if what.everything {
            let entry = self.stats.prefix("_all");
            let all = format!("{}:*", glob_literal(&self.settings.namespace));
            add(boxed(self.delete_pattern(&entry, &all)).await);
            boxed(self.store.namespace_cleared()).await;
        }
        Outcome { deleted, delivered }
    }

    async fn delete_keys(
        &self,
        entry: &PrefixEntry,
        skeys: &[String],
        deadline: &Deadline,
    ) -> (u64, bool) {
        // Evicted again after the delete: a read between the two could
        // have installed the old value.
        self.near_evict(skeys);
        let _evict_after = NearEvictOnDrop(self, skeys);
        for skey in skeys {
            self.flights.seal(skey);
        }
        self.store.delete(entry, skeys, deadline).await
    }

    async fn delete_pattern(&self, entry: &PrefixEntry, pattern: &str) -> (u64, bool) {
        self.near_flush();
        let _flush_after = NearFlushOnDrop(self);
        self.flights.seal_all("");
        self.store.delete_pattern(entry, pattern).await
    }

    /// The one write: stores `bytes` at `skey` for `ttl` (in the fallback
    /// while the backend is away), and evicts this process's near entry.
    pub(crate) async fn write(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        bytes: Vec<u8>,
        ttl: Duration,
        deadline: &Deadline,
    ) {
        self.store.set(entry, skey, bytes, ttl, deadline).await;
        self.near_evict_one(skey);
        self.stats.record(entry, Event::Set);
    }

    /// [`write`](Self::write) of several keys at once (a pipeline on Redis).
    pub(crate) async fn write_many(
        &self,
        entry: &PrefixEntry,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
        deadline: &Deadline,
    ) {
        let written: Vec<String> = if self.near.is_some() {
            entries.iter().map(|(k, _)| k.clone()).collect()
        } else {
            Vec::new()
        };
        self.store.set_many(entry, entries, ttl, deadline).await;
        self.near_evict(&written);
    }

    /// Adds `delta` to the counter at `skey`.
    pub(crate) async fn increment(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        delta: i64,
    ) -> Result<i64, crate::BackendError> {
        let deadline = self.store.deadline();
        let result = self
            .store
            .with_fallback(
                entry,
                &deadline,
                crate::store::On::Key(skey),
                |b| async move { b.incr_by(skey, delta).await },
                |f| async move { crate::backend::Backend::incr_by(&f, skey, delta).await },
            )
            .await;
        self.near_evict_one(skey);
        result
    }

    /// This process changed `skeys`: its near level must not serve them
    /// again (Redis' own message about the change arrives later).
    pub(super) fn near_evict(&self, skeys: &[String]) {
        if let Some(near) = &self.near {
            for skey in skeys {
                near.invalidate(skey.as_bytes());
            }
        }
    }

    /// [`near_evict`](Self::near_evict) for one key.
    pub(super) fn near_evict_one(&self, skey: &str) {
        if let Some(near) = &self.near {
            near.invalidate(skey.as_bytes());
        }
    }

    /// This process changed keys it cannot list (a pattern delete).
    fn near_flush(&self) {
        if let Some(near) = &self.near {
            near.flush();
        }
    }
}

/// The prefix of a storage key or pattern, `{namespace}:{prefix}:...`.
fn prefix_of_storage_key(skey: &str) -> &str {
    skey.split(':').nth(1).unwrap_or("")
}

/// Evicts keys from the near level when the delete that changed them ends
/// (also if its future is dropped).
struct NearEvictOnDrop<'a>(&'a Consistency, &'a [String]);

impl Drop for NearEvictOnDrop<'_> {
    fn drop(&mut self) {
        self.0.near_evict(self.1);
    }
}

/// Drops the near level when the pattern delete ends.
struct NearFlushOnDrop<'a>(&'a Consistency);

impl Drop for NearFlushOnDrop<'_> {
    fn drop(&mut self) {
        self.0.near_flush();
    }
}

/// `step`, boxed. The invalidation's steps are boxed so that its future
/// stays shallow: its layout is computed again in the crate of every
/// `#[cached]` function (through the generic code that awaits it), where
/// nested inline the steps would go deeper than a caller's
/// `recursion_limit` may allow.
fn boxed<'a, T>(
    step: impl std::future::Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    Box::pin(step)
}
