//! The Redis connection layer against real redis-servers: TLS (private CA,
//! client certificates, wrong CA, bad files), password redaction, how
//! refused credentials / permissions / databases are classified,
//! `require_redis`, and one cache used from several tokio runtimes.

use std::time::Duration;

use cache_core::{Cache, CacheBuilder, CacheConfig, ConfigError, ErrorKind, HealthStatus};
use cache_testkit::{RedisCluster, RedisServer};
use redis::Commands;

const TIMEOUT: Duration = Duration::from_millis(500);

fn builder(url: &str) -> CacheBuilder {
    Cache::builder()
        .redis_url(url)
        .namespace("conn")
        .timeout(TIMEOUT)
        .circuit_breaker(1000, Duration::from_millis(100))
}

/// The value the server itself holds for the logical key `key` (namespace `conn`).
fn stored(server: &RedisServer, key: &str) -> bool {
    let keys: Vec<String> = server
        .client()
        .get_connection()
        .unwrap()
        .keys(format!("conn:*{key}*"))
        .unwrap();
    !keys.is_empty()
}

fn lookup(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

fn path(p: std::path::PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

/// A set and a get that must both reach Redis (no error counted, the value
/// visible on the server).
async fn round_trip(cache: &Cache, server: &RedisServer, key: &str) {
    cache.set(key, &42u32, None).await.unwrap();
    assert_eq!(cache.get::<u32>(key).await.unwrap(), Some(42));
    let errors = cache.stats().total.errors;
    assert!(errors.is_empty(), "errors: {errors:?}");
    assert!(stored(server, key), "{key} reached the server");
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn tls_with_a_private_ca_sets_and_gets() {
    let server = RedisServer::start_tls();
    let cache = builder(&server.tls_url())
        .tls_ca_file(server.tls_ca_file())
        .require_redis(true)
        .build()
        .await
        .expect("TLS connection with the private CA");
    round_trip(&cache, &server, "tls:1").await;
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
}

#[tokio::test]
async fn tls_with_required_client_certificates() {
    let server = RedisServer::start_tls_client_auth();

    // Without a client certificate the server refuses the handshake.
    let refused = builder(&server.tls_url())
        .tls_ca_file(server.tls_ca_file())
        .require_redis(true)
        .build()
        .await;
    assert!(
        matches!(refused, Err(ConfigError::RedisUnavailable { .. })),
        "{refused:?}"
    );

    let cache = builder(&server.tls_url())
        .tls_ca_file(server.tls_ca_file())
        .tls_client_cert(server.tls_client_cert_file(), server.tls_client_key_file())
        .require_redis(true)
        .build()
        .await
        .expect("mutual TLS");
    round_trip(&cache, &server, "mtls:1").await;
}

#[tokio::test]
async fn tls_settings_from_the_environment() {
    let server = RedisServer::start_tls_client_auth();
    let config = CacheConfig::from_lookup(lookup(vec![
        ("REDIS_URL", server.tls_url()),
        ("CACHE_NAMESPACE", "conn".into()),
        ("CACHE_REQUIRE_REDIS", "true".into()),
        ("REDIS_TLS_CA_FILE", path(server.tls_ca_file())),
        ("REDIS_TLS_CERT_FILE", path(server.tls_client_cert_file())),
        ("REDIS_TLS_KEY_FILE", path(server.tls_client_key_file())),
    ]))
    .unwrap();
    assert!(config.require_redis);
    let cache = Cache::builder()
        .config(config)
        .build()
        .await
        .expect("mutual TLS from the environment");
    round_trip(&cache, &server, "env:1").await;
}

#[tokio::test]
async fn tls_with_a_wrong_ca_is_a_clear_error_not_a_panic() {
    let server = RedisServer::start_tls();

    // Degraded by default, with the reason in the health report.
    let cache = builder(&server.tls_url())
        .tls_ca_file(server.tls_untrusted_ca_file())
        .build()
        .await
        .expect("an untrusted server is not a build error by default");
    cache.set("w:1", &1u8, None).await.unwrap();
    let health = cache.health().await;
    assert_eq!(health.status, HealthStatus::Degraded);
    let error = health.error.unwrap_or_default();
    assert!(
        error.to_lowercase().contains("certificate"),
        "health names the certificate problem: {error}"
    );
    assert!(!stored(&server, "w:1"));

    // The system roots do not trust the private CA either.
    let system = builder(&server.tls_url()).require_redis(true).build().await;
    match system {
        Err(ConfigError::RedisUnavailable { kind, reason, .. }) => {
            assert_eq!(kind, ErrorKind::Connection);
            assert!(reason.to_lowercase().contains("certificate"), "{reason}");
        }
        other => panic!("expected RedisUnavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn tls_on_a_cluster() {
    let cluster = RedisCluster::start_tls(3);
    let ca = cluster.nodes()[0].tls_ca_file();
    let cache = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace("conn")
        .timeout(TIMEOUT)
        .tls_ca_file(&ca)
        .require_redis(true)
        .build()
        .await
        .expect("cluster over TLS with the private CA");
    for i in 0..10u32 {
        let key = format!("ctls:{i}");
        cache.set(&key, &i, None).await.unwrap();
        assert_eq!(cache.get::<u32>(&key).await.unwrap(), Some(i));
    }
    let errors = cache.stats().total.errors;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
    // What the cache wrote is in the cluster.
    let mut conn = cluster.client().get_async_connection().await.unwrap();
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg("conn:ctls:3")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw.is_some(), "the value reached the cluster");

    // Tracking connections to every master use TLS too: the near cache
    // serves hits, and a change by another instance reaches it.
    let near = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace("conn")
        .timeout(TIMEOUT)
        .tls_ca_file(&ca)
        .near_cache(1_000)
        .build()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while near.stats().total.near_hits == 0 {
        assert_eq!(near.get::<u32>("ctls:3").await.unwrap(), Some(3));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cluster tracking never established over TLS"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cache.set("ctls:3", &33u32, None).await.unwrap();
    let started = std::time::Instant::now();
    while near.get::<u32>("ctls:3").await.unwrap() != Some(33) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "change not seen"
        );
        tokio::task::yield_now().await;
    }

    // Without the CA the cluster is not trusted: a clear error, no panic.
    let untrusted = Cache::builder()
        .redis_cluster(cluster.urls())
        .timeout(TIMEOUT)
        .require_redis(true)
        .build()
        .await;
    assert!(untrusted.is_err(), "{untrusted:?}");
}

/// The child half of [`a_ca_file_adds_to_the_system_roots`], run by it in
/// a process whose "system roots" (`SSL_CERT_FILE`) are the server's CA.
#[tokio::test]
#[ignore = "run by a_ca_file_adds_to_the_system_roots in a child process"]
async fn child_system_roots_plus_ca_file() {
    let url = std::env::var("CONN_CHILD_URL").expect("started by the parent test");
    let extra_ca = std::env::var("CONN_CHILD_EXTRA_CA").expect("started by the parent test");
    let cache = builder(&url)
        .tls_ca_file(extra_ca)
        .require_redis(true)
        .build()
        .await
        .expect("the system roots still trusted next to REDIS_TLS_CA_FILE");
    cache.set("sys:1", &1u8, None).await.unwrap();
    assert_eq!(cache.get::<u8>("sys:1").await.unwrap(), Some(1));
    assert!(cache.stats().total.errors.is_empty());
}

#[test]
fn a_ca_file_adds_to_the_system_roots() {
    let server = RedisServer::start_tls();
    // The process environment cannot be changed safely in a test: a child
    // process gets system roots that trust the server, and a CA file that
    // does not.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_system_roots_plus_ca_file", "--ignored"])
        .env("SSL_CERT_FILE", server.tls_ca_file())
        .env_remove("SSL_CERT_DIR")
        .env("CONN_CHILD_URL", server.tls_url())
        .env("CONN_CHILD_EXTRA_CA", server.tls_untrusted_ca_file())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn missing_or_malformed_tls_files_name_the_variable() {
    let server = RedisServer::start_tls();
    let garbage = server.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let url = server.tls_url();

    let env = |pairs: Vec<(&'static str, String)>| {
        let mut all = vec![("REDIS_URL", url.clone())];
        all.extend(pairs);
        CacheConfig::from_lookup(lookup(all)).unwrap_err()
    };
    let cases = [
        (
            env(vec![("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem".into())]),
            "REDIS_TLS_CA_FILE",
        ),
        (
            env(vec![("REDIS_TLS_CA_FILE", path(garbage.clone()))]),
            "REDIS_TLS_CA_FILE",
        ),
        (
            env(vec![
                ("REDIS_TLS_CERT_FILE", path(garbage.clone())),
                ("REDIS_TLS_KEY_FILE", path(server.tls_client_key_file())),
            ]),
            "REDIS_TLS_CERT_FILE",
        ),
        (
            env(vec![
                ("REDIS_TLS_CERT_FILE", path(server.tls_client_cert_file())),
                ("REDIS_TLS_KEY_FILE", path(server.tls_client_cert_file())),
            ]),
            "REDIS_TLS_KEY_FILE",
        ),
        (
            env(vec![(
                "REDIS_TLS_CERT_FILE",
                path(server.tls_client_cert_file()),
            )]),
            "REDIS_TLS_KEY_FILE",
        ),
    ];
    for (err, variable) in cases {
        assert!(
            matches!(&err, ConfigError::TlsFile { variable: v, .. } if *v == variable),
            "expected TlsFile naming {variable}, got {err:?}"
        );
        assert!(err.to_string().contains(variable), "{err}");
    }

    let err = builder(&url)
        .tls_ca_file(&garbage)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::TlsFile {
                variable: "tls_ca_file",
                ..
            }
        ),
        "{err:?}"
    );
    let err = builder(&url)
        .tls_client_cert(server.tls_client_cert_file(), "/nonexistent/key.pem")
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::TlsFile {
                variable: "tls_client_cert",
                ..
            }
        ),
        "{err:?}"
    );
    // Certificates with a plain redis:// URL are a mistake, not ignored.
    let err = builder("redis://127.0.0.1:1")
        .tls_ca_file(server.tls_ca_file())
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rediss://"), "{err}");
}

