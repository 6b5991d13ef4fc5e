//! [`TestCache`]: a [`Cache`] over an in-process backend with a manual clock,
//! an operation log and fault injection.

use crate::view::LogView;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cache_core::{
    Backend, BackendError, BackendInfo, BackendKind, Cache, CacheConfig, CacheStats, CodecKind,
    ErrorKind, async_trait,
};

/// The name a [`TestCache`]'s backend reports in stats and health.
pub const BACKEND_NAME: &str = "test";

// ---------------------------------------------------------------------------
// The operation log
// ---------------------------------------------------------------------------

/// Which [`Backend`] method a logged operation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// [`Backend::get`].
    Get,
    /// [`Backend::get_many`] (one log entry per key).
    GetMany,
    /// [`Backend::set`].
    Set,
    /// [`Backend::set_many`] (one log entry per key).
    SetMany,
    /// [`Backend::delete`] (one log entry per key).
    Delete,
    /// [`Backend::exists`].
    Exists,
    /// [`Backend::expire`].
    Expire,
    /// [`Backend::ttl`].
    Ttl,
    /// [`Backend::incr_by`].
    IncrBy,
    /// [`Backend::delete_pattern`].
    DeletePattern,
    /// [`Backend::try_lease`].
    TryLease,
    /// [`Backend::set_if_lease`].
    SetIfLease,
    /// [`Backend::release_lease`].
    ReleaseLease,
    /// [`Backend::ping`].
    Ping,
    /// [`Backend::info`].
    Info,
}

impl Method {
    /// Snake-case name, as in the trait (`"get_many"`, `"try_lease"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::GetMany => "get_many",
            Method::Set => "set",
            Method::SetMany => "set_many",
            Method::Delete => "delete",
            Method::Exists => "exists",
            Method::Expire => "expire",
            Method::Ttl => "ttl",
            Method::IncrBy => "incr_by",
            Method::DeletePattern => "delete_pattern",
            Method::TryLease => "try_lease",
            Method::SetIfLease => "set_if_lease",
            Method::ReleaseLease => "release_lease",
            Method::Ping => "ping",
            Method::Info => "info",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An injected fault that a logged call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// [`TestCache::fail_next`] / [`TestCache::fail_next_with`]: the call
    /// returned a [`BackendError`] of this kind.
    Failed(ErrorKind),
    /// [`TestCache::go_down`]: the call returned a `Connection` error.
    Down,
    /// [`TestCache::drop_next`]: the call never answered (the cache's timeout
    /// gave up on it).
    Dropped,
    /// [`TestCache::delay_next`]: the caller stopped waiting (normally the
    /// cache's timeout) before the delay was over; the operation never ran.
    /// A delayed call that outlives its delay runs and is logged normally.
    Cancelled,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Failed(kind) => write!(f, "FAILED ({kind}, injected)"),
            Fault::Down => f.write_str("FAILED (backend down)"),
            Fault::Dropped => f.write_str("DROPPED (never answered)"),
            Fault::Cancelled => f.write_str("CANCELLED (caller gave up during the delay)"),
        }
    }
}

