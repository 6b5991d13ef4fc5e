//! Behaviour of `#[cached]`, argument by argument, on the in-memory cache.
//!
//! Each test uses its own `Cache::memory()` (through `cache.scope(..)` or a
//! `cache = ..` argument) and its own prefix, so the tests run in parallel.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_core::{Cache, cached};
use serde::{Deserialize, Serialize};

/// The documented default key: the stable hash of the tuple of the
/// arguments' stable hashes.
macro_rules! hashed {
    ($($arg:expr),* $(,)?) => {
        cache_core::keys::stable_hash(&($(cache_core::keys::stable_hash(&$arg),)*))
    };
}

fn hits(cache: &Cache, prefix: &str) -> u64 {
    cache.stats().prefixes.get(prefix).map_or(0, |p| p.hits)
}

fn misses(cache: &Cache, prefix: &str) -> u64 {
    cache.stats().prefixes.get(prefix).map_or(0, |p| p.misses)
}

// ---------------------------------------------------------------- Result

static RESULT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "t_result", ttl = 60, key = "{id}")]
async fn result_fn(id: u64) -> Result<u64, String> {
    RESULT_RUNS.fetch_add(1, SeqCst);
    if id == 0 {
        Err("zero".to_owned())
    } else {
        Ok(id * 2)
    }
}

#[tokio::test]
async fn result_ok_is_cached_and_err_never() {
    let cache = Cache::memory();
    cache
        .scope(async {
            assert_eq!(result_fn(21).await, Ok(42));
            assert_eq!(result_fn(21).await, Ok(42));
            assert_eq!(RESULT_RUNS.load(SeqCst), 1, "second Ok call is a hit");
            assert_eq!(result_fn(0).await, Err("zero".to_owned()));
            assert_eq!(result_fn(0).await, Err("zero".to_owned()));
            assert_eq!(RESULT_RUNS.load(SeqCst), 3, "Err is never cached");
        })
        .await;
    assert_eq!(hits(&cache, "t_result"), 1);
    assert_eq!(misses(&cache, "t_result"), 3);
    assert_eq!(cache.get::<u64>("t_result:21").await.unwrap(), Some(42));
    assert_eq!(cache.get::<u64>("t_result:0").await.unwrap(), None);
    assert_eq!(result_fn_cache_key(&21), "t_result:21");
}

// ---------------------------------------------------------------- Option

static OPTION_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "t_option", key = "{id}")]
async fn option_fn(id: u64) -> Option<String> {
    OPTION_RUNS.fetch_add(1, SeqCst);
    (id != 0).then(|| format!("item {id}"))
}

#[tokio::test]
async fn option_none_is_not_cached() {
    let cache = Cache::memory();
    cache
        .scope(async {
            assert_eq!(option_fn(1).await.as_deref(), Some("item 1"));
            assert_eq!(option_fn(1).await.as_deref(), Some("item 1"));
            assert_eq!(OPTION_RUNS.load(SeqCst), 1);
            assert_eq!(option_fn(0).await, None);
            assert_eq!(option_fn(0).await, None);
            assert_eq!(OPTION_RUNS.load(SeqCst), 3, "None is not cached");
        })
        .await;
    assert!(!cache.exists("t_option:0").await.unwrap());
}

static NONE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "t_none", ttl = 3600, key = "{id}", cache_none, none_ttl = 30)]
async fn cache_none_fn(id: u64) -> Option<u64> {
    NONE_RUNS.fetch_add(1, SeqCst);
    (id != 0).then_some(id)
}

