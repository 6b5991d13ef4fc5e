//! The store behind a cache, typed where it is one of the built-in
//! backends so that the hit path calls it without dynamic dispatch.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::redis::RedisBackend;
use super::{Backend, BackendInfo, BackendKind, MemoryBackend};
use crate::error::BackendError;

/// Bytes read from a backend: shared with the memory store, or owned.
pub(crate) enum RawBytes {
    Shared(Arc<super::memory::Slot>),
    Owned(Vec<u8>),
}

impl std::ops::Deref for RawBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            RawBytes::Shared(b) => b,
            RawBytes::Owned(b) => b,
        }
    }
}

/// The primary store of a cache.
pub(crate) enum Primary {
    /// Caching is off: nothing is stored, every read misses.
    Disabled,
    /// In-process memory.
    Memory(MemoryBackend),
    /// A Redis server or a Redis Cluster.
    Redis(Arc<RedisBackend>),
    /// Any other [`Backend`] (for example the test kit's).
    Custom(Arc<dyn Backend>),
}

impl Primary {
    /// The store as a [`Backend`].
    pub(crate) fn backend(&self) -> &dyn Backend {
        match self {
            Primary::Disabled => &Nothing,
            Primary::Memory(memory) => memory,
            Primary::Redis(redis) => &**redis,
            Primary::Custom(custom) => &**custom,
        }
    }

    /// The built-in memory backend, when that is the store.
    pub(crate) fn memory(&self) -> Option<&MemoryBackend> {
        match self {
            Primary::Memory(memory) => Some(memory),
            _ => None,
        }
    }

    /// The built-in Redis backend, when that is the store.
    pub(crate) fn redis(&self) -> Option<&Arc<RedisBackend>> {
        match self {
            Primary::Redis(redis) => Some(redis),
            _ => None,
        }
    }
}

/// The store of a disabled cache: holds nothing, accepts everything.
#[derive(Debug)]
struct Nothing;

#[async_trait]
impl Backend for Nothing {
    fn kind(&self) -> BackendKind {
        BackendKind::Disabled
    }
    async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(None)
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        Ok(vec![None; keys.len()])
    }
    async fn set(&self, _: &str, _: Vec<u8>, _: Duration) -> Result<(), BackendError> {
        Ok(())
    }
    async fn set_many(&self, _: Vec<(String, Vec<u8>)>, _: Duration) -> Result<(), BackendError> {
        Ok(())
    }
    async fn delete(&self, _: &[String]) -> Result<u64, BackendError> {
        Ok(0)
    }
    async fn exists(&self, _: &str) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn expire(&self, _: &str, _: Duration) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn ttl(&self, _: &str) -> Result<Option<Duration>, BackendError> {
        Ok(None)
    }
    async fn incr_by(&self, _: &str, _: i64) -> Result<i64, BackendError> {
        Ok(0)
    }
    async fn delete_pattern(&self, _: &str) -> Result<u64, BackendError> {
        Ok(0)
    }
    async fn try_lease(&self, _: &str, _: Vec<u8>, _: Duration) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn set_if_lease(
        &self,
        _: &str,
        _: Vec<u8>,
        _: Vec<u8>,
        _: Duration,
    ) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn release_lease(&self, _: &str, _: Vec<u8>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn info(&self) -> Result<BackendInfo, BackendError> {
        Ok(BackendInfo::default())
    }
}
