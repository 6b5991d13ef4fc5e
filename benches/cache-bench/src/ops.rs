//! The single-call operations: one [`Op`] per hit case, the way a user would
//! call each library.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cache_core::Cache;
use redis::aio::MultiplexedConnection;

use crate::payload::{
    COLD_IDS, Customer, HOT_KEYS, cold_customer, customer, customer_by_id, customer_by_id_paused,
    customer_fail_safe, customer_tagged, hot_id,
};

/// One benchmarked operation; `true` when it returned the expected value.
pub(crate) trait Op: Send + Sync + 'static {
    fn call(&self, i: u64) -> impl Future<Output = bool> + Send;
}

/// redis-rs GET + bincode decode on shared multiplexed connections (one for
/// the floor; several round-robin to compare with cache-core's spread).
pub(crate) struct RawGet {
    pub(crate) conns: Vec<MultiplexedConnection>,
}

impl Op for RawGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        let key = format!("raw:customer:{id}");
        let mut conn = self.conns[i as usize % self.conns.len()].clone();
        let bytes: Option<Vec<u8>> = match redis::cmd("GET").arg(&key).query_async(&mut conn).await
        {
            Ok(b) => b,
            Err(_) => return false,
        };
        decode_raw(bytes.as_deref(), id)
    }
}

pub(crate) fn decode_raw(bytes: Option<&[u8]>, id: u64) -> bool {
    let Some(bytes) = bytes else { return false };
    match bincode::serde::decode_from_slice::<Customer, _>(bytes, bincode::config::standard()) {
        Ok((c, _)) => c.id == id,
        Err(_) => false,
    }
}

/// bb8 + bb8-redis pool(16), one checkout per operation.
pub(crate) struct PoolGet {
    pub(crate) pool: bb8::Pool<bb8_redis::RedisConnectionManager>,
}

impl Op for PoolGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        let key = format!("raw:customer:{id}");
        let Ok(mut conn) = self.pool.get().await else {
            return false;
        };
        let bytes: Option<Vec<u8>> = match redis::cmd("GET").arg(&key).query_async(&mut *conn).await
        {
            Ok(b) => b,
            Err(_) => return false,
        };
        drop(conn);
        decode_raw(bytes.as_deref(), id)
    }
}

/// `Cache::get` (Redis or memory backend).
pub(crate) struct CacheGet {
    pub(crate) cache: Cache,
}

impl Op for CacheGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        let key = format!("customer:{id}");
        matches!(self.cache.get::<Customer>(&key).await, Ok(Some(c)) if c.id == id)
    }
}

/// A `#[cached]` function hit.
pub(crate) struct CachedFn {
    pub(crate) cache: Cache,
}

impl Op for CachedFn {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        customer_by_id(&self.cache, id)
            .await
            .is_ok_and(|c| c.id == id)
    }
}

/// A `#[cached(fail_safe = ..)]` function hit ([`customer_fail_safe`]).
pub(crate) struct CachedFnFailSafe {
    pub(crate) cache: Cache,
}

impl Op for CachedFnFailSafe {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        customer_fail_safe(&self.cache, id)
            .await
            .is_ok_and(|c| c.id == id)
    }
}

/// A `#[cached(tags = [..])]` function hit ([`customer_tagged`]).
pub(crate) struct CachedFnTagged {
    pub(crate) cache: Cache,
}

impl Op for CachedFnTagged {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        customer_tagged(&self.cache, id)
            .await
            .is_ok_and(|c| c.id == id)
    }
}

/// The fail-safe and tagged hit ops of one cache, its hot set loaded.
pub(crate) async fn loader_ops(cache: &Cache) -> (Arc<CachedFnFailSafe>, Arc<CachedFnTagged>) {
    for i in 0..HOT_KEYS {
        let id = hot_id(i);
        customer_fail_safe(cache, id).await.expect("fill fail-safe");
        customer_tagged(cache, id).await.expect("fill tagged");
    }
    (
        Arc::new(CachedFnFailSafe {
            cache: cache.clone(),
        }),
        Arc::new(CachedFnTagged {
            cache: cache.clone(),
        }),
    )
}

/// [`customer_by_id_paused`] (the paused-Redis case).
pub(crate) struct PausedFn {
    pub(crate) cache: Cache,
}

impl Op for PausedFn {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        customer_by_id_paused(&self.cache, id)
            .await
            .is_ok_and(|c| c.id == id)
    }
}

/// moka `future::Cache::get` of the same struct (cloned out).
pub(crate) struct MokaGet {
    pub(crate) moka: moka::future::Cache<u64, Customer>,
}

impl Op for MokaGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        self.moka.get(&id).await.is_some_and(|c| c.id == id)
    }
}