#[tokio::test]
async fn cache_none_stores_none_with_none_ttl() {
    let cache = Cache::memory();
    cache
        .scope(async {
            assert_eq!(cache_none_fn(0).await, None);
            assert_eq!(cache_none_fn(0).await, None);
            assert_eq!(NONE_RUNS.load(SeqCst), 1, "None is cached with cache_none");
            assert_eq!(cache_none_fn(5).await, Some(5));
            assert_eq!(cache_none_fn(5).await, Some(5));
            assert_eq!(NONE_RUNS.load(SeqCst), 2);
        })
        .await;
    assert_eq!(hits(&cache, "t_none"), 2);
    let none_ttl = cache
        .ttl("t_none:0")
        .await
        .unwrap()
        .expect("None entry has a TTL");
    assert!(none_ttl <= Duration::from_secs(30), "{none_ttl:?}");
    let some_ttl = cache
        .ttl("t_none:5")
        .await
        .unwrap()
        .expect("Some entry has a TTL");
    assert!(some_ttl > Duration::from_secs(3000), "{some_ttl:?}");
}

// ---------------------------------------------------------------- plain values, ttl

static PLAIN_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "t_plain", ttl = 120)]
async fn plain_fn(words: Vec<String>) -> Vec<String> {
    PLAIN_RUNS.fetch_add(1, SeqCst);
    words.into_iter().rev().collect()
}

#[tokio::test]
async fn plain_values_are_stored_with_literal_ttl() {
    let cache = Cache::memory();
    let words = vec!["a".to_owned(), "b".to_owned()];
    cache
        .scope(async {
            assert_eq!(plain_fn(words.clone()).await, ["b", "a"]);
            assert_eq!(plain_fn(words.clone()).await, ["b", "a"]);
            assert_eq!(PLAIN_RUNS.load(SeqCst), 1);
            assert_eq!(plain_fn(vec![]).await, Vec::<String>::new());
            assert_eq!(PLAIN_RUNS.load(SeqCst), 2, "other arguments, other key");
        })
        .await;
    let key = plain_fn_cache_key(&words);
    let ttl = cache.ttl(&key).await.unwrap().expect("stored with a TTL");
    assert!(
        ttl <= Duration::from_secs(120) && ttl > Duration::from_secs(100),
        "{ttl:?}"
    );
}

static EXPR_TTL_RUNS: AtomicUsize = AtomicUsize::new(0);

fn ttl_for(tier: u8) -> Duration {
    Duration::from_secs(u64::from(tier) * 1000)
}

#[cached(prefix = "t_ttl_expr", key = "{tier}", ttl = ttl_for(tier))]
async fn ttl_expr_fn(tier: u8) -> u8 {
    EXPR_TTL_RUNS.fetch_add(1, SeqCst);
    tier
}

#[cached(prefix = "t_ttl_short", ttl = Duration::from_millis(300))]
async fn short_ttl_fn() -> usize {
    EXPR_TTL_RUNS.fetch_add(1, SeqCst)
}

#[tokio::test]
async fn ttl_expression_is_evaluated_per_call() {
    let cache = Cache::memory();
    cache
        .scope(async {
            ttl_expr_fn(2).await;
            ttl_expr_fn(5).await;
        })
        .await;
    let t2 = cache.ttl("t_ttl_expr:2").await.unwrap().unwrap();
    let t5 = cache.ttl("t_ttl_expr:5").await.unwrap().unwrap();
    assert!(
        t2 <= Duration::from_secs(2000) && t2 > Duration::from_secs(1900),
        "{t2:?}"
    );
    assert!(
        t5 <= Duration::from_secs(5000) && t5 > Duration::from_secs(4900),
        "{t5:?}"
    );

    cache
        .scope(async {
            let first = short_ttl_fn().await;
            assert_eq!(short_ttl_fn().await, first, "hit before expiry");
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert_ne!(
                short_ttl_fn().await,
                first,
                "expired after the Duration ttl"
            );
        })
        .await;
}

// ---------------------------------------------------------------- unless