/// What a logged operation did. Multi-key calls are logged as one entry per
/// key, sharing the [`LogEntry::call`] number.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// A read (`get`, `get_many`). `found` says whether the backend returned
    /// bytes, whatever they were: a value, a lease marker of a load in
    /// progress, or garbage planted with [`TestCache::put_raw`] all count as
    /// found. (Whether the *cache* then counted a hit is in
    /// [`Cache::stats`].)
    Get {
        /// Whether bytes were there.
        found: bool,
    },
    /// A write (`set`, `set_many`).
    Set {
        /// The TTL given.
        ttl: Duration,
    },
    /// A delete of one key.
    Delete {
        /// Whether the key existed.
        existed: bool,
    },
    /// An existence check.
    Exists {
        /// Whether the key existed.
        found: bool,
    },
    /// A new TTL for a key.
    Expire {
        /// Whether the key existed (and got the TTL).
        found: bool,
        /// The TTL given.
        ttl: Duration,
    },
    /// A TTL query.
    Ttl {
        /// The answer: remaining TTL, `None` if absent or without expiry.
        remaining: Option<Duration>,
    },
    /// A counter increment.
    Incr {
        /// The increment.
        delta: i64,
        /// The new value; `None` when the key held a non-integer (the call
        /// returned a `WrongType` error).
        value: Option<i64>,
    },
    /// A pattern delete; the entry's key is the pattern (namespace stripped,
    /// so `Cache::clear` shows up as `*`).
    DeletePattern {
        /// How many keys it deleted.
        deleted: u64,
    },
    /// A key removed by a pattern delete (one entry per key, with the
    /// pattern delete's call number).
    RemovedByPattern,
    /// A lease attempt on a missing key (`SET NX` of a lease marker).
    TryLease {
        /// Whether the lease was taken (the key was absent).
        acquired: bool,
    },
    /// A store guarded by a lease (compare-and-set).
    SetIfLease {
        /// Whether the value was stored (the lease was still there).
        stored: bool,
        /// The TTL given.
        ttl: Duration,
    },
    /// Giving up a lease (delete-if-equal).
    ReleaseLease {
        /// Whether the marker was still there and got deleted.
        released: bool,
    },
    /// A ping.
    Ping,
    /// A server-info query.
    Info,
    /// The call ran into an injected fault and did nothing.
    Fault(Fault),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Get { found: true } => f.write_str("hit (bytes found)"),
            Op::Get { found: false } => f.write_str("miss"),
            Op::Set { ttl } => write!(f, "stored, ttl {ttl:?}"),
            Op::Delete { existed: true } => f.write_str("deleted"),
            Op::Delete { existed: false } => f.write_str("nothing to delete"),
            Op::Exists { found } => write!(f, "exists: {found}"),
            Op::Expire { found: true, ttl } => write!(f, "ttl set to {ttl:?}"),
            Op::Expire { found: false, .. } => f.write_str("no such key"),
            Op::Ttl { remaining } => write!(f, "remaining {remaining:?}"),
            Op::Incr {
                delta,
                value: Some(v),
            } => write!(f, "{delta:+} -> {v}"),
            Op::Incr { delta, value: None } => write!(f, "{delta:+} -> not an integer"),
            Op::DeletePattern { deleted } => write!(f, "{deleted} key(s) deleted"),
            Op::RemovedByPattern => f.write_str("removed by the pattern delete"),
            Op::TryLease { acquired: true } => f.write_str("lease acquired"),
            Op::TryLease { acquired: false } => f.write_str("key present, no lease"),
            Op::SetIfLease { stored: true, ttl } => write!(f, "stored under lease, ttl {ttl:?}"),
            Op::SetIfLease { stored: false, .. } => {
                f.write_str("NOT stored: lease lost (invalidated meanwhile)")
            }
            Op::ReleaseLease { released: true } => f.write_str("lease released"),
            Op::ReleaseLease { released: false } => f.write_str("lease no longer held"),
            Op::Ping => f.write_str("pong"),
            Op::Info => f.write_str("info"),
            Op::Fault(fault) => fault.fmt(f),
        }
    }
}

/// One backend operation on one key, as recorded by a [`TestCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogEntry {
    /// Number of the backend call (from 1). Entries of one multi-key call
    /// (`get_many`, `set_many`, `delete`, `delete_pattern`) share it.
    pub call: u64,
    /// The trait method called.
    pub method: Method,
    /// The logical key (`"customer:42"`: the storage key without
    /// `"{namespace}:"`), or the pattern for `delete_pattern`; empty for
    /// `ping` and `info`.
    pub key: String,
    /// The key (or pattern) as the backend received it (`"test:customer:42"`).
    pub storage_key: String,
    /// What happened.
    pub op: Op,
}

impl LogEntry {
    /// The key's prefix: the part before the first `:` (`"customer"`).
    pub fn prefix(&self) -> &str {
        self.key.split(':').next().unwrap_or(&self.key)
    }

    /// Whether this is a read that found bytes ([`Op::Get`] with `found`).
    pub fn is_hit(&self) -> bool {
        matches!(self.op, Op::Get { found: true })
    }

    /// Whether this is a read that found nothing.
    pub fn is_miss(&self) -> bool {
        matches!(self.op, Op::Get { found: false })
    }

    /// Whether this wrote a value: [`Op::Set`], or [`Op::SetIfLease`] that stored.
    pub fn is_set(&self) -> bool {
        matches!(
            self.op,
            Op::Set { .. } | Op::SetIfLease { stored: true, .. }
        )
    }

    /// Whether this is a delete of the key ([`Op::Delete`], existing or not).
    pub fn is_delete(&self) -> bool {
        matches!(self.op, Op::Delete { .. })
    }

    /// Whether the call ran into an injected fault.
    pub fn is_fault(&self) -> bool {
        matches!(self.op, Op::Fault(_))
    }
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_empty() { "-" } else { &self.key };
        write!(f, "#{} {} {} -> {}", self.call, self.method, key, self.op)
    }
}

// ---------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------

struct Stored {
    bytes: Vec<u8>,
    /// Manual-clock time at which the entry expires.
    expires_at: Option<Duration>,
}

#[derive(Default)]
struct Faults {
    down: bool,
    fail: u64,
    fail_kind: Option<ErrorKind>,
    drop: u64,
    delay: u64,
    delay_by: Duration,
}

#[derive(Default)]
struct State {
    now: Duration,
    store: HashMap<String, Stored>,
    log: Vec<LogEntry>,
    calls: u64,
    faults: Faults,
}

impl State {
    fn live(&self, key: &str) -> Option<&Stored> {
        self.store
            .get(key)
            .filter(|e| e.expires_at.is_none_or(|at| at > self.now))
    }

    fn remove_live(&mut self, key: &str) -> Option<Stored> {
        let entry = self.store.remove(key)?;
        entry
            .expires_at
            .is_none_or(|at| at > self.now)
            .then_some(entry)
    }