/// moka used the way `#[cached]` has to use it: a string key
/// `{namespace}:{prefix}:{id}` formatted on every call (the key space is shared
/// with Redis and with pattern invalidation) and a TTL per entry (moka's
/// `Expiry`), the value cloned out. Not a target: it shows how much of the gap
/// to [`MokaGet`] those two requirements explain.
pub(crate) struct MokaKeyedGet {
    pub(crate) moka: moka::future::Cache<String, TtlCustomer>,
}

#[derive(Clone)]
pub(crate) struct TtlCustomer {
    pub(crate) ttl: Duration,
    pub(crate) customer: Customer,
}

pub(crate) struct PerEntryTtl;

impl moka::Expiry<String, TtlCustomer> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, value: &TtlCustomer, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl Op for MokaKeyedGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        let key = format!("bench:customer:{id}");
        self.moka
            .get(&key)
            .await
            .is_some_and(|v| v.customer.id == id)
    }
}

/// A `#[cached]` call on a key never seen before: GET miss, lease, body, store.
pub(crate) struct MissPath {
    pub(crate) cache: Cache,
}

impl Op for MissPath {
    async fn call(&self, _i: u64) -> bool {
        let id = COLD_IDS.fetch_add(1, Ordering::Relaxed);
        cold_customer(&self.cache, id)
            .await
            .is_ok_and(|c| c.id == id)
    }
}

/// Everything the cases run against, built once per run on the server at
/// `url`: the single-call ops (one per hit case), the caches and connections
/// the special cases use.
pub(crate) struct Setup {
    /// A shared connection with redis-rs defaults (fills, SCANs).
    pub(crate) raw_conn: MultiplexedConnection,
    /// The default Redis cache (prefix generations on).
    pub(crate) redis_cache: Cache,
    /// A Redis cache with prefix generations off.
    pub(crate) redis_cache_gen: Cache,
    pub(crate) raw: Arc<RawGet>,
    pub(crate) raw_nodelay: Arc<RawGet>,
    pub(crate) raw_nodelay_2conn: Arc<RawGet>,
    pub(crate) pooled: Arc<PoolGet>,
    pub(crate) get_redis: Arc<CacheGet>,
    pub(crate) fn_redis: Arc<CachedFn>,
    pub(crate) fn_redis_nagle: Arc<CachedFn>,
    pub(crate) fn_redis_gen: Arc<CachedFn>,
    pub(crate) fn_near: Arc<CachedFn>,
    pub(crate) moka_op: Arc<MokaGet>,
    pub(crate) moka_keyed_op: Arc<MokaKeyedGet>,
    pub(crate) get_memory: Arc<CacheGet>,
    pub(crate) fn_memory: Arc<CachedFn>,
    /// Hits of `#[cached]` functions with `fail_safe` and with `tags`, on
    /// the default Redis cache, the near cache and memory.
    pub(crate) fn_redis_fail_safe: Arc<CachedFnFailSafe>,
    pub(crate) fn_redis_tags: Arc<CachedFnTagged>,
    pub(crate) fn_near_fail_safe: Arc<CachedFnFailSafe>,
    pub(crate) fn_near_tags: Arc<CachedFnTagged>,
    pub(crate) fn_memory_fail_safe: Arc<CachedFnFailSafe>,
    pub(crate) fn_memory_tags: Arc<CachedFnTagged>,
    pub(crate) miss: Arc<MissPath>,
    #[cfg(feature = "cached-crate")]
    pub(crate) cc_get: Arc<crate::cached_crate::CachedCrateGet>,
}