static UNLESS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "t_unless", key = "{q}", unless = result.is_empty())]
async fn unless_fn(q: &str) -> Result<Vec<String>, String> {
    UNLESS_RUNS.fetch_add(1, SeqCst);
    Ok(q.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

static UNLESS_LIMIT_RUNS: AtomicUsize = AtomicUsize::new(0);

// `unless` may use Copy arguments besides `result`.
#[cached(prefix = "t_unless_limit", key = "{n}", unless = *result > limit)]
async fn unless_limit_fn(n: u32, limit: u32) -> u32 {
    UNLESS_LIMIT_RUNS.fetch_add(1, SeqCst);
    n * 10 + limit - limit
}

#[tokio::test]
async fn unless_skips_storing() {
    let cache = Cache::memory();
    cache
        .scope(async {
            assert!(unless_fn("").await.unwrap().is_empty());
            assert!(unless_fn("").await.unwrap().is_empty());
            assert_eq!(UNLESS_RUNS.load(SeqCst), 2, "empty results are not stored");
            assert_eq!(unless_fn("a,b").await.unwrap(), ["a", "b"]);
            assert_eq!(unless_fn("a,b").await.unwrap(), ["a", "b"]);
            assert_eq!(UNLESS_RUNS.load(SeqCst), 3);

            assert_eq!(unless_limit_fn(1, 5).await, 10);
            assert_eq!(unless_limit_fn(1, 5).await, 10);
            assert_eq!(UNLESS_LIMIT_RUNS.load(SeqCst), 2, "10 > 5: not stored");
            assert_eq!(unless_limit_fn(2, 50).await, 20);
            assert_eq!(unless_limit_fn(2, 50).await, 20);
            assert_eq!(UNLESS_LIMIT_RUNS.load(SeqCst), 3, "20 <= 50: stored");
        })
        .await;
    assert!(!cache.exists("t_unless:").await.unwrap_or(false));
    assert!(cache.exists("t_unless:a,b").await.unwrap());
}

// ---------------------------------------------------------------- version

#[cached(prefix = "t_version", key = "{id}", version = 3)]
async fn versioned_fn(id: u32) -> u32 {
    id + 1
}

#[cached(prefix = "t_version_hash", version = 7)]
async fn versioned_hash_fn(id: u32) -> u32 {
    id + 1
}

#[tokio::test]
async fn version_is_part_of_the_key() {
    let cache = Cache::memory();
    cache.scope(versioned_fn(41)).await;
    cache.scope(versioned_hash_fn(41)).await;
    assert_eq!(versioned_fn_cache_key(&41), "t_version:v3:41");
    assert_eq!(cache.get::<u32>("t_version:v3:41").await.unwrap(), Some(42));
    let hashed = versioned_hash_fn_cache_key(&41);
    let rest = hashed.strip_prefix("t_version_hash:v7:").expect(&hashed);
    assert_eq!(rest, hashed!(41u32));
    assert_eq!(cache.get::<u32>(&hashed).await.unwrap(), Some(42));
}

// ---------------------------------------------------------------- skip, default key

/// A database handle: not `Serialize`.
struct Db {
    calls: AtomicUsize,
}

#[cached(prefix = "t_skip", skip(db))]
async fn skip_fn(db: &Db, q: &str, page: u32) -> Vec<String> {
    db.calls.fetch_add(1, SeqCst);
    vec![format!("{q}#{page}")]
}

#[tokio::test]
async fn skipped_arguments_are_not_in_the_key() {
    let cache = Cache::memory();
    let (db1, db2) = (
        Db {
            calls: AtomicUsize::new(0),
        },
        Db {
            calls: AtomicUsize::new(0),
        },
    );
    cache
        .scope(async {
            assert_eq!(skip_fn(&db1, "rust", 1).await, ["rust#1"]);
            assert_eq!(
                skip_fn(&db2, "rust", 1).await,
                ["rust#1"],
                "another db, same key"
            );
            assert_eq!(skip_fn(&db2, "rust", 2).await, ["rust#2"]);
        })
        .await;
    assert_eq!(db1.calls.load(SeqCst) + db2.calls.load(SeqCst), 2);
    assert_eq!(hits(&cache, "t_skip"), 1);
    // The companion takes the hashed arguments only.
    let key = skip_fn_cache_key("rust", &1);
    assert_eq!(key, format!("t_skip:{}", hashed!("rust", 1u32)));
    assert!(cache.exists(&key).await.unwrap());
}

#[cached(prefix = "t_pinned")]
async fn pinned_fn(id: u64, name: &str, tags: Vec<String>) -> usize {
    usize::try_from(id).unwrap() + name.len() + tags.len()
}

#[tokio::test]
async fn default_key_is_a_pinned_stable_hash() {
    // Same value on every machine, process and Rust version: if this changes,
    // every deployed cache entry is orphaned.
    let key = pinned_fn_cache_key(&42, "ada", &vec!["x".to_owned(), "y".to_owned()]);
    assert_eq!(key, "t_pinned:ab0d2390fe9c1912c95a57b157068a41");
    let tags = vec!["x".to_owned(), "y".to_owned()];
    assert_eq!(key, format!("t_pinned:{}", hashed!(42u64, "ada", tags)));
    let cache = Cache::memory();
    cache
        .scope(pinned_fn(42, "ada", vec!["x".to_owned(), "y".to_owned()]))
        .await;
    assert_eq!(cache.get::<usize>(&key).await.unwrap(), Some(47));
}

// ---------------------------------------------------------------- templates

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Region {
    code: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Customer {
    id: u64,
    region: Region,
}

#[cached(
    prefix = "t_template",
    key = "{customer.region.code}:{customer.id}/{pair.1}"
)]
async fn template_fn(customer: &Customer, pair: (u8, char)) -> String {
    format!("{}-{}", customer.id, pair.0)
}

#[cached(prefix = "t_braces", key = "{{{id}}}")]
async fn braces_fn(id: u8) -> u8 {
    id
}

#[tokio::test]
async fn templates_use_field_paths_and_escape_values() {
    let cache = Cache::memory();
    let customer = Customer {
        id: 7,
        region: Region {
            code: "eu:west*".to_owned(),
        },
    };
    let out = cache.scope(template_fn(&customer, (1, '?'))).await;
    assert_eq!(out, "7-1");
    // ':' '*' '?' in values are escaped; the literal ':' and '/' are kept.
    let key = template_fn_cache_key(&customer, &(1, '?'));
    assert_eq!(key, "t_template:eu%3Awest%2A:7/%3F");
    assert_eq!(
        cache.get::<String>(&key).await.unwrap().as_deref(),
        Some("7-1")
    );
    assert_eq!(braces_fn_cache_key(&5), "t_braces:{5}");
}

/// Every type with a `core::fmt`-free path (`__private::FastPart`), at its
/// extremes, and strings that need escaping. (The `allow` also covers the
/// generated `fast_parts_fn_cache_key`, which takes the same 14 arguments.)
#[allow(clippy::too_many_arguments)]
#[cached(
    prefix = "t_fast",
    key = "{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}/{j}/{k}/{l}/{m}/{n}"
)]
async fn fast_parts_fn(
    a: u8,
    b: u16,
    c: u32,
    d: u64,
    e: usize,
    f: i8,
    g: i16,
    h: i32,
    i: i64,
    j: isize,
    k: &str,
    l: String,
    m: &String,
    n: &u64,
) -> u8 {
    a
}