    fn expiry(&self, ttl: Duration) -> Option<Duration> {
        self.now.checked_add(ttl)
    }

    fn put(&mut self, key: &str, bytes: Vec<u8>, ttl: Option<Duration>) {
        let expires_at = ttl.and_then(|t| self.expiry(t));
        self.store
            .insert(key.to_owned(), Stored { bytes, expires_at });
    }

    fn purge_expired(&mut self) {
        let now = self.now;
        self.store
            .retain(|_, e| e.expires_at.is_none_or(|at| at > now));
    }
}

enum Gate {
    Pass,
    Delay(Duration),
    Drop,
    Fail(BackendError),
}

/// The byte-level store behind a [`TestCache`].
struct TestBackend {
    namespace: String,
    state: Mutex<State>,
}

impl fmt::Debug for TestBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("TestBackend")
            .field("namespace", &self.namespace)
            .field("now", &state.now)
            .field("entries", &state.store.len())
            .field("logged", &state.log.len())
            .finish()
    }
}

/// Logs `Cancelled` for a delayed call dropped before its delay ended.
struct CancelGuard<'a> {
    backend: &'a TestBackend,
    call: u64,
    method: Method,
    keys: &'a [&'a str],
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.backend.lock();
            for key in self.keys {
                self.backend.record(
                    &mut state,
                    self.call,
                    self.method,
                    key,
                    Op::Fault(Fault::Cancelled),
                );
            }
        }
    }
}

