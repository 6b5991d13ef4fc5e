//! Prefix generations: O(1) prefix invalidation.
//!
//! Each prefix has a generation, a random 64-bit value stored at
//! `{namespace}:%gen:{prefix}`. Values are labeled with the generation read
//! before their load, and a value labeled with another generation is a miss.
//! `invalidate_prefix` replaces the generation: one write, whatever the
//! number of keys and whatever else the database holds.
//!
//! On a single Redis server each process holds the generations it has read
//! and Redis tells it when one changes (server-assisted client tracking,
//! [`Tracker`]), so a hit stays one `GET`:
//! - the instance that invalidates installs the new generation before
//!   `invalidate_prefix` returns: its next read sees it;
//! - other instances drop theirs when Redis' invalidation message arrives
//!   (a window of about a tenth of a millisecond on loopback);
//! - while tracking is not established (connecting, lost, Redis away), no
//!   generation is held and every read fetches the value and the generation
//!   together in one `MGET`.
//!
//! Without tracking (Redis Cluster, custom backends, memory) reads always use
//! the `MGET`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};

use crate::backend::Backend;
use crate::cache::{Cache, Inner, RawBytes};
use crate::clock;
use crate::error::ErrorKind;
use crate::resilience::Missed;
use crate::stats::{CircuitState, Event, PrefixEntry};

/// Lifetime of a prefix generation key; refreshed by every invalidation. If
/// it lapses, a new random generation hides older values (misses, never stale).
pub(crate) const GENERATION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Least time between two attempts to establish tracking.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

fn parse_generation(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A prefix's generation as this process holds it.
///
/// Invariant: `value` is non-zero only while Redis tracks it for this
/// process. Installing a generation read from Redis is refused if an
/// invalidation of it (or a loss of tracking) was processed after the read
/// began: the read takes a ticket (`changes`, and the tracker's epoch) before
/// it is sent, and the install compares the ticket under `lock`, which the
/// invalidation also takes. Without the ticket, a reply installed after the
/// invalidation that overtook it would be held forever (Redis reports a
/// tracked key's change once).
#[derive(Default)]
pub(crate) struct HeldGeneration {
    /// The generation, or 0 when none is held.
    value: AtomicU64,
    /// Bumped by every invalidation of this prefix's generation.
    changes: AtomicU64,
    lock: Mutex<()>,
}

impl HeldGeneration {
    fn held(&self) -> Option<u64> {
        match self.value.load(Ordering::Acquire) {
            0 => None,
            g => Some(g),
        }
    }

    fn ticket(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Installs `generation` if nothing changed since `ticket` was taken.
    fn install(&self, ticket: u64, generation: u64, tracker: &Tracker, epoch: u64) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.changes.load(Ordering::Acquire) == ticket && tracker.is_current(epoch) {
            self.value.store(generation, Ordering::Release);
        }
    }

    /// Drops the held generation (Redis says it changed, or tracking is lost).
    fn invalidate(&self) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.value.store(0, Ordering::Release);
    }
}

/// The tracking connection of a single Redis server: a RESP3 connection
/// with `CLIENT TRACKING ON` on which this process reads generation keys, so
/// that Redis pushes an invalidation when any client changes one.
pub(crate) struct Tracker {
    client: redis::Client,
    timeout: Duration,
    /// The connection, while tracking is established on it.
    connection: ArcSwapOption<MultiplexedConnection>,
    /// Bumped whenever tracking is lost: installs begun before are refused.
    epoch: AtomicU64,
    /// A connection attempt is running.
    connecting: AtomicBool,
    /// When the last connection attempt started ([`clock::now_ms`]): one
    /// attempt per [`RECONNECT_INTERVAL`] while Redis is away.
    last_attempt_ms: AtomicU64,
    /// `{namespace}:%gen:`, to map a key Redis names back to its prefix.
    key_head: String,
    /// Broadcast mode on `{namespace}:` (every key, for the near cache)
    /// instead of tracking only the generation keys read here.
    broadcast: Option<String>,
}

impl Tracker {
    /// A tracker for `url` (nothing connects yet).
    pub(crate) fn new(
        url: &str,
        namespace: &str,
        timeout: Duration,
        broadcast: bool,
        tls: Option<&crate::config::TlsMaterial>,
    ) -> Option<Tracker> {
        let info = url.into_connection_info().ok()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client =
            crate::backend::connection::client_with_tls(info.set_redis_settings(settings), tls)
                .ok()?;
        Some(Tracker {
            client,
            timeout: timeout.max(Duration::from_millis(10)),
            connection: ArcSwapOption::empty(),
            epoch: AtomicU64::new(0),
            connecting: AtomicBool::new(false),
            last_attempt_ms: AtomicU64::new(0),
            key_head: format!("{namespace}:%gen:"),
            broadcast: broadcast.then(|| format!("{namespace}:")),
        })
    }