// ---------------------------------------------------------- redaction

#[tokio::test]
async fn a_password_with_a_slash_is_redacted() {
    for url in [
        "redis://user:pa/ss123@host:6379",
        "redis://user:pa/ss@12/3@host:6379/0",
        "rediss://:pa/ss123@host:6380",
        "redis://pa/ss123@host",
    ] {
        let redacted = cache_core::redact_url(url);
        assert!(
            !redacted.contains("ss123") && !redacted.contains("ss@12"),
            "{redacted}"
        );
        assert!(redacted.contains("host"), "{redacted}");
    }
    assert_eq!(
        cache_core::redact_url("redis://user:pa/ss123@host:6379/2"),
        "redis://user:***@host:6379/2"
    );
    // In configuration errors, Debug output and stats too.
    let config = CacheConfig::from_lookup(lookup(vec![(
        "REDIS_URL",
        "redis://user:pa/ss123@127.0.0.1:1".into(),
    )]));
    let shown = match &config {
        Ok(c) => format!("{c:?} {}", c.target_description()),
        Err(e) => format!("{e} {e:?}"),
    };
    assert!(!shown.contains("ss123"), "{shown}");
    let built = builder("redis://user:pa/ss123@127.0.0.1:1").build().await;
    let shown = match built {
        Ok(cache) => format!("{cache:?} {}", cache.stats().target),
        Err(e) => format!("{e} {e:?}"),
    };
    assert!(!shown.contains("ss123"), "{shown}");
}