impl TestBackend {
    fn new(namespace: String) -> Self {
        TestBackend {
            namespace,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn storage_key(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }

    fn logical<'k>(&self, storage_key: &'k str) -> &'k str {
        storage_key
            .strip_prefix(self.namespace.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
            .unwrap_or(storage_key)
    }

    fn record(&self, state: &mut State, call: u64, method: Method, storage_key: &str, op: Op) {
        state.log.push(LogEntry {
            call,
            method,
            key: self.logical(storage_key).to_owned(),
            storage_key: storage_key.to_owned(),
            op,
        });
    }

    /// Numbers the call and applies any pending fault to it. `keys` are the
    /// storage keys the call names (empty for ping/info).
    async fn enter(&self, method: Method, keys: &[&str]) -> Result<u64, BackendError> {
        let (call, gate) = {
            let mut state = self.lock();
            state.calls += 1;
            let call = state.calls;
            let f = &mut state.faults;
            let (gate, fault) = if f.down {
                (
                    Gate::Fail(BackendError::new(
                        ErrorKind::Connection,
                        "test backend is down (TestCache::go_down)",
                    )),
                    Some(Fault::Down),
                )
            } else if f.fail > 0 {
                f.fail -= 1;
                let kind = f.fail_kind.unwrap_or(ErrorKind::Connection);
                (
                    Gate::Fail(BackendError::new(
                        kind,
                        "injected failure (TestCache::fail_next)",
                    )),
                    Some(Fault::Failed(kind)),
                )
            } else if f.drop > 0 {
                f.drop -= 1;
                (Gate::Drop, Some(Fault::Dropped))
            } else if f.delay > 0 {
                f.delay -= 1;
                (Gate::Delay(f.delay_by), None)
            } else {
                (Gate::Pass, None)
            };
            if let Some(fault) = fault {
                let keys = if keys.is_empty() { &[""][..] } else { keys };
                for key in keys {
                    self.record(&mut state, call, method, key, Op::Fault(fault));
                }
            }
            (call, gate)
        };
        match gate {
            Gate::Pass => Ok(call),
            Gate::Fail(error) => Err(error),
            Gate::Drop => std::future::pending().await,
            Gate::Delay(by) => {
                let keys = if keys.is_empty() { &[""][..] } else { keys };
                let mut guard = CancelGuard {
                    backend: self,
                    call,
                    method,
                    keys,
                    armed: true,
                };
                tokio::time::sleep(by).await;
                guard.armed = false;
                Ok(call)
            }
        }
    }
}

#[async_trait]
impl Backend for TestBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Custom {
            name: BACKEND_NAME,
            remote: true,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let call = self.enter(Method::Get, &[key]).await?;
        let mut state = self.lock();
        let value = state.live(key).map(|e| e.bytes.clone());
        let op = Op::Get {
            found: value.is_some(),
        };
        self.record(&mut state, call, Method::Get, key, op);
        Ok(value)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let call = self.enter(Method::GetMany, &names).await?;
        let mut state = self.lock();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let value = state.live(key).map(|e| e.bytes.clone());
            let op = Op::Get {
                found: value.is_some(),
            };
            self.record(&mut state, call, Method::GetMany, key, op);
            out.push(value);
        }
        Ok(out)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), BackendError> {
        let call = self.enter(Method::Set, &[key]).await?;
        let mut state = self.lock();
        state.put(key, value, Some(ttl));
        self.record(&mut state, call, Method::Set, key, Op::Set { ttl });
        Ok(())
    }

    async fn set_many(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let names: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        let call = self.enter(Method::SetMany, &names).await?;
        let mut state = self.lock();
        for (key, value) in entries {
            state.put(&key, value, Some(ttl));
            self.record(&mut state, call, Method::SetMany, &key, Op::Set { ttl });
        }
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError> {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let call = self.enter(Method::Delete, &names).await?;
        let mut state = self.lock();
        let mut deleted = 0;
        for key in keys {
            let existed = state.remove_live(key).is_some();
            deleted += u64::from(existed);
            self.record(
                &mut state,
                call,
                Method::Delete,
                key,
                Op::Delete { existed },
            );
        }
        Ok(deleted)
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let call = self.enter(Method::Exists, &[key]).await?;
        let mut state = self.lock();
        let found = state.live(key).is_some();
        self.record(&mut state, call, Method::Exists, key, Op::Exists { found });
        Ok(found)
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        let call = self.enter(Method::Expire, &[key]).await?;
        let mut state = self.lock();
        let found = state.live(key).is_some();
        if found {
            let expires_at = state.expiry(ttl);
            if let Some(entry) = state.store.get_mut(key) {
                entry.expires_at = expires_at;
            }
        }
        self.record(
            &mut state,
            call,
            Method::Expire,
            key,
            Op::Expire { found, ttl },
        );
        Ok(found)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, BackendError> {
        let call = self.enter(Method::Ttl, &[key]).await?;
        let mut state = self.lock();
        let now = state.now;
        let remaining = state
            .live(key)
            .and_then(|e| e.expires_at)
            .map(|at| at.saturating_sub(now));
        self.record(&mut state, call, Method::Ttl, key, Op::Ttl { remaining });
        Ok(remaining)
    }

    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, BackendError> {
        let call = self.enter(Method::IncrBy, &[key]).await?;
        let mut state = self.lock();
        let (current, expires_at) = match state.live(key) {
            None => (Some(0), None),
            Some(e) => (
                std::str::from_utf8(&e.bytes)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok()),
                e.expires_at,
            ),
        };
        let next = current.and_then(|v| v.checked_add(delta));
        self.record(
            &mut state,
            call,
            Method::IncrBy,
            key,
            Op::Incr { delta, value: next },
        );
        match next {
            Some(value) => {
                state.store.insert(
                    key.to_owned(),
                    Stored {
                        bytes: value.to_string().into_bytes(),
                        expires_at,
                    },
                );
                Ok(value)
            }
            None if current.is_some() => Err(BackendError::new(
                ErrorKind::WrongType,
                "increment or decrement would overflow",
            )),
            None => Err(BackendError::new(
                ErrorKind::WrongType,
                "value is not an integer or out of range",
            )),
        }
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64, BackendError> {
        let call = self.enter(Method::DeletePattern, &[pattern]).await?;
        let mut state = self.lock();
        state.purge_expired();
        let mut doomed: Vec<String> = state
            .store
            .keys()
            .filter(|k| cache_core::keys::glob_match(pattern.as_bytes(), k.as_bytes()))
            .cloned()
            .collect();
        doomed.sort();
        for key in &doomed {
            state.store.remove(key);
        }
        let deleted = doomed.len() as u64;
        self.record(
            &mut state,
            call,
            Method::DeletePattern,
            pattern,
            Op::DeletePattern { deleted },
        );
        for key in &doomed {
            self.record(
                &mut state,
                call,
                Method::DeletePattern,
                key,
                Op::RemovedByPattern,
            );
        }
        Ok(deleted)
    }

    async fn try_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let call = self.enter(Method::TryLease, &[key]).await?;
        let mut state = self.lock();
        let acquired = state.live(key).is_none();
        if acquired {
            state.put(key, marker, Some(ttl));
        }
        self.record(
            &mut state,
            call,
            Method::TryLease,
            key,
            Op::TryLease { acquired },
        );
        Ok(acquired)
    }

    async fn set_if_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let call = self.enter(Method::SetIfLease, &[key]).await?;
        let mut state = self.lock();
        let stored = state.live(key).is_some_and(|e| e.bytes == marker);
        if stored {
            state.put(key, value, Some(ttl));
        }
        self.record(
            &mut state,
            call,
            Method::SetIfLease,
            key,
            Op::SetIfLease { stored, ttl },
        );
        Ok(stored)
    }

    async fn release_lease(&self, key: &str, marker: Vec<u8>) -> Result<(), BackendError> {
        let call = self.enter(Method::ReleaseLease, &[key]).await?;
        let mut state = self.lock();
        let released = state.live(key).is_some_and(|e| e.bytes == marker);
        if released {
            state.store.remove(key);
        }
        self.record(
            &mut state,
            call,
            Method::ReleaseLease,
            key,
            Op::ReleaseLease { released },
        );
        Ok(())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let call = self.enter(Method::Ping, &[]).await?;
        let mut state = self.lock();
        self.record(&mut state, call, Method::Ping, "", Op::Ping);
        Ok(())
    }

    async fn info(&self) -> Result<BackendInfo, BackendError> {
        let call = self.enter(Method::Info, &[]).await?;
        let mut state = self.lock();
        state.purge_expired();
        let used: usize = state
            .store
            .iter()
            .map(|(k, v)| k.len() + v.bytes.len())
            .sum();
        let mut info = BackendInfo::default();
        info.total_keys = Some(state.store.len() as u64);
        info.used_memory_bytes = Some(used as u64);
        self.record(&mut state, call, Method::Info, "", Op::Info);
        Ok(info)
    }
}