#[tokio::test]
async fn integer_and_string_placeholders_key_like_display() {
    let words = "a*b:c%".to_owned();
    let cache = Cache::memory();
    let stored = cache
        .scope(fast_parts_fn(
            u8::MAX,
            0,
            u32::MAX,
            u64::MAX,
            usize::MAX,
            i8::MIN,
            -1,
            i32::MIN,
            i64::MIN,
            isize::MAX,
            "x?[y]",
            "\\t\u{7}".to_owned(),
            &words,
            &42,
        ))
        .await;
    assert_eq!(stored, u8::MAX);
    let key = fast_parts_fn_cache_key(
        &u8::MAX,
        &0,
        &u32::MAX,
        &u64::MAX,
        &usize::MAX,
        &i8::MIN,
        &-1,
        &i32::MIN,
        &i64::MIN,
        &isize::MAX,
        "x?[y]",
        &"\\t\u{7}".to_owned(),
        // `m: &String` and `n: &u64` are taken as they are.
        &words,
        &42,
    );
    // What `Display` plus escaping gives for the same values.
    let expected = [
        u8::MAX.to_string(),
        0u16.to_string(),
        u32::MAX.to_string(),
        u64::MAX.to_string(),
        usize::MAX.to_string(),
        i8::MIN.to_string(),
        (-1i16).to_string(),
        i32::MIN.to_string(),
        i64::MIN.to_string(),
        isize::MAX.to_string(),
        cache_core::keys::escape("x?[y]").into_owned(),
        cache_core::keys::escape("\\t\u{7}").into_owned(),
        cache_core::keys::escape(&words).into_owned(),
        "42".to_owned(),
    ]
    .join("/");
    assert_eq!(key, format!("t_fast:{expected}"));
    assert!(
        key.ends_with("/x%3F%5By%5D/%5Ct%07/a%2Ab%3Ac%25/42"),
        "{key}"
    );
    // The function stored its value under that same key.
    assert_eq!(cache.get::<u8>(&key).await.unwrap(), Some(u8::MAX));
}

