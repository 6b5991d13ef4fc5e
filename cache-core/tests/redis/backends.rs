//! The direct API, run as the same test bodies against every backend:
//! memory, a real redis-server and a real 3-master Redis Cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{Kind, on};
use cache_core::{Cache, keys::escape};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Customer {
    id: u64,
    name: String,
    segment: String,
}

fn customer(id: u64) -> Customer {
    Customer {
        id,
        name: format!("Customer {id}"),
        segment: "smb".into(),
    }
}

static NAMESPACE: AtomicUsize = AtomicUsize::new(0);

/// A fresh cache in a namespace of its own; for memory, `sibling` shares nothing
/// (so cross-namespace checks only run where a store is shared).
async fn cache_in(kind: Kind, namespace: &str) -> Cache {
    cache_with(kind, namespace, None).await
}

/// `generations`: `None` for the default, `Some(false)` for the SCAN path.
async fn cache_with(kind: Kind, namespace: &str, generations: Option<bool>) -> Cache {
    let mut builder = Cache::builder()
        .namespace(namespace)
        .timeout(Duration::from_secs(2));
    if let Some(on) = generations {
        builder = builder.prefix_generations(on);
    }
    match kind {
        Kind::Memory => Cache::memory_with(cache_core::CacheConfig::default()),
        remote => on(remote, builder).build().await.unwrap(),
    }
}

fn fresh_namespace() -> String {
    format!("t{}", NAMESPACE.fetch_add(1, Ordering::Relaxed))
}

async fn fresh(kind: Kind) -> Cache {
    cache_in(kind, &fresh_namespace()).await
}

async fn get_set_delete(kind: Kind) {
    let cache = fresh(kind).await;
    assert_eq!(cache.get::<Customer>("customer:1").await.unwrap(), None);
    cache.set("customer:1", &customer(1), None).await.unwrap();
    assert_eq!(
        cache.get::<Customer>("customer:1").await.unwrap(),
        Some(customer(1))
    );
    assert!(cache.exists("customer:1").await.unwrap());
    assert!(cache.delete("customer:1").await.unwrap());
    assert!(!cache.delete("customer:1").await.unwrap());
    assert!(!cache.exists("customer:1").await.unwrap());
    let stats = cache.stats();
    assert_eq!(stats.prefixes["customer"].hits, 1);
    assert_eq!(stats.prefixes["customer"].misses, 1);
    assert_eq!(stats.total.total_errors(), 0, "{stats:?}");
}

