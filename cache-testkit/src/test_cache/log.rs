//! The operation log: which backend method ran ([`Method`]), what it did
//! ([`Op`]) and the entries ([`LogEntry`]) the views count.

use std::fmt;
use std::time::Duration;

use super::faults::Fault;

/// Which [`Backend`](cache_core::Backend) method a logged operation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// [`Backend::get`](cache_core::Backend::get).
    Get,
    /// [`Backend::get_many`](cache_core::Backend::get_many) (one log entry per key).
    GetMany,
    /// [`Backend::set`](cache_core::Backend::set).
    Set,
    /// [`Backend::set_many`](cache_core::Backend::set_many) (one log entry per key).
    SetMany,
    /// [`Backend::delete`](cache_core::Backend::delete) (one log entry per key).
    Delete,
    /// [`Backend::exists`](cache_core::Backend::exists).
    Exists,
    /// [`Backend::expire`](cache_core::Backend::expire).
    Expire,
    /// [`Backend::ttl`](cache_core::Backend::ttl).
    Ttl,
    /// [`Backend::incr_by`](cache_core::Backend::incr_by).
    IncrBy,
    /// [`Backend::delete_pattern`](cache_core::Backend::delete_pattern).
    DeletePattern,
    /// [`Backend::try_lease`](cache_core::Backend::try_lease).
    TryLease,
    /// [`Backend::set_if_lease`](cache_core::Backend::set_if_lease).
    SetIfLease,
    /// [`Backend::release_lease`](cache_core::Backend::release_lease).
    ReleaseLease,
    /// [`Backend::ping`](cache_core::Backend::ping).
    Ping,
    /// [`Backend::info`](cache_core::Backend::info).
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

/// What a logged operation did. Multi-key calls are logged as one entry per
/// key, sharing the [`LogEntry::call`] number.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// A read (`get`, `get_many`). `found` says whether the backend returned
    /// bytes, whatever they were: a value, a lease marker of a load in
    /// progress, or garbage planted with
    /// [`TestCache::put_raw`](crate::TestCache::put_raw) all count as found.
    /// (Whether the *cache* then counted a hit is in
    /// [`Cache::stats`](cache_core::Cache::stats).)
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

/// One backend operation on one key, as recorded by a [`TestCache`](crate::TestCache).
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

pub(super) fn render(entries: &[LogEntry]) -> String {
    let mut out = String::new();
    for entry in entries {
        out.push_str("  ");
        out.push_str(&entry.to_string());
        out.push('\n');
    }
    out
}