// ---------------------------------------------------------------------------
// TestCache
// ---------------------------------------------------------------------------

/// A [`Cache`] for tests: an in-process backend with a **manual clock**, an
/// **operation log** and **fault injection**, wrapped in a real
/// `cache_core::Cache`.
///
/// The backend reports itself as a remote backend
/// (`BackendKind::Custom { name: "test", remote: true }`), so the cache puts
/// its whole resilience layer in front of it (timeout, circuit breaker,
/// in-memory fallback, replay of missed invalidations): injected faults go
/// through exactly the code paths a Redis outage would.
///
/// Cloning is cheap and clones share everything (store, clock, log, faults,
/// the `Cache`). Each [`TestCache::new`] is independent, so tests using one
/// each run in parallel without interfering; use [`scope`](Self::scope) (not
/// [`Cache::install`]) to make it the cache `#[cached]` functions use.
///
/// # Clock
/// Entries expire against a manual clock that only moves with
/// [`advance`](Self::advance): TTLs, `expire`, `ttl` and lease markers all use
/// it, so expiry is instant and deterministic. It does *not* move the
/// circuit breaker's cooldown, the cache's timeout or the in-memory fallback's
/// TTLs, which run on real time (configure short ones with the
/// [builder](Self::builder)).
///
/// # Log
/// Every call the cache makes to the backend is logged per key
/// ([`LogEntry`]): reads, writes, deletes, pattern deletes, leases, pings,
/// and calls that ran into a fault. The counts are about **backend
/// operations**, which is what you want to assert on ("the second call did
/// not reach the store", "the update deleted the key"), and they differ from
/// [`Cache::stats`] (the cache's own view) in a few ways:
/// - a read served by the in-memory fallback while the backend is failing is
///   not a backend hit; a read rejected by the open circuit breaker never
///   reaches the backend and is not logged at all;
/// - a read is a "hit" when the backend returned bytes, whatever they were
///   (a lease marker of a load in progress, or garbage you planted with
///   [`put_raw`](Self::put_raw), counts as a hit here while the cache counts
///   a miss);
/// - a `#[cached]` miss is one read, then `try_lease` and `set_if_lease`
///   (counted as a set); `release_lease` only when nothing is stored (an
///   `Err` or `None` result, or a failed store);
/// - invalidations the cache could not deliver during an outage are
///   replayed on recovery, and show up as deletes then.
///
/// # Faults
/// [`fail_next`](Self::fail_next), [`drop_next`](Self::drop_next),
/// [`delay_next`](Self::delay_next) count **backend calls**, not calls of
/// your function (one `#[cached]` call makes one to four backend calls).
/// When several are pending they apply in the order down, fail, drop, delay;
/// calling one again replaces its pending count (it does not add to it).
/// [`put_raw`](Self::put_raw) plants bytes the codec does not understand.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use cache_testkit::TestCache;
///
/// let test = TestCache::new();
/// let cache = test.cache();
/// cache.set("customer:42", &"Ada", Some(Duration::from_secs(60))).await.unwrap();
/// assert_eq!(cache.get::<String>("customer:42").await.unwrap().as_deref(), Some("Ada"));
/// test.assert_sets("customer:42", 1);
/// test.assert_hits("customer:42", 1);
///
/// test.advance(Duration::from_secs(61)); // expired, no sleeping
/// assert_eq!(cache.get::<String>("customer:42").await.unwrap(), None);
/// test.assert_misses("customer:42", 1);
/// # }
/// ```
#[derive(Clone)]
pub struct TestCache {
    backend: Arc<TestBackend>,
    cache: Cache,
}

impl fmt::Debug for TestCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCache")
            .field("backend", &self.backend)
            .field("cache", &self.cache)
            .finish()
    }
}

impl Default for TestCache {
    fn default() -> Self {
        TestCache::new()
    }
}

/// Builds a [`TestCache`] with adjusted settings; see [`TestCache::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TestCacheBuilder {
    config: CacheConfig,
}

