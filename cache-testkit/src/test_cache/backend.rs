//! The in-process byte store behind a [`TestCache`](super::TestCache): the
//! manual clock, the store, the log, and the [`Backend`] implementation.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cache_core::{Backend, BackendError, BackendInfo, BackendKind, ErrorKind, async_trait};

use super::BACKEND_NAME;
use super::faults::{Fault, Faults, Gate};
use super::log::{LogEntry, Method, Op};

pub(super) struct Stored {
    pub(super) bytes: Vec<u8>,
    /// Manual-clock time at which the entry expires.
    pub(super) expires_at: Option<Duration>,
}

/// Everything behind the backend's lock.
#[derive(Default)]
pub(super) struct State {
    /// The manual clock.
    pub(super) now: Duration,
    pub(super) store: HashMap<String, Stored>,
    pub(super) log: Vec<LogEntry>,
    /// Backend calls numbered so far.
    pub(super) calls: u64,
    pub(super) faults: Faults,
}

impl State {
    pub(super) fn live(&self, key: &str) -> Option<&Stored> {
        self.store
            .get(key)
            .filter(|e| e.expires_at.is_none_or(|at| at > self.now))
    }

    pub(super) fn remove_live(&mut self, key: &str) -> Option<Stored> {
        let entry = self.store.remove(key)?;
        entry
            .expires_at
            .is_none_or(|at| at > self.now)
            .then_some(entry)
    }

    pub(super) fn expiry(&self, ttl: Duration) -> Option<Duration> {
        self.now.checked_add(ttl)
    }

    pub(super) fn put(&mut self, key: &str, bytes: Vec<u8>, ttl: Option<Duration>) {
        let expires_at = ttl.and_then(|t| self.expiry(t));
        self.store
            .insert(key.to_owned(), Stored { bytes, expires_at });
    }

    pub(super) fn purge_expired(&mut self) {
        let now = self.now;
        self.store
            .retain(|_, e| e.expires_at.is_none_or(|at| at > now));
    }
}

/// The byte-level store behind a [`TestCache`](super::TestCache).
pub(super) struct TestBackend {
    namespace: String,
    state: Mutex<State>,
    /// The Unix time (ms) the manual clock started at: the clock values'
    /// logical expiry is judged against is this plus the manual clock.
    epoch_ms: u64,
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
    pub(super) fn new(namespace: String) -> Self {
        TestBackend {
            namespace,
            state: Mutex::new(State::default()),
            epoch_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn storage_key(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }

    pub(super) fn logical<'k>(&self, storage_key: &'k str) -> &'k str {
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
            let (gate, fault) = state.faults.next_gate();
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

    fn now_unix_ms(&self) -> u64 {
        self.epoch_ms + self.lock().now.as_millis() as u64
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

#[cfg(test)]
mod tests {
    use super::TestBackend;

    #[test]
    fn logical_keys_strip_only_the_own_namespace() {
        let b = TestBackend::new("test".into());
        assert_eq!(b.logical("test:customer:42"), "customer:42");
        assert_eq!(b.logical("testing:customer:42"), "testing:customer:42");
        assert_eq!(b.logical("other:x"), "other:x");
    }
}