impl Setup {
    /// Connects, fills the hot set everywhere and builds every op.
    #[allow(clippy::too_many_lines)]
    pub(crate) async fn new(url: &str) -> Self {
        // Floor: one shared multiplexed connection with redis-rs defaults (Nagle
        // on, as a user gets it and as the `cached` crate uses it) ...
        let mut raw_conn = redis::Client::open(url)
            .expect("redis client")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        // ... and the same with TCP_NODELAY, as cache-core configures its connections.
        let nodelay_conn = redis::Client::open(
            redis::IntoConnectionInfo::into_connection_info(url)
                .expect("url")
                .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)),
        )
        .expect("redis client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw nodelay connection");
        // cache-core spreads commands over 2 shared connections: the same, raw.
        let nodelay_conn_2 = redis::Client::open(
            redis::IntoConnectionInfo::into_connection_info(url)
                .expect("url")
                .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)),
        )
        .expect("redis client")
        .get_multiplexed_async_connection()
        .await
        .expect("second raw nodelay connection");
        let mut fill = redis::pipe();
        for i in 0..HOT_KEYS {
            let id = hot_id(i);
            let bytes = bincode::serde::encode_to_vec(customer(id), bincode::config::standard())
                .expect("encode");
            fill.cmd("SET")
                .arg(format!("raw:customer:{id}"))
                .arg(bytes)
                .ignore();
        }
        let () = fill
            .query_async(&mut raw_conn)
            .await
            .expect("fill raw keys");

        let manager = bb8_redis::RedisConnectionManager::new(url).expect("bb8 manager");
        let pool = bb8::Pool::builder()
            .max_size(16)
            .test_on_check_out(false)
            .build(manager)
            .await
            .expect("bb8 pool");

        let redis_cache = Cache::builder()
            .redis_url(url)
            .namespace("bench")
            .build()
            .await
            .expect("redis cache");
        // The same namespace (and so the same stored values) with TCP_NODELAY off,
        // as redis-rs and the `cached` crate connect by default.
        let redis_cache_nagle = Cache::builder()
            .redis_url(url)
            .namespace("bench")
            .tcp_nodelay(false)
            .build()
            .await
            .expect("redis cache, nodelay off");
        // Prefix generations off (its own namespace: values are not labeled):
        // the hit as it was before generations were the default.
        let redis_cache_gen = Cache::builder()
            .redis_url(url)
            .namespace("benchplain")
            .prefix_generations(false)
            .build()
            .await
            .expect("redis cache, prefix generations off");
        // The near cache in front of the same Redis (its own namespace).
        let redis_cache_near = Cache::builder()
            .redis_url(url)
            .namespace("benchnear")
            .near_cache(100_000)
            .build()
            .await
            .expect("redis cache, near cache");
        let memory_cache = Cache::memory();
        let hot: Vec<(String, Customer)> = (0..HOT_KEYS)
            .map(|i| (format!("customer:{}", hot_id(i)), customer(hot_id(i))))
            .collect();
        let entries: Vec<(&str, &Customer)> = hot.iter().map(|(k, c)| (k.as_str(), c)).collect();
        for cache in [
            &redis_cache,
            &memory_cache,
            &redis_cache_gen,
            &redis_cache_near,
        ] {
            cache
                .set_many(&entries, Some(Duration::from_secs(3600)))
                .await
                .expect("fill cache");
        }
        let moka = moka::future::Cache::builder().max_capacity(10_000).build();
        for i in 0..HOT_KEYS {
            moka.insert(hot_id(i), customer(hot_id(i))).await;
        }

        let moka_keyed = moka::future::Cache::builder()
            .max_capacity(10_000)
            .expire_after(PerEntryTtl)
            .build();
        for i in 0..HOT_KEYS {
            let value = TtlCustomer {
                ttl: Duration::from_secs(3600),
                customer: customer(hot_id(i)),
            };
            moka_keyed
                .insert(format!("bench:customer:{}", hot_id(i)), value)
                .await;
        }

        let raw = Arc::new(RawGet {
            conns: vec![raw_conn.clone()],
        });
        let raw_nodelay_2conn = Arc::new(RawGet {
            conns: vec![nodelay_conn.clone(), nodelay_conn_2],
        });
        let raw_nodelay = Arc::new(RawGet {
            conns: vec![nodelay_conn],
        });
        let pooled = Arc::new(PoolGet { pool });
        let get_redis = Arc::new(CacheGet {
            cache: redis_cache.clone(),
        });
        let fn_redis = Arc::new(CachedFn {
            cache: redis_cache.clone(),
        });
        let fn_redis_nagle = Arc::new(CachedFn {
            cache: redis_cache_nagle,
        });
        let fn_redis_gen = Arc::new(CachedFn {
            cache: redis_cache_gen.clone(),
        });
        let fn_near = Arc::new(CachedFn {
            cache: redis_cache_near.clone(),
        });
        let moka_op = Arc::new(MokaGet { moka });
        let moka_keyed_op = Arc::new(MokaKeyedGet { moka: moka_keyed });
        let get_memory = Arc::new(CacheGet {
            cache: memory_cache.clone(),
        });
        let fn_memory = Arc::new(CachedFn {
            cache: memory_cache.clone(),
        });
        let miss = Arc::new(MissPath {
            cache: redis_cache.clone(),
        });
        let (fn_redis_fail_safe, fn_redis_tags) = loader_ops(&redis_cache).await;
        let (fn_near_fail_safe, fn_near_tags) = loader_ops(&redis_cache_near).await;
        let (fn_memory_fail_safe, fn_memory_tags) = loader_ops(&memory_cache).await;

        #[cfg(feature = "cached-crate")]
        let cc_get = {
            let store = crate::cached_crate::store(url, "bench-cached").await;
            crate::cached_crate::fill(&store).await;
            Arc::new(crate::cached_crate::CachedCrateGet { store })
        };

        Self {
            raw_conn,
            redis_cache,
            redis_cache_gen,
            raw,
            raw_nodelay,
            raw_nodelay_2conn,
            pooled,
            get_redis,
            fn_redis,
            fn_redis_nagle,
            fn_redis_gen,
            fn_near,
            moka_op,
            moka_keyed_op,
            get_memory,
            fn_memory,
            fn_redis_fail_safe,
            fn_redis_tags,
            fn_near_fail_safe,
            fn_near_tags,
            fn_memory_fail_safe,
            fn_memory_tags,
            miss,
            #[cfg(feature = "cached-crate")]
            cc_get,
        }
    }
}