impl TestCacheBuilder {
    /// Starts from `config` instead of the test defaults (its `redis` target
    /// is ignored).
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }
    /// Namespace of the keys (default `"test"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }
    /// Bound on each backend call (default 50 ms): what a delayed or
    /// dropped call costs.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }
    /// Consecutive failures that open the breaker, and its (real-time)
    /// cooldown (default 3 failures, 1 s).
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.config.breaker_failures = failures;
        self.config.breaker_cooldown = cooldown;
        self
    }
    /// TTL when a call names none (default 300 s).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }
    /// Longest TTL in the in-memory fallback (default 30 s, real time).
    pub fn fallback_ttl_cap(mut self, cap: Duration) -> Self {
        self.config.fallback_ttl_cap = cap;
        self
    }
    /// Lease length for loads (default 200 ms): how long a lease marker
    /// lives on the manual clock, and at most how long (in real time) a load
    /// waits for a lease held by someone else.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }
    /// Codec for written values (default bincode).
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.config.codec = codec;
        self
    }
    /// Largest encoded value stored or read (default 4 MiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.config.max_value_bytes = bytes;
        self
    }

    /// Builds the test cache.
    pub fn build(self) -> TestCache {
        let backend = Arc::new(TestBackend::new(self.config.namespace.clone()));
        let cache = Cache::with_backend(backend.clone(), self.config);
        TestCache { backend, cache }
    }
}

/// The configuration [`TestCache::new`] uses: namespace `test`, 50 ms
/// timeout, breaker 3 failures / 1 s, lease 200 ms, otherwise the
/// `cache-core` defaults.
pub fn test_config() -> CacheConfig {
    let mut config = CacheConfig::default();
    config.namespace = "test".to_owned();
    config.timeout = Duration::from_millis(50);
    config.breaker_failures = 3;
    config.breaker_cooldown = Duration::from_secs(1);
    config.lease_ttl = Duration::from_millis(200);
    config
}

impl TestCache {
    /// A fresh test cache with the [`test_config`] settings.
    pub fn new() -> Self {
        TestCache::builder().build()
    }

    /// A builder starting from [`test_config`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let test = cache_testkit::TestCache::builder()
    ///     .namespace("orders")
    ///     .timeout(Duration::from_millis(20))
    ///     .circuit_breaker(2, Duration::from_millis(100))
    ///     .build();
    /// assert_eq!(test.cache().namespace(), "orders");
    /// ```
    pub fn builder() -> TestCacheBuilder {
        TestCacheBuilder {
            config: test_config(),
        }
    }

    /// A test cache with exactly `config` (its `redis` target is ignored).
    pub fn with_config(config: CacheConfig) -> Self {
        TestCache::builder().config(config).build()
    }

    /// A second `Cache` over the **same** backend (store, clock, log and
    /// faults), with its own stats, single-flight table, breaker and
    /// fallback: a second process sharing one Redis.
    pub fn another_instance(&self) -> TestCache {
        self.another_instance_with(self.cache.config().clone())
    }

    /// Like [`another_instance`](Self::another_instance), with its own
    /// configuration, for example another namespace. Key names in the log,
    /// [`keys`](Self::keys) and the key arguments of the helpers are
    /// relative to the namespace of the *first* instance; other namespaces'
    /// keys keep their full storage name (`"other:customer:1"`).
    pub fn another_instance_with(&self, config: CacheConfig) -> TestCache {
        TestCache {
            backend: self.backend.clone(),
            cache: Cache::with_backend(self.backend.clone(), config),
        }
    }