// ------------------------------------------------ error classification

#[tokio::test]
async fn a_wrong_password_is_an_auth_error() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let cache = builder(&url).build().await.unwrap();
    cache.set("a:1", &1u8, None).await.unwrap();
    let _ = cache.get::<u8>("a:1").await.unwrap();
    let errors = cache.stats().total.errors;
    assert!(errors.get("auth").copied().unwrap_or(0) >= 1, "{errors:?}");
    assert!(!errors.contains_key("connection"), "{errors:?}");
    let health = cache.health().await;
    assert_eq!(health.status, HealthStatus::Degraded);
    let error = health.error.unwrap_or_default();
    assert!(
        error.starts_with("auth error") && error.contains("password"),
        "says what to fix: {error}"
    );

    let required = builder(&url).require_redis(true).build().await;
    assert!(
        matches!(
            required,
            Err(ConfigError::RedisUnavailable {
                kind: ErrorKind::Auth,
                ..
            })
        ),
        "{required:?}"
    );
}

#[tokio::test]
async fn a_database_index_out_of_range_is_a_config_error() {
    let server = RedisServer::start();
    let url = format!("{}/99", server.url());
    let cache = builder(&url).build().await.unwrap();
    cache.set("d:1", &1u8, None).await.unwrap();
    let errors = cache.stats().total.errors;
    assert!(
        errors.get("config").copied().unwrap_or(0) >= 1,
        "{errors:?}"
    );
    let error = cache.health().await.error.unwrap_or_default();
    assert!(error.contains("databases"), "says what to fix: {error}");

    let required = builder(&url).require_redis(true).build().await;
    match required {
        Err(ConfigError::RedisUnavailable { kind, reason, .. }) => {
            assert_eq!(kind, ErrorKind::Config);
            assert!(reason.contains("database"), "{reason}");
        }
        other => panic!("expected RedisUnavailable, got {other:?}"),
    }
}