async fn ttl_and_expire(kind: Kind) {
    let cache = fresh(kind).await;
    cache
        .set("s:1", &1u32, Some(Duration::from_secs(100)))
        .await
        .unwrap();
    let ttl = cache.ttl("s:1").await.unwrap().unwrap();
    assert!(
        ttl > Duration::from_secs(90) && ttl <= Duration::from_secs(100),
        "{ttl:?}"
    );
    assert!(
        cache
            .expire("s:1", Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(
        !cache
            .expire("s:missing", Duration::from_secs(1))
            .await
            .unwrap()
    );
    assert_eq!(cache.ttl("s:missing").await.unwrap(), None);
    cache
        .set("s:2", &2u32, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(cache.get::<u32>("s:2").await.unwrap(), Some(2));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        cache.get::<u32>("s:1").await.unwrap(),
        None,
        "expired by expire()"
    );
    assert_eq!(
        cache.get::<u32>("s:2").await.unwrap(),
        None,
        "expired by its TTL"
    );
}

async fn many_and_counters(kind: Kind) {
    let cache = fresh(kind).await;
    let entries: Vec<(String, Customer)> = (1..=20)
        .map(|i| (format!("customer:{i}"), customer(i)))
        .collect();
    let refs: Vec<(&str, Customer)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    cache
        .set_many(&refs, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let keys: Vec<&str> = entries
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(["customer:999"])
        .collect();
    let got = cache.get_many::<Customer>(&keys).await.unwrap();
    assert_eq!(got.len(), 21);
    for (i, value) in got.iter().take(20).enumerate() {
        assert_eq!(value.as_ref(), Some(&customer(i as u64 + 1)));
    }
    assert_eq!(got[20], None);
    assert_eq!(
        cache
            .delete_many(&["customer:1", "customer:2", "customer:999"])
            .await
            .unwrap(),
        2
    );

    assert_eq!(cache.incr("counter:a", 5).await.unwrap(), 5);
    assert_eq!(cache.incr("counter:a", 2).await.unwrap(), 7);
    assert_eq!(cache.decr("counter:a", 10).await.unwrap(), -3);
    cache.set("counter:b", &"not a number", None).await.unwrap();
    assert!(
        cache.incr("counter:b", 1).await.is_err(),
        "incr on a non-integer is an error"
    );

    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        customer(77)
    };
    assert_eq!(
        cache.get_or_set("customer:77", None, load).await.unwrap(),
        customer(77)
    );
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        customer(0)
    };
    assert_eq!(
        cache.get_or_set("customer:77", None, load).await.unwrap(),
        customer(77)
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

async fn patterns_prefixes_and_namespaces(kind: Kind) {
    let ns = fresh_namespace();
    // Prefix invalidation by SCAN + UNLINK (generations off), which counts
    // what it deleted.
    let cache = cache_with(kind, &ns, Some(false)).await;
    let other = cache_with(kind, &format!("{ns}other"), Some(false)).await;
    for i in 0..1500u64 {
        cache.set(&format!("customer:{i}"), &i, None).await.unwrap();
    }
    for i in 0..10u64 {
        cache.set(&format!("churn:{i}"), &i, None).await.unwrap();
        cache
            .set(&format!("customers:{i}"), &i, None)
            .await
            .unwrap();
        other.set(&format!("customer:{i}"), &i, None).await.unwrap();
    }
    // More keys than one SCAN/UNLINK batch.
    assert_eq!(cache.invalidate_prefix("customer").await.unwrap(), 1500);
    assert_eq!(cache.get::<u64>("customer:5").await.unwrap(), None);
    assert_eq!(cache.get::<u64>("churn:5").await.unwrap(), Some(5));
    assert_eq!(
        cache.get::<u64>("customers:5").await.unwrap(),
        Some(5),
        "a longer prefix is not the prefix"
    );
    assert_eq!(
        other.get::<u64>("customer:5").await.unwrap(),
        Some(5),
        "other namespace untouched"
    );

    assert_eq!(cache.delete_pattern("churn:[0-4]").await.unwrap(), 5);
    assert_eq!(cache.get::<u64>("churn:7").await.unwrap(), Some(7));
    // A single Redis server also holds the namespace's record of the
    // server's run (to detect restarts with old data), a key of the
    // namespace like the others.
    let internal = u64::from(matches!(kind, Kind::Redis));
    assert_eq!(cache.clear().await.unwrap(), 15 + internal);
    assert_eq!(cache.get::<u64>("churn:7").await.unwrap(), None);
    assert_eq!(
        other.get::<u64>("customer:5").await.unwrap(),
        Some(5),
        "clear() stays in its namespace"
    );
}

async fn escaping(kind: Kind) {
    let cache = fresh(kind).await;
    for value in ["1", "2", "*", "a:b", "[x]", "?"] {
        cache
            .set(&format!("user:{}", escape(value)), &value, None)
            .await
            .unwrap();
    }
    // The key of the value "*" names one key, also when used as a pattern.
    assert_eq!(
        cache
            .delete_pattern(&format!("user:{}", escape("*")))
            .await
            .unwrap(),
        1
    );
    assert!(
        cache
            .delete(&format!("user:{}", escape("a:b")))
            .await
            .unwrap()
    );
    for value in ["1", "2", "[x]", "?"] {
        let key = format!("user:{}", escape(value));
        assert_eq!(
            cache.get::<String>(&key).await.unwrap().as_deref(),
            Some(value),
            "{key}"
        );
    }
}

async fn bad_input(kind: Kind) {
    let cache = fresh(kind).await;
    assert!(matches!(
        cache.get::<u32>("").await,
        Err(cache_core::CacheError::InvalidKey { .. })
    ));
    assert!(cache.set("x:\n", &1, None).await.is_err());
    let small = Cache::builder()
        .config(cache.config().clone())
        .max_value_bytes(64)
        .build()
        .await
        .unwrap();
    let err = small
        .set("big:1", &vec![7u8; 1000], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, cache_core::CacheError::TooLarge { .. }),
        "{err}"
    );
    assert_eq!(
        small.get::<Vec<u8>>("big:1").await.unwrap(),
        None,
        "oversized value not stored"
    );
    assert_eq!(small.stats().total.oversized, 1);
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory { $( #[tokio::test] async fn $name() { super::$name(super::Kind::Memory).await } )* }
        mod redis { $( #[tokio::test] async fn $name() { super::$name(super::Kind::Redis).await } )* }
        mod cluster { $( #[tokio::test] async fn $name() { super::$name(super::Kind::Cluster).await } )* }
    };
}

on_every_backend!(
    get_set_delete,
    ttl_and_expire,
    many_and_counters,
    patterns_prefixes_and_namespaces,
    escaping,
    bad_input
);

#[cache_core::cached(prefix = "tenant", key = "{name}", cache = cache)]
async fn tenant_row(cache: &Cache, name: &str) -> String {
    name.to_owned()
}

/// On Redis Cluster only the part of a key between its first `{` and `}`
/// picks the slot: user data holding the same `{tag}` must not put its keys
/// on one shard.
#[tokio::test]
async fn braces_in_user_data_do_not_choose_the_cluster_slot() {
    let cache = fresh(Kind::Cluster).await;
    let names = ["{acme}1", "{acme}2", "{acme}3", "{acme}4"];
    let mut slots = std::collections::HashSet::new();
    let client = crate::common::CLUSTER
        .get()
        .expect("started by fresh")
        .client();
    let mut conn = client.get_async_connection().await.unwrap();
    for name in names {
        assert_eq!(tenant_row(&cache, name).await, name);
        let skey = cache.storage_key(&tenant_row_cache_key(name));
        assert!(!skey.contains(['{', '}']), "{skey}");
        let slot: u16 = ::redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&skey)
            .query_async(&mut conn)
            .await
            .unwrap();
        slots.insert(slot);
        assert_eq!(
            cache
                .get::<String>(&tenant_row_cache_key(name))
                .await
                .unwrap()
                .as_deref(),
            Some(name)
        );
    }
    // Unescaped, all four would hash `acme` alone: one slot.
    assert!(slots.len() > 1, "{slots:?}");
}