// ---------------------------------------------------------------- single flight

static FLIGHT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "t_flight", key = "{id}", cache = cache)]
async fn flight_fn(cache: Cache, id: u64) -> Result<u64, String> {
    FLIGHT_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_callers_run_the_body_once() {
    let cache = Cache::memory();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let cache = cache.clone();
        tasks.spawn(async move { flight_fn(cache, 9).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap(), Ok(9));
    }
    assert_eq!(FLIGHT_RUNS.load(SeqCst), 1);
    let stats = &cache.stats().prefixes["t_flight"];
    assert_eq!(stats.loads, 1, "{stats:?}");
}

// ---------------------------------------------------------------- methods

/// Holds a field that is not `Serialize`; `self` is never part of a key.
struct Repo {
    pool: std::sync::Mutex<Vec<u64>>,
    cache: Cache,
    runs: AtomicUsize,
}

impl Repo {
    #[cached(prefix = "t_method", ttl = 60, key = "{id}", cache = self.cache)]
    async fn churn_risk(&self, id: u64) -> Result<f64, String> {
        self.runs.fetch_add(1, SeqCst);
        self.pool.lock().unwrap().push(id);
        Ok(f64::from(u32::try_from(id).unwrap()) / 100.0)
    }

    /// Default hashed key: `self` is left out.
    #[cached(prefix = "t_method_hash", cache = &self.cache)]
    async fn search(&self, q: String) -> Vec<u64> {
        self.runs.fetch_add(1, SeqCst);
        vec![q.len() as u64]
    }

    #[cached(prefix = "t_method_mut", key = "{id}", cache = self.cache.clone())]
    async fn touch(&self, id: u64) -> u64 {
        self.runs.fetch_add(1, SeqCst);
        self.pool.lock().unwrap().push(id);
        id
    }
}

#[tokio::test]
async fn methods_leave_self_out_of_the_key() {
    let cache = Cache::memory();
    let repo = Repo {
        pool: std::sync::Mutex::new(Vec::new()),
        cache: cache.clone(),
        runs: AtomicUsize::new(0),
    };
    assert_eq!(repo.churn_risk(42).await, Ok(0.42));
    assert_eq!(repo.churn_risk(42).await, Ok(0.42));
    assert_eq!(repo.search("abc".to_owned()).await, [3]);
    assert_eq!(repo.search("abc".to_owned()).await, [3]);
    assert_eq!(repo.touch(1).await, 1);
    assert_eq!(repo.touch(1).await, 1);
    assert_eq!(repo.runs.load(SeqCst), 3);
    assert_eq!(Repo::churn_risk_cache_key(&42), "t_method:42");
    assert_eq!(Repo::touch_cache_key(&1), "t_method_mut:1");
    assert_eq!(
        Repo::search_cache_key(&"abc".to_owned()),
        format!("t_method_hash:{}", hashed!("abc"))
    );

    // Another instance (another pool) shares the entries: self is not in the key.
    let other = Repo {
        pool: std::sync::Mutex::new(Vec::new()),
        cache: cache.clone(),
        runs: AtomicUsize::new(0),
    };
    assert_eq!(other.churn_risk(42).await, Ok(0.42));
    assert_eq!(other.runs.load(SeqCst), 0);
    assert_eq!(hits(&cache, "t_method"), 2);
}

// ---------------------------------------------------------------- generics, impl Trait

#[cached(prefix = "t_generic")]
async fn generic_fn<T>(value: T) -> String
where
    T: Serialize + fmt::Display + Send,
{
    format!("<{value}>")
}

#[cached(prefix = "t_generic_ret", key = "{s}")]
async fn parse_fn<T>(s: &str) -> Option<T>
where
    T: std::str::FromStr + Serialize + serde::de::DeserializeOwned + Send,
{
    s.parse().ok()
}

#[cached(prefix = "t_impl_trait")]
async fn impl_trait_fn(q: impl AsRef<str> + Serialize + Send, n: &u32) -> usize {
    q.as_ref().len() + *n as usize
}

#[tokio::test]
async fn generic_and_impl_trait_functions() {
    let cache = Cache::memory();
    cache
        .scope(async {
            assert_eq!(generic_fn(5u8).await, "<5>");
            assert_eq!(generic_fn("x").await, "<x>");
            assert_eq!(generic_fn(5u8).await, "<5>");
            assert_eq!(parse_fn::<u32>("12").await, Some(12));
            assert_eq!(parse_fn::<u32>("12").await, Some(12));
            assert_eq!(impl_trait_fn("abc", &1).await, 4);
            assert_eq!(impl_trait_fn(String::from("abc"), &1).await, 4);
        })
        .await;
    assert_eq!(hits(&cache, "t_generic"), 1);
    assert_eq!(hits(&cache, "t_generic_ret"), 1);
    // "abc" and String::from("abc") serialize alike: same key.
    assert_eq!(hits(&cache, "t_impl_trait"), 1);
    assert_eq!(generic_fn_cache_key(&5u8), generic_fn_cache_key(&5u8));
    assert_ne!(generic_fn_cache_key(&5u8), generic_fn_cache_key(&6u8));
    // One entry per instantiation: `prefix:<16 hex digits>:<template>`.
    let key = parse_fn_cache_key::<u32>("12");
    assert!(
        key.starts_with("t_generic_ret:") && key.ends_with(":12"),
        "{key}"
    );
    assert_eq!(key.len(), "t_generic_ret:".len() + 17 + 2, "{key}");
    assert_ne!(key, parse_fn_cache_key::<u64>("12"));
}

// ---------------------------------------------------------------- traits

#[async_trait::async_trait]
trait Store {
    async fn load(&self, id: u64) -> Result<String, String>;
    async fn count(&self, kind: &str) -> u64;
}

struct AsyncTraitStore {
    cache: Cache,
    runs: AtomicUsize,
}

#[async_trait::async_trait]
impl Store for AsyncTraitStore {
    #[cached(prefix = "t_async_trait", key = "{id}", cache = self.cache)]
    async fn load(&self, id: u64) -> Result<String, String> {
        self.runs.fetch_add(1, SeqCst);
        if id == 0 {
            return Err("missing".to_owned());
        }
        let s = format!("item {id}");
        Ok(s)
    }

    #[cached(prefix = "t_async_trait_hash", cache = self.cache)]
    async fn count(&self, kind: &str) -> u64 {
        self.runs.fetch_add(1, SeqCst);
        kind.len() as u64
    }
}

#[tokio::test]
async fn works_inside_async_trait_impls() {
    let cache = Cache::memory();
    let store: Arc<dyn Store> = Arc::new(AsyncTraitStore {
        cache: cache.clone(),
        runs: AtomicUsize::new(0),
    });
    assert_eq!(store.load(1).await.as_deref(), Ok("item 1"));
    assert_eq!(store.load(1).await.as_deref(), Ok("item 1"));
    assert_eq!(store.load(0).await, Err("missing".to_owned()));
    assert_eq!(store.load(0).await, Err("missing".to_owned()));
    assert_eq!(store.count("abcd").await, 4);
    assert_eq!(store.count("abcd").await, 4);
    assert_eq!(hits(&cache, "t_async_trait"), 1);
    assert_eq!(hits(&cache, "t_async_trait_hash"), 1);
    assert_eq!(misses(&cache, "t_async_trait"), 3);
    assert_eq!(
        cache
            .get::<String>("t_async_trait:1")
            .await
            .unwrap()
            .as_deref(),
        Some("item 1")
    );
}

trait NativeStore {
    fn item(&self, id: u64) -> impl Future<Output = Option<u64>> + Send;
}

struct Native(AtomicUsize);

impl NativeStore for Native {
    #[cached(prefix = "t_native_trait", key = "{id}", no_companions)]
    async fn item(&self, id: u64) -> Option<u64> {
        self.0.fetch_add(1, SeqCst);
        Some(id)
    }
}

#[tokio::test]
async fn works_in_native_async_trait_impls_with_no_companions() {
    let cache = Cache::memory();
    let native = Native(AtomicUsize::new(0));
    cache
        .scope(async {
            assert_eq!(native.item(3).await, Some(3));
            assert_eq!(native.item(3).await, Some(3));
        })
        .await;
    assert_eq!(native.0.load(SeqCst), 1);
}

// ---------------------------------------------------------------- names that could collide

#[cached(prefix = "t_names", unless = *result > 1000)]
#[allow(clippy::too_many_arguments)]
async fn names_fn(key: u32, cache: u32, result: u32, prefix: u32, ttl: u32, body: u32) -> u32 {
    let __cache_key = 1;
    let __cache_k = 1;
    key + cache + result + prefix + ttl + body + __cache_key + __cache_k
}

#[cached(prefix = "t_names_tpl", key = "{key}/{cache}/{result}/{prefix}")]
async fn names_template_fn(key: &str, cache: &str, result: &str, prefix: &str) -> String {
    [key, cache, result, prefix].concat()
}

#[tokio::test]
async fn arguments_named_like_generated_code_do_not_collide() {
    let cache = Cache::memory();
    cache
        .scope(async {
            assert_eq!(names_fn(1, 2, 3, 4, 5, 6).await, 23);
            assert_eq!(names_fn(1, 2, 3, 4, 5, 6).await, 23);
            assert_eq!(names_template_fn("k", "c", "r", "p").await, "kcrp");
        })
        .await;
    assert_eq!(hits(&cache, "t_names"), 1);
    assert_eq!(
        names_template_fn_cache_key("k", "c", "r", "p"),
        "t_names_tpl:k/c/r/p"
    );
    assert!(cache.exists("t_names_tpl:k/c/r/p").await.unwrap());
}

// ---------------------------------------------------------------- crate = path

mod renamed {
    use ::cache_core as my_cache;

    #[my_cache::cached(prefix = "t_crate", key = "{id}", crate = my_cache)]
    pub(crate) async fn renamed_crate_fn(id: u32) -> u32 {
        id * 3
    }

    #[my_cache::cached(prefix = "t_crate_str", key = "{id}", crate = "::cache_core")]
    pub(crate) async fn string_crate_fn(id: u32) -> u32 {
        id * 4
    }
}

#[tokio::test]
async fn crate_path_can_be_renamed() {
    let cache = Cache::memory();
    assert_eq!(cache.scope(renamed::renamed_crate_fn(2)).await, 6);
    assert_eq!(cache.scope(renamed::string_crate_fn(2)).await, 8);
    assert_eq!(cache.get::<u32>("t_crate:2").await.unwrap(), Some(6));
    assert_eq!(cache.get::<u32>("t_crate_str:2").await.unwrap(), Some(8));
}

// ---------------------------------------------------------------- no cache, uncached, Send

static NO_CACHE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "t_no_cache")]
async fn no_cache_fn() -> usize {
    NO_CACHE_RUNS.fetch_add(1, SeqCst)
}