/// The minimal ACL the README documents, for namespace `conn`.
const MINIMAL_ACL: &[&str] = &[
    "~conn:*",
    "+get",
    "+mget",
    "+set",
    "+del",
    "+unlink",
    "+exists",
    "+pexpire",
    "+pttl",
    "+incrby",
    "+scan",
    "+evalsha",
    "+script|load",
    "+ping",
    "+info",
    "+dbsize",
    "+strlen",
    "+hello",
    "+client|tracking",
];

fn acl_user(server: &RedisServer, name: &str, rules: &[&str]) -> String {
    let mut admin = server.client().get_connection().unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(name)
        .arg(&["reset", "on", ">pw"])
        .arg(rules)
        .query(&mut admin)
        .unwrap();
    format!("redis://{name}:pw@127.0.0.1:{}", server.port())
}

#[tokio::test]
async fn a_missing_acl_permission_is_an_auth_error_found_at_start_up() {
    let server = RedisServer::start();
    // May read, may not write, count or scan.
    let rules: Vec<&str> = MINIMAL_ACL
        .iter()
        .copied()
        .filter(|r| !matches!(*r, "+set" | "+incrby" | "+scan"))
        .collect();
    let url = acl_user(&server, "reader", &rules);

    let required = builder(&url).require_redis(true).build().await;
    match required {
        Err(ConfigError::RedisUnavailable { kind, reason, .. }) => {
            assert_eq!(kind, ErrorKind::Auth);
            assert!(reason.contains("set, incrby, scan"), "{reason}");
        }
        other => panic!("expected RedisUnavailable, got {other:?}"),
    }

    let cache = builder(&url).build().await.expect("degraded by default");
    assert_eq!(
        cache.backend_info().await.missing_permissions,
        ["set", "incrby", "scan"]
    );
    let health = cache.health().await;
    assert_eq!(health.missing_permissions, ["set", "incrby", "scan"]);
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    assert!(
        health
            .error
            .as_deref()
            .unwrap_or("")
            .contains("set, incrby, scan")
    );
    cache.set("p:1", &1u8, None).await.unwrap();
    let errors = cache.stats().total.errors;
    assert!(errors.get("auth").copied().unwrap_or(0) >= 1, "{errors:?}");
    assert!(!stored(&server, "p:1"));
}

#[tokio::test]
async fn the_documented_minimal_acl_is_enough() {
    let server = RedisServer::start();
    let url = acl_user(&server, "app", MINIMAL_ACL);
    for generations in [false, true] {
        let cache = builder(&url)
            .prefix_generations(generations)
            .require_redis(true)
            .build()
            .await
            .expect("every needed command is granted");
        assert!(cache.backend_info().await.missing_permissions.is_empty());
        cache.set("m:1", &1u32, None).await.unwrap();
        assert_eq!(cache.get::<u32>("m:1").await.unwrap(), Some(1));
        cache
            .set_many(&[("m:2", 2u32), ("m:3", 3u32)], None)
            .await
            .unwrap();
        assert_eq!(
            cache.get_many::<u32>(&["m:2", "m:4"]).await.unwrap().len(),
            2
        );
        assert!(cache.exists("m:1").await.unwrap());
        cache.expire("m:1", Duration::from_secs(60)).await.unwrap();
        assert!(cache.ttl("m:1").await.unwrap().is_some());
        assert_eq!(cache.incr("n:1", 5).await.unwrap(), 5);
        let loaded: u32 = cache
            .get_or_set("l:1", None, || async { 7u32 })
            .await
            .unwrap();
        assert_eq!(loaded, 7);
        cache.invalidate_prefix("m").await.unwrap();
        cache.delete("l:1").await.unwrap();
        cache.clear().await.unwrap();
        let health = cache.health().await;
        assert_eq!(health.status, HealthStatus::Healthy, "{health:?}");
        let errors = cache.stats().total.errors;
        assert!(errors.is_empty(), "generations {generations}: {errors:?}");
    }
}