    /// The `Cache` to call directly or to pass as `cache = ...`.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The cache's own figures ([`Cache::stats`]).
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Runs `fut` with this cache as the current cache of this task
    /// ([`Cache::scope`]): `#[cached]` and `#[invalidates]` functions called
    /// inside use it, and nothing process-wide changes. Tasks spawned inside
    /// do not inherit it (scope them too).
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        self.cache.scope(fut).await
    }

    // ----- clock ------------------------------------------------------------

    /// Moves the backend's clock forward: entries whose TTL ran out are gone
    /// at once.
    pub fn advance(&self, by: Duration) {
        let mut state = self.backend.lock();
        state.now = state.now.saturating_add(by);
        state.purge_expired();
    }

    /// How far the clock has been [advanced](Self::advance) in total.
    pub fn now(&self) -> Duration {
        self.backend.lock().now
    }

    // ----- store ------------------------------------------------------------

    /// Stores raw `bytes` at the logical `key` (`"customer:42"`), without
    /// expiry, bypassing the cache and the log: foreign or corrupt data for
    /// the cache to cope with.
    pub fn put_raw(&self, key: &str, bytes: impl Into<Vec<u8>>) {
        let skey = self.backend.storage_key(key);
        self.backend.lock().put(&skey, bytes.into(), None);
    }

    /// The raw bytes stored at the logical `key`, if any (not logged).
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        let skey = self.backend.storage_key(key);
        self.backend.lock().live(&skey).map(|e| e.bytes.clone())
    }

    /// Whether the logical `key` holds anything (value or lease marker).
    pub fn contains(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// Remaining TTL of the logical `key` on the manual clock; `None` when
    /// absent or without expiry. Since the clock only moves when you say so,
    /// this is exactly the TTL the code under test chose.
    pub fn remaining_ttl(&self, key: &str) -> Option<Duration> {
        let skey = self.backend.storage_key(key);
        let state = self.backend.lock();
        state
            .live(&skey)
            .and_then(|e| e.expires_at)
            .map(|at| at.saturating_sub(state.now))
    }

    /// The logical keys stored now, sorted (other namespaces' keys keep
    /// their full name).
    pub fn keys(&self) -> Vec<String> {
        let state = self.backend.lock();
        let mut keys: Vec<String> = state
            .store
            .keys()
            .filter(|k| state.live(k).is_some())
            .map(|k| self.backend.logical(k).to_owned())
            .collect();
        keys.sort();
        keys
    }

    // ----- faults -----------------------------------------------------------

    /// The next `n` backend calls fail with a `Connection` error.
    pub fn fail_next(&self, n: u64) {
        self.fail_next_with(n, ErrorKind::Connection);
    }

    /// The next `n` backend calls fail with an error of `kind` (for example
    /// `ErrorKind::WrongType`, which the breaker does not count).
    pub fn fail_next_with(&self, n: u64, kind: ErrorKind) {
        let mut state = self.backend.lock();
        state.faults.fail = n;
        state.faults.fail_kind = Some(kind);
    }

    /// The next `n` backend calls never answer; the cache's timeout gives up
    /// on them.
    pub fn drop_next(&self, n: u64) {
        self.backend.lock().faults.drop = n;
    }

    /// The next `n` backend calls wait `by` (real time, `tokio::time::sleep`)
    /// before running. Longer than the timeout: the cache gives up and the
    /// call never runs (logged as [`Fault::Cancelled`]); shorter: it runs
    /// late.
    pub fn delay_next(&self, n: u64, by: Duration) {
        let mut state = self.backend.lock();
        state.faults.delay = n;
        state.faults.delay_by = by;
    }

    /// Every backend call fails with a `Connection` error until
    /// [`come_back`](Self::come_back).
    pub fn go_down(&self) {
        self.backend.lock().faults.down = true;
    }

    /// Ends [`go_down`](Self::go_down). The data stored before is still there.
    pub fn come_back(&self) {
        self.backend.lock().faults.down = false;
    }

    /// Cancels every pending fault (and [`come_back`](Self::come_back)).
    pub fn clear_faults(&self) {
        self.backend.lock().faults = Faults::default();
    }

    // ----- the log ----------------------------------------------------------

    /// A copy of the whole operation log, oldest first.
    pub fn log(&self) -> Vec<LogEntry> {
        self.backend.lock().log.clone()
    }

    /// The log entries of one logical key.
    pub fn log_for(&self, key: &str) -> Vec<LogEntry> {
        self.filtered(|e| e.key == key)
    }

    /// Empties the log (the counts start again from zero; the store stays).
    pub fn clear_log(&self) {
        self.backend.lock().log.clear();
    }

    /// Backend calls made so far (a multi-key call counts once), including
    /// calls that ran into faults; [`clear_log`](Self::clear_log) does not
    /// reset it.
    pub fn calls(&self) -> u64 {
        self.backend.lock().calls
    }

    /// The log as text, one entry per line (what the assertions print).
    pub fn log_text(&self) -> String {
        render(&self.log())
    }

    fn filtered(&self, keep: impl Fn(&LogEntry) -> bool) -> Vec<LogEntry> {
        self.backend
            .lock()
            .log
            .iter()
            .filter(|e| keep(e))
            .cloned()
            .collect()
    }

    /// The log of one key (`"customer:42"`, relative to the namespace), with
    /// a count and an assertion for every kind of event; see [`LogView`].
    pub fn key<'t>(&'t self, key: &'t str) -> LogView<'t> {
        LogView::new(self, Scope::Key(key))
    }

    /// The log over every key of one prefix (`"customer"`); see [`LogView`].
    pub fn prefix<'t>(&'t self, prefix: &'t str) -> LogView<'t> {
        LogView::new(self, Scope::Prefix(prefix))
    }

    fn count(&self, keep: impl Fn(&LogEntry) -> bool) -> usize {
        self.backend.lock().log.iter().filter(|e| keep(e)).count()
    }

    /// Reads of `key` that found bytes ([`Op::Get`] with `found`).
    pub fn hits(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_hit())
    }

    /// Reads of `key` that found nothing.
    pub fn misses(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_miss())
    }

    /// Values written at `key` (`set`, `set_many`, and `set_if_lease` that stored).
    pub fn sets(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_set())
    }

    /// Deletes naming `key` (whether or not it existed).
    pub fn deletes(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_delete())
    }

    /// Deletes naming `key` plus pattern deletes that removed it.
    pub fn invalidations(&self, key: &str) -> usize {
        self.count(|e| e.key == key && (e.is_delete() || e.op == Op::RemovedByPattern))
    }

    /// Calls on `key` that ran into an injected fault.
    pub fn failures(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_fault())
    }

    /// Reads that found bytes, over every key of `prefix` (`"customer"`).
    pub fn prefix_hits(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_hit())
    }

    /// Reads that found nothing, over every key of `prefix`.
    pub fn prefix_misses(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_miss())
    }

    /// Values written, over every key of `prefix`.
    pub fn prefix_sets(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_set())
    }

    /// Key deletes, over every key of `prefix`.
    pub fn prefix_deletes(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_delete())
    }

    /// Invalidation operations on `prefix`: key deletes plus pattern deletes
    /// whose pattern starts with `prefix:` (as `#[invalidates(prefix = ..)]`
    /// and `Cache::invalidate_prefix` issue), each pattern delete counted
    /// once however many keys it removed.
    pub fn prefix_invalidations(&self, prefix: &str) -> usize {
        self.count(|e| {
            e.prefix() == prefix && (e.is_delete() || matches!(e.op, Op::DeletePattern { .. }))
        })
    }

    /// Calls on keys of `prefix` that ran into an injected fault.
    pub fn prefix_failures(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_fault())
    }

    /// Pattern deletes with exactly this (logical) pattern, e.g. `"search:*"`.
    pub fn pattern_deletes(&self, pattern: &str) -> usize {
        self.count(|e| e.key == pattern && matches!(e.op, Op::DeletePattern { .. }))
    }

    // ----- assertions -------------------------------------------------------

    #[track_caller]
    pub(crate) fn check(&self, what: &str, scope: Scope<'_>, expected: usize, actual: usize) {
        if expected == actual {
            return;
        }
        let (label, entries) = match scope {
            Scope::Key(key) => (format!("key {key:?}"), self.log_for(key)),
            Scope::Prefix(prefix) => (
                format!("prefix {prefix:?}"),
                self.filtered(|e| e.prefix() == prefix),
            ),
        };
        let listing = if entries.is_empty() {
            "  (no backend operations)\n".to_owned()
        } else {
            render(&entries)
        };
        panic!(
            "TestCache: expected {expected} {what} for {label}, found {actual}\n\
             backend operations on {label}:\n{listing}"
        );
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` hits.
    #[track_caller]
    pub fn assert_hits(&self, key: &str, n: usize) {
        self.check("hit(s)", Scope::Key(key), n, self.hits(key));
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` misses.
    #[track_caller]
    pub fn assert_misses(&self, key: &str, n: usize) {
        self.check("miss(es)", Scope::Key(key), n, self.misses(key));
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` sets.
    #[track_caller]
    pub fn assert_sets(&self, key: &str, n: usize) {
        self.check("set(s)", Scope::Key(key), n, self.sets(key));
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` deletes.
    #[track_caller]
    pub fn assert_deletes(&self, key: &str, n: usize) {
        self.check("delete(s)", Scope::Key(key), n, self.deletes(key));
    }

    /// Panics (printing the key's log) unless `key` had exactly `n`
    /// [invalidations](Self::invalidations).
    #[track_caller]
    pub fn assert_invalidations(&self, key: &str, n: usize) {
        self.check(
            "invalidation(s)",
            Scope::Key(key),
            n,
            self.invalidations(key),
        );
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` faulted calls.
    #[track_caller]
    pub fn assert_failures(&self, key: &str, n: usize) {
        self.check("faulted call(s)", Scope::Key(key), n, self.failures(key));
    }

    /// Panics (printing the prefix's log) unless `prefix` had exactly `n` hits.
    #[track_caller]
    pub fn assert_prefix_hits(&self, prefix: &str, n: usize) {
        self.check("hit(s)", Scope::Prefix(prefix), n, self.prefix_hits(prefix));
    }

    /// Panics (printing the prefix's log) unless `prefix` had exactly `n` misses.
    #[track_caller]
    pub fn assert_prefix_misses(&self, prefix: &str, n: usize) {
        self.check(
            "miss(es)",
            Scope::Prefix(prefix),
            n,
            self.prefix_misses(prefix),
        );
    }

    /// Panics (printing the prefix's log) unless `prefix` had exactly `n` sets.
    #[track_caller]
    pub fn assert_prefix_sets(&self, prefix: &str, n: usize) {
        self.check("set(s)", Scope::Prefix(prefix), n, self.prefix_sets(prefix));
    }

    /// Panics (printing the prefix's log) unless `prefix` had exactly `n`
    /// [invalidations](Self::prefix_invalidations).
    #[track_caller]
    pub fn assert_prefix_invalidations(&self, prefix: &str, n: usize) {
        self.check(
            "invalidation(s)",
            Scope::Prefix(prefix),
            n,
            self.prefix_invalidations(prefix),
        );
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Scope<'a> {
    Key(&'a str),
    Prefix(&'a str),
}

fn render(entries: &[LogEntry]) -> String {
    let mut out = String::new();
    for entry in entries {
        out.push_str("  ");
        out.push_str(&entry.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_keys_strip_only_the_own_namespace() {
        let b = TestBackend::new("test".into());
        assert_eq!(b.logical("test:customer:42"), "customer:42");
        assert_eq!(b.logical("testing:customer:42"), "testing:customer:42");
        assert_eq!(b.logical("other:x"), "other:x");
    }
}