#[tokio::test]
async fn without_a_cache_the_body_runs() {
    // No cache is installed in this test binary, and no scope here.
    assert_eq!(no_cache_fn().await, 0);
    assert_eq!(no_cache_fn().await, 1);
}

static UNCACHED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "t_uncached", key = "{id}")]
async fn bypass_fn(id: u32) -> usize {
    UNCACHED_RUNS.fetch_add(1, SeqCst) + id as usize
}

#[tokio::test]
async fn uncached_reaches_the_body() {
    let cache = Cache::memory();
    cache
        .scope(async {
            let first = bypass_fn(0).await;
            assert_eq!(bypass_fn(0).await, first);
            let fresh = cache_core::uncached(bypass_fn(0)).await;
            assert_ne!(fresh, first, "uncached runs the body");
            assert_eq!(bypass_fn(0).await, first, "and stores nothing");
        })
        .await;
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

#[tokio::test]
async fn cached_futures_stay_send() {
    let cache = Cache::memory();
    let db = Db {
        calls: AtomicUsize::new(0),
    };
    let repo = Repo {
        pool: std::sync::Mutex::new(Vec::new()),
        cache: cache.clone(),
        runs: AtomicUsize::new(0),
    };
    cache
        .scope(async {
            assert_send(versioned_fn(3)).await;
            assert_send(skip_fn(&db, "q", 1)).await;
            assert_send(repo.churn_risk(1)).await.unwrap();
            assert_send(generic_fn(1u64)).await;
        })
        .await;
}

// ---------------------------------------------------------------- a panicking body

static PANIC_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "t_panic", key = "{id}", cache = cache)]
async fn panicky_fn(cache: Cache, id: u32) -> u32 {
    let run = PANIC_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(run != 0, "first run panics");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_does_not_wedge_waiters() {
    let cache = Cache::memory();
    let leader = tokio::spawn(panicky_fn(cache.clone(), 1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiter = tokio::spawn(panicky_fn(cache.clone(), 1));
    assert!(leader.await.is_err(), "the leader panicked");
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter is not wedged");
    assert_eq!(waited.unwrap(), 1);
    assert_eq!(panicky_fn(cache.clone(), 1).await, 1);
}

// ---------------------------------------------------------------- return-position coercions

#[cached(prefix = "t_coerce_dyn", key = "{fail}")]
async fn boxed_error(fail: bool) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    if fail {
        return Err(Box::new(std::io::Error::other("early")));
    }
    if !fail {
        Ok(3)
    } else {
        Err(Box::new(std::io::Error::other("x")))
    }
}

#[cached(prefix = "t_coerce_err", key = "{id}")]
async fn always_boxed_error(id: u64) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let _ = id;
    Err(Box::new(std::io::Error::other("x")))
}

#[cached(prefix = "t_coerce_slice", key = "{id}")]
async fn boxed_slice(id: u64) -> Result<Box<[u64]>, String> {
    if id == 0 {
        return Ok(Box::new([]));
    }
    Ok(Box::new([id, id + 1]))
}

#[tokio::test]
async fn bodies_coerce_to_the_declared_return_type() {
    let cache = Cache::memory();
    cache
        .scope(async {
            assert_eq!(boxed_error(false).await.unwrap(), 3);
            assert_eq!(boxed_error(false).await.unwrap(), 3);
            assert_eq!(boxed_error(true).await.unwrap_err().to_string(), "early");
            assert_eq!(always_boxed_error(1).await.unwrap_err().to_string(), "x");
            assert_eq!(&*boxed_slice(1).await.unwrap(), &[1, 2]);
            assert_eq!(&*boxed_slice(1).await.unwrap(), &[1, 2]);
            assert!(boxed_slice(0).await.unwrap().is_empty());
        })
        .await;
    assert_eq!(hits(&cache, "t_coerce_dyn"), 1);
    assert_eq!(hits(&cache, "t_coerce_slice"), 1);
}