// ------------------------------------------------------ require_redis

#[tokio::test]
async fn require_redis_fails_start_up_when_unreachable() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();

    let degraded = builder(&url).build().await.expect("degraded by default");
    assert_eq!(degraded.health().await.status, HealthStatus::Degraded);

    let required = builder(&url).require_redis(true).build().await;
    match required {
        Err(e @ ConfigError::RedisUnavailable { .. }) => {
            assert!(e.to_string().contains("CACHE_REQUIRE_REDIS"), "{e}");
        }
        other => panic!("expected RedisUnavailable, got {other:?}"),
    }
    let config = CacheConfig::from_lookup(lookup(vec![
        ("REDIS_URL", url.clone()),
        ("CACHE_REQUIRE_REDIS", "yes".into()),
    ]))
    .unwrap();
    let from_env = Cache::builder().config(config).build().await;
    assert!(
        matches!(from_env, Err(ConfigError::RedisUnavailable { .. })),
        "{from_env:?}"
    );
    let bad = CacheConfig::from_lookup(lookup(vec![("CACHE_REQUIRE_REDIS", "sure".into())]));
    assert!(
        matches!(
            bad,
            Err(ConfigError::Invalid {
                variable: "CACHE_REQUIRE_REDIS",
                ..
            })
        ),
        "{bad:?}"
    );

    server.restart();
    let up = builder(&url).require_redis(true).build().await.unwrap();
    round_trip(&up, &server, "up:1").await;
}

// ------------------------------------------------- several runtimes

/// Runs `f` to completion on a fresh runtime that ends afterwards.
fn on_new_runtime<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Builds the cache on runtime A, which then ends; runtimes B and C use it.
fn survives_its_runtime(cache_builder: CacheBuilder, check: impl Fn(&str) -> bool) {
    let cache = on_new_runtime(async {
        let cache = cache_builder.require_redis(true).build().await.unwrap();
        cache.set("rt:a", &1u32, None).await.unwrap();
        cache
    });
    for (n, runtime) in ["b", "c"].into_iter().enumerate() {
        let key = format!("rt:{runtime}");
        on_new_runtime(async {
            for round in 0..3u32 {
                cache.set(&key, &round, None).await.unwrap();
                assert_eq!(cache.get::<u32>(&key).await.unwrap(), Some(round));
                assert_eq!(cache.get::<u32>("rt:a").await.unwrap(), Some(1));
                let errors = cache.stats().total.errors;
                assert!(
                    errors.is_empty(),
                    "runtime {runtime} (#{n}), round {round}: {errors:?}"
                );
            }
            assert_eq!(cache.health().await.status, HealthStatus::Healthy);
        });
        assert!(check(&key), "{key} reached Redis");
    }
}

#[test]
fn a_cache_survives_the_runtime_that_built_it() {
    let server = RedisServer::start();
    survives_its_runtime(builder(&server.url()), |key| stored(&server, key));
}

#[test]
fn a_cluster_cache_survives_the_runtime_that_built_it() {
    let cluster = RedisCluster::start(3);
    survives_its_runtime(
        Cache::builder()
            .redis_cluster(cluster.urls())
            .namespace("conn")
            .timeout(TIMEOUT)
            .circuit_breaker(1000, Duration::from_millis(100)),
        |key| {
            // Some master holds a key containing the logical key.
            cluster.urls().iter().any(|url| {
                let mut node = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let keys: Vec<String> = node.keys(format!("conn:*{key}*")).unwrap();
                !keys.is_empty()
            })
        },
    );
}

#[tokio::test]
async fn tracking_and_the_near_cache_work_over_tls() {
    let server = RedisServer::start_tls();
    let cache = Cache::builder()
        .redis_url(server.tls_url())
        .tls_ca_file(server.tls_ca_file())
        .namespace("tlsnear")
        .near_cache(1_000)
        .build()
        .await
        .unwrap();
    cache.set("customer:1", &1u64, None).await.unwrap();
    let started = std::time::Instant::now();
    // The tracking connection (TLS too) comes up in the background; then
    // reads are served by the near cache.
    while cache.stats().total.near_hits == 0 {
        assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), Some(1));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "tracking never established over TLS"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cache.delete("customer:1").await.unwrap();
    assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), None);
}