    fn is_current(&self, epoch: u64) -> bool {
        self.epoch.load(Ordering::Acquire) == epoch && self.connection.load().is_some()
    }

    /// Whether tracking is established.
    pub(crate) fn live(&self) -> bool {
        self.connection.load().is_some()
    }

    /// Tracking is lost: nothing held can be trusted any more.
    fn lose(&self, inner: &Inner) {
        self.connection.store(None);
        self.drop_everything(inner);
    }

    /// Nothing held can be trusted: generations and the near level.
    fn drop_everything(&self, inner: &Inner) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for entry in inner.stats.entries() {
            entry.generation.invalidate();
        }
        if let Some(near) = &inner.near {
            near.flush();
        }
    }

    /// Handles one push message from the tracking connection (runs inside
    /// the connection's driver, in the order Redis sent them).
    fn on_push(&self, inner: &Inner, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        let name: &[u8] = match key {
                            Value::BulkString(bytes) => bytes,
                            Value::SimpleString(s) => s.as_bytes(),
                            _ => continue,
                        };
                        match std::str::from_utf8(name)
                            .ok()
                            .and_then(|k| k.strip_prefix(&self.key_head))
                        {
                            Some(prefix) => inner.stats.prefix(prefix).generation.invalidate(),
                            None => {
                                if let Some(near) = &inner.near {
                                    near.invalidate(name);
                                }
                            }
                        }
                    }
                }
                // FLUSHDB / FLUSHALL: everything changed.
                _ => self.drop_everything(inner),
            },
            PushKind::Disconnection => self.lose(inner),
            _ => {}
        }
    }

    /// Starts connecting in the background unless a connection is live or
    /// an attempt is running.
    fn ensure_connecting(&self, inner: &Arc<Inner>) {
        if self.live() {
            return;
        }
        // Not while the breaker keeps calls away from Redis, and not more
        // often than every RECONNECT_INTERVAL.
        if inner
            .resilience
            .as_ref()
            .is_some_and(|res| res.breaker.state() != CircuitState::Closed)
        {
            return;
        }
        if clock::within(
            self.last_attempt_ms.load(Ordering::Acquire),
            RECONNECT_INTERVAL,
        ) {
            return;
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_attempt_ms
            .store(clock::now_ms(), Ordering::Release);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.connecting.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(inner);
        runtime.spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            let Some(tracker) = &inner.tracker else { return };
            let result = tracker.connect(Arc::downgrade(&inner)).await;
            tracker.connecting.store(false, Ordering::Release);
            if let Err(e) = result {
                tracing::debug!(error = %e, "prefix generation tracking not established; reading generations with each value");
            }
        });
    }

    async fn connect(&self, inner: Weak<Inner>) -> redis::RedisResult<()> {
        let for_pushes = inner.clone();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(move |push: PushInfo| {
                if let Some(inner) = for_pushes.upgrade()
                    && let Some(tracker) = &inner.tracker
                {
                    tracker.on_push(&inner, push);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut tracking = redis::cmd("CLIENT");
        tracking.arg("TRACKING").arg("ON");
        if let Some(prefix) = &self.broadcast {
            tracking.arg("BCAST").arg("PREFIX").arg(prefix);
        }
        let () = tracking.query_async(&mut connection).await?;
        // Whatever was held before this connection is not tracked by it.
        if let Some(inner) = inner.upgrade() {
            self.lose(&inner);
        }
        self.connection.store(Some(Arc::new(connection)));
        tracing::debug!("prefix generation tracking established");
        Ok(())
    }

    /// Reads `gkey` on the tracking connection (so Redis tracks it for us).
    /// `None` when tracking is not established or the read failed; a failed
    /// read gives the connection up (held generations with it), so that the
    /// next calls go straight to the breaker-guarded path.
    async fn read(&self, inner: &Inner, gkey: &str) -> Option<Option<u64>> {
        let mut connection = MultiplexedConnection::clone(&*self.connection.load_full()?);
        let reply: Option<Vec<u8>> = match tokio::time::timeout(
            self.timeout,
            redis::cmd("GET").arg(gkey).query_async(&mut connection),
        )
        .await
        {
            Ok(Ok(reply)) => reply,
            _ => {
                self.lose(inner);
                return None;
            }
        };
        Some(reply.as_deref().and_then(parse_generation))
    }
}

impl Cache {
    /// Whether prefix generations are in use.
    pub(crate) fn generations_on(&self) -> bool {
        self.inner.generations
    }

    pub(crate) fn generation_key(&self, prefix: &str) -> String {
        format!("{}:%gen:{}", self.inner.config.namespace, prefix)
    }

    pub(crate) fn fresh_generation(&self) -> u64 {
        let n = self.inner.lease_tokens.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // splitmix64: generations must never repeat (a value labeled with an
        // old generation would become visible again), so they are random.
        let mut z = n ^ nanos.rotate_left(32);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The generation of `prefix` held under tracking, or read (and, where
    /// tracking is up, held) now.
    async fn tracked_generation(&self, entry: &PrefixEntry, prefix: &str) -> Option<u64> {
        let tracker = self.inner.tracker.as_ref()?;
        if let Some(g) = entry.generation.held() {
            return Some(g);
        }
        if !tracker.live() {
            tracker.ensure_connecting(&self.inner);
            return None;
        }
        // Ticket first, then the read: see `HeldGeneration`.
        let epoch = tracker.epoch.load(Ordering::Acquire);
        let ticket = entry.generation.ticket();
        let gkey = self.generation_key(prefix);
        let generation = match tracker.read(&self.inner, &gkey).await? {
            Some(g) => g,
            None => {
                self.init_generation(entry, &gkey).await;
                tracker.read(&self.inner, &gkey).await??
            }
        };
        entry.generation.install(ticket, generation, tracker, epoch);
        Some(generation)
    }

    /// The current generation of `prefix` (created when missing), or `None`
    /// when generations are off.
    pub(crate) async fn generation_for(&self, entry: &PrefixEntry, prefix: &str) -> Option<u64> {
        if !self.generations_on() {
            return None;
        }
        if let Some(g) = self.tracked_generation(entry, prefix).await {
            return Some(g);
        }
        let gkey = self.generation_key(prefix);
        match self.read_generation(entry, &gkey).await {
            Some(g) => Some(g),
            None => Some(self.init_generation(entry, &gkey).await),
        }
    }

    /// The generation stored at `gkey`, if it holds one.
    async fn read_generation(&self, entry: &PrefixEntry, gkey: &str) -> Option<u64> {
        let stored = self
            .with_fallback(
                entry,
                |b| async move { b.get(gkey).await },
                |f| async move { f.get(gkey).await },
            )
            .await
            .ok()
            .flatten();
        stored.as_deref().and_then(parse_generation)
    }

    async fn init_generation(&self, entry: &PrefixEntry, gkey: &str) -> u64 {
        let candidate = self.fresh_generation();
        let bytes = candidate.to_string().into_bytes();
        let copy = bytes.clone();
        let won = self
            .with_fallback(
                entry,
                |b| async move { b.try_lease(gkey, bytes, GENERATION_TTL).await },
                |f| async move { f.try_lease(gkey, copy, GENERATION_TTL).await },
            )
            .await;
        if let Ok(true) = won {
            return candidate;
        }
        self.read_generation(entry, gkey).await.unwrap_or(candidate)
    }

    /// Reads `skey` and, with generations on, its prefix's current
    /// generation: held under tracking (the read is one `GET`), else in the
    /// same round trip (`MGET`).
    pub(crate) async fn raw_get_current(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        prefix: &str,
        near: bool,
    ) -> (Option<RawBytes>, Option<u64>) {
        if !self.generations_on() {
            return (self.near_or_raw_get(entry, skey, None, near).await, None);
        }
        // The generation is read before the value: a value read after a
        // prefix invalidation this process saw is checked against the new one.
        if let Some(g) = self.tracked_generation(entry, prefix).await {
            return (
                self.near_or_raw_get(entry, skey, Some(g), near).await,
                Some(g),
            );
        }
        let gkey = self.generation_key(prefix);
        let (value, generation) = if let Some(memory) = &self.inner.memory {
            (
                memory.get_bytes(skey).await.map(RawBytes::Shared),
                memory.get_bytes(&gkey).await.map(|s| s.to_vec()),
            )
        } else {
            let keys = [skey.to_owned(), gkey.clone()];
            let keys_ref = &keys;
            let read = self
                .on_primary(entry, self.inner.config.timeout, |b| async move {
                    b.get_many(keys_ref).await
                })
                .await;
            match (read, &self.inner.resilience) {
                (Ok(mut pair), _) if pair.len() == 2 => {
                    let generation = pair.pop().flatten();
                    (pair.pop().flatten().map(RawBytes::Owned), generation)
                }
                // Redis is away: the fallback answers, generation included
                // (created there if it has none: one timeout per call at most).
                (Err(e), Some(res))
                    if e.kind.is_availability() || e.kind == ErrorKind::CircuitOpen =>
                {
                    self.mark_fallback_written();
                    let value = res.fallback.get_bytes(skey).await;
                    if value.is_some() {
                        self.inner.stats.record(entry, Event::FallbackHit);
                    }
                    let generation = match res.fallback.get_bytes(&gkey).await {
                        Some(g) => parse_generation(&g),
                        None => None,
                    };
                    let generation = match generation {
                        Some(g) => g,
                        None => {
                            let fresh = self.fresh_generation();
                            let bytes = fresh.to_string().into_bytes();
                            match res.fallback.try_lease(&gkey, bytes, GENERATION_TTL).await {
                                Ok(false) => res
                                    .fallback
                                    .get_bytes(&gkey)
                                    .await
                                    .and_then(|g| parse_generation(&g))
                                    .unwrap_or(fresh),
                                _ => fresh,
                            }
                        }
                    };
                    return (value.map(RawBytes::Shared), Some(generation));
                }
                _ => (None, None),
            }
        };
        let generation = match generation.as_deref().and_then(parse_generation) {
            Some(g) => g,
            None => self.init_generation(entry, &gkey).await,
        };
        (value, Some(generation))
    }

    /// Replaces the generation of `prefix`: every value labeled with the old
    /// one becomes invisible at once, in this process before this returns.
    /// If the backend cannot be reached, the prefix is remembered and its
    /// generation replaced before the backend is trusted again.
    pub(crate) async fn bump_generation(&self, entry: &PrefixEntry, prefix: &str) {
        let gkey = self.generation_key(prefix);
        let generation = self.fresh_generation();
        let bytes = generation.to_string().into_bytes();
        let gkey_ref = gkey.as_str();
        let copy = bytes.clone();
        let result = self
            .on_primary(entry, self.inner.config.timeout, |b| async move {
                b.set(gkey_ref, copy, GENERATION_TTL).await
            })
            .await;
        // This process's next read fetches the new generation (and has Redis
        // track it again): held generations are only those Redis tracks.
        entry.generation.invalidate();
        self.inner
            .flights
            .seal_all(&format!("{}:{prefix}:", self.inner.config.namespace));
        if let Some(res) = &self.inner.resilience {
            let _ = res.fallback.set(&gkey, bytes, GENERATION_TTL).await;
            if result.is_err() {
                self.remember_invalidation(res, Missed::Prefix(prefix));
            }
        }
    }

    /// Reads `skey` through the near level when there is one and tracking
    /// is established (`current`: the generation the value must carry).
    async fn near_or_raw_get(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        current: Option<u64>,
        use_near: bool,
    ) -> Option<RawBytes> {
        let (Some(near), Some(tracker), true) = (&self.inner.near, &self.inner.tracker, use_near)
        else {
            return self.raw_get(entry, skey).await;
        };
        if !tracker.live() {
            tracker.ensure_connecting(&self.inner);
            return self.raw_get(entry, skey).await;
        }
        if let Some(slot) = near.get(skey)
            && crate::codec::label(&slot, current) == crate::codec::Label::Current
        {
            self.inner.stats.record(entry, Event::NearHit);
            return Some(RawBytes::Shared(slot));
        }
        let ticket = near.ticket(skey);
        match self.raw_get(entry, skey).await {
            Some(RawBytes::Owned(bytes))
                if !bytes.is_empty() && !crate::codec::is_lease(&bytes) && tracker.live() =>
            {
                Some(RawBytes::Shared(near.install(ticket, skey, bytes)))
            }
            other => other,
        }
    }

    /// This process changed `skeys`: its near level must not serve them
    /// again (Redis' own message about the change arrives later).
    pub(crate) fn near_evict(&self, skeys: &[String]) {
        if let Some(near) = &self.inner.near {
            for skey in skeys {
                near.invalidate(skey.as_bytes());
            }
        }
    }

    /// [`near_evict`](Self::near_evict) for one key.
    pub(crate) fn near_evict_one(&self, skey: &str) {
        if let Some(near) = &self.inner.near {
            near.invalidate(skey.as_bytes());
        }
    }

    /// This process changed keys it cannot list (a pattern delete).
    pub(crate) fn near_flush(&self) {
        if let Some(near) = &self.inner.near {
            near.flush();
        }
    }

    /// Starts the tracking connection (when there is one to start).
    pub(crate) fn start_tracking(&self) {
        if let Some(tracker) = &self.inner.tracker {
            tracker.ensure_connecting(&self.inner);
        }
    }
}
