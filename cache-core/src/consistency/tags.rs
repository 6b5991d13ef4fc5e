//! Tags: O(1) invalidation of every value loaded under a tag, however many
//! keys carry it.
//!
//! Each tag has a generation, a random 64-bit value stored at
//! `{namespace}:%tag:{tag}`, exactly like a prefix generation. A tagged
//! value carries the generation of each of its tags as it was before its
//! load; a value carrying another generation than a tag's current one is
//! gone (a miss, overwritten by the next load). Invalidating a tag writes a
//! new generation: one write, whatever the number of values.
//!
//! On Redis each process holds the tag generations it has read while
//! client tracking is established (on the tracking connection, or anywhere
//! in broadcast mode, which covers the tag keys), and Redis tells it when one changes, so
//! a tagged hit costs no extra round trip once its tags are held; the
//! instance that invalidates drops what it holds before the invalidation
//! returns, and other instances when Redis' message arrives (the same
//! window as prefix generations). Without tracking (memory, custom
//! backends, tracking lost) a tagged read also reads its tags'
//! generations. Untagged values never look at any of this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use super::Consistency;
use super::generations::GENERATION_TTL;
use crate::backend::RawBytes;
use crate::codec;
use crate::held::parse_generation;
use crate::store::{Deadline, On};

/// Most tag generations a process holds; past it, all are dropped (a
/// dropped generation is read again, never wrong).
const MOST_HELD_TAGS: usize = 65_536;

/// The prefix whose figures count tag work (reads of tag generations,
/// tag invalidations): tags are not prefixes.
pub(crate) const TAGS_ENTRY: &str = "_tags";

/// The tag generations this process holds under Redis client tracking.
///
/// Invariant, as for a prefix's held generation: a generation is held only
/// while Redis tracks it for this process, and an install that an
/// invalidation (or a loss of tracking) overtook is refused: the read takes
/// a ticket (`changes`) before it is sent, every invalidation bumps
/// `changes` under `lock`, and the install compares under `lock`.
#[derive(Default)]
pub(crate) struct HeldTags {
    held: RwLock<HashMap<Box<str>, u64>>,
    changes: AtomicU64,
    lock: Mutex<()>,
}

impl HeldTags {
    fn get(&self, tag: &str) -> Option<u64> {
        self.held
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tag)
            .copied()
    }

    fn ticket(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn install(
        &self,
        ticket: u64,
        tag: &str,
        generation: u64,
        still_tracked: impl FnOnce() -> bool,
    ) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.changes.load(Ordering::Acquire) == ticket && still_tracked() {
            let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
            if held.len() >= MOST_HELD_TAGS {
                held.clear();
            }
            held.insert(tag.into(), generation);
        }
    }

    /// Redis says `tag`'s generation changed (or this process changed it).
    pub(crate) fn invalidate(&self, tag: &str) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.held
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tag);
    }

    /// Tracking was lost: nothing held can be trusted.
    pub(crate) fn clear(&self) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.held.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Consistency {
    /// Where `tag`'s generation is stored.
    pub(crate) fn tag_key(&self, tag: &str) -> String {
        format!("{}:%tag:{tag}", self.settings.namespace)
    }

    /// Whether the tags `bytes` carries are all current, when that can be
    /// told without asking the store (every one held under tracking):
    /// `None` when some must be read.
    pub(super) fn tags_current_now(&self, bytes: &RawBytes) -> Option<bool> {
        let tracker = self.tracker.as_ref()?;
        if !tracker.live() {
            return None;
        }
        let header = codec::extended(bytes)?;
        for (tag, generation) in header.tags(bytes) {
            if self.held_tags.get(tag)? != generation {
                return Some(false);
            }
        }
        Some(true)
    }

    /// Whether the tags `bytes` carries are all current, reading the
    /// generations this process does not hold.
    pub(super) async fn tags_current(&self, bytes: &RawBytes, deadline: &Deadline) -> bool {
        let Some(header) = codec::extended(bytes) else {
            return false;
        };
        for (tag, generation) in header.tags(bytes) {
            if self.tag_generation(tag, false, deadline).await != Some(generation) {
                return false;
            }
        }
        true
    }

    /// The current generation of each tag, created where missing: what a
    /// value loaded now is labeled with (read before the load, so an
    /// invalidation of a tag during the load leaves the value invisible).
    pub(crate) async fn tag_generations(
        &self,
        tags: &[String],
        deadline: &Deadline,
    ) -> Vec<(String, u64)> {
        let mut out = Vec::with_capacity(tags.len());
        for tag in tags {
            if let Some(generation) = self.tag_generation(tag, true, deadline).await {
                out.push((tag.clone(), generation));
            }
        }
        out
    }

    /// `tag`'s generation: held, or read (and held, under tracking);
    /// `create`: a missing one is created (for a load), else `None`.
    async fn tag_generation(&self, tag: &str, create: bool, deadline: &Deadline) -> Option<u64> {
        let entry = self.stats.prefix(TAGS_ENTRY);
        let tkey = self.tag_key(tag);
        if let Some(tracker) = self.tracker.as_ref().filter(|t| t.live()) {
            if let Some(g) = self.held_tags.get(tag) {
                return Some(g);
            }
            let epoch = tracker.epoch();
            let ticket = self.held_tags.ticket();
            let read = if tracker.reads_on_tracking_connection() {
                self.read_tracked(&entry, &tkey, deadline).await
            } else {
                // Broadcast mode: Redis reports every change of a tag key,
                // wherever it was read; the fallback must not answer.
                self.store
                    .call(&entry, deadline, On::Key(&tkey), |b| {
                        let tkey = tkey.as_str();
                        async move { b.get(tkey).await }
                    })
                    .await
                    .ok()
                    .map(|stored| stored.as_deref().and_then(parse_generation))
            };
            if let Some(read) = read {
                let generation = match read {
                    Some(g) => g,
                    None if create => self.init_generation(&entry, &tkey, deadline).await,
                    None => return None,
                };
                self.held_tags
                    .install(ticket, tag, generation, || tracker.is_current(epoch));
                return Some(generation);
            }
        } else if let Some(tracker) = &self.tracker {
            self.reconnect_tracking(tracker);
        }
        match self.read_generation(&entry, &tkey, deadline).await {
            Some(g) => Some(g),
            None if create => Some(self.init_generation(&entry, &tkey, deadline).await),
            None => None,
        }
    }

    /// Replaces `tag`'s generation: every value loaded under the old one is
    /// gone at once, in this process before this returns. Returns whether
    /// the backend confirmed it (if not, it is replayed before the backend
    /// is trusted again).
    pub(super) async fn bump_tag(&self, tag: &str, deadline: &Deadline) -> bool {
        let entry = self.stats.prefix(TAGS_ENTRY);
        let tkey = self.tag_key(tag);
        let bytes = self.fresh_generation().to_string().into_bytes();
        let delivered = self
            .store
            .write_invalidation(&entry, &tkey, bytes, GENERATION_TTL, deadline)
            .await;
        self.held_tags.invalidate(tag);
        // A load in flight may carry the old generation: callers joining it
        // from now on read again instead of taking its value.
        self.flights
            .seal_all(&format!("{}:", self.settings.namespace));
        delivered
    }
}
